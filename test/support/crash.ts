import type { BatchApi, BlobStore, RunStore } from '../../functions/core/ports';
import type { Handlers } from '../../functions/handlers';
import type { LocalEnvironment, LocalRunOptions } from '../../local/runner';
import type { ManualTime } from './manual-time';

/** The calls that change something outside the handler: where a crash can leave work half done. */
const SIDE_EFFECTS = {
  blobs: ['write', 'delete', 'markIntermediate'],
  runs: [
    'createRun',
    'putRun',
    'settleClaim',
    'addParts',
    'putPart',
    'recordBatch',
    'recordEvent',
    'forgetEvent',
  ],
  openai: ['uploadFile', 'createBatch', 'cancelBatch', 'deleteFile'],
} as const;

/** What a crashed handler throws: no error name the state machine treats as fatal, so it retries. */
export class Crash extends Error {
  override readonly name = 'Crash';
}

/** How the handler invocation that retries a crashed one sees time: it runs out of its budget sooner. */
export interface RetryClock {
  /** How far the clock moves at each reading during the retry (ms). */
  readonly stepMs: number;
  /** How far ahead of the real clock it may get (ms): below OpenAI's batch-list look-back of 60 s. */
  readonly maxAheadMs: number;
}

/**
 * Makes a handler die right after its n-th side effect of a run: the effect happened, what the handler
 * meant to do next did not. Counts every side effect (by state) on the way, so that a first clean run
 * tells how many crash points a run has. Only the ports are wrapped: the stand-ins behind them are real.
 *
 * With a {@link RetryClock}, the invocation that retries the crashed one reads a clock that runs fast, so
 * it stops at another place than the crashed one did (a Prepare step reads fewer lines, a Tick does less):
 * what the crashed attempt wrote beyond that must not survive beside what the next steps write.
 */
export class CrashPlan {
  /** Side effects so far, as `State: port.method`. */
  readonly effects: string[] = [];
  /** The crash that happened, if any. */
  crashed: string | null = null;
  /** The state whose handler is running (set from the execution's events). */
  state = '';
  /** The states whose retry ran on the fast clock. */
  readonly fastRetries: string[] = [];
  private retrying = false;
  private ahead = 0;

  constructor(
    private readonly crashAfter: number | null,
    private readonly retryClock: RetryClock | null = null,
  ) {}

  /**
   * The options of a crash run on manual time: the ports wrapped, the state followed, and the steps'
   * clock this plan's (see {@link clock}).
   */
  runOptions(time: ManualTime, target: LocalEnvironment, options: LocalRunOptions): LocalRunOptions {
    const timed = time.runOptions(target, {
      ...options,
      wrap: this.ports,
      onState: (state) => {
        this.state = state;
      },
    });
    return { ...timed, now: this.clock(timed.now) };
  }

  /** The steps' clock over `base`: the same, except during the retry of the crashed invocation (see RetryClock). */
  clock(base: () => number = Date.now): () => number {
    return () => {
      if (!this.retrying || !this.retryClock) return base();
      this.ahead = Math.min(this.retryClock.maxAheadMs, this.ahead + this.retryClock.stepMs);
      return base() + this.ahead;
    };
  }

  /** Marks the first handler invocation after the crash (the state machine's retry of it) while it runs. */
  private handlers(handlers: Handlers): Handlers {
    const wrapped: Record<string, (event: unknown) => Promise<unknown>> = {};
    for (const [name, handler] of Object.entries(handlers) as [
      string,
      (event: unknown) => Promise<unknown>,
    ][]) {
      wrapped[name] = async (event) => {
        const retry = this.crashed !== null && this.fastRetries.length === 0 && this.retryClock !== null;
        if (retry) {
          this.fastRetries.push(name);
          this.retrying = true;
          this.ahead = 0;
        }
        try {
          return await handler(event);
        } finally {
          if (retry) this.retrying = false;
        }
      };
    }
    return wrapped as Handlers;
  }

  private after(effect: string): void {
    this.effects.push(`${this.state}: ${effect}`);
    if (this.effects.length === this.crashAfter) {
      this.crashed = this.effects.at(-1) ?? effect;
      throw new Crash(`crash point ${this.crashAfter}: after ${this.crashed}`);
    }
  }

  private wrap<T extends object>(target: T, port: keyof typeof SIDE_EFFECTS): T {
    const effects = new Set<string>(SIDE_EFFECTS[port]);
    return new Proxy(target, {
      get: (object, property, receiver) => {
        const value = Reflect.get(object, property, receiver) as unknown;
        if (typeof value !== 'function' || !effects.has(String(property))) return value;
        return async (...args: unknown[]) => {
          const result = await (value as (...a: unknown[]) => Promise<unknown>).apply(object, args);
          this.after(`${port}.${String(property)}`);
          return result;
        };
      },
    });
  }

  /** The ports of a local run, wrapped (LocalRunOptions.wrap). */
  readonly ports = {
    blobs: (store: BlobStore) => this.wrap(store, 'blobs'),
    runs: (store: RunStore) => this.wrap(store, 'runs'),
    openai: (api: BatchApi) => this.wrap(api, 'openai'),
    handlers: (handlers: Handlers) => this.handlers(handlers),
  };
}
