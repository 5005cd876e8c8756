import { type BatchErrorItem, errorItem } from './items';
import { decompressed, isBlank, type LinePosition, LineSplitter, type RawLine } from './lines';

/** A JSON object read from one dataset line. */
export type DatasetRecord = Record<string, unknown>;

/** What one non-blank dataset line turned out to be. */
export type DatasetLine =
  | { readonly kind: 'record'; readonly line: number; readonly end: number; readonly record: DatasetRecord }
  | { readonly kind: 'invalid'; readonly line: number; readonly end: number; readonly error: BatchErrorItem };

/** How a dataset is read. */
export interface DatasetReadOptions {
  /** A longer line is an error record (`line_too_long`) and is never held in memory. */
  readonly maxRecordBytes: number;
  /** Resume after a checkpoint: the position the source's first byte is at (uncompressed streams only). */
  readonly start?: LinePosition;
  /** Lines to pass over before reading (resuming a gzip stream, which cannot be entered mid-way). */
  readonly skipLines?: number;
  /** Told once the first bytes have been read whether the stream is gzip. */
  readonly onFormat?: (format: { gzip: boolean }) => void;
  /**
   * Whether to tell gzip from the stream's first bytes (the default). False where the source is known to
   * be plain JSONL: Prepare's shards, whose object Register already told gzip or not, and which may start
   * mid-object (a byte range, a resumed step), where a line that begins with gzip's magic number is a bad
   * line, not a gzip stream.
   */
  readonly detectGzip?: boolean;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Reads JSONL records from a byte stream: gzip detected by content, a UTF-8 BOM dropped, CRLF accepted,
 * blank lines passed over. A line that is not valid UTF-8, not JSON, not a JSON object or too long
 * becomes an `invalid` entry carrying its line number and the reason, and reading goes on.
 */
export async function* readDataset(
  source: AsyncIterable<Uint8Array>,
  options: DatasetReadOptions,
): AsyncGenerator<DatasetLine> {
  for await (const batch of readDatasetBatches(source, options)) yield* batch;
}

/** Records a batch of {@link readDatasetBatches} holds at most. */
const BATCH = 256;

/**
 * {@link readDataset} a batch of lines at a time: the lines a chunk completes, at most {@link BATCH} at
 * once, so that a reader awaits once a batch rather than once a record.
 */
export async function* readDatasetBatches(
  source: AsyncIterable<Uint8Array>,
  options: DatasetReadOptions,
): AsyncGenerator<DatasetLine[]> {
  const { gzip, chunks } =
    options.detectGzip === false ? { gzip: false, chunks: source } : await decompressed(source);
  options.onFormat?.({ gzip });
  const skip = options.skipLines ?? 0;
  const splitter = new LineSplitter(options.maxRecordBytes, options.start);
  let batch: DatasetLine[] = [];
  for await (const chunk of chunks) {
    for (const raw of splitter.linesIn(chunk)) {
      const entry = datasetLineOf(raw, skip, options.maxRecordBytes);
      if (!entry) continue;
      batch.push(entry);
      if (batch.length >= BATCH) {
        yield batch;
        batch = [];
      }
    }
    if (batch.length > 0) {
      yield batch;
      batch = [];
    }
  }
  const last = splitter.end();
  const entry = last && datasetLineOf(last, skip, options.maxRecordBytes);
  if (entry) batch.push(entry);
  if (batch.length > 0) yield batch;
}

/** What one line is: a record, an invalid line, or null for a blank or skipped line. */
function datasetLineOf(raw: RawLine, skip: number, maxRecordBytes: number): DatasetLine | null {
  if (raw.line <= skip) return null;
  const { line, end } = raw;
  if (raw.bytes === null) {
    return invalid(
      line,
      end,
      'line_too_long',
      `line ${line} is ${raw.length - (raw.cr ? 1 : 0)} bytes, over the work's maxRecordBytes of ${maxRecordBytes}`,
    );
  }
  if (isBlank(raw.bytes)) return null;
  let text: string;
  try {
    text = utf8.decode(raw.bytes);
  } catch {
    return invalid(line, end, 'invalid_utf8', `line ${line} is not valid UTF-8`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (caught) {
    return invalid(line, end, 'invalid_json', `line ${line} is not valid JSON: ${jsonProblem(caught)}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    const what = value === null ? 'null' : Array.isArray(value) ? 'an array' : `a ${typeof value}`;
    return invalid(line, end, 'not_an_object', `line ${line} is ${what}, not a JSON object`);
  }
  return { kind: 'record', line, end, record: value as DatasetRecord };
}

function invalid(line: number, end: number, code: string, message: string): DatasetLine {
  return { kind: 'invalid', line, end, error: errorItem({ stage: 'dataset', code, message, line }) };
}

/** JSON.parse's reason without the snippet of the line it quotes (record contents stay out of messages). */
function jsonProblem(caught: unknown): string {
  const message = caught instanceof Error ? caught.message : 'unparseable';
  return message
    .replace(/,? ?"(?:[^"\\]|\\.)*" is not valid JSON$/, '')
    .replace(/^Unexpected token '.*?'/, 'unexpected token');
}
