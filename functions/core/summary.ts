import { type Counts, type Reconciliation, reconcile } from './accounting';
import { costOf } from './prices';
import type { Part, Run, TokenTotals } from './run';

/** What `runs/<runId>/summary.json` holds. */
export interface RunSummary {
  readonly runId: string;
  readonly work: string;
  readonly dataset: { readonly bucket: string; readonly key: string; readonly objects: number };
  readonly status: string;
  readonly startedAt: string;
  readonly finishedAt: string;
  readonly durationSeconds: number;
  readonly counts: Counts;
  /** input (records, plus extra requests of records that fanned out) = outputs + errors + skipped. */
  readonly reconciliation: Reconciliation;
  readonly usage: TokenTotals;
  readonly cost: {
    /** Estimated before anything was sent (input tokens estimated, output tokens as the work expects). */
    readonly estimatedUsd: number | null;
    /** From the usage OpenAI reported, at batch prices; null for a model without a known price. */
    readonly actualUsd: number | null;
  };
  readonly batches: {
    readonly parts: number;
    /** Parts made of leftovers sent again (expired, transiently failed or unanswered requests). */
    readonly resubmissionParts: number;
    /** Batches created on OpenAI, counting retries after the enqueued-token limit. */
    readonly created: number;
    readonly throttled: number;
  };
}

/** Counts of the whole run: prepare's, plus what collecting each part settled. */
export function runCounts(run: Run, parts: readonly Part[]): Counts {
  const counts = { ...run.counts, parts: parts.length };
  for (const part of parts) {
    counts.outputs += part.outputs;
    counts.errors += part.errors;
    counts.skippedOutputs += part.skippedOutputs;
    counts.settledRequests += part.outputs + part.errors + part.skippedOutputs;
  }
  return counts;
}

/** Tokens per model, summed over parts. */
function tokensByModel(
  parts: readonly Part[],
): { model: string; inputTokens: number; outputTokens: number }[] {
  const byModel = new Map<string, { model: string; inputTokens: number; outputTokens: number }>();
  for (const part of parts) {
    const entry = byModel.get(part.model) ?? { model: part.model, inputTokens: 0, outputTokens: 0 };
    entry.inputTokens += part.usage.inputTokens;
    entry.outputTokens += part.usage.outputTokens;
    byModel.set(part.model, entry);
  }
  return [...byModel.values()];
}

/** The run's summary, from its record and its parts. */
export function summarize(run: Run, parts: readonly Part[], now: number): RunSummary {
  const counts = runCounts(run, parts);
  const usage = parts.reduce<TokenTotals>(
    (sum, p) => ({
      inputTokens: sum.inputTokens + p.usage.inputTokens,
      outputTokens: sum.outputTokens + p.usage.outputTokens,
      cachedTokens: sum.cachedTokens + p.usage.cachedTokens,
    }),
    { inputTokens: 0, outputTokens: 0, cachedTokens: 0 },
  );
  return {
    runId: run.runId,
    work: run.work,
    dataset: { bucket: run.bucket, key: run.dataset.key, objects: run.dataset.objects },
    status: run.status,
    startedAt: new Date(run.createdAt).toISOString(),
    finishedAt: new Date(now).toISOString(),
    durationSeconds: Math.round((now - run.createdAt) / 1000),
    counts,
    reconciliation: reconcile(counts),
    usage,
    cost: { estimatedUsd: run.estimatedCostUsd, actualUsd: costOf(tokensByModel(parts)) },
    batches: {
      parts: parts.length,
      resubmissionParts: parts.filter((p) => p.generation > 0).length,
      created: parts.reduce((n, p) => n + p.attempt, 0),
      throttled: parts.reduce((n, p) => n + p.throttles, 0),
    },
  };
}
