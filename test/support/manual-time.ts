import type { BatchApi } from '../../functions/core/ports';
import type { Ticked } from '../../functions/steps/tick';
import { ManualClock } from '../../local/emulator/clock';
import type { EmulatorOptions } from '../../local/emulator/server';
import type { LocalEnvironment, LocalRunOptions, OpenAITarget } from '../../local/runner';

/**
 * Manual time for local runs: a run whose every step happens at a moment the test decides, so that
 * nothing depends on wall time or on how loaded the machine is.
 *
 * One {@link ManualClock} is shared by the emulator (started with `tickMs: 0`, so that batches move only
 * when it is asked something or settled) and by the steps (`now`). The clock moves only at the Wait
 * between two Ticks, by exactly the seconds Tick asked for (`$.tick.waitSeconds`) (and at the Wait between
 * two calls of a failing run's MarkFailed, by what it asked); the Wait itself lasts
 * no wall time. Before every call the steps make to OpenAI the emulator is settled: every batch has moved
 * as far as the clock allows and its file-writing jobs are done, so a poll sees the same thing on every
 * run. A Tick that throws (a crash) is retried at the same moment: only Waits move the clock. With
 * webhooks (`startLocalEnvironment(..., { webhooks: true })`) a Wait moves the clock a second at a time,
 * delivering each batch's event as it ends, and a wake ends the Wait early, as on AWS.
 *
 * ```ts
 * const time = new ManualTime();
 * const env = await startLocalEnvironment(dir, time.emulator({ validationMs: 1000, seed: 1 }));
 * const result = await runLocally(env, loaded, dataset, 'run-1', time.runOptions(env, { lostCreateGraceMs: 1000 }));
 * // For an emulator of its own next to a shared environment:
 * const other = await startEmulator(time.emulatorOptions({ completionWindowMs: 60_000 }));
 * await runLocally(withEmulator(env, other), loaded, dataset, 'run-2', time.runOptions(withEmulator(env, other)));
 * ```
 *
 * Use one ManualTime per emulator: the clock is the emulator's. Runs on one emulator one after another
 * are fine (the clock only moves forward); two runs at once on one clock would move it for each other.
 */
export class ManualTime {
  /** The clock of the emulator and the steps. */
  readonly clock: ManualClock;
  /** Ticks run so far (retried ones included), over every run given these options. */
  ticks = 0;
  /** The seconds of each Wait the clock moved through, in order. */
  readonly waits: number[] = [];

  constructor(private readonly options: ManualTimeOptions = {}) {
    this.clock = new ManualClock(options.start ?? Date.now());
  }

  /** The emulator's options on this clock, for `startEmulator`. */
  emulatorOptions(options: EmulatorOptions = {}): EmulatorOptions {
    return { ...options, clock: this.clock, tickMs: 0 };
  }

  /** An emulator target on this clock, for `startLocalEnvironment`. */
  emulator(options: EmulatorOptions = {}): OpenAITarget {
    return { kind: 'emulator', options: this.emulatorOptions(options) };
  }

  /**
   * The options of a local run on this clock, over `options` (whose own `wrap` functions still apply,
   * inside these: a crash plan sees the settled emulator). `env.emulator` must run on this clock.
   */
  runOptions(
    env: LocalEnvironment,
    options: LocalRunOptions = {},
    hooks: ManualRunHooks = {},
  ): LocalRunOptions {
    const emulator = env.emulator;
    if (!emulator) throw new Error('manual time needs the emulator: the real OpenAI has its own clock');
    const settle = async () => {
      await emulator.settle();
    };
    const maxTicks = this.options.maxTicks ?? 1000;
    return {
      ...options,
      waitMs: 0,
      now: () => this.clock.now(),
      wrap: {
        ...options.wrap,
        openai: (api) => {
          const settled = settledApi(api, settle);
          return options.wrap?.openai?.(settled) ?? settled;
        },
        handlers: (handlers) => {
          const wrapped = {
            ...handlers,
            Tick: async (event: unknown) => {
              this.ticks += 1;
              if (this.ticks > maxTicks) {
                // Fatal (no retry): the run fails at once, naming why, instead of spinning until a timeout.
                throw Object.assign(new Error(`the run did not end within ${maxTicks} ticks`), {
                  name: 'InvariantError',
                });
              }
              const ticked = await handlers.Tick(event);
              await hooks.afterTick?.(ticked, this.ticks);
              if (!ticked.done && !ticked.superseded && !ticked.continueAsNew) {
                // The Wait that follows: the clock moves by what Tick asked, and batches move with it.
                this.waits.push(ticked.waitSeconds);
                await this.wait(ticked.waitSeconds, env, settle);
              }
              return ticked;
            },
            // A failing run winds down through its own Wait: the clock moves by what MarkFailed asked.
            MarkFailed: async (event: unknown) => {
              const marked = await handlers.MarkFailed(event);
              if (!marked.settled) {
                this.clock.advance(marked.waitSeconds * 1000);
                await settle();
              }
              return marked;
            },
          };
          return options.wrap?.handlers?.(wrapped) ?? wrapped;
        },
      },
    };
  }

  /**
   * A Wait of `seconds`. With webhooks, the clock moves a second at a time, and the events of batches
   * that ended in that second are delivered before it moves on (so batches that end in different seconds
   * are news one after the other, as on OpenAI). A wake ends the Wait there: the receiver stopped this
   * execution, and the new one's Tick runs at that moment.
   */
  private async wait(seconds: number, env: LocalEnvironment, settle: () => Promise<void>): Promise<void> {
    const sender = env.emulator?.webhooks;
    const receiver = env.webhooks;
    if (!sender || !receiver) {
      this.clock.advance(seconds * 1000);
      await settle();
      return;
    }
    const woken = () => receiver.received.filter((r) => r.outcome === 'woken').length;
    const before = woken();
    for (let second = 0; second < seconds && woken() === before; second++) {
      this.clock.advance(1000);
      await settle();
      await sender.idle();
    }
  }
}

/** How a {@link ManualTime} runs. */
export interface ManualTimeOptions {
  /** Where the clock starts, in ms; only an origin, nothing compares it with wall time. @default Date.now() */
  readonly start?: number;
  /** Ticks after which a run is failed as one that never ends (a fatal InvariantError). @default 1000 */
  readonly maxTicks?: number;
}

/** What a test does at moments of a run on manual time. */
export interface ManualRunHooks {
  /**
   * Called, and awaited, after each Tick returns and before its Wait (`tick` counts every Tick of this
   * ManualTime): a test acts between two ticks here (requests a cancel, breaks something) at a moment
   * that does not depend on timing.
   */
  readonly afterTick?: (ticked: Ticked, tick: number) => Promise<void> | void;
}

/** The API with the emulator settled before every call but downloads (which read finished files only). */
function settledApi(api: BatchApi, settle: () => Promise<void>): BatchApi {
  return new Proxy(api, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver) as unknown;
      if (typeof value !== 'function' || property === 'fileContent') return value;
      return async (...args: unknown[]) => {
        await settle();
        return (value as (...a: unknown[]) => Promise<unknown>).apply(target, args);
      };
    },
  });
}
