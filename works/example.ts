import { defineWork } from '../functions/core/work';

/**
 * The original Python package's example: each record `{"id": "1", "content": "Hello!"}` becomes a chat
 * request with a fixed system prompt, and each answer is written back with the record's id.
 */
export default defineWork<{ id: string; content: string }>({
  name: 'example',
  endpoint: '/v1/chat/completions',
  model: 'gpt-4o-mini',
  upload: (record) => ({
    id: record.id,
    messages: [
      { role: 'system', content: 'You are a helpful assistant.' },
      { role: 'user', content: record.content },
    ],
  }),
  download: (item) => ({ id: item.id, answer: item.content, usage: item.usage }),
});
