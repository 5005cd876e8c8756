import type { BlobStore, IntermediateMark } from '../core/ports';
import { runKeys } from '../core/run';
import type { StepDeps } from './deps';

/** Where a run's intermediate objects are: the keys `isIntermediateKey` names. */
export function intermediatePrefixes(runId: string): string[] {
  const { prefix } = runKeys(runId);
  return [`${prefix}requests/`, `${prefix}state/`];
}

/** Objects marked at once: a run of 2,000 parts has some 4,000, and MarkFailed has three minutes. */
const MARKS_IN_FLIGHT = 16;

/**
 * Marks every intermediate object of a run as ended, so that the lifecycle rule expires what CleanUp did
 * not delete (`cleanUp: false`, or a run that failed or was cancelled). Called when a run ends: completed
 * or cancelled (Finalize), failed (MarkFailed). Safe to call again; resolves with the objects marked.
 */
export async function markIntermediatesEnded(
  deps: Pick<StepDeps, 'blobs' | 'log'>,
  runId: string,
): Promise<number> {
  const marked = await markIntermediates(deps.blobs, runId, 'ended');
  deps.log('intermediate objects marked ended', { runId, objects: marked });
  return marked;
}

/**
 * Marks every intermediate object of a run as running again: a run that goes on after it ended (resumed)
 * calls this before it needs them, so that none expires under it.
 */
export async function markIntermediatesRunning(
  deps: Pick<StepDeps, 'blobs' | 'log'>,
  runId: string,
): Promise<number> {
  const marked = await markIntermediates(deps.blobs, runId, 'running');
  deps.log('intermediate objects marked running', { runId, objects: marked });
  return marked;
}

async function markIntermediates(blobs: BlobStore, runId: string, mark: IntermediateMark): Promise<number> {
  const inFlight = new Set<Promise<void>>();
  let marked = 0;
  let failed: { error: unknown } | null = null;
  for (const prefix of intermediatePrefixes(runId)) {
    for await (const object of blobs.list(prefix)) {
      if (failed) break;
      const marking: Promise<void> = blobs
        .markIntermediate(object.key, mark)
        .then(
          (found) => {
            if (found) marked += 1;
          },
          (error: unknown) => {
            failed ??= { error };
          },
        )
        .finally(() => inFlight.delete(marking));
      inFlight.add(marking);
      if (inFlight.size >= MARKS_IN_FLIGHT) await Promise.race(inFlight);
    }
  }
  await Promise.all(inFlight);
  if (failed) throw (failed as { error: unknown }).error;
  return marked;
}
