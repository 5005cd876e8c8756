import { Random } from './random';

/** The faults the emulator can inject into any endpoint. */
export const FAULT_KINDS = [
  /** 429 with retry-after, before acting. */
  'rate_limit',
  /** 500 before acting. */
  'server_error',
  /** 503 before acting. */
  'unavailable',
  /** A slow answer (then a normal one). */
  'slow',
  /** The connection drops before the server acts. */
  'drop_before',
  /** The server acts (a batch is created, a file stored), then the connection drops. */
  'drop_after',
  /** The server acts, then answers 500: the client never hears that it worked. */
  'error_after',
] as const;

/** One kind of fault. */
export type FaultKind = (typeof FAULT_KINDS)[number];

/** Random faults: off unless `rate` is above 0. */
export interface FaultOptions {
  /** The share of requests that get a fault, 0 to 1. @default 0 */
  readonly rate?: number;
  /** The kinds to draw from. @default all */
  readonly kinds?: readonly FaultKind[];
  /** Delay of a `slow` answer. @default 300 */
  readonly slowMs?: number;
  readonly seed?: number;
}

/** What OpenAI answers to every request during an outage window. */
export const OUTAGE_KINDS = [
  /** 503, the engine overloaded. */
  'unavailable',
  /** 401 invalid_api_key: the key was revoked or rotated. */
  'unauthorized',
  /** 429 insufficient_quota: the account's quota or billing limit is used up. */
  'quota',
] as const;

/** One kind of outage. */
export type OutageKind = (typeof OUTAGE_KINDS)[number];

/** Which requests a forced fault or an outage's trigger matches (all when neither is given). */
export interface RequestMatch {
  readonly method?: string;
  readonly path?: RegExp;
}

interface Outage {
  readonly kind: OutageKind;
  readonly forMs: number;
  readonly after: RequestMatch | null;
  /** When the window opened (emulator clock, ms); null until its trigger passed. */
  from: number | null;
}

interface Forced {
  kind: FaultKind;
  method: string | undefined;
  path: RegExp | undefined;
}

/** Decides which requests get which fault: forced ones first (for tests), then at random. */
export class FaultPlan {
  private readonly random: Random;
  private readonly forced: Forced[] = [];
  private readonly outages: Outage[] = [];
  /** Faults injected so far, by kind. */
  readonly injected: Record<FaultKind, number> = Object.fromEntries(FAULT_KINDS.map((k) => [k, 0])) as Record<
    FaultKind,
    number
  >;

  constructor(private readonly options: FaultOptions = {}) {
    this.random = new Random(options.seed);
  }

  /** The delay of a `slow` answer. */
  get slowMs(): number {
    return this.options.slowMs ?? 300;
  }

  /** Forces a fault on the next request that matches (all requests when no method or path is given). */
  next(kind: FaultKind, match: { method?: string; path?: RegExp } = {}): void {
    this.forced.push({ kind, method: match.method, path: match.path });
  }

  /**
   * Answers every request with `kind` for `forMs` of the emulator's clock: from the next request, or,
   * with `after`, from the first request after one that matches it (which itself is served).
   */
  outage(kind: OutageKind, forMs: number, after?: RequestMatch): void {
    this.outages.push({ kind, forMs, after: after ?? null, from: null });
  }

  /** The outage this request falls in at `now`, if any; opens the windows whose trigger it is. */
  outageAt(method: string, path: string, now: number): OutageKind | null {
    let current: OutageKind | null = null;
    for (const outage of this.outages) {
      if (outage.from === null) {
        if (outage.after === null) outage.from = now;
        else if (matches(outage.after, method, path)) {
          outage.from = now;
          continue; // the trigger itself is served
        }
      }
      if (current === null && outage.from !== null && now < outage.from + outage.forMs) current = outage.kind;
    }
    return current;
  }

  /** The fault for this request, if any. */
  draw(method: string, path: string): FaultKind | null {
    const index = this.forced.findIndex((f) => matches(f, method, path));
    let kind: FaultKind | null = null;
    if (index !== -1) {
      kind = this.forced[index]?.kind ?? null;
      this.forced.splice(index, 1);
    } else if ((this.options.rate ?? 0) > 0 && this.random.next() < (this.options.rate ?? 0)) {
      kind = this.random.pick(this.options.kinds ?? FAULT_KINDS);
    }
    if (kind) this.injected[kind] += 1;
    return kind;
  }
}

function matches(
  match: { method?: string | undefined; path?: RegExp | undefined },
  method: string,
  path: string,
) {
  return (!match.method || match.method === method) && (!match.path || match.path.test(path));
}
