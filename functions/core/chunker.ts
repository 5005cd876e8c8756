import { InvariantError } from './errors';
import type { PreparedRequest } from './requests';

/** The limits one part (one OpenAI batch input file) must keep. */
export interface PartLimits {
  readonly maxRequestsPerBatch: number;
  readonly maxBytesPerBatch: number;
  readonly maxEmbeddingInputsPerBatch: number;
}

/** What a closed part holds. */
export interface PartSummary {
  /** The part's number, from the chunker's `firstPart` up, in the order parts were opened. */
  readonly part: number;
  readonly model: string;
  readonly requests: number;
  readonly bytes: number;
  readonly inputs: number;
  readonly estimatedTokens: number;
  /** The first and last dataset lines that contributed a request. */
  readonly firstLine: number;
  readonly lastLine: number;
}

/** A request placed in a part, or a part that is complete. */
export type ChunkEvent =
  | { readonly kind: 'request'; readonly part: number; readonly request: PreparedRequest }
  | { readonly kind: 'close'; readonly summary: PartSummary };

interface OpenPart {
  part: number;
  model: string;
  requests: number;
  bytes: number;
  inputs: number;
  estimatedTokens: number;
  firstLine: number;
  lastLine: number;
}

function fits(open: OpenPart, request: PreparedRequest, limits: PartLimits): boolean {
  return (
    open.requests + 1 <= limits.maxRequestsPerBatch &&
    open.bytes + request.bytes <= limits.maxBytesPerBatch &&
    open.inputs + request.inputs <= limits.maxEmbeddingInputsPerBatch
  );
}

/** Where a request was placed: its part, and the part of its model it closed first, if any. */
export interface Placement {
  readonly part: number;
  readonly closed: PartSummary | null;
}

/**
 * Splits requests into parts that keep every limit and hold one model each. One part is open per model
 * at a time, so interleaved models do not fragment into tiny parts; a part closes when the next request
 * for its model would not fit, and all open parts close, in the order they were opened, at the end.
 * Requests are placed, never held: the caller writes each to its part.
 */
export class Chunker {
  private readonly open = new Map<string, OpenPart>();
  private next: number;

  constructor(
    private readonly limits: PartLimits,
    firstPart = 0,
  ) {
    this.next = firstPart;
  }

  /** Places a request in its model's open part, closing that part first when the request does not fit. */
  place(request: PreparedRequest): Placement {
    const { limits, open } = this;
    if (request.bytes > limits.maxBytesPerBatch || request.inputs > limits.maxEmbeddingInputsPerBatch) {
      throw new InvariantError(
        `request "${request.customId}" does not fit in any part; the builder should have refused it`,
      );
    }
    let closed: PartSummary | null = null;
    let current = open.get(request.model);
    if (current && !fits(current, request, limits)) {
      open.delete(request.model);
      closed = { ...current };
      current = undefined;
    }
    if (!current) {
      current = {
        part: this.next++,
        model: request.model,
        requests: 0,
        bytes: 0,
        inputs: 0,
        estimatedTokens: 0,
        firstLine: request.line,
        lastLine: request.line,
      };
      open.set(request.model, current);
    }
    current.requests += 1;
    current.bytes += request.bytes;
    current.inputs += request.inputs;
    current.estimatedTokens += request.estimatedTokens;
    current.lastLine = request.line;
    return { part: current.part, closed };
  }

  /** Closes every open part: their summaries, in the order they were opened. */
  finish(): PartSummary[] {
    const remaining = [...this.open.values()].sort((a, b) => a.part - b.part);
    this.open.clear();
    return remaining.map((part) => ({ ...part }));
  }
}

/** {@link Chunker} over a stream of requests: each request's placement, and each part as it closes. */
export async function* partsOf(
  requests: AsyncIterable<PreparedRequest>,
  limits: PartLimits,
  firstPart = 0,
): AsyncGenerator<ChunkEvent> {
  const chunker = new Chunker(limits, firstPart);
  for await (const request of requests) {
    const { part, closed } = chunker.place(request);
    if (closed) yield { kind: 'close', summary: closed };
    yield { kind: 'request', part, request };
  }
  for (const summary of chunker.finish()) yield { kind: 'close', summary };
}
