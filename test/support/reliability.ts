/** What the reliability tests record for the reliability page (test/reliability/render.ts). */

/** Where the tests write their rows. */
export const RELIABILITY_DIR = '.local/reliability';

/** One crash point: the run whose handler died right after this side effect, and how it ended. */
export interface CrashRow {
  crashPoint: number;
  after: string;
  completed: boolean;
  outputs: number;
  missing: number;
  duplicated: number;
  partsPaidTwice: number;
}

/** Faults injected into one run, by side, and how it ended. */
export interface FaultsRecord {
  records: number;
  outputs: number;
  partsPaidTwice: number;
  s3: Record<string, number>;
  dynamodb: Record<string, number>;
  openai: Record<string, number>;
}
