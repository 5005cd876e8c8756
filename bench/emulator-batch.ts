/**
 * One 50,000-request batch through the emulator with the official client, uploads and downloads
 * streamed: prints seconds and the emulator's peak RSS as one JSON line. The emulator runs as the
 * `openai-batch emulator` command in its own process, so that its memory is measured alone (the client's
 * multipart upload holds much of the file in memory on its side). Run at two request sizes to show that
 * the emulator's memory does not follow its file sizes.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import OpenAI, { toStreamingFile } from 'openai';

const requestBytes = Number(process.argv[2] ?? 200);
const requests = 50_000;
const child = spawn(
  process.execPath,
  [
    'bin/openai-batch.js',
    'emulator',
    '--port',
    '0',
    '--validation-ms',
    '0',
    '--requests-per-second',
    '1000000',
  ],
  { stdio: ['ignore', 'pipe', 'inherit'] },
);
const url = await new Promise<string>((resolve, reject) => {
  let out = '';
  child.stdout.on('data', (chunk: Buffer) => {
    out += chunk.toString();
    const match = out.match(/(http:\/\/127\.0\.0\.1:\d+\/v1)/);
    if (match?.[1]) resolve(match[1]);
  });
  child.once('exit', () => reject(new Error(`emulator exited: ${out}`)));
});
const client = new OpenAI({ apiKey: 'sk-bench', baseURL: url });

async function* input(): AsyncGenerator<string> {
  const filler = 'x'.repeat(Math.max(1, requestBytes - 130));
  for (let i = 0; i < requests; i += 500) {
    let chunk = '';
    for (let j = i; j < i + 500; j++) {
      chunk += `${JSON.stringify({ custom_id: `r${j}`, method: 'POST', url: '/v1/chat/completions', body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: filler }] } })}\n`;
    }
    yield chunk;
  }
}

const started = performance.now();
const file = await client.files.create({ file: toStreamingFile(input(), 'bench.jsonl'), purpose: 'batch' });
let batch = await client.batches.create({
  input_file_id: file.id,
  endpoint: '/v1/chat/completions',
  completion_window: '24h',
});
while (!['completed', 'failed', 'expired', 'cancelled'].includes(batch.status)) {
  await new Promise((resolve) => setTimeout(resolve, 50));
  batch = await client.batches.retrieve(batch.id);
}
let outputBytes = 0;
const response = await client.files.content(batch.output_file_id ?? '');
for await (const chunk of response.body ?? []) outputBytes += (chunk as Uint8Array).length;
const seconds = (performance.now() - started) / 1000;
const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
const peakKiB = Number(status.match(/VmHWM:\s+(\d+) kB/)?.[1] ?? 0);
child.kill('SIGTERM');
console.log(
  JSON.stringify({
    requests,
    status: batch.status,
    inputMB: Number((file.bytes / 1e6).toFixed(1)),
    outputMB: Number((outputBytes / 1e6).toFixed(1)),
    seconds: Number(seconds.toFixed(2)),
    emulatorPeakRssMiB: Math.round(peakKiB / 1024),
  }),
);
