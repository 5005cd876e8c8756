import type { z } from 'zod';
import { ConfigError } from './core/errors';
import { executionName } from './core/execution-names';
import { describeIssues } from './core/issues';
import {
  ContinueEventSchema,
  ExecutionInputSchema,
  MarkFailedEventSchema,
  PrepareEventSchema,
  RegisterEventSchema,
  RunEventSchema,
  TickEventSchema,
} from './events';
import type { StepDeps } from './steps/deps';
import { cleanUp, finalize, markFailed, notifyRun } from './steps/finish';
import { prepare } from './steps/prepare';
import { register } from './steps/register';
import { settle } from './steps/settle';
import { tick } from './steps/tick';

/** Starts a new execution of the run's state machine (Step Functions in the cloud). */
export type StartExecution = (
  stateMachineArn: string,
  name: string,
  input: Record<string, unknown>,
) => Promise<void>;

function parse<T extends z.ZodType>(schema: T, event: unknown, what: string): z.output<T> {
  const parsed = schema.safeParse(event);
  if (!parsed.success)
    throw new ConfigError(`Invalid ${what}: ${describeIssues(parsed.error, event).join('; ')}`);
  return parsed.data;
}

/**
 * The state machine's task handlers, one per state, each parsing its event at the edge and calling its
 * step. The same handlers run in Lambda and in the local runner.
 */
export function createHandlers<R>(deps: StepDeps<R>, startExecution: StartExecution) {
  const anyDeps = deps as StepDeps<unknown>;
  return {
    Register: async (event: unknown) => {
      const { input, executionName } = parse(RegisterEventSchema, event, 'Register event');
      const { dataset, resumeRunId, fromS3Event } = parse(ExecutionInputSchema, input, 'execution input');
      return register(anyDeps, {
        dataset,
        fromS3Event: fromS3Event === true,
        runId: resumeRunId ?? executionName,
        resume: resumeRunId !== undefined,
        execution: executionName,
      });
    },
    Prepare: async (event: unknown) => prepare(deps, parse(PrepareEventSchema, event, 'Prepare event')),
    Settle: async (event: unknown) => settle(deps, parse(RunEventSchema, event, 'Settle event')),
    Tick: async (event: unknown) => tick(deps, parse(TickEventSchema, event, 'Tick event')),
    Finalize: async (event: unknown) => finalize(deps, parse(RunEventSchema, event, 'Finalize event')),
    CleanUp: async (event: unknown) => cleanUp(deps, parse(RunEventSchema, event, 'CleanUp event')),
    Notify: async (event: unknown) => notifyRun(deps, parse(RunEventSchema, event, 'Notify event')),
    MarkFailed: async (event: unknown) => {
      const { state, executionName: failing } = parse(MarkFailedEventSchema, event, 'MarkFailed event');
      return markFailed(deps, {
        runId: state.run?.runId ?? null,
        error: state.error?.Error ?? 'Error',
        cause: state.error?.Cause ?? 'unknown',
        executionName: failing,
      });
    },
    ContinueRun: async (event: unknown) => {
      const { runId, dataset, stateMachineArn } = parse(ContinueEventSchema, event, 'ContinueRun event');
      const next = executionName(runId, 'next', deps.now());
      await startExecution(stateMachineArn, next, { resumeRunId: runId, ...(dataset ? { dataset } : {}) });
      deps.log('run continues in a new execution', { runId, execution: next });
      return { continuedAs: next };
    },
  };
}

/** The handlers by state name. */
export type Handlers = ReturnType<typeof createHandlers>;
