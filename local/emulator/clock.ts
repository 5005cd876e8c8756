/** The emulator's sense of time, in milliseconds; tests drive a {@link ManualClock} to pass a 24h window in no time. */
export interface Clock {
  now(): number;
}

/** Wall-clock time. */
export const systemClock: Clock = { now: () => Date.now() };

/** A clock that moves only when told to. */
export class ManualClock implements Clock {
  constructor(private current = Date.now()) {}
  now(): number {
    return this.current;
  }
  /** Moves the clock forward by `ms`. */
  advance(ms: number): void {
    this.current += ms;
  }
}

/** Unix seconds of a millisecond time, as OpenAI's timestamps are. */
export function unixSeconds(ms: number): number {
  return Math.floor(ms / 1000);
}
