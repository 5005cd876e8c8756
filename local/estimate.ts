import { createReadStream } from 'node:fs';
import { mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { countTokens as cl100k } from 'gpt-tokenizer/encoding/cl100k_base';
import { countTokens as o200k } from 'gpt-tokenizer/encoding/o200k_base';
import { partsOf } from '../functions/core/chunker';
import { readDataset } from '../functions/core/dataset';
import { partitionsOf } from '../functions/core/id-files';
import { isImages } from '../functions/core/images';
import { isGzip } from '../functions/core/lines';
import { LineIds } from '../functions/core/prepare';
import { costOf, imagePriceOf, imagesRequestCostOf, priceOf } from '../functions/core/prices';
import { buildRequests, type IdClaims, type PreparedRequest } from '../functions/core/requests';
import { formatPromptOf } from '../functions/core/structured';
import type { Work } from '../functions/core/work';
import { ID_FILE_ENTRIES } from '../functions/steps/storage';
import { EstimateIds } from './estimate-ids';

/** Tokens a chat message adds around its content, and the tokens that prime the reply (OpenAI's cookbook). */
const MESSAGE_OVERHEAD = 3;
const REPLY_PRIMING = 3;
/** Refused bodies listed in an estimate (the rest are counted). */
const MAX_LISTED = 20;

/** The tokenizer of a model: o200k for the GPT-4o, 4.1, 5 and o-series families, cl100k for older ones. */
export function tokenizerOf(model: string): Tokenizer {
  const old = /^(gpt-4(?!o|\.)|gpt-3\.5|text-embedding-|text-davinci|davinci|babbage)/.test(model);
  return old ? CL100K : O200K;
}

/** A tokenizer by name (made once: `tokenizerOf` is asked for each request). */
interface Tokenizer {
  readonly name: string;
  readonly count: (text: string) => number;
}
const CL100K: Tokenizer = { name: 'cl100k_base', count: (t) => cl100k(t) };
const O200K: Tokenizer = { name: 'o200k_base', count: (t) => o200k(t) };

/** All text in a value (message contents, inputs, prompts), skipping inline data. */
function textsOf(value: unknown, out: string[] = []): string[] {
  if (typeof value === 'string') {
    if (!value.startsWith('data:')) out.push(value);
  } else if (Array.isArray(value)) for (const v of value) textsOf(v, out);
  else if (value && typeof value === 'object') for (const v of Object.values(value)) textsOf(v, out);
  return out;
}

/** Prompt tokens of one request body, counted with the model's tokenizer. */
export function requestTokens(endpoint: string, body: Record<string, unknown>): number {
  const { count } = tokenizerOf(String(body.model));
  // A json_schema format is shown to the model with the prompt, and billed as prompt tokens.
  const format = formatPromptOf(endpoint, body);
  const formatTokens = format === null ? 0 : count(format);
  if (endpoint === '/v1/chat/completions' && Array.isArray(body.messages)) {
    let tokens = REPLY_PRIMING + formatTokens;
    for (const message of body.messages)
      tokens += MESSAGE_OVERHEAD + textsOf(message).reduce((n, t) => n + count(t), 0);
    return tokens;
  }
  const main = body.messages ?? body.input ?? body.prompt;
  return formatTokens + textsOf(main).reduce((n, t) => n + count(t), 0);
}

/** What a run of a work over a dataset would send, and cost. */
export interface Estimate {
  readonly records: number;
  readonly requests: number;
  /** Requests the builder refused (duplicate id, too large, ...). */
  readonly refused: number;
  /**
   * Requests OpenAI would refuse for their body (`invalid_request_body`, counted in `refused`): how many,
   * and the first few with their line, param and OpenAI's message.
   */
  readonly invalidBodies: {
    readonly count: number;
    readonly first: {
      line: number | null;
      id: string | null;
      code: string;
      param: string;
      message: string;
    }[];
  };
  /** Lines that are not records, or records the upload hook failed on. */
  readonly unreadable: number;
  readonly parts: number;
  readonly inputTokens: number;
  readonly expectedOutputTokens: number;
  /** Images an images work asks for (`n` a request, 1 by default); 0 for other endpoints. */
  readonly images: number;
  readonly byModel: {
    model: string;
    requests: number;
    inputTokens: number;
    outputTokens: number;
    tokenizer: string;
    priced: boolean;
  }[];
  /** At batch prices; null when a model has no price in the table. */
  readonly costUsd: number | null;
}

/** How an estimate keeps its id files (tests make them small, to cross their bounds). */
export interface EstimateOptions {
  /** Id entries held in memory before they are written out. @default 262,144 */
  readonly entriesHeld?: number;
  /** Partitions of the id files. @default one per 64 MiB of dataset, up to 1,024 */
  readonly partitions?: number;
}

/**
 * Claims ids as a run does, numbering every request that reaches its id check: an id given twice by one
 * line is refused there (as prepare does); any other use goes to `use`, with its number, which says
 * whether it is refused (the line of the first use) or not (0).
 */
class NumberedClaims implements IdClaims {
  private next = 0;
  private readonly line = new LineIds();

  constructor(private readonly use: (id: string, line: number, seq: number) => number) {}

  claim(id: string, line: number): number {
    const sameLine = this.line.claim(id, line);
    if (sameLine !== 0) return sameLine;
    return this.use(id, line, this.next++);
  }
}

/** The id partitions of a local dataset file, as Register sizes them (a gzip file at ten times its size). */
export async function partitionsOfFile(path: string): Promise<number> {
  const { size } = await stat(path);
  const head = new Uint8Array(2);
  const file = await open(path, 'r');
  try {
    await file.read(head, 0, 2, 0);
  } finally {
    await file.close();
  }
  return partitionsOf({ bytes: size, gzipBytes: isGzip(head) ? size : 0 });
}

/**
 * Reads a local dataset through the work's `upload` hook, the request builder and the chunker, exactly as
 * Prepare does, and counts requests, parts and input tokens with a real tokenizer for each model. Output
 * tokens are the work's `expectedOutputTokens` a request (none for embeddings and moderations).
 *
 * Memory does not grow with the dataset. As in a run, an id given twice by one line is refused on the
 * spot, and ids used on different lines are found exactly afterwards ({@link EstimateIds}: id files by
 * partition in a temporary directory, read back one partition at a time). When some were used more than
 * once, the dataset is read a second time (the upload hook runs twice on each record then), refusing
 * every use after the first (as a run's Settle does), so that the figures are those of what a run would
 * send.
 */
export async function estimate<R>(
  work: Work<R>,
  datasetPath: string,
  options: EstimateOptions = {},
): Promise<Estimate> {
  const scratch = await mkdtemp(join(tmpdir(), 'openai-batch-estimate-'));
  const partitions = options.partitions ?? (await partitionsOfFile(datasetPath));
  const ids = new EstimateIds(scratch, partitions, options.entriesHeld ?? ID_FILE_ENTRIES);
  try {
    const first = await tally(
      work,
      datasetPath,
      new NumberedClaims((id, line, seq) => {
        ids.record(id, line, seq);
        return 0;
      }),
      () => ids.pending(),
    );
    if ((await ids.findDuplicates()) === 0) return first;
    // Some ids were used on several lines: the second read refuses every use after the first.
    const second = await tally(
      work,
      datasetPath,
      new NumberedClaims((id, _line, seq) => ids.refusal(id, seq)),
      () => undefined,
    );
    ids.checkAllMet();
    return second;
  } finally {
    await ids.settled().catch(() => {});
    ids.close();
    await rm(scratch, { recursive: true, force: true });
  }
}

/** One read of the dataset, its ids claimed by `claims`; `pending` is awaited after each record's requests. */
async function tally<R>(
  work: Work<R>,
  datasetPath: string,
  claims: IdClaims,
  pending: () => Promise<void> | undefined,
): Promise<Estimate> {
  const source = createReadStream(datasetPath);
  const byModel = new Map<
    string,
    { model: string; requests: number; inputTokens: number; outputTokens: number }
  >();
  let records = 0;
  let refused = 0;
  let unreadable = 0;
  const invalidBodies = { count: 0, first: [] as Estimate['invalidBodies']['first'] };
  const { endpoint } = work.settings;
  // Images are priced per image, and a video per second: neither by output tokens.
  const noOutput =
    ['/v1/embeddings', '/v1/moderations', '/v1/videos'].includes(endpoint) || isImages(endpoint);
  let images = 0;
  let imagesCost: number | null = 0;
  async function* requests(): AsyncGenerator<PreparedRequest> {
    const lines = readDataset(source, { maxRecordBytes: work.settings.maxRecordBytes });
    async function* counted() {
      for await (const line of lines) {
        records += 1;
        yield line;
      }
    }
    for await (const event of buildRequests(counted(), work, claims)) {
      if (event.kind === 'error' && event.error.stage === 'request') refused += 1;
      if (event.kind === 'error' && event.error.code === 'invalid_request_body') {
        invalidBodies.count += 1;
        const answer = (event.error.response as { error?: { code: string; param: string; message: string } })
          ?.error;
        if (answer && invalidBodies.first.length < MAX_LISTED)
          invalidBodies.first.push({
            line: event.error.line,
            id: event.error.id,
            code: answer.code,
            param: answer.param,
            message: answer.message,
          });
      }
      if (event.kind === 'error' && event.error.stage !== 'request') unreadable += 1;
      if (event.kind !== 'request') continue;
      const { body } = JSON.parse(event.request.json) as { body: Record<string, unknown> };
      const entry = byModel.get(event.request.model) ?? {
        model: event.request.model,
        requests: 0,
        inputTokens: 0,
        outputTokens: 0,
      };
      entry.requests += 1;
      entry.inputTokens += requestTokens(work.settings.endpoint, body);
      entry.outputTokens += noOutput ? 0 : work.settings.expectedOutputTokens;
      if (isImages(endpoint)) {
        const cost = imagesRequestCostOf(body);
        images += typeof body.n === 'number' ? body.n : 1;
        imagesCost = imagesCost === null || cost === null ? null : imagesCost + cost;
      }
      byModel.set(entry.model, entry);
      yield event.request;
      const waiting = pending();
      if (waiting) await waiting;
    }
  }
  let parts = 0;
  for await (const event of partsOf(requests(), work.settings)) if (event.kind === 'close') parts += 1;
  const models = [...byModel.values()];
  return {
    records,
    requests: models.reduce((n, m) => n + m.requests, 0),
    refused,
    invalidBodies,
    unreadable,
    parts,
    inputTokens: models.reduce((n, m) => n + m.inputTokens, 0),
    expectedOutputTokens: models.reduce((n, m) => n + m.outputTokens, 0),
    byModel: models.map((m) => ({
      ...m,
      tokenizer: tokenizerOf(m.model).name,
      priced: (isImages(endpoint) ? imagePriceOf(m.model, 'auto', 'auto') : priceOf(m.model)) !== null,
    })),
    images,
    // Images at their price per image (the prompt's few text tokens are not counted).
    costUsd: isImages(endpoint) ? imagesCost && Math.round(imagesCost * 1e9) / 1e9 : costOf(models),
  };
}
