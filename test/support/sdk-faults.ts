import { ConditionalCheckFailedException } from '@aws-sdk/client-dynamodb';

/**
 * Faults injected into an AWS SDK client at the middleware level, inside the SDK's retry loop, so that
 * the client sees them as it would see S3's or DynamoDB's own: throttling and 500s (which the SDK
 * retries), and conditional-check races (which the store turns into a lost write). Nothing is mocked:
 * requests that are not faulted go to the real stand-in.
 */
export interface SdkFaultPlan {
  /** The share of requests answered 503 (S3 `SlowDown`, DynamoDB `ThrottlingException`). */
  readonly throttleRate?: number;
  /** The share of requests answered 500 InternalError. */
  readonly serverErrorRate?: number;
  /** The share of conditional writes that lose a race: ConditionalCheckFailedException, nothing written. */
  readonly raceRate?: number;
  /** Seed of the draws (faults at fixed intervals can line up with a retry loop's own period). */
  readonly seed: number;
  /** The name of a throttling error for this service. */
  readonly throttlingName: string;
}

/** Counts of what was injected. */
export interface SdkFaultCounts {
  requests: number;
  throttled: number;
  serverErrors: number;
  races: number;
}

function serviceError(name: string, status: number, message: string): Error {
  return Object.assign(new Error(message), {
    name,
    $fault: status >= 500 ? 'server' : 'client',
    $metadata: { httpStatusCode: status, attempts: 1, totalRetryDelay: 0 },
  });
}

export function injectSdkFaults(
  client: { middlewareStack: { add: (mw: never, options: Record<string, unknown>) => void } },
  plan: SdkFaultPlan,
): SdkFaultCounts {
  const counts: SdkFaultCounts = { requests: 0, throttled: 0, serverErrors: 0, races: 0 };
  // mulberry32: small, seeded, good enough to draw faults.
  let state = plan.seed >>> 0;
  const draw = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const middleware =
    (next: (args: unknown) => Promise<unknown>, context: { commandName?: string }) =>
    async (args: unknown) => {
      counts.requests += 1;
      if (draw() < (plan.throttleRate ?? 0)) {
        counts.throttled += 1;
        throw serviceError(plan.throttlingName, 503, 'injected: slow down');
      }
      if (draw() < (plan.serverErrorRate ?? 0)) {
        counts.serverErrors += 1;
        throw serviceError('InternalError', 500, 'injected: internal error');
      }
      const input = (args as { input?: { ConditionExpression?: string } }).input;
      if (context.commandName === 'PutItemCommand' && input?.ConditionExpression) {
        if (draw() < (plan.raceRate ?? 0)) {
          counts.races += 1;
          throw new ConditionalCheckFailedException({
            message: 'injected: the conditional request failed',
            $metadata: { httpStatusCode: 400 },
          });
        }
      }
      return next(args);
    };
  // 'deserialize' runs inside the retry middleware (finalizeRequest): the SDK retries what it should.
  client.middlewareStack.add(middleware as never, {
    step: 'deserialize',
    name: 'injectFaults',
    priority: 'low',
  });
  return counts;
}
