import { mkdtempSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import busboy from 'busboy';
import { z } from 'zod';
import { ApiError, missingParameter } from './api-error';
import { BATCH_ENDPOINTS, BatchEngine, type BatchObject, type EngineOptions } from './batches';
import { type Clock, systemClock, unixSeconds } from './clock';
import { type FaultKind, type FaultOptions, FaultPlan, type OutageKind } from './faults';
import { type FileObject, FileStore, UPLOAD_PURPOSES } from './files';
import { Ids, Random } from './random';
import { type WebhookOptions, WebhookSender } from './webhooks';

/** How an emulator is started; every field has a default. */
export interface EmulatorOptions {
  /** Port on 127.0.0.1; 0 picks a free one. @default 0 */
  readonly port?: number;
  /** Loopback address to listen on (the emulator never listens beyond this machine). @default '127.0.0.1' */
  readonly host?: string;
  /** Keep files and state in this directory so that they survive a restart; else a temporary one. */
  readonly dataDir?: string;
  /** Seed for ids, answers and random faults: the same seed gives the same run. */
  readonly seed?: number;
  /** The clock; a ManualClock lets tests pass a 24h window in milliseconds. @default wall clock */
  readonly clock?: Clock;
  /** Accept only this bearer key (else any non-empty key). */
  readonly apiKey?: string;
  /** Time a batch spends validating. @default 1000 */
  readonly validationMs?: number;
  /** Requests processed a second. @default 1000 */
  readonly requestsPerSecond?: number;
  /** @default 200 */
  readonly finalizingMs?: number;
  /** @default 1000 */
  readonly cancellingMs?: number;
  /** @default 86400000 (24 h) */
  readonly completionWindowMs?: number;
  /** Prompt tokens a model may have in progress at once; a batch beyond fails with token_limit_exceeded. */
  readonly enqueuedTokenLimit?: number;
  /** @default 50000 */
  readonly maxRequestsPerBatch?: number;
  /** @default 50000 */
  readonly maxEmbeddingInputsPerBatch?: number;
  /** Largest upload with purpose batch. @default 200000000 */
  readonly maxBatchFileBytes?: number;
  /** Largest upload. @default 512000000 */
  readonly maxFileBytes?: number;
  /** Models the Batch API accepts; others fail validation with model_not_found. @default any */
  readonly models?: readonly string[];
  /** Embedding size when a request sets no `dimensions`. @default 256 */
  readonly embeddingDimensions?: number;
  readonly faults?: FaultOptions;
  readonly webhook?: WebhookOptions;
  /** How often batches move on their own (ms); 0 leaves it to requests and `settle()`. @default 50 */
  readonly tickMs?: number;
}

/** A running emulator. */
export interface Emulator {
  /** The base URL to give an OpenAI client: `http://127.0.0.1:PORT/v1`. */
  readonly url: string;
  readonly port: number;
  readonly engine: BatchEngine;
  readonly files: FileStore;
  readonly faults: FaultPlan;
  readonly webhooks: WebhookSender | null;
  /** Moves batches as far as the clock allows and waits for their jobs. */
  settle(): Promise<void>;
  /** Stops listening, saves state (or removes the temporary directory). */
  stop(): Promise<void>;
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;
const UNAUTHENTICATED =
  "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username. You can obtain an API key from https://platform.openai.com/account/api-keys.";

/** What OpenAI answers to every request during an outage of this kind (messages as OpenAI words them). */
function outageError(kind: OutageKind): ApiError {
  switch (kind) {
    case 'unavailable':
      return new ApiError(503, 'The engine is currently overloaded, please try again later.', 'server_error');
    case 'unauthorized':
      return new ApiError(
        401,
        'Incorrect API key provided: sk-*****. You can find your API key at https://platform.openai.com/account/api-keys.',
        'invalid_request_error',
        'invalid_api_key',
      );
    case 'quota':
      return new ApiError(
        429,
        'You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.',
        'insufficient_quota',
        'insufficient_quota',
      );
  }
}

/** A create-batch body is a JSON object; each field is then checked with OpenAI's own error codes. */
const CreateBatchBody = z.record(z.string(), z.unknown());

const ExpiresAfter = z.object({
  anchor: z.literal('created_at'),
  seconds: z.number().int().min(3600).max(2_592_000),
});
/** A list's `limit` query parameter: its default when absent, else a whole number in 1..max or a 400. */
function limitOf(query: URLSearchParams, max: number, fallback: number): number {
  const raw = query.get('limit');
  if (raw === null) return fallback;
  const value = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(value))
    throw new ApiError(
      400,
      "Invalid type for 'limit': expected an integer, but got a string instead.",
      'invalid_request_error',
      'invalid_type',
      'limit',
    );
  if (!Number.isInteger(value))
    throw new ApiError(
      400,
      "Invalid type for 'limit': expected an integer, but got a decimal number instead.",
      'invalid_request_error',
      'invalid_type',
      'limit',
    );
  if (value < 1)
    throw new ApiError(
      400,
      `Invalid 'limit': integer below minimum value. Expected a value >= 1, but got ${value} instead.`,
      'invalid_request_error',
      'integer_below_min_value',
      'limit',
    );
  if (value > max)
    throw new ApiError(
      400,
      `Invalid 'limit': integer above maximum value. Expected a value <= ${max}, but got ${value} instead.`,
      'invalid_request_error',
      'integer_above_max_value',
      'limit',
    );
  return value;
}

/** What a route answers: JSON, or a stream of bytes. */
type Reply =
  | { status: number; json: unknown }
  | { status: number; stream: Readable; headers: Record<string, string> };

/**
 * Starts the OpenAI Batch emulator: the Files and Batches APIs, faithful enough that the official
 * `openai` client cannot tell it from OpenAI, on a loopback port.
 */
export async function startEmulator(options: EmulatorOptions = {}): Promise<Emulator> {
  const host = options.host ?? '127.0.0.1';
  if (!LOOPBACK.test(host)) throw new Error(`the emulator listens on loopback only, not on ${host}`);
  const clock = options.clock ?? systemClock;
  const random = new Random(options.seed);
  const ids = new Ids(random);
  const persistent = options.dataDir !== undefined;
  const dir = options.dataDir ?? mkdtempSync(join(tmpdir(), 'openai-emulator-'));
  const files = new FileStore(join(dir, 'files'), clock, ids);
  const faults = new FaultPlan(options.faults);
  const webhooks = options.webhook ? new WebhookSender(options.webhook, ids) : null;
  const statePath = join(dir, 'state.json');

  let saveScheduled = false;
  const save = () => {
    if (!persistent || saveScheduled) return;
    saveScheduled = true;
    setImmediate(() => {
      saveScheduled = false;
      writeState();
    });
  };
  const writeState = () => {
    if (!persistent) return;
    const state = { files: [...files.files.values()], batches: engine.snapshot(), created: engine.created };
    writeFileSync(`${statePath}.tmp`, JSON.stringify(state));
    renameSync(`${statePath}.tmp`, statePath);
  };

  const engineOptions: EngineOptions = {
    validationMs: options.validationMs ?? 1000,
    requestsPerSecond: options.requestsPerSecond ?? 1000,
    finalizingMs: options.finalizingMs ?? 200,
    cancellingMs: options.cancellingMs ?? 1000,
    completionWindowMs: options.completionWindowMs ?? 24 * 3600 * 1000,
    enqueuedTokenLimit: options.enqueuedTokenLimit,
    limits: {
      maxRequests: options.maxRequestsPerBatch ?? 50_000,
      maxEmbeddingInputs: options.maxEmbeddingInputsPerBatch ?? 50_000,
      models: options.models,
    },
    answers: { seed: options.seed ?? 0, embeddingDimensions: options.embeddingDimensions ?? 256 },
  };
  const engine = new BatchEngine(
    files,
    clock,
    ids,
    engineOptions,
    (batch: BatchObject, terminal: boolean) => {
      if (terminal) webhooks?.notify(batch, unixSeconds(clock.now()));
      save();
    },
  );

  if (persistent) {
    try {
      const saved = JSON.parse(readFileSync(statePath, 'utf8')) as {
        files: FileObject[];
        batches: unknown[];
        created: number;
      };
      for (const file of saved.files) files.files.set(file.id, file);
      files.prune();
      engine.restore(saved.batches);
      engine.created = saved.created;
    } catch (caught) {
      if ((caught as NodeJS.ErrnoException).code !== 'ENOENT') throw caught;
    }
  }

  const maxBatchFileBytes = options.maxBatchFileBytes ?? 200_000_000;
  const maxFileBytes = options.maxFileBytes ?? 512_000_000;

  async function route(
    request: IncomingMessage,
    method: string,
    path: string,
    query: URLSearchParams,
  ): Promise<Reply> {
    const parts = path.split('/').filter(Boolean); // ['v1', 'files', id, 'content']
    if (parts[0] !== 'v1') throw new ApiError(404, `Invalid URL (${method} ${path})`);
    const [, collection, id, action] = parts;
    if (collection === 'files') {
      if (method === 'POST' && !id) return { status: 200, json: await upload(request) };
      if (method === 'GET' && !id) return { status: 200, json: listFiles(query) };
      if (method === 'GET' && id && !action) return { status: 200, json: files.get(id) };
      if (method === 'GET' && id && action === 'content') {
        const file = files.get(id);
        return {
          status: 200,
          stream: files.read(id),
          headers: { 'content-type': 'application/octet-stream', 'content-length': String(file.bytes) },
        };
      }
      if (method === 'DELETE' && id && !action) {
        await files.delete(id);
        save();
        return { status: 200, json: { id, object: 'file', deleted: true } };
      }
    }
    if (collection === 'batches') {
      engine.tick();
      if (method === 'POST' && !id)
        return { status: 200, json: engine.create(createBatchRequest(await readJson(request))) };
      if (method === 'GET' && !id) {
        const { data, hasMore } = engine.list(query.get('after') ?? undefined, limitOf(query, 100, 20));
        return {
          status: 200,
          json: {
            object: 'list',
            data,
            first_id: data[0]?.id ?? null,
            last_id: data.at(-1)?.id ?? null,
            has_more: hasMore,
          },
        };
      }
      if (method === 'GET' && id && !action) return { status: 200, json: engine.get(id) };
      if (method === 'POST' && id && action === 'cancel') return { status: 200, json: engine.cancel(id) };
    }
    throw new ApiError(404, `Invalid URL (${method} ${path})`);
  }

  function listFiles(query: URLSearchParams) {
    const order = query.get('order') === 'asc' ? 'asc' : 'desc';
    let all = files.list(query.get('purpose') ?? undefined, order);
    const after = query.get('after');
    if (after) {
      const index = all.findIndex((f) => f.id === after);
      all = index === -1 ? [] : all.slice(index + 1);
    }
    const limit = limitOf(query, 10_000, 10_000);
    const data = all.slice(0, limit);
    return {
      object: 'list',
      data,
      first_id: data[0]?.id ?? null,
      last_id: data.at(-1)?.id ?? null,
      has_more: all.length > limit,
    };
  }

  async function upload(request: IncomingMessage): Promise<FileObject> {
    const { fields, stored } = await receiveMultipart(request, files, maxFileBytes);
    const discard = async (error: ApiError): Promise<never> => {
      if (stored) await files.delete(stored.id);
      throw error;
    };
    if (!stored) throw missingParameter('file');
    const purpose = fields.purpose;
    if (!purpose) return discard(missingParameter('purpose'));
    if (!(UPLOAD_PURPOSES as readonly string[]).includes(purpose)) {
      return discard(
        new ApiError(
          400,
          `Invalid value: '${purpose}'. Supported values are: ${UPLOAD_PURPOSES.map((p) => `'${p}'`).join(', ')}.`,
          'invalid_request_error',
          'invalid_value',
          'purpose',
        ),
      );
    }
    if (purpose === 'batch' && !stored.filename.endsWith('.jsonl')) {
      return discard(
        new ApiError(400, 'Invalid file format for Batch API. Must be .jsonl', 'invalid_request_error'),
      );
    }
    if (purpose === 'batch' && stored.bytes > maxBatchFileBytes) {
      return discard(new ApiError(400, 'File is too large.', 'invalid_request_error', null, 'file'));
    }
    let expiresAfter: number | undefined;
    if (fields['expires_after[anchor]'] !== undefined || fields['expires_after[seconds]'] !== undefined) {
      const parsed = ExpiresAfter.safeParse({
        anchor: fields['expires_after[anchor]'],
        seconds: Number(fields['expires_after[seconds]']),
      });
      if (!parsed.success) {
        return discard(
          new ApiError(
            400,
            "Invalid 'expires_after': anchor must be 'created_at' and seconds between 3600 and 2592000.",
            'invalid_request_error',
            'invalid_value',
            'expires_after',
          ),
        );
      }
      expiresAfter = parsed.data.seconds;
    }
    stored.purpose = purpose;
    // Batch input files expire after 30 days by default; OpenAI gives files of other purposes no expiry.
    if (expiresAfter !== undefined) stored.expires_at = stored.created_at + expiresAfter;
    else if (purpose !== 'batch') stored.expires_at = null;
    save();
    return stored;
  }

  const server: Server = createServer((request, response) => {
    handle(request, response).catch(() => response.destroy());
  });

  async function handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const requestId = ids.request();
    const url = new URL(request.url ?? '/', 'http://emulator');
    const method = request.method ?? 'GET';
    const fault: FaultKind | null = faults.draw(method, url.pathname);
    const send = (status: number, json: unknown, headers: Record<string, string> = {}) => {
      const body = JSON.stringify(json);
      response.writeHead(status, {
        'content-type': 'application/json',
        'x-request-id': requestId,
        ...headers,
      });
      response.end(body);
    };
    const sendError = (error: ApiError) => {
      request.resume();
      send(error.status, error.body(), error.headers);
    };
    const outage = faults.outageAt(method, url.pathname, clock.now());
    if (outage) return sendError(outageError(outage));
    if (fault === 'drop_before') {
      request.socket.destroy();
      return;
    }
    if (fault === 'rate_limit' || fault === 'server_error' || fault === 'unavailable') {
      const error =
        fault === 'rate_limit'
          ? new ApiError(
              429,
              'Rate limit reached for requests. Please try again in 20ms.',
              'requests',
              'rate_limit_exceeded',
              null,
              {
                'retry-after-ms': '20',
                'retry-after': '1',
              },
            )
          : fault === 'server_error'
            ? new ApiError(
                500,
                'The server had an error while processing your request. Sorry about that!',
                'server_error',
              )
            : new ApiError(
                503,
                'The engine is currently overloaded, please try again later.',
                'server_error',
              );
      sendError(error);
      return;
    }
    if (fault === 'slow') await new Promise((resolve) => setTimeout(resolve, faults.slowMs));

    const auth = request.headers.authorization;
    const key = auth?.startsWith('Bearer ') ? auth.slice('Bearer '.length).trim() : '';
    if (!key) return sendError(new ApiError(401, UNAUTHENTICATED, 'invalid_request_error'));
    if (options.apiKey !== undefined && key !== options.apiKey) {
      const shown = key.length > 8 ? `${key.slice(0, 3)}*****${key.slice(-4)}` : '*****';
      return sendError(
        new ApiError(
          401,
          `Incorrect API key provided: ${shown}. You can find your API key at https://platform.openai.com/account/api-keys.`,
          'invalid_request_error',
          'invalid_api_key',
        ),
      );
    }

    let reply: Reply;
    try {
      reply = await route(request, method, url.pathname, url.searchParams);
    } catch (caught) {
      if (caught instanceof ApiError) return sendError(caught);
      return sendError(
        new ApiError(
          500,
          `Emulator error: ${caught instanceof Error ? caught.message : String(caught)}`,
          'server_error',
        ),
      );
    }
    // The server has acted; these faults hide that from the client.
    if (fault === 'drop_after') {
      if ('stream' in reply) reply.stream.destroy();
      response.socket?.destroy();
      return;
    }
    if (fault === 'error_after') {
      if ('stream' in reply) reply.stream.destroy();
      return sendError(
        new ApiError(
          500,
          'The server had an error while processing your request. Sorry about that!',
          'server_error',
        ),
      );
    }
    if ('json' in reply) return send(reply.status, reply.json);
    response.writeHead(reply.status, { 'x-request-id': requestId, ...reply.headers });
    await pipeline(reply.stream, response);
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const tickMs = options.tickMs ?? 50;
  const ticker = tickMs > 0 ? setInterval(() => engine.tick(), tickMs) : null;
  ticker?.unref();

  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}/v1`,
    port,
    engine,
    files,
    faults,
    webhooks,
    settle: () => engine.settle(),
    async stop() {
      if (ticker) clearInterval(ticker);
      webhooks?.stop();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await engine.idle();
      if (persistent) writeState();
      else files.destroy();
    },
  };
}

/** Checks a create-batch body the way OpenAI does, with its error codes. */
function createBatchRequest(raw: unknown) {
  const body = CreateBatchBody.safeParse(raw);
  if (!body.success)
    throw new ApiError(400, 'The request body must be a JSON object.', 'invalid_request_error');
  const { input_file_id, endpoint, completion_window, metadata, output_expires_after } = body.data;
  for (const [name, value] of Object.entries({ input_file_id, endpoint, completion_window })) {
    if (value === undefined || value === null) throw missingParameter(name);
    if (typeof value !== 'string') {
      throw new ApiError(
        400,
        `Invalid type for '${name}': expected a string, but got ${typeof value} instead.`,
        'invalid_request_error',
        'invalid_type',
        name,
      );
    }
  }
  if (!(BATCH_ENDPOINTS as readonly unknown[]).includes(endpoint)) {
    throw new ApiError(
      400,
      `Invalid value: '${String(endpoint)}'. Supported values are: ${BATCH_ENDPOINTS.map((e) => `'${e}'`).join(', ')}.`,
      'invalid_request_error',
      'invalid_value',
      'endpoint',
    );
  }
  if (completion_window !== '24h') {
    throw new ApiError(
      400,
      `Invalid value: '${String(completion_window)}'. Supported values are: '24h'.`,
      'invalid_request_error',
      'invalid_value',
      'completion_window',
    );
  }
  let checkedMetadata: Record<string, string> | null = null;
  if (metadata !== undefined && metadata !== null) {
    if (typeof metadata !== 'object' || Array.isArray(metadata)) {
      throw new ApiError(
        400,
        "Invalid type for 'metadata': expected an object.",
        'invalid_request_error',
        'invalid_type',
        'metadata',
      );
    }
    const entries = Object.entries(metadata);
    if (entries.length > 16)
      throw new ApiError(
        400,
        'Invalid metadata: at most 16 keys are allowed.',
        'invalid_request_error',
        'invalid_value',
        'metadata',
      );
    for (const [key, value] of entries) {
      if (typeof value !== 'string') {
        throw new ApiError(
          400,
          `Invalid type for 'metadata.${key}': expected a string, but got ${typeof value} instead.`,
          'invalid_request_error',
          'invalid_type',
          `metadata.${key}`,
        );
      }
      if (key.length > 64 || value.length > 512) {
        throw new ApiError(
          400,
          `Invalid metadata '${key}': keys are at most 64 characters and values at most 512.`,
          'invalid_request_error',
          'invalid_value',
          `metadata.${key}`,
        );
      }
    }
    checkedMetadata = Object.fromEntries(entries) as Record<string, string>;
  }
  let outputExpiresAfter: number | null = null;
  if (output_expires_after !== undefined && output_expires_after !== null) {
    const parsed = ExpiresAfter.safeParse(output_expires_after);
    if (!parsed.success) {
      throw new ApiError(
        400,
        "Invalid 'output_expires_after': anchor must be 'created_at' and seconds between 3600 and 2592000.",
        'invalid_request_error',
        'invalid_value',
        'output_expires_after',
      );
    }
    outputExpiresAfter = parsed.data.seconds;
  }
  return {
    input_file_id: input_file_id as string,
    endpoint: endpoint as string,
    completion_window,
    metadata: checkedMetadata,
    outputExpiresAfter,
  };
}

/** A JSON request body (at most 1 MiB). */
async function readJson(request: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > 1024 * 1024) throw new ApiError(413, 'Request body too large.', 'invalid_request_error');
    chunks.push(chunk);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new ApiError(400, 'We could not parse the JSON body of your request.', 'invalid_request_error');
  }
}

/** The fields and the one file of a multipart upload; the file streams straight to disk. */
function receiveMultipart(
  request: IncomingMessage,
  files: FileStore,
  maxBytes: number,
): Promise<{ fields: Record<string, string>; stored: FileObject | null }> {
  return new Promise((resolve, reject) => {
    let parser: busboy.Busboy;
    try {
      parser = busboy({ headers: request.headers, limits: { files: 1, fields: 20, fieldSize: 4096 } });
    } catch {
      reject(
        new ApiError(
          400,
          "Expected a multipart/form-data body with a 'file' and a 'purpose'.",
          'invalid_request_error',
        ),
      );
      return;
    }
    const fields: Record<string, string> = {};
    let storing: Promise<FileObject> | null = null;
    parser.on('field', (name, value) => {
      fields[name] = value;
    });
    parser.on('file', (name, stream, info) => {
      if (name !== 'file' || storing) {
        stream.resume();
        return;
      }
      storing = files.write(
        Readable.from(stream),
        { filename: info.filename ?? 'upload', purpose: 'pending' },
        maxBytes,
      );
      storing.catch(() => stream.resume());
    });
    parser.on('close', () => {
      if (!storing) return resolve({ fields, stored: null });
      storing.then((stored) => resolve({ fields, stored }), reject);
    });
    parser.on('error', (error) =>
      reject(new ApiError(400, `Malformed multipart body: ${String(error)}`, 'invalid_request_error')),
    );
    request.pipe(parser);
  });
}
