import { Duration } from 'aws-cdk-lib';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import type { Construct } from 'constructs';

/** The Task states of a run, each backed by the handler of the same name. */
export const TASKS = [
  'Register',
  'Prepare',
  'Settle',
  'Tick',
  'Finalize',
  'CleanUp',
  'Notify',
  'MarkFailed',
  'ContinueRun',
] as const;

/** A Task state's name. */
export type TaskName = (typeof TASKS)[number];

/** The Wait state between ticks (its time comes from Tick). */
export const WAIT_STATE = 'Wait';

/** The Wait state between two calls of MarkFailed while it winds a failing run down. */
export const WIND_DOWN_WAIT_STATE = 'Wind down';

/** The inline Map state that runs the prepare lanes, each looping Prepare until its lane is done. */
export const PREPARE_MAP_STATE = 'Prepare lanes';

/** Errors that retrying cannot fix: bad input, a refused run, a bug. */
const FATAL = ['ConfigError', 'DatasetError', 'DuplicateDatasetError', 'CostLimitError', 'InvariantError'];

/**
 * How a Task state rides out Lambda throttling (`Lambda.TooManyRequestsException`, which CDK's
 * `retryOnServiceExceptions` does not cover): the Prepare Map starts up to 40 lanes at once, and on an
 * account with little free concurrency the lanes beyond it are throttled for minutes, which States.ALL's
 * few attempts (75 s) would turn into a failed run. Waits up to 2, 4, ... 256 s, then 5 min, 30 times
 * (about 2 hours at most, 1 hour on average under FULL jitter, which also spreads the lanes' retries
 * apart); a throttle that outlasts that is taken as the account's setting (a reserved concurrency of 0),
 * not a burst. A throttled invocation never ran, so retrying it cannot do anything twice. Each attempt
 * adds two or three events to the execution's history: a lane throttled throughout, under 100 of 25,000.
 */
const THROTTLE_RETRY: sfn.RetryProps = {
  errors: ['Lambda.TooManyRequestsException'],
  interval: Duration.seconds(2),
  backoffRate: 2,
  maxDelay: Duration.minutes(5),
  maxAttempts: 30,
  jitterStrategy: sfn.JitterType.FULL,
};

/** Task timeouts, a little above each function's own. */
export const TASK_TIMEOUTS: Record<TaskName, Duration> = {
  Register: Duration.minutes(11),
  Prepare: Duration.minutes(16),
  Settle: Duration.minutes(7),
  Tick: Duration.minutes(7),
  Finalize: Duration.minutes(3),
  CleanUp: Duration.minutes(6),
  Notify: Duration.minutes(1),
  MarkFailed: Duration.minutes(7),
  ContinueRun: Duration.minutes(1),
};

/**
 * The run's state machine: Register -> an inline Map over the run's lanes (`$.run.lanes`, at most
 * `prepareConcurrency` at once), each lane looping Prepare until it is done -> Settle (again until settled)
 * -> loop[Tick -> Wait(seconds Tick chose)] -> Finalize -> CleanUp -> Notify, any failure caught into
 * MarkFailed (looping through its own Wait while it winds the run down), and a hand-over to a new
 * execution before the history limit. JSONPath only, inline states (no Distributed Map, no ItemReader),
 * no callbacks, so that aws-local-stepfunctions runs the very same definition. State payloads carry ids
 * and counts, never records: the Map's results are discarded, so its output is its input.
 */
export function runDefinition(
  scope: Construct,
  functions: Readonly<Record<TaskName, lambda.IFunction>>,
  /** The work's `prepareConcurrency`: lanes prepared at once (the Map's MaxConcurrency). */
  prepareConcurrency: number,
): sfn.IChainable {
  /**
   * A Lambda task and its retriers, in the order Step Functions tries them (the first that names the error
   * is the one used): Lambda's transient service errors (CDK's), the FATAL errors never (unless `fatal` is
   * false), throttling for long (THROTTLE_RETRY), then anything else `attempts` times (States.ALL, last).
   */
  const task = (
    name: TaskName,
    payload: Record<string, unknown>,
    resultPath: string,
    retry: { readonly attempts: number; readonly fatal?: boolean },
  ) => {
    const state = new tasks.LambdaInvoke(scope, name, {
      lambdaFunction: functions[name],
      payload: sfn.TaskInput.fromObject(payload),
      payloadResponseOnly: true,
      resultPath,
      taskTimeout: sfn.Timeout.duration(TASK_TIMEOUTS[name]),
      retryOnServiceExceptions: true,
    });
    if (retry.fatal !== false) state.addRetry({ errors: FATAL, maxAttempts: 0 });
    state.addRetry(THROTTLE_RETRY);
    state.addRetry({
      errors: ['States.ALL'],
      maxAttempts: retry.attempts,
      interval: Duration.seconds(5),
      backoffRate: 2,
      maxDelay: Duration.minutes(2),
    });
    return state;
  };
  const runId = { 'runId.$': '$.run.runId' };

  const failed = new sfn.Fail(scope, 'Failed', {
    errorPath: '$.failure.error',
    causePath: '$.failure.cause',
  });
  // Every error of MarkFailed is retried: it is what winds a failing run down.
  const markFailed = task(
    'MarkFailed',
    { 'state.$': '$', 'executionName.$': '$$.Execution.Name' },
    '$.failure',
    { attempts: 3, fatal: false },
  );
  // MarkFailed cancels the run's batches and collects what OpenAI finished; it comes back while they cancel.
  markFailed.next(
    new sfn.Choice(scope, 'Wound down?')
      // A resume took the run over while this execution failed: this one ends, the run goes on there.
      .when(sfn.Condition.booleanEquals('$.failure.superseded', true), new sfn.Succeed(scope, 'Taken over'))
      .when(
        sfn.Condition.booleanEquals('$.failure.settled', false),
        new sfn.Wait(scope, WIND_DOWN_WAIT_STATE, {
          time: sfn.WaitTime.secondsPath('$.failure.waitSeconds'),
        }).next(markFailed),
      )
      .otherwise(failed),
  );

  const guard = (state: tasks.LambdaInvoke) => state.addCatch(markFailed, { resultPath: '$.error' });

  const register = guard(
    task('Register', { 'input.$': '$', 'executionName.$': '$$.Execution.Name' }, '$.run', { attempts: 3 }),
  );
  const tick = guard(
    task('Tick', { ...runId, 'executionName.$': '$$.Execution.Name' }, '$.tick', { attempts: 6 }),
  );
  const finalize = guard(task('Finalize', runId, '$.summary', { attempts: 3 }));
  const cleanUp = guard(task('CleanUp', runId, '$.cleanUp', { attempts: 3 }));
  const notify = guard(task('Notify', runId, '$.notify', { attempts: 3 }));
  const continueRun = guard(
    task(
      'ContinueRun',
      {
        ...runId,
        'stateMachineArn.$': '$$.StateMachine.Id',
        'executionName.$': '$$.Execution.Name',
      },
      '$.continued',
      { attempts: 3 },
    ),
  );
  const wait = new sfn.Wait(scope, WAIT_STATE, { time: sfn.WaitTime.secondsPath('$.tick.waitSeconds') });

  const finish = finalize.next(cleanUp).next(notify).next(new sfn.Succeed(scope, 'Done'));
  const loop = tick.next(
    new sfn.Choice(scope, 'Run done?')
      .when(sfn.Condition.booleanEquals('$.tick.done', true), finish)
      // A webhook started a new execution for the run (see steps/webhook.ts): this one ends here.
      .when(sfn.Condition.booleanEquals('$.tick.superseded', true), new sfn.Succeed(scope, 'Superseded'))
      .when(
        sfn.Condition.booleanEquals('$.tick.continueAsNew', true),
        continueRun.next(new sfn.Succeed(scope, 'Continued')),
      )
      .otherwise(wait.next(tick)),
  );
  // Settle, once every lane is done: drops the later uses of a custom_id, checks the cost, releases the parts.
  const settle = guard(task('Settle', runId, '$.settle', { attempts: 4 }));
  const settleLoop = settle.next(
    new sfn.Choice(scope, 'Settled?')
      .when(sfn.Condition.booleanEquals('$.settle.settled', true), loop)
      .otherwise(settle),
  );

  // A lane's own state is `{ runId, lane }`. A Catch cannot leave the Map's processor: a lane that fails
  // for good fails the Map, whose Catch hands MarkFailed the whole state, as every other task does.
  const prepare = task('Prepare', { 'runId.$': '$.runId', 'lane.$': '$.lane' }, '$.prepare', { attempts: 4 });
  const lane = prepare.next(
    new sfn.Choice(scope, 'Lane done?')
      .when(sfn.Condition.booleanEquals('$.prepare.done', true), new sfn.Succeed(scope, 'Lane prepared'))
      .otherwise(prepare),
  );
  const lanes = new sfn.Map(scope, PREPARE_MAP_STATE, {
    itemsPath: '$.run.lanes',
    itemSelector: { 'runId.$': '$.run.runId', 'lane.$': '$$.Map.Item.Value' },
    maxConcurrency: prepareConcurrency,
    resultPath: sfn.JsonPath.DISCARD,
  }).itemProcessor(lane);
  lanes.addCatch(markFailed, { resultPath: '$.error' });

  return register.next(
    new sfn.Choice(scope, 'Already prepared?')
      .when(sfn.Condition.booleanEquals('$.run.prepared', true), loop)
      .otherwise(lanes.next(settleLoop)),
  );
}
