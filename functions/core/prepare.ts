import { type Counts, zeroCounts } from './accounting';
import { Chunker, type PartSummary } from './chunker';
import { type DatasetReadOptions, readDatasetBatches } from './dataset';
import { messageOf } from './errors';
import { type BatchErrorItem, jsonLineOf } from './items';
import type { LinePosition } from './lines';
import {
  type BuildEvent,
  buildRequest,
  type IdClaims,
  itemsOf,
  type PreparedRequest,
  recordOf,
  uploadFailure,
} from './requests';
import type { Work } from './work';

/** Where prepared request lines go: one file per part, several open at once (one per model). */
export interface PartSink {
  /**
   * Appends a request to a part (its `json` is the JSONL line), opening the part's file on its first one.
   * Returns a promise only when there is something to wait for (a chunk being sent).
   */
  write(part: number, request: PreparedRequest): Promise<void> | undefined;
  /** The part is complete: finish its file. */
  close(summary: PartSummary): Promise<void>;
}

/**
 * Where records go that end in outputs/ or errors/, as JSON lines (without their newline). A hook's value
 * is turned into its line where the hook is guarded, so that a value JSON cannot hold fails one record,
 * not the run.
 */
export interface RecordSink {
  write(line: string): Promise<void>;
}

/** A prepare step's starting point: the beginning, or where an earlier step stopped. */
export interface PrepareStart {
  /** The position the source's first byte is at (uncompressed resume by byte range). */
  readonly position?: LinePosition;
  /** Lines to pass over first (gzip resume, which re-reads from the start). */
  readonly skipLines?: number;
  /** The number the first new part gets. */
  readonly firstPart?: number;
  /**
   * Given `sources` (a pack): the pack's lines before the first source's object. Parts' lines files and
   * id entries number a pack's lines across it (line `base + n` for line n of an object the pack has
   * `base` lines before), so that a line of the pack is one number there; errors, messages and hooks are
   * given the object's own line.
   */
  readonly lineBase?: number;
}

/** One object a prepare step reads, of those of a pack (see core/shards.ts), in the pack's order. */
export interface ObjectSource {
  readonly source: AsyncIterable<Uint8Array>;
  /** The object's key, given to every error as `object`. */
  readonly object?: string;
  /** The position the source's first byte is at (the object's start, or where a step stopped). */
  readonly position: LinePosition;
  /** Lines to pass over first: a gzip object read again from its start, to where a step stopped. */
  readonly skipLines?: number;
}

/** How a prepare step ended. */
export interface PrepareResult {
  /** True when the whole dataset was read; false when `shouldPause` stopped it at a record boundary. */
  readonly done: boolean;
  /** Where the next step resumes: the line after the last one read, and its byte offset. */
  readonly next: LinePosition;
  /** Whether the dataset is gzip (a resumed step cannot enter a gzip stream by byte offset). */
  readonly gzip: boolean;
  /** Parts closed by this step, in part order. */
  readonly parts: PartSummary[];
  /** What this step counted. */
  readonly counts: Counts;
  /**
   * Given `sources`: the lines of each source this step read to its end, in order (the line after its
   * last record, less one). `next` is then in the source after them.
   */
  readonly finished: number[];
}

/** What a prepare step reads from and writes to. */
export interface PrepareInput<R> {
  /** The dataset's bytes; or, for a pack of objects, `sources` in its stead. */
  readonly source?: AsyncIterable<Uint8Array>;
  /** The objects of a pack, read one after the other into the same parts. */
  readonly sources?: AsyncIterable<ObjectSource> | Iterable<ObjectSource>;
  readonly work: Work<R>;
  /** Where custom_ids are claimed: {@link LineIds} (one line), or a registry over the whole dataset. */
  readonly ids: IdClaims;
  readonly parts: PartSink;
  readonly errors: RecordSink;
  readonly start?: PrepareStart;
  /** Asked before each record; true stops the step there, with every open part closed. */
  readonly shouldPause?: () => boolean;
  /** False where the source is known to be plain JSONL (see {@link DatasetReadOptions.detectGzip}). */
  readonly detectGzip?: boolean;
  /** The dataset object the source reads (its key), given to every error as `object`. */
  readonly object?: string;
}

/**
 * Claims custom_ids within one dataset line: the same id twice from one line is refused on the spot
 * (`duplicate_id`); ids used on different lines are Settle's to find (from the id files). Holds the ids
 * of the current line only.
 */
export class LineIds implements IdClaims {
  private line = 0;
  private readonly ids = new Set<string>();

  claim(id: string, line: number): number {
    if (line !== this.line) {
      this.line = line;
      this.ids.clear();
    }
    if (this.ids.has(id)) return line;
    this.ids.add(id);
    return 0;
  }

  nextObject(): void {
    this.line = 0;
    this.ids.clear();
  }
}

/**
 * Streams a dataset through the work's `upload` hook, the request builder and the chunker into part
 * files, and every refused line or request into errors. Holds no more than one record and one line per
 * open part at a time. Stops early at a record boundary when asked, so a long dataset is prepared over
 * several steps that each resume where the last stopped.
 */
export async function prepareDataset<R>(input: PrepareInput<R>): Promise<PrepareResult> {
  const { work, start = {} } = input;
  const counts = zeroCounts();
  const parts: PartSummary[] = [];
  const chunker = new Chunker(work.settings, start.firstPart ?? 0);
  let next: LinePosition = start.position ?? { line: 1, offset: 0 };
  let gzip = false;
  let done = true;
  const finished: number[] = [];
  // The object being read, and its pack's lines before it (see ObjectSource).
  let object: string | undefined;
  let lineBase = start.lineBase ?? 0;

  /** Counts an error and writes its line. */
  async function refuse(error: BatchErrorItem): Promise<void> {
    const { stage } = error;
    if (stage === 'dataset') counts.invalidRecords += 1;
    else if (stage === 'upload') counts.failedRecords += 1;
    else {
      counts.requests += 1;
      counts.refusedRequests += 1;
    }
    await input.errors.write(await errorLine(work, object === undefined ? error : { ...error, object }));
    counts.errors += 1;
  }

  /**
   * A part's close (its last upload and the object's completion) runs while the next part fills: one at a
   * time, and every one is awaited before the step returns, so no part is counted before it is whole.
   */
  let closing: Promise<void> | null = null;
  async function closePart(summary: PartSummary): Promise<void> {
    if (closing) await closing;
    const closed = input.parts.close(summary);
    closed.catch(() => {}); // thrown where it is awaited: above, or before the step returns
    closing = closed;
    parts.push(summary);
    counts.parts += 1;
  }
  /** Waits for a close still running, whatever its end (for a step that failed). */
  const closeEnded = async () => {
    await closing?.catch(() => {});
  };

  async function closeThenWrite(closed: PartSummary, part: number, request: PreparedRequest): Promise<void> {
    await closePart(closed);
    await input.parts.write(part, request);
  }

  /** Takes what the builder gave; a promise only when there is something to wait for. */
  function take(event: BuildEvent): Promise<void> | undefined {
    if (event.kind === 'request') {
      counts.requests += 1;
      counts.submittedRequests += 1;
      const request =
        lineBase === 0 ? event.request : { ...event.request, line: event.request.line + lineBase };
      const { part, closed } = chunker.place(request);
      if (closed) return closeThenWrite(closed, part, request);
      return input.parts.write(part, request);
    }
    if (event.kind === 'skip') {
      counts.skippedRecords += 1;
      return undefined;
    }
    return refuse(event.error);
  }

  // The dataset's one source, or a pack's objects: each read from its position into the same parts.
  const { source } = input;
  const sources =
    input.sources ??
    (source && [
      {
        source,
        ...(input.object === undefined ? {} : { object: input.object }),
        position: next,
        ...(start.skipLines ? { skipLines: start.skipLines } : {}),
      },
    ]);
  if (!sources) throw new Error('prepareDataset needs a source or sources');
  try {
    let first = true;
    reading: for await (const current of sources) {
      object = current.object;
      // Where a step that stops before this source's first record resumes: past the lines passed over.
      next = current.skipLines
        ? { line: current.position.line + current.skipLines, offset: 0 }
        : current.position;
      if (!first) input.ids.nextObject?.();
      first = false;
      const reader = readDatasetBatches(current.source, {
        maxRecordBytes: work.settings.maxRecordBytes,
        start: current.position,
        ...(current.skipLines ? { skipLines: current.skipLines } : {}),
        ...(input.detectGzip === false || input.sources ? { detectGzip: false } : {}),
        onFormat: (format) => {
          gzip = format.gzip;
        },
      });
      // One loop from line to part, awaiting only what returns a promise (a hook may be async, a sink may
      // flush), and the reader once a batch of lines.
      for await (const batch of reader) {
        for (const entry of batch) {
          if (input.shouldPause?.()) {
            done = false;
            break reading;
          }
          counts.records += 1;
          const { line } = entry;
          if (entry.kind === 'invalid') {
            await refuse(entry.error);
          } else {
            const checked = recordOf(entry, work);
            if ('refused' in checked) {
              await take(checked.refused);
            } else {
              let result: unknown;
              let threw = false;
              try {
                result = work.upload(checked.record, { line });
                if (isThenable(result)) result = await result;
              } catch (caught) {
                threw = true;
                await take(uploadFailure(line, caught));
              }
              const items = threw ? [] : itemsOf(result);
              if (items === null) take({ kind: 'skip', line });
              else {
                for (let i = 0; i < items.length; i++) {
                  const pending = take(buildRequest(items, i, line, work, input.ids));
                  if (pending) await pending;
                }
              }
            }
          }
          next = { line: line + 1, offset: entry.end };
        }
      }
      finished.push(next.line - 1);
      lineBase += next.line - 1;
    }
  } catch (caught) {
    // A part's close still running is waited for: none is left to finish after the step has failed.
    await closeEnded();
    throw caught;
  }
  for (const summary of chunker.finish()) await closePart(summary);
  if (closing) await closing;
  parts.sort((a, b) => a.part - b.part);
  return { done, next, gzip, parts, counts, finished };
}

/** Whether `await` would wait on a value: a promise or another thenable. */
export function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (
    value !== null &&
    (typeof value === 'object' || typeof value === 'function') &&
    typeof (value as { then?: unknown }).then === 'function'
  );
}

/**
 * The errors/ line the work's `downloadError` hook makes of an error. An error is never lost: when the
 * hook throws, or returns a value JSON cannot hold, the item itself is written, with why in its message.
 */
export async function errorLine<R>(work: Work<R>, item: BatchErrorItem): Promise<string> {
  let mapped: unknown;
  try {
    mapped = (await work.downloadError(item)) ?? item;
  } catch (caught) {
    return plainErrorLine(item, `the downloadError hook threw: ${messageOf(caught)}`);
  }
  const json = jsonLineOf(mapped);
  if ('line' in json) return json.line;
  return plainErrorLine(item, `the downloadError hook returned a value JSON cannot hold: ${json.problem}`);
}

/** The error item itself as a line, its message noting why the hook's value was not used. */
function plainErrorLine(item: BatchErrorItem, why: string): string {
  const noted = { ...item, message: `${item.message} (${why})` };
  const json = jsonLineOf(noted);
  // The item is JSON read from OpenAI or built here; only a response body could fail, so it is dropped then.
  return 'line' in json ? json.line : JSON.stringify({ ...noted, response: null });
}
