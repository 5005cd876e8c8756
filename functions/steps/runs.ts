import { InvariantError } from '../core/errors';
import { ConflictError, type RunStore } from '../core/ports';
import type { Run } from '../core/run';

/** Reads a run, or says it does not exist. */
export async function runOf(runs: RunStore, runId: string): Promise<Run> {
  const run = await runs.getRun(runId);
  if (!run) throw new InvariantError(`run ${runId} does not exist`);
  return run;
}

/**
 * Applies a change to the run as it stands, reading it again and re-applying the change when another
 * writer (a tick, a cancel) got there first. The change must be a function of the run it is given; a
 * change that returns the run itself writes nothing.
 */
export async function updateRun(
  runs: RunStore,
  runId: string,
  change: (run: Run) => Run,
  attempts = 8,
): Promise<Run> {
  for (let attempt = 1; ; attempt++) {
    const run = await runOf(runs, runId);
    const changed = change(run);
    if (changed === run) return run; // nothing to change: nothing written
    try {
      return await runs.putRun(changed);
    } catch (caught) {
      if (!(caught instanceof ConflictError) || attempt >= attempts) throw caught;
    }
  }
}
