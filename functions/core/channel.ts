/**
 * A bounded queue between a producer that pushes and a consumer that iterates: `push` waits while the
 * queue is full, so a slow consumer (an upload) holds back a fast producer (a reader) and memory stays
 * bounded. `fail` makes the producer's next push throw, for a consumer that gave up.
 */
export class Channel<T> implements AsyncIterable<T> {
  private readonly queue: T[] = [];
  private consumer: ((result: IteratorResult<T>) => void) | null = null;
  private readonly producers: (() => void)[] = [];
  private closed = false;
  private failure: { error: unknown } | null = null;

  constructor(private readonly capacity = 4) {}

  /** Adds a value, waiting while the queue is full. */
  async push(value: T): Promise<void> {
    this.throwIfFailed();
    if (this.closed) throw new Error('push after close');
    if (this.consumer) {
      const consumer = this.consumer;
      this.consumer = null;
      consumer({ value, done: false });
      return;
    }
    this.queue.push(value);
    while (this.queue.length >= this.capacity && !this.failure) {
      await new Promise<void>((resolve) => this.producers.push(resolve));
    }
    this.throwIfFailed();
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure.error;
  }

  /** No more values: the consumer ends after the queued ones. */
  close(): void {
    this.closed = true;
    if (this.consumer && this.queue.length === 0) {
      const consumer = this.consumer;
      this.consumer = null;
      consumer({ value: undefined, done: true });
    }
  }

  /** The consumer failed: pending and later pushes throw `error`. */
  fail(error: unknown): void {
    this.failure = { error };
    for (const release of this.producers.splice(0)) release();
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => {
        const value = this.queue.shift();
        if (value !== undefined) {
          this.producers.shift()?.();
          return Promise.resolve({ value, done: false });
        }
        if (this.closed) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => {
          this.consumer = resolve;
        });
      },
    };
  }
}

/** A write that did not fill a chunk: nothing to wait for. */
const WRITTEN: Promise<void> = Promise.resolve();
/** The most bytes one UTF-16 code unit takes in UTF-8. */
const MAX_UTF8_PER_UNIT = 3;

/**
 * Writes lines into a byte sink in chunks of about `chunkBytes`, through a {@link Channel}. Lines are
 * encoded straight into the chunk's buffer (no joined string, no copy); a line longer than a chunk goes
 * as a chunk of its own.
 */
export class LineWriter {
  private readonly channel = new Channel<Uint8Array>();
  private readonly done: Promise<unknown>;
  private chunk: Buffer | null = null;
  private used = 0;
  /** Lines written. */
  lines = 0;

  /** Starts `sink` on the channel's bytes; a sink that fails makes the next write throw. */
  constructor(
    sink: (body: AsyncIterable<Uint8Array>) => Promise<unknown>,
    private readonly chunkBytes = 256 * 1024,
  ) {
    this.done = sink(this.channel);
    this.done.catch((error: unknown) => this.channel.fail(error));
  }

  /** Appends one line (a newline is added). */
  write(line: string): Promise<void> {
    return this.add(line) ?? WRITTEN;
  }

  /**
   * Appends one line (a newline is added); returns a promise only when there is something to wait for (a
   * full chunk being handed on), so that a caller on the per-record path awaits only then.
   */
  add(line: string): Promise<void> | undefined {
    this.lines += 1;
    const most = line.length * MAX_UTF8_PER_UNIT + 1;
    if (this.used + most > this.chunkBytes) {
      // It may not fit: a full chunk goes first; a line larger than a chunk is a chunk of its own.
      if (most > this.chunkBytes) return this.writeLarge(line);
      if (this.used > 0) return this.flush().then(() => this.append(line));
    }
    return this.append(line);
  }

  private append(line: string): Promise<void> | undefined {
    this.chunk ??= Buffer.allocUnsafe(this.chunkBytes);
    this.used += this.chunk.write(line, this.used);
    this.chunk[this.used++] = 0x0a;
    return this.used >= this.chunkBytes ? this.flush() : undefined;
  }

  private async writeLarge(line: string): Promise<void> {
    await this.flush();
    await this.channel.push(Buffer.from(`${line}\n`));
  }

  private async flush(): Promise<void> {
    if (this.used === 0 || !this.chunk) return;
    const chunk = this.chunk.subarray(0, this.used);
    this.chunk = null;
    this.used = 0;
    await this.channel.push(chunk);
  }

  /** Flushes, ends the sink and waits for it. */
  async close(): Promise<void> {
    await this.flush();
    this.channel.close();
    await this.done;
  }
}
