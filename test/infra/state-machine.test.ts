import { Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { beforeAll, describe, expect, it } from 'vitest';
import { DatasetError } from '../../functions/core/errors';
import { defineWork } from '../../functions/core/work';
import type { Handlers } from '../../functions/handlers';
import { OpenAIBatchWork } from '../../infra/openai-batch-work';
import { PREPARE_MAP_STATE, TASK_TIMEOUTS, TASKS } from '../../infra/state-machine';
import { type LoadedWork, loadWork } from '../../infra/works';
import { type Definition, synthesizeDefinition, unbundledApp } from '../../local/definition';
import { executeLocally } from '../../local/execute';

/**
 * The run's state machine as synthesized: Register -> Map over the run's lanes (each looping Prepare) ->
 * Settle loop -> Tick loop, and the same definition run by aws-local-stepfunctions with stub handlers.
 */

const fixture = new URL('../fixtures/works/chat.ts', import.meta.url).pathname;
let loaded: LoadedWork;

/** The definition of the fixture work with `prepareConcurrency` set. */
async function definitionWith(prepareConcurrency: number): Promise<Definition> {
  const work = { ...loaded.work, settings: { ...loaded.work.settings, prepareConcurrency } };
  return (await synthesizeDefinition({ ...loaded, work })).definition;
}

beforeAll(async () => {
  loaded = await loadWork(fixture);
}, 60_000);

/** A retrier as the Amazon States Language spells it. */
type Retrier = {
  ErrorEquals: string[];
  IntervalSeconds?: number;
  MaxAttempts?: number;
  BackoffRate?: number;
  MaxDelaySeconds?: number;
  JitterStrategy?: string;
};

type State = Record<string, unknown> & {
  Type?: string;
  Next?: string;
  Resource?: string;
  Catch?: { ErrorEquals: string[]; Next: string; ResultPath?: string }[];
  Retry?: Retrier[];
  Choices?: { Variable: string; BooleanEquals: boolean; Next: string }[];
  Default?: string;
  Parameters?: Record<string, unknown>;
};

/** The error Step Functions reports when Lambda throttles an invocation. */
const THROTTLED = 'Lambda.TooManyRequestsException';

/** Every Task state that invokes a Lambda function, by name, the Map's item processor included. */
function lambdaTasks(states: Definition): Record<string, State> {
  const found: Record<string, State> = {};
  for (const [name, state] of Object.entries(states.States) as [string, State][]) {
    if (state.Type === 'Task' && /:lambda:/.test(state.Resource ?? '')) found[name] = state;
    const processor = (state.ItemProcessor ?? state.Iterator) as Definition | undefined;
    if (processor) Object.assign(found, lambdaTasks(processor));
  }
  return found;
}

/** The longest wait before each retry of a retrier (with FULL jitter, the wait is random up to it). */
function retryWaits(retrier: Retrier): number[] {
  const { IntervalSeconds = 1, BackoffRate = 2, MaxAttempts = 3, MaxDelaySeconds = Infinity } = retrier;
  return Array.from({ length: MaxAttempts }, (_, attempt) =>
    Math.min(IntervalSeconds * BackoffRate ** attempt, MaxDelaySeconds),
  );
}

describe('the run state machine', () => {
  let definition: Definition;
  let map: State;
  let lane: Definition;
  beforeAll(async () => {
    definition = await definitionWith(7);
    map = definition.States[PREPARE_MAP_STATE] as State;
    lane = (map.ItemProcessor ?? map.Iterator) as Definition;
  }, 60_000);

  it('goes Register -> the prepare lanes unless the run is prepared, then Settle, then Tick', () => {
    expect(definition.StartAt).toBe('Register');
    expect(definition.States.Register?.Next).toBe('Already prepared?');
    const already = definition.States['Already prepared?'] as State;
    expect(already.Choices).toEqual([{ Variable: '$.run.prepared', BooleanEquals: true, Next: 'Tick' }]);
    expect(already.Default).toBe(PREPARE_MAP_STATE);
    expect(map.Next).toBe('Settle');
    expect(definition.States.Settle?.Next).toBe('Settled?');
    const settled = definition.States['Settled?'] as State;
    expect(settled.Choices).toEqual([{ Variable: '$.settle.settled', BooleanEquals: true, Next: 'Tick' }]);
    expect(settled.Default).toBe('Settle'); // again until settled
    expect(definition.States.Settle?.Parameters).toEqual({ 'runId.$': '$.run.runId' });
    expect(definition.States.Settle?.ResultPath).toBe('$.settle');
  });

  it('maps over the run lanes inline, at most prepareConcurrency at once, discarding the results', () => {
    expect(map).toMatchObject({
      Type: 'Map',
      ItemsPath: '$.run.lanes',
      MaxConcurrency: 7,
      ResultPath: null,
    });
    const selector = (map.ItemSelector ?? map.Parameters) as Record<string, unknown>;
    expect(selector).toEqual({ 'runId.$': '$.run.runId', 'lane.$': '$$.Map.Item.Value' });
    expect(JSON.stringify(map)).not.toMatch(/ItemReader|DISTRIBUTED|ResultWriter/);
    const processor = map.ItemProcessor as { ProcessorConfig?: { Mode?: string } } | undefined;
    if (processor?.ProcessorConfig) expect(processor.ProcessorConfig.Mode).toBe('INLINE');
  });

  it('loops Prepare in each lane until the lane is done, retrying it but not on fatal errors', () => {
    expect(lane.StartAt).toBe('Prepare');
    const prepare = lane.States.Prepare as State;
    expect(prepare.Parameters).toEqual({ 'runId.$': '$.runId', 'lane.$': '$.lane' });
    expect(prepare.ResultPath).toBe('$.prepare');
    expect(prepare.TimeoutSeconds).toBe(TASK_TIMEOUTS.Prepare.toSeconds());
    const retries = prepare.Retry ?? [];
    expect(retries.find((r) => r.ErrorEquals.includes('DatasetError'))?.MaxAttempts).toBe(0);
    expect(retries.at(-1)).toMatchObject({ ErrorEquals: ['States.ALL'], MaxAttempts: 4 });
    expect(prepare.Catch).toBeUndefined(); // a Catch cannot leave the Map: the Map's catches
    const done = lane.States[prepare.Next ?? ''] as State;
    expect(done.Choices).toEqual([
      { Variable: '$.prepare.done', BooleanEquals: true, Next: expect.any(String) },
    ]);
    expect(done.Default).toBe('Prepare');
    expect(lane.States[done.Choices?.[0]?.Next ?? '']?.Type).toBe('Succeed');
  });

  it('hands MarkFailed the whole state when a lane fails for good, as every other task does', () => {
    expect(map.Catch).toEqual([{ ErrorEquals: ['States.ALL'], ResultPath: '$.error', Next: 'MarkFailed' }]);
    for (const name of TASKS.filter((t) => t !== 'Prepare' && t !== 'MarkFailed')) {
      const task = definition.States[name] as State;
      expect(task.Catch, name).toEqual([
        { ErrorEquals: ['States.ALL'], ResultPath: '$.error', Next: 'MarkFailed' },
      ]);
      expect(task.TimeoutSeconds, name).toBe(TASK_TIMEOUTS[name].toSeconds());
    }
  });

  it('rides out Lambda throttling on every Lambda task for about an hour, with jitter, before States.ALL', () => {
    const tasks = lambdaTasks(definition);
    expect(Object.keys(tasks).sort()).toEqual([...TASKS].sort()); // the Map's Prepare too
    for (const [name, task] of Object.entries(tasks)) {
      const retries = task.Retry ?? [];
      // Step Functions retries with the first retrier that names the error (States.ALL names every one).
      const throttled = retries.find(
        (r) => r.ErrorEquals.includes(THROTTLED) || r.ErrorEquals.includes('States.ALL'),
      );
      expect(throttled?.ErrorEquals, name).toEqual([THROTTLED]);
      expect(throttled?.JitterStrategy, name).toBe('FULL');
      expect(throttled?.MaxDelaySeconds, name).toBeLessThanOrEqual(300);
      const waits = retryWaits(throttled as Retrier);
      // FULL jitter waits a random time up to each backoff: half of it on average.
      const expectedSeconds = waits.reduce((sum, wait) => sum + wait, 0) / 2;
      expect(expectedSeconds, name).toBeGreaterThanOrEqual(45 * 60);
      expect(expectedSeconds, name).toBeLessThanOrEqual(2 * 3600); // bounded: a throttle that never ends fails the run
      expect(retries.at(-1)?.ErrorEquals, name).toEqual(['States.ALL']); // States.ALL must come last
    }
  });

  it("takes the Map's concurrency from the work's prepareConcurrency", async () => {
    const fromWork = (prepareConcurrency?: number) => {
      const app = unbundledApp();
      const stack = new Stack(app, 'Test');
      const work = defineWork({
        name: 'unit',
        model: 'gpt-4o-mini',
        ...(prepareConcurrency ? { prepareConcurrency } : {}),
      });
      new OpenAIBatchWork(stack, 'Work', { work, workModule: fixture });
      const [machine] = Object.values(
        Template.fromStack(stack).findResources('AWS::StepFunctions::StateMachine'),
      );
      return JSON.stringify(machine?.Properties.DefinitionString);
    };
    expect(fromWork()).toContain('\\"MaxConcurrency\\":4'); // the setting's default
    expect(fromWork(40)).toContain('\\"MaxConcurrency\\":40');
  });
});

/** Stub handlers for a local execution: each records its events; Prepare and Settle answer as told. */
function stubs(options: {
  lanes: number[];
  /** Prepare calls a lane takes before it is done. */
  stepsPerLane?: number;
  settleCalls?: number;
  prepare?: (event: { runId: string; lane: number }) => Promise<void>;
}) {
  const events: Record<string, unknown[]> = {};
  const record = (name: string, event: unknown) => {
    events[name] ??= [];
    events[name].push(event);
  };
  /** A handler that records its event and answers `answer`. */
  const answering =
    (name: string, answer: unknown) =>
    async (event: unknown): Promise<unknown> => {
      record(name, event);
      return answer;
    };
  const laneSteps = new Map<number, number>();
  let settles = 0;
  const handlers = {
    Register: async (event: unknown) => {
      record('Register', event);
      return { runId: 'run-1', prepared: false, objects: 3, lanes: options.lanes };
    },
    Prepare: async (event: unknown) => {
      record('Prepare', event);
      const e = event as { runId: string; lane: number };
      await options.prepare?.(e);
      const steps = (laneSteps.get(e.lane) ?? 0) + 1;
      laneSteps.set(e.lane, steps);
      return { done: steps >= (options.stepsPerLane ?? 1) };
    },
    Settle: async (event: unknown) => {
      record('Settle', event);
      settles += 1;
      return { settled: settles >= (options.settleCalls ?? 1) };
    },
    Tick: async (event: unknown) => {
      record('Tick', event);
      return { done: true, waitSeconds: 0, continueAsNew: false, superseded: false };
    },
    Finalize: answering('Finalize', { records: 3 }),
    CleanUp: answering('CleanUp', {}),
    Notify: answering('Notify', {}),
    MarkFailed: async (event: unknown) => {
      record('MarkFailed', event);
      return { settled: true, superseded: false, waitSeconds: 0, error: 'DatasetError', cause: 'bad' };
    },
    ContinueRun: answering('ContinueRun', {}),
  };
  return { handlers: handlers as unknown as Handlers, events };
}

/** Lets every other ready piece of work run (no wall-clock wait). */
const yieldTurns = async (turns: number) => {
  for (let i = 0; i < turns; i++) await new Promise((resolve) => setImmediate(resolve));
};

describe('the state machine run locally by aws-local-stepfunctions', () => {
  it('runs Prepare for lanes 0, 1 and 2, each until done, then Settle until settled, then Tick', async () => {
    const { handlers, events } = stubs({ lanes: [0, 1, 2], stepsPerLane: 2, settleCalls: 2 });
    const outputs: { state: string; output: unknown }[] = [];
    const output = await executeLocally(
      await definitionWith(4),
      handlers,
      { dataset: 'inputs/x.jsonl' },
      { executionName: 'run-1', onOutput: (state, out) => outputs.push({ state, output: out }) },
    );
    const prepared = (events.Prepare ?? []) as { runId: string; lane: number }[];
    expect(prepared).toHaveLength(6);
    expect([...prepared].sort((a, b) => a.lane - b.lane)).toEqual([
      { runId: 'run-1', lane: 0 },
      { runId: 'run-1', lane: 0 },
      { runId: 'run-1', lane: 1 },
      { runId: 'run-1', lane: 1 },
      { runId: 'run-1', lane: 2 },
      { runId: 'run-1', lane: 2 },
    ]);
    expect(events.Settle).toEqual([{ runId: 'run-1' }, { runId: 'run-1' }]);
    expect(events.Tick).toHaveLength(1);
    expect(events.MarkFailed).toBeUndefined();
    expect(output).toMatchObject({ run: { runId: 'run-1', lanes: [0, 1, 2] } });
    // The Map's output is its input: no lane results grow the payload.
    const mapped = outputs.find((o) => o.state === PREPARE_MAP_STATE)?.output as Record<string, unknown>;
    expect(Object.keys(mapped).sort()).toEqual(['dataset', 'run']);
  });

  it('prepares at most prepareConcurrency lanes at once', async () => {
    const active = new Set<number>();
    let most = 0;
    const { handlers, events } = stubs({
      lanes: [0, 1, 2, 3, 4],
      stepsPerLane: 3,
      prepare: async ({ lane }) => {
        active.add(lane);
        most = Math.max(most, active.size);
        await yieldTurns(20);
      },
    });
    // A lane is active from its first Prepare to the one that says it is done.
    const wrapped = {
      ...handlers,
      Prepare: async (event: unknown) => {
        const answer = (await handlers.Prepare(event)) as { done: boolean };
        if (answer.done) active.delete((event as { lane: number }).lane);
        return answer;
      },
    } as Handlers;
    await executeLocally(
      await definitionWith(2),
      wrapped,
      { dataset: 'inputs/x.jsonl' },
      { executionName: 'run-1' },
    );
    expect(most).toBe(2);
    expect(events.Prepare).toHaveLength(15);
  });

  it('waits out a lane whose Prepare Lambda throttles, where States.ALL would have failed the run', async () => {
    let throttles = 0;
    const { handlers, events } = stubs({
      lanes: [0, 1, 2],
      prepare: async ({ lane }) => {
        // Past States.ALL's 4 attempts: Lambda refuses lane 2 while the other lanes hold the concurrency.
        if (lane === 2 && throttles < 12) {
          throttles += 1;
          throw Object.assign(new Error('Rate Exceeded.'), { name: 'Lambda.TooManyRequestsException' });
        }
      },
    });
    await executeLocally(
      await definitionWith(4),
      handlers,
      { dataset: 'inputs/x.jsonl' },
      { executionName: 'run-1' },
    );
    expect(throttles).toBe(12);
    expect(events.MarkFailed).toBeUndefined();
    expect(events.Tick).toHaveLength(1);
  });

  it('fails a run whose lane fails for good into MarkFailed, with the whole state and the error', async () => {
    const { handlers, events } = stubs({
      lanes: [0, 1, 2],
      prepare: async ({ lane }) => {
        if (lane === 1) throw new DatasetError('line 3 is not JSON');
      },
    });
    const failed = await executeLocally(
      await definitionWith(4),
      handlers,
      { dataset: 'inputs/x.jsonl' },
      { executionName: 'run-1' },
    ).catch((caught: unknown) => caught);
    expect(failed).toBeInstanceOf(Error);
    // A fatal error is not retried: lane 1 was called once.
    expect(((events.Prepare ?? []) as { lane: number }[]).filter((e) => e.lane === 1)).toHaveLength(1);
    expect(events.Settle).toBeUndefined();
    expect(events.MarkFailed).toEqual([
      {
        state: expect.objectContaining({
          dataset: 'inputs/x.jsonl',
          run: expect.objectContaining({ runId: 'run-1' }),
          error: expect.objectContaining({ Error: 'DatasetError', Cause: expect.stringContaining('line 3') }),
        }),
        executionName: 'run-1',
      },
    ]);
  });
});
