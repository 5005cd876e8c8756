import OpenAI, { toFile } from 'openai';
import type { Emulator } from '../../local/emulator/server';

/** An official OpenAI client pointed at an emulator. */
export function clientFor(
  emulator: Emulator,
  options: { maxRetries?: number; apiKey?: string } = {},
): OpenAI {
  return new OpenAI({
    apiKey: options.apiKey ?? 'sk-test',
    baseURL: emulator.url,
    maxRetries: options.maxRetries ?? 2,
  });
}

/** A batch input line for the chat endpoint. */
export function chatLine(customId: string, content = `question ${customId}`, model = 'gpt-4o-mini'): string {
  return JSON.stringify({
    custom_id: customId,
    method: 'POST',
    url: '/v1/chat/completions',
    body: { model, messages: [{ role: 'user', content }] },
  });
}

/** Uploads JSONL lines as a batch input file. */
export async function uploadLines(
  client: OpenAI,
  lines: string[],
  filename = 'input.jsonl',
): Promise<OpenAI.FileObject> {
  return client.files.create({
    file: await toFile(Buffer.from(`${lines.join('\n')}\n`), filename),
    purpose: 'batch',
  });
}

/** The parsed lines of a file's content. */
export async function fileLines(
  client: OpenAI,
  fileId: string | null | undefined,
): Promise<Record<string, unknown>[]> {
  if (!fileId) return [];
  const text = await (await client.files.content(fileId)).text();
  return text
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}
