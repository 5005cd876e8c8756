import type { BatchApi, BlobStore, RunStore } from '../../functions/core/ports';

/** The calls that change something outside the handler: where a crash can leave work half done. */
const SIDE_EFFECTS = {
  blobs: ['write', 'delete'],
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

/**
 * Makes a handler die right after its n-th side effect of a run: the effect happened, what the handler
 * meant to do next did not. Counts every side effect (by state) on the way, so that a first clean run
 * tells how many crash points a run has. Only the ports are wrapped: the stand-ins behind them are real.
 */
export class CrashPlan {
  /** Side effects so far, as `State: port.method`. */
  readonly effects: string[] = [];
  /** The crash that happened, if any. */
  crashed: string | null = null;
  /** The state whose handler is running (set from the execution's events). */
  state = '';

  constructor(private readonly crashAfter: number | null) {}

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
  };
}
