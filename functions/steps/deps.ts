import type { BatchApi, BlobStore, RunStore } from '../core/ports';
import type { Work } from '../core/work';

/** Where a run's end is announced (EventBridge and SNS in the cloud). */
export interface Notifier {
  notify(detailType: 'Run Completed' | 'Run Failed', detail: Record<string, unknown>): Promise<void>;
}

/** A structured log line: a message and fields, never record contents or secrets. */
export type Log = (message: string, fields?: Record<string, unknown>) => void;

/** A step's budget on AWS unless STEP_BUDGET_MS says otherwise: 4 minutes, under the functions' timeouts. */
export const DEFAULT_STEP_BUDGET_MS = 240_000;

/** What every step works with. */
export interface StepDeps<R = Record<string, unknown>> {
  readonly work: Work<R>;
  /** The work's bucket: datasets, requests, outputs, errors, summaries. */
  readonly bucket: string;
  readonly blobs: BlobStore;
  readonly runs: RunStore;
  /** The OpenAI API, built on first use (the key is fetched then). */
  readonly openai: () => Promise<BatchApi>;
  readonly notifier: Notifier;
  readonly now: () => number;
  /** How long a step works before it checkpoints and returns (well under the Lambda timeout). */
  readonly budgetMs: number;
  /**
   * How long a Prepare call may inflate a gzip object, which it does whole, in one call (see
   * steps/prepare.ts INFLATE_BUDGETS): by default INFLATE_BUDGETS step budgets, which the Prepare
   * function's timeout leaves room for; Infinity where no timeout stops a call (a local run).
   */
  readonly inflateMs?: number;
  /** Ticks an execution runs before it hands the run to a new execution (the history limit). */
  readonly maxTicksPerExecution: number;
  /**
   * How long a create whose answer was lost is looked for, by metadata, before its part is sent again
   * (a new attempt). Longer than OpenAI takes to list a new batch.
   */
  readonly lostCreateGraceMs: number;
  readonly log: Log;
  /**
   * Records a metric (CloudWatch, through the log, in the cloud): the longest a batch or the run has not
   * moved, and 1 while OpenAI refuses the run's key or quota (a person must act).
   */
  readonly metric: (name: 'MinutesWithoutProgress' | 'OpenAIAccessRefused', value: number) => void;
}
