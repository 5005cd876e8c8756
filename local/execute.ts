import { StateMachine } from 'aws-local-stepfunctions';
import type { Handlers } from '../functions/handlers';
import { TASKS, WAIT_STATE, WIND_DOWN_WAIT_STATE } from '../infra/state-machine';
import type { Definition } from './definition';

/** How a local execution runs. */
export interface ExecuteOptions {
  readonly executionName: string;
  /** Milliseconds each Wait between ticks lasts; unset waits as long as Tick asked (the real OpenAI). */
  readonly waitMs?: number;
  /** Milliseconds before a state is retried. @default 10 */
  readonly retryMs?: number;
  /** Called with each state entered, for progress. */
  readonly onState?: (state: string) => void;
  /** Called with each state's output as it exits (to check what the state carries). */
  readonly onOutput?: (state: string, output: unknown) => void;
  /** Stops the execution (the local StopExecution); it then resolves with null. */
  readonly signal?: AbortSignal;
}

/** The local ARN of the state machine, as the definition sees it in `$$.StateMachine.Id`. */
export const LOCAL_STATE_MACHINE_ARN = 'arn:aws:states:us-east-1:123456789012:stateMachine:local';

/** The definitions (as JSON text) already checked against the Amazon States Language. */
const checked = new Set<string>();

/**
 * A state machine for the definition, checked against the Amazon States Language (asl-validator, as
 * aws-local-stepfunctions checks it) the first time this process runs that definition only. The check
 * compiles its JSON schema anew each time, about 0.3 s of CPU, and a crash walk runs hundreds of
 * executions of one definition. (A Map iteration's machine is not checked again by the library.)
 */
function machineOf(definition: Definition): StateMachine {
  const text = JSON.stringify(definition);
  const noValidate = checked.has(text);
  // Throws on a definition that breaks the language, which is then not remembered.
  const machine = new StateMachine(definition as never, {
    validationOptions: { checkArn: false, noValidate },
  });
  checked.add(text);
  return machine;
}

/**
 * Runs the synthesized definition with aws-local-stepfunctions, every Task state bound to its handler.
 * Resolves with the execution's output, or null when stopped through `signal`; rejects with the error
 * of a failed execution.
 */
export async function executeLocally(
  definition: Definition,
  handlers: Handlers,
  input: Record<string, unknown>,
  options: ExecuteOptions,
): Promise<unknown> {
  const machine = machineOf(definition);
  const local = Object.fromEntries(
    TASKS.map((name) => [name, async (event: unknown) => (await handlers[name](event)) as never]),
  );
  const retry = Object.fromEntries(TASKS.map((name) => [name, options.retryMs ?? 10]));
  const execution = machine.run(input as never, {
    overrides: {
      taskResourceLocalHandlers: local,
      ...(options.waitMs === undefined
        ? {}
        : { waitTimeOverrides: { [WAIT_STATE]: options.waitMs, [WIND_DOWN_WAIT_STATE]: options.waitMs } }),
      retryIntervalOverrides: retry,
    },
    noThrowOnAbort: true,
    context: {
      Execution: {
        Id: `arn:aws:states:us-east-1:123456789012:execution:local:${options.executionName}`,
        Name: options.executionName,
        Input: input,
        StartTime: new Date().toISOString(),
        RoleArn: 'arn:aws:iam::123456789012:role/local',
      },
      StateMachine: { Id: LOCAL_STATE_MACHINE_ARN, Name: 'local' },
    } as never,
  });
  if (options.onState || options.onOutput) {
    void (async () => {
      for await (const event of execution.eventLogs) {
        if (event.type === 'StateEntered') options.onState?.(event.state.name);
        if (event.type === 'StateExited') options.onOutput?.(event.state.name, event.state.output);
      }
    })();
  }
  options.signal?.addEventListener('abort', () => execution.abort(), { once: true });
  return execution.result;
}
