/**
 * What checking request bodies costs Prepare: the request builder over the same records with
 * `validateRequests` on and off, alternating rounds so that both see the same machine, and the check
 * alone per body. Prints one JSON line.
 *
 *   tsx bench/request-bodies.ts [RECORDS] [ROUNDS]
 */

import type { DatasetLine } from '../functions/core/dataset';
import { IdRegistry } from '../functions/core/ids';
import { checkRequestBody } from '../functions/core/request-bodies';
import { buildRequests } from '../functions/core/requests';
import { defineWork } from '../functions/core/work';
import example from '../works/example';

const records = Number(process.argv[2] ?? 100_000);
const rounds = Number(process.argv[3] ?? 5);

const lines: DatasetLine[] = Array.from({ length: records }, (_, i) => ({
  kind: 'record',
  line: i + 1,
  end: 0,
  record: { id: `r${i}`, content: `A question of some length about topic ${i}, asked plainly. `.repeat(4) },
}));

async function* source(): AsyncGenerator<DatasetLine> {
  yield* lines;
}

async function build(validateRequests: boolean): Promise<number> {
  const work = defineWork({ ...example.settings, validateRequests, upload: example.upload });
  const started = performance.now();
  let built = 0;
  for await (const event of buildRequests(source(), work, new IdRegistry()))
    if (event.kind === 'request') built += 1;
  if (built !== records) throw new Error(`built ${built} of ${records}`);
  return (performance.now() - started) / 1000;
}

await build(true); // warm both paths and compile the schema once
await build(false);
const on: number[] = [];
const off: number[] = [];
for (let i = 0; i < rounds; i++) {
  off.push(await build(false));
  on.push(await build(true));
}
const best = (xs: number[]) => Math.min(...xs);

const body = JSON.parse((await buildOne()).json).body;
async function buildOne() {
  for await (const event of buildRequests(source(), example, new IdRegistry()))
    if (event.kind === 'request') return event.request;
  throw new Error('no request');
}
const checks = 200_000;
const started = performance.now();
for (let i = 0; i < checks; i++) checkRequestBody('/v1/chat/completions', body);
const perCheckUs = ((performance.now() - started) * 1000) / checks;

console.log(
  JSON.stringify({
    records,
    rounds,
    offRecordsPerSecond: Math.round(records / best(off)),
    onRecordsPerSecond: Math.round(records / best(on)),
    slowdownPercent: Number(((best(on) / best(off) - 1) * 100).toFixed(1)),
    checkMicroseconds: Number(perCheckUs.toFixed(2)),
  }),
);
