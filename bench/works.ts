/** The works benchmarks run: the example's chat work, and texts to embed, both over `{ id, content }`. */
import { defineWork } from '../functions/core/work';
import example from '../works/example';

export type BenchKind = 'chat' | 'embed';

const embed = defineWork<{ id: string; content: string }>({
  name: 'bench-embed',
  endpoint: '/v1/embeddings',
  model: 'text-embedding-3-small',
  upload: (record) => ({ id: record.id, input: record.content }),
  download: (item) => ({ id: item.id, vector: item.embedding }),
});

export function benchWork(kind: BenchKind): typeof example | typeof embed {
  return kind === 'embed' ? embed : example;
}
