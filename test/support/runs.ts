import { zeroCounts } from '../../functions/core/accounting';
import { newPart, type Part, type Run } from '../../functions/core/run';
import { SHARD_PART_SPAN } from '../../functions/core/shards';

/** A run record as Register writes it, for store and step tests. */
export const runFixture = (runId: string, datasetHash = `hash-${runId}`, createdAt = Date.now()): Run => ({
  runId,
  work: 'w',
  bucket: 'b',
  dataset: {
    key: 'k',
    objects: 1,
    bytes: 1,
    shards: 1,
    planWidth: 200,
    objectWidth: 0,
    partitions: 1,
    lanes: 1,
  },
  datasetHash,
  status: 'preparing',
  createdAt,
  updatedAt: createdAt,
  prepared: false,
  nextPart: SHARD_PART_SPAN,
  settle: null,
  counts: zeroCounts(),
  estimatedTokens: 0,
  estimatedCostUsd: null,
  ticks: 0,
  waitSeconds: 0,
  error: null,
  cancelRequested: false,
  execution: runId,
  waiting: null,
  wakePending: false,
  blocked: null,
  executionSince: null,
  failing: null,
  version: 0,
});

/** A new pending part 0 of one request, for store and step tests; `fields` change what it holds. */
export const partFixture = (
  fields: Partial<
    Pick<Part, 'part' | 'generation' | 'model' | 'requests' | 'bytes' | 'estimatedTokens'>
  > = {},
): Part =>
  newPart({
    part: 0,
    generation: 0,
    model: 'gpt-4o-mini',
    requests: 1,
    bytes: 1,
    estimatedTokens: 1,
    ...fields,
  });
