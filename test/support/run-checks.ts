import { GetObjectCommand, ListObjectsCommand } from '@aws-sdk/client-s3';
import type OpenAI from 'openai';
import type { LocalEnvironment } from '../../local/runner';

/** The JSON lines of every object under a prefix, parsed, in key order. */
async function jsonLinesUnder(env: LocalEnvironment, prefix: string): Promise<Record<string, unknown>[]> {
  const listed = await env.s3.client.send(new ListObjectsCommand({ Bucket: env.s3.bucket, Prefix: prefix }));
  const values: Record<string, unknown>[] = [];
  for (const object of listed.Contents ?? []) {
    const body = await env.s3.client.send(new GetObjectCommand({ Bucket: env.s3.bucket, Key: object.Key }));
    for (const line of ((await body.Body?.transformToString()) ?? '').split('\n'))
      if (line) values.push(JSON.parse(line) as Record<string, unknown>);
  }
  return values;
}

/** The ids in a run's outputs in S3, as often as they appear, sorted. */
export async function outputIds(env: LocalEnvironment, runId: string): Promise<string[]> {
  return (await jsonLinesUnder(env, `runs/${runId}/outputs/`)).map((o) => String(o.id)).sort();
}

/**
 * How many parts of a run have more than one batch on OpenAI that was not refused (status `failed`:
 * validation or token limit, nothing run, nothing billed): each such part was paid for twice. A second
 * attempt of a part is legitimate only when the first created nothing or failed.
 */
export async function partsPaidTwice(client: OpenAI, runId: string): Promise<number> {
  const seen = new Map<string, number>();
  for await (const batch of client.batches.list({ limit: 100 })) {
    const metadata = (batch.metadata ?? {}) as Record<string, string>;
    if (metadata.openai_batch_run !== runId || batch.status === 'failed') continue;
    seen.set(metadata.part ?? '', (seen.get(metadata.part ?? '') ?? 0) + 1);
  }
  return [...seen.values()].filter((n) => n > 1).length;
}

/** The dataset line of every error line of a run, as often as it appears, sorted. */
/** Where each error of a run is, as `<object key>:<line>`, sorted. */
export async function errorPlaces(env: LocalEnvironment, runId: string): Promise<string[]> {
  return (await jsonLinesUnder(env, `runs/${runId}/errors/`)).map((e) => `${e.object}:${e.line}`).sort();
}

export async function errorLines(env: LocalEnvironment, runId: string): Promise<number[]> {
  return (await jsonLinesUnder(env, `runs/${runId}/errors/`))
    .map((e) => Number(e.line))
    .sort((a, b) => a - b);
}
