import { blockedMessage, InvariantError, messageOf, OpenAIUnavailableError } from './errors';
import { stringFromJson } from './id-files';
import { type ImageSink, isImages, withStoredImages } from './images';
import { type BatchErrorItem, errorItem, jsonLineOf } from './items';
import { LineSplitter, type RawLine } from './lines';
import { errorLine, isThenable, type RecordSink } from './prepare';
import { isRetryable, readResultChunks } from './results';
import type { BatchFailure, CollectCursor, Part, TokenTotals } from './run';
import { checkOutput } from './structured';
import type { Work } from './work';

/** Where requests that are sent again go (a new part), with the dataset line each came from, and its id. */
export interface ResubmitSink {
  write(json: string, datasetLine: number, customId: string): Promise<void>;
}

/** What collecting a part reads and where it writes. */
export interface CollectInput<R> {
  readonly work: Work<R>;
  readonly part: Part;
  /** The part's request file (read more than once). */
  readonly requests: () => AsyncIterable<Uint8Array>;
  /**
   * The part's lines file, aligned with the request file: each request's dataset line and custom_id
   * ({@link partLine}), or its dataset line alone in a file written before entries carried the id.
   */
  readonly lines: () => AsyncIterable<Uint8Array>;
  readonly outputFile: (() => AsyncIterable<Uint8Array>) | null;
  readonly errorFile: (() => AsyncIterable<Uint8Array>) | null;
  /** Where this call's outputs go (a file of its own when collecting takes several calls). */
  readonly outputs: RecordSink;
  readonly errors: RecordSink;
  /** Null when the work's resubmits are used up: what would be resent goes to errors instead. */
  readonly resubmit: ResubmitSink | null;
  /** Where the images of an images endpoint's answers go, one object each; absent for other endpoints. */
  readonly images?: ImageSink;
  /**
   * Send requests OpenAI did not run because their batch was cancelled (`batch_cancelled`) again too: a
   * run that failed cancelled them, not the user, so a resume sends them. @default false
   */
  readonly resendCancelled?: boolean;
  /** Where an earlier call stopped; absent or null to start from the beginning. */
  readonly from?: CollectCursor | null;
  /**
   * Asked before each result or request that may call a hook, once this call has handled one: true
   * stops the call there, and it returns where the next one resumes.
   */
  readonly shouldPause?: () => boolean;
  /** The dataset object the part's records come from (its key), given to every error as `object`. */
  readonly object?: string | null;
  /**
   * For a part of a pack of objects (see core/shards.ts), whose lines file numbers lines across the pack:
   * the object and that object's own line of such a line, given to errors (and messages) in its stead.
   */
  readonly place?: (line: number) => { readonly object: string | null; readonly line: number | null };
  /**
   * Whether result files that came back short may be read again (see ShortDownloadError): false once the
   * part's files were read again enough times, and they are taken as they are.
   */
  readonly mayRedownload?: boolean;
}

/** Times a part's result files are read again when they come back short, before they are taken as they are. */
export const MAX_REDOWNLOADS = 3;

/**
 * A part's result files that came back short: fewer results than OpenAI counted for the batch (a stream
 * cut midway, an empty answer, a page of a proxy in their place). Taken as they were, the requests without a
 * result would be sent again (paid twice) or reported missing; the run waits and reads them again. (Its
 * name stays OpenAIUnavailableError's: the steps and the state machine take it as that.)
 */
export class ShortDownloadError extends OpenAIUnavailableError {
  constructor(batchId: string | null, malformed: number, results: number, counted: number) {
    super(
      blockedMessage(
        'openai_unavailable',
        `the result files of batch ${batchId ?? '(unknown)'} came back short: ${results} results of the ${counted} OpenAI counted were read (and ${malformed} lines that were not results)`,
      ),
      'openai_unavailable',
    );
  }
}

/** What collecting a part found (over every call so far, when it took several). */
export interface CollectResult {
  readonly outputs: number;
  readonly errors: number;
  readonly skippedOutputs: number;
  readonly resubmitted: number;
  /** Result lines that were not results (a truncated or corrupt file). */
  readonly malformed: number;
  /** Result lines for a request already answered, or for no request of the part: ignored. */
  readonly ignored: number;
  readonly usage: TokenTotals;
  /** Where the next call resumes when this one was asked to pause; null when the part is collected. */
  readonly paused: CollectCursor | null;
}

const MAX_LINE = 256 * 1024 * 1024;

/** A line's bytes as text, as `Buffer.toString` decodes them, without copying them first. */
const textOf = (bytes: Uint8Array): string =>
  Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8');

/**
 * A request's entry in its part's lines file: the dataset line it came from, a tab, and its custom_id as
 * JSON. Collect joins results to dataset lines from this file alone, without reading the request file
 * (as large as the part's share of the dataset) again.
 */
export function partLine(line: number, customId: string): string {
  return `${line}\t${JSON.stringify(customId)}`;
}

/** An entry of a part's lines file; `id` is null in a file written before entries carried it. */
export interface PartLine {
  readonly line: number;
  readonly id: string | null;
}

/** An entry of a part's lines file, from its text: `12` (an older file) or `12<tab>"r12"`. */
export function parsePartLine(text: string): PartLine {
  const tab = text.indexOf('\t');
  if (tab === -1) return { line: Number(text), id: null };
  const line = Number(text.slice(0, tab));
  const id = stringFromJson(text.slice(tab + 1));
  if (id === undefined) throw new InvariantError(`a lines file entry holds no custom_id (line ${line})`);
  return { line, id };
}

/** The entry of a request past the end of its lines file, or of an entry over the bound: no line, no id. */
const NO_LINE: PartLine = { line: 0, id: null };

/** The entries of a part's lines file, one a call, read a chunk at a time. */
class PartLines {
  private readonly chunks: AsyncIterator<Uint8Array>;
  private readonly splitter = new LineSplitter(64 * 1024);
  private lines: Iterator<RawLine> = [][Symbol.iterator]();
  private ended = false;

  constructor(source: AsyncIterable<Uint8Array>) {
    this.chunks = source[Symbol.asyncIterator]();
  }

  /** The next entry when the chunk read last still holds one; undefined when `next` must read on. */
  take(): PartLine | undefined {
    const line = this.lines.next();
    if (line.done) return undefined;
    return line.value.bytes === null ? NO_LINE : parsePartLine(textOf(line.value.bytes));
  }

  /** The next entry; null past the file's end. */
  async next(): Promise<PartLine | null> {
    for (;;) {
      const line = this.take();
      if (line) return line;
      if (this.ended) return null;
      const chunk = await this.chunks.next();
      if (chunk.done) {
        this.ended = true;
        const last = this.splitter.end();
        if (last) this.lines = [last][Symbol.iterator]();
      } else this.lines = this.splitter.linesIn(chunk.value);
    }
  }

  async close(): Promise<void> {
    await this.chunks.return?.();
  }
}

/** One request of a part, with its place in the part's files. */
class PartRequest {
  constructor(
    readonly customId: string,
    readonly line: number,
    readonly index: number,
    private readonly bytes: Uint8Array | null,
  ) {}

  /**
   * The request's JSON line, decoded only for a request that is sent again. Read it before the next
   * chunk of requests is read: its bytes may be a view of the reader's chunk.
   */
  get json(): string {
    if (!this.bytes) throw new InvariantError('a request read from its lines file alone has no JSON line');
    return textOf(this.bytes);
  }
}

/** `{"custom_id":"`: how every request line prepare writes begins (JSON.stringify keeps key order). */
const ID_PREFIX = Buffer.from('{"custom_id":"');
const QUOTE = 0x22;
const BACKSLASH = 0x5c;

/**
 * A request line's custom_id. Where a part's lines file does not name the ids (one written before it
 * did), collect reads the whole request file for them, so the id is taken from the line's start (its JSON
 * string, parsed alone) rather than by parsing the whole line; a line that does not start the way prepare
 * writes them is parsed whole.
 */
export function customIdOf(bytes: Uint8Array): string {
  let prefixed = bytes.length > ID_PREFIX.length;
  for (let i = 0; prefixed && i < ID_PREFIX.length; i++) prefixed = bytes[i] === ID_PREFIX[i];
  if (prefixed) {
    for (let i = ID_PREFIX.length; i < bytes.length; i++) {
      const byte = bytes[i];
      if (byte === BACKSLASH) i += 1;
      else if (byte === QUOTE) {
        // The next byte must end the key's value, as in every line JSON.stringify writes.
        if (bytes[i + 1] !== 0x2c && bytes[i + 1] !== 0x7d) break;
        const id = stringFromJson(textOf(bytes.subarray(ID_PREFIX.length - 1, i + 1)));
        if (id !== undefined) return id;
        break;
      }
    }
  }
  return (JSON.parse(textOf(bytes)) as { custom_id: string }).custom_id;
}

/**
 * A part's requests with their custom_id, JSON line and dataset line, streamed a chunk of the request
 * file at a time: a pass over every request of a part awaits once a chunk, not once a request.
 */
async function* requestChunks<R>(input: CollectInput<R>): AsyncGenerator<PartRequest[]> {
  const lines = new PartLines(input.lines());
  const splitter = new LineSplitter(MAX_LINE);
  let index = 0;
  const request = (bytes: Uint8Array, entry: PartLine) =>
    new PartRequest(entry.id ?? customIdOf(bytes), entry.line, ++index, bytes);
  try {
    for await (const chunk of input.requests()) {
      const requests: PartRequest[] = [];
      for (const raw of splitter.linesIn(chunk)) {
        if (raw.bytes === null || raw.bytes.length === 0) continue;
        requests.push(request(raw.bytes, lines.take() ?? (await lines.next()) ?? NO_LINE));
      }
      if (requests.length > 0) yield requests;
    }
    const last = splitter.end();
    if (last?.bytes && last.bytes.length > 0)
      yield [request(last.bytes, lines.take() ?? (await lines.next()) ?? NO_LINE)];
  } finally {
    await lines.close();
  }
}

/** A part's requests one at a time, with their JSON line (for the passes that send requests again). */
async function* requestsOf<R>(input: CollectInput<R>): AsyncGenerator<PartRequest> {
  for await (const requests of requestChunks(input)) yield* requests;
}

/**
 * A part's requests with their custom_id and dataset line but no JSON line, a chunk at a time: from the
 * lines file alone when its entries carry the ids, else (a file written before they did) beside the
 * request file.
 */
async function* idChunks<R>(input: CollectInput<R>): AsyncGenerator<PartRequest[]> {
  const lines = new PartLines(input.lines());
  try {
    const first = await lines.next();
    if (first && first.id === null) {
      await lines.close();
      yield* requestChunks(input);
      return;
    }
    let index = 0;
    let chunk: PartRequest[] = [];
    let entry = first;
    while (entry) {
      if (entry.id === null)
        throw new InvariantError(`part ${input.part.part}: an entry of its lines file has no custom_id`);
      chunk.push(new PartRequest(entry.id, entry.line, ++index, null));
      if (chunk.length >= 4096) {
        yield chunk;
        chunk = [];
      }
      entry = lines.take() ?? (await lines.next());
    }
    // The request file is not read here: a lines file that lost entries would lose their requests silently.
    if (index !== input.part.requests)
      throw new InvariantError(
        `part ${input.part.part}: its lines file names ${index} requests, where the part has ${input.part.requests}`,
      );
    if (chunk.length > 0) yield chunk;
  } finally {
    await lines.close();
  }
}

/** {@link idChunks} one request at a time (for the passes that may call a hook or pause on each). */
async function* idsOf<R>(input: CollectInput<R>): AsyncGenerator<PartRequest> {
  for await (const requests of idChunks(input)) yield* requests;
}

/**
 * Collects a finished part: each request ends exactly once, as an output (through `download`), an error
 * (through `downloadError`), or sent again in a new part (expired or transiently failed, while resubmits
 * last). A request OpenAI answered nowhere is found from the part's lines file, which names each request,
 * and is sent again or reported as `missing_result`. A batch OpenAI failed whole puts each request in
 * errors with the reason for its line; requests its failure does not name are sent again. Memory holds one entry per
 * request of the part (at most 50,000), never the files.
 *
 * Hooks may be slow, so a call stops when `shouldPause` says so and returns a cursor; the next call, given
 * it as `from`, replays the results before it without calling a hook or writing, and goes on. Requests
 * are sent again only by the last call, in one go, since a part's request file is written whole.
 */
export async function collectPart<R>(input: CollectInput<R>): Promise<CollectResult> {
  const { work, part } = input;
  const from = input.from ?? null;
  const batchId = part.batchId;
  let outputs = from?.outputs ?? 0;
  let errors = from?.errors ?? 0;
  let skippedOutputs = from?.skippedOutputs ?? 0;
  let resubmitted = 0;
  let malformed = 0;
  let ignored = 0;
  const usage: TokenTotals = { inputTokens: 0, outputTokens: 0, cachedTokens: 0 };
  // Each call handles at least one result or request before it may pause, so that every call progresses.
  let progressed = false;
  const pauseHere = () => {
    const pause = progressed && (input.shouldPause?.() ?? false);
    progressed = true;
    return pause;
  };
  const cursor = (results: number, requests: number): CollectCursor => ({
    chunk: (from?.chunk ?? 0) + 1,
    results,
    requests,
    resubmit: input.resubmit !== null,
    resendCancelled: input.resendCancelled === true,
    outputs,
    errors,
    skippedOutputs,
  });
  const result = (paused: CollectCursor | null): CollectResult => ({
    outputs,
    errors,
    skippedOutputs,
    resubmitted,
    malformed,
    ignored,
    usage,
    paused,
  });

  const { place } = input;
  /** Writes an error of the request on line `line` of the part's lines file (null where none is known). */
  const writeError = async (item: BatchErrorItem, line: number | null) => {
    const at = place && line !== null ? place(line) : null;
    const placed = at
      ? { ...item, line: at.line, object: at.object }
      : input.object
        ? { ...item, object: input.object }
        : item;
    await input.errors.write(await errorLine(work, placed));
    errors += 1;
  };
  /** An error for one of the part's requests, as OpenAI's outcome for it. */
  const requestFailed = (request: { customId: string; line: number }, code: string, message: string) =>
    writeError(
      errorItem({ stage: 'openai', id: request.customId, line: request.line, batchId, code, message }),
      request.line,
    );
  const resend = async (request: PartRequest) => {
    await input.resubmit?.write(request.json, request.line, request.customId);
    resubmitted += 1;
  };

  if (part.failure) {
    const byLine = new Map<number, BatchFailure>();
    let general: BatchFailure | undefined;
    for (const failure of part.failure) {
      if (failure.line === null) general ??= failure;
      else byLine.set(failure.line, failure);
    }
    const failureOf = (index: number) => byLine.get(index) ?? general;
    // Errors first (their hook may be slow, so this pass may pause), then what is sent again, in one go.
    for await (const request of idsOf(input)) {
      if (request.index <= (from?.requests ?? 0)) continue;
      const failure = failureOf(request.index);
      if (!failure && input.resubmit) continue;
      if (pauseHere()) return result(cursor(0, request.index - 1));
      const reason = failure ?? part.failure[0];
      await requestFailed(
        request,
        reason?.code ?? 'batch_failed',
        `OpenAI failed batch ${batchId ?? ''} (part ${part.part}): ${reason?.message ?? 'no reason given'}`,
      );
    }
    if (input.resubmit) {
      for await (const request of requestsOf(input)) if (!failureOf(request.index)) await resend(request);
    }
    return result(null);
  }

  const datasetLine = new Map<string, number>();
  for await (const requests of idChunks(input))
    for (const request of requests) datasetLine.set(request.customId, request.line);
  const fileLineOf = (id: string) => datasetLine.get(id) ?? null;
  // The line a user reads (of its own object, in a pack).
  const lineOf = place
    ? (id: string) => {
        const line = datasetLine.get(id);
        return line === undefined ? null : place(line).line;
      }
    : fileLineOf;
  const hookFailed = (id: string, message: string) =>
    writeError(
      errorItem({ stage: 'download', id, line: lineOf(id), batchId, code: 'download_hook_failed', message }),
      fileLineOf(id),
    );
  const settled = new Set<string>();
  const retry = new Set<string>();

  let position = 0;
  for (const file of [input.outputFile, input.errorFile]) {
    if (!file) continue;
    for await (const events of readResultChunks(file(), batchId, lineOf)) {
      for (const event of events) {
        position += 1;
        // Results an earlier call handled: only what decides the rest is rebuilt (no hook, no write).
        const replay = position <= (from?.results ?? 0);
        if (!replay && pauseHere()) return result(cursor(position - 1, 0));
        if (event.kind === 'malformed') {
          malformed += 1;
          continue;
        }
        const id = event.item.id;
        if (id === null || !datasetLine.has(id) || settled.has(id) || retry.has(id)) {
          ignored += 1;
          continue;
        }
        if (event.kind === 'error') {
          const resend =
            isRetryable(event.item) ||
            (input.resendCancelled === true && event.item.code === 'batch_cancelled');
          if (input.resubmit && resend) retry.add(id);
          else {
            settled.add(id);
            if (!replay) await writeError(event.item, fileLineOf(id));
          }
          continue;
        }
        // Paid for whether or not its answer can be used.
        if (event.item.usage) {
          usage.inputTokens += event.item.usage.inputTokens;
          usage.outputTokens += event.item.usage.outputTokens;
          usage.cachedTokens += event.item.usage.cachedTokens;
        }
        const checked = work.structured
          ? checkOutput(work.structured, event.item, lineOf(id))
          : { item: { ...event.item, parsed: undefined } };
        if ('error' in checked) {
          // An answer that came back unusable (not the schema, refused, cut off): sent again while
          // output retries last, each time in a new part.
          if (input.resubmit && part.generation < work.settings.maxOutputRetries) retry.add(id);
          else {
            settled.add(id);
            if (!replay) await writeError(checked.error, fileLineOf(id));
          }
          continue;
        }
        settled.add(id);
        if (replay) continue;
        // An answer's images become objects of their own before any hook sees it: no base64 in outputs.
        const item =
          input.images && isImages(work.settings.endpoint)
            ? await withStoredImages(checked.item, input.images)
            : checked.item;
        let record: unknown;
        try {
          record = work.download(item);
          if (isThenable(record)) record = await record;
        } catch (caught) {
          await hookFailed(id, `the download hook threw: ${messageOf(caught)}`);
          continue;
        }
        if (record === null || record === undefined) {
          skippedOutputs += 1;
          continue;
        }
        const json = jsonLineOf(record);
        if ('problem' in json) {
          await hookFailed(id, `the download hook returned a value JSON cannot hold: ${json.problem}`);
          continue;
        }
        await input.outputs.write(json.line);
        outputs += 1;
      }
    }
  }

  const results = position - malformed;
  const counted = part.completed + part.failed;
  // Fewer results than OpenAI counted: a file cut short (at a line's end or inside one), an empty answer
  // or a page that is not the file. Read again a few times before its missing requests are sent again.
  if (results < counted && input.mayRedownload === true)
    throw new ShortDownloadError(batchId, malformed, results, counted);

  if (settled.size < datasetLine.size) {
    if (input.resubmit) {
      for await (const request of requestsOf(input))
        if (!settled.has(request.customId)) await resend(request);
    } else {
      for await (const request of idsOf(input)) {
        if (settled.has(request.customId) || request.index <= (from?.requests ?? 0)) continue;
        if (pauseHere()) return result(cursor(position, request.index - 1));
        await requestFailed(
          request,
          'missing_result',
          `OpenAI returned no result for this request in batch ${batchId ?? ''} (part ${part.part}) and resubmits are used up`,
        );
      }
    }
  }
  return result(null);
}
