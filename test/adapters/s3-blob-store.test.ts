import { CreateBucketCommand, GetObjectTaggingCommand, S3Client } from '@aws-sdk/client-s3';
import { describe, expect, it } from 'vitest';
import { PART_SIZES, type PartSizes, S3BlobStore } from '../../functions/adapters/s3-blob-store';
import { DatasetError } from '../../functions/core/errors';
import { runKeys } from '../../functions/core/run';
import { writeAll } from '../../functions/steps/storage';
import { localS3Client } from '../../local/stand-ins';
import { localS3 } from '../support/local-environment';
import { motoClientConfig, startMoto } from '../support/moto';
import { chunksOf, collect } from '../support/streams';

const shared = localS3('openai-batch-blobs-', 'blobs');
const tags = async (key: string) =>
  (await shared.s3.client.send(new GetObjectTaggingCommand({ Bucket: shared.s3.bucket, Key: key }))).TagSet ??
  [];

describe('S3BlobStore', () => {
  it('tags request files and checkpoints as running, and leaves results and datasets untagged', async () => {
    const keys = runKeys('run-1');
    const intermediate = 'openai-batch-intermediate';
    await shared.blobs.write(keys.requests(0), chunksOf('{"custom_id":"a"}\n'));
    await writeAll(shared.blobs, keys.lane(0), new Uint8Array(16));
    await shared.blobs.write(keys.outputs(0), chunksOf('{"id":"a"}\n'));
    await writeAll(shared.blobs, keys.summary, '{}');
    await shared.blobs.write('inputs/w/data.jsonl', chunksOf('{}\n'));
    expect(await tags(keys.requests(0))).toEqual([{ Key: intermediate, Value: 'running' }]);
    expect(await tags(keys.lane(0))).toEqual([{ Key: intermediate, Value: 'running' }]);
    expect(await tags(keys.outputs(0))).toEqual([]);
    expect(await tags(keys.summary)).toEqual([]);
    expect(await tags('inputs/w/data.jsonl')).toEqual([]);
  });

  it('marks an intermediate object ended and running again, and says when the object is gone', async () => {
    const key = runKeys('run-2').requests(3);
    await shared.blobs.write(key, chunksOf('{"custom_id":"a"}\n'));
    expect(await shared.blobs.markIntermediate(key, 'ended')).toBe(true);
    expect(await tags(key)).toEqual([{ Key: 'openai-batch-intermediate', Value: 'ended' }]);
    expect(await shared.blobs.markIntermediate(key, 'running')).toBe(true);
    expect(await tags(key)).toEqual([{ Key: 'openai-batch-intermediate', Value: 'running' }]);
    await shared.blobs.delete([key]);
    expect(await shared.blobs.markIntermediate(key, 'ended')).toBe(false);
  });

  it('reads from a byte offset, and nothing from the very end', async () => {
    await shared.blobs.write('ranged.txt', chunksOf('0123456789'));
    expect(Buffer.concat(await collect(shared.blobs.read('ranged.txt', 4))).toString()).toBe('456789');
    expect(await collect(shared.blobs.read('ranged.txt', 10))).toEqual([]);
  });

  it('reads a range up to its end with one GET of those bytes alone, which is read to its end', async () => {
    const key = 'bounded.txt';
    await shared.blobs.write(key, chunksOf('0123456789'));
    const etag = (await shared.blobs.head(key))?.etag ?? '';
    const ranges: (string | undefined)[] = [];
    const probe = new S3BlobStore(localS3Client(shared.s3.endpoint), shared.s3.bucket);
    (probe as unknown as { s3: S3Client }).s3.middlewareStack.add(
      (next, context) => (args) => {
        if (context.commandName === 'GetObjectCommand')
          ranges.push((args.request as { headers?: Record<string, string> }).headers?.range);
        return next(args);
      },
      { step: 'finalizeRequest', priority: 'low', name: 'ranges' },
    );
    const text = async (start: number, end: number, tag?: string) =>
      Buffer.concat(await collect(probe.read(key, start, tag, end))).toString();
    expect(await text(2, 5)).toBe('234');
    expect(await text(0, 2, etag)).toBe('01');
    expect(await text(7, 50)).toBe('789'); // past the object's end: to its end
    expect(await text(4, 4, etag)).toBe(''); // nothing asked: no GET
    expect(ranges).toEqual(['bytes=2-4', 'bytes=0-1', 'bytes=7-49']);
    // Any range of an empty object is not satisfiable (416): nothing, as from the very end.
    await shared.blobs.write('bounded-empty.txt', chunksOf(''));
    expect(await collect(probe.read('bounded-empty.txt', 0, undefined, 1))).toEqual([]);
    // An empty range still checks the version.
    await shared.blobs.write(key, chunksOf('changed'));
    await expect(text(4, 4, etag)).rejects.toThrow(DatasetError);
    await expect(text(0, 2, etag)).rejects.toThrow(DatasetError);
  });

  it('reads only the version of an object it is given the ETag of, and names the object that changed or went', async () => {
    const key = 'versioned.jsonl';
    await shared.blobs.write(key, chunksOf('{"id":1}\n{"id":2}\n'));
    const listed = (await shared.blobs.head(key))?.etag ?? '';
    expect(listed).not.toBe('');
    expect(Buffer.concat(await collect(shared.blobs.read(key, 9, listed))).toString()).toBe('{"id":2}\n');
    expect(await collect(shared.blobs.read(key, 18, listed))).toEqual([]);
    // The same ETag unquoted, as some S3-compatible stores list it, is the same version.
    expect(await collect(shared.blobs.read(key, 9, listed.replaceAll('"', '')))).toHaveLength(1);
    await shared.blobs.write(key, chunksOf('{"id":1}\n{"id":2}\n{"id":3}\n'));
    const changed = new RegExp(
      `^versioned\\.jsonl changed after this run listed it \\(it had ETag ${listed}, and now has ETag "`,
    );
    await expect(collect(shared.blobs.read(key, 0, listed))).rejects.toThrow(changed);
    await expect(collect(shared.blobs.read(key, 9, listed))).rejects.toBeInstanceOf(DatasetError);
    // Shorter now: the planned offset is past its end.
    await shared.blobs.write(key, chunksOf('{}\n'));
    await expect(collect(shared.blobs.read(key, 18, listed))).rejects.toThrow(changed);
    await shared.blobs.delete([key]);
    await expect(collect(shared.blobs.read(key, 0, listed))).rejects.toThrow(/and now is gone\)/);
    // Without an ETag, whatever is there now.
    await shared.blobs.write(key, chunksOf('{}\n'));
    expect(Buffer.concat(await collect(shared.blobs.read(key))).toString()).toBe('{}\n');
  });

  it("takes S3's own refusal of another version (If-Match, 412) as the object changed (moto's S3)", async () => {
    const moto = await startMoto();
    try {
      const client = new S3Client({ ...motoClientConfig(moto.endpoint), forcePathStyle: true });
      await client.send(new CreateBucketCommand({ Bucket: 'versions' }));
      const blobs = new S3BlobStore(client, 'versions');
      await blobs.write('data.jsonl', chunksOf('{"id":1}\n'));
      const listed = (await blobs.head('data.jsonl'))?.etag ?? '';
      expect(Buffer.concat(await collect(blobs.read('data.jsonl', 0, listed))).toString()).toBe('{"id":1}\n');
      await blobs.write('data.jsonl', chunksOf('{"id":2}\n'));
      const sent: string[] = [];
      client.middlewareStack.add(
        (next, context) => async (args) => {
          try {
            return await next(args);
          } catch (caught) {
            sent.push(`${context.commandName} ${(caught as { name?: string }).name}`);
            throw caught;
          }
        },
        { step: 'initialize' },
      );
      await expect(collect(blobs.read('data.jsonl', 0, listed))).rejects.toThrow(
        /^data\.jsonl changed after this run listed it/,
      );
      expect(sent).toEqual(['GetObjectCommand PreconditionFailed']);
    } finally {
      moto.stop();
    }
  });

  it("fails a delete S3 answers with keys it did not delete, naming the first (S3's per-key refusals)", async () => {
    // s3rver refuses no key: S3's answer is rewritten on its way back, the one thing no stand-in does.
    const client = localS3Client(shared.s3.endpoint);
    client.middlewareStack.add(
      (next, context) => async (args) => {
        const result = await next(args);
        if (context.commandName !== 'DeleteObjectsCommand') return result;
        const output = result.output as { Errors?: unknown[] };
        output.Errors = [{ Key: 'gone/b', Code: 'SlowDown', Message: 'Please reduce your request rate.' }];
        return result;
      },
      { step: 'initialize' },
    );
    const blobs = new S3BlobStore(client, shared.s3.bucket);
    await blobs.write('gone/a', chunksOf('a'));
    await expect(blobs.delete(['gone/a', 'gone/b'])).rejects.toThrow(
      'S3 did not delete 1 of 2 objects, the first gone/b: SlowDown Please reduce your request rate.',
    );
    // Without refusals (the store's own client), missing keys are no error.
    await shared.blobs.delete(['gone/a', 'never/there']);
    expect(await shared.blobs.head('gone/a')).toBeNull();
  });

  it('writes bodies of several parts, exactly one part and none, each read back byte for byte', async () => {
    const part = 5 * 1024 * 1024;
    const bytes = (n: number, seed: number) => {
      const out = Buffer.allocUnsafe(n);
      for (let i = 0; i < n; i++) out[i] = (i * 31 + seed) & 0xff;
      return out;
    };
    async function* inChunks(data: Buffer, size: number): AsyncGenerator<Uint8Array> {
      for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size);
    }
    // One after another, so that the second reuses the first's part buffer.
    const cases = [
      { key: 'parts/several', data: bytes(2 * part + 12_345, 1), chunk: 256 * 1024 },
      { key: 'parts/several-again', data: bytes(2 * part + 1, 2), chunk: 3 * part },
      { key: 'parts/one', data: bytes(part, 3), chunk: 100_000 },
      { key: 'parts/small', data: bytes(70_000, 4), chunk: 1000 },
      { key: 'parts/empty', data: Buffer.alloc(0), chunk: 1 },
    ];
    for (const c of cases)
      expect(await shared.blobs.write(c.key, inChunks(c.data, c.chunk))).toBe(c.data.length);
    for (const c of cases)
      expect(Buffer.concat(await collect(shared.blobs.read(c.key))).equals(c.data), c.key).toBe(true);
  });

  it('sends larger parts past the first ones, as the part sizes say, and refuses a body past the last part with no object left', async () => {
    const MiB = 1024 * 1024;
    // PART_SIZES: 5 MiB parts up to 9.8 GiB, larger ones after, 10,000 parts (S3's most) reaching 283 GiB.
    expect([1, 2000, 2001, 4000, 4001, 10_000].map((n) => PART_SIZES.bytes(n) / MiB)).toEqual([
      5, 5, 20, 20, 40, 40,
    ]);
    let most = 0;
    for (let n = 1; n <= PART_SIZES.most; n++) most += PART_SIZES.bytes(n);
    expect(most / 1024 ** 3).toBeGreaterThan(280);
    expect(PART_SIZES.most).toBe(10_000);
    // The same rule on a small scale: parts of 5, then 6 MiB, three at most.
    const sizes: PartSizes = { bytes: (n) => (n === 1 ? 5 : 6) * MiB, most: 3 };
    const probe = new S3BlobStore(localS3Client(shared.s3.endpoint), shared.s3.bucket, sizes);
    const sent: number[] = [];
    (probe as unknown as { s3: S3Client }).s3.middlewareStack.add(
      (next, context) => (args) => {
        if (context.commandName === 'UploadPartCommand')
          sent.push(
            Number((args.request as { headers?: Record<string, string> }).headers?.['content-length']),
          );
        return next(args);
      },
      { step: 'finalizeRequest', priority: 'low', name: 'parts' },
    );
    const body = (bytes: number) => {
      const bytesOf = Buffer.allocUnsafe(bytes);
      for (let i = 0; i < bytes; i++) bytesOf[i] = i % 251;
      return bytesOf;
    };
    const whole = body(17 * MiB);
    await probe.write('grown/ok', chunksOf(whole));
    expect(sent.map((n) => n / MiB)).toEqual([5, 6, 6]);
    expect(Buffer.concat(await collect(probe.read('grown/ok'))).equals(whole)).toBe(true);
    await expect(probe.write('grown/over', chunksOf(body(17 * MiB + 1)))).rejects.toThrow(
      /grown\/over is larger than an upload can be here: 3 parts, 0\.0 GiB/,
    );
    expect(await probe.head('grown/over')).toBeNull();
  });

  it('leaves the bodies of PutObject and UploadPart out of the signature, and nothing else', async () => {
    // The headers as signed and sent, read from the client's own stack after signing.
    const sent: { command: string; sha256: string | undefined }[] = [];
    const probe = new S3BlobStore(localS3Client(shared.s3.endpoint), shared.s3.bucket);
    const client = (probe as unknown as { s3: S3Client }).s3;
    client.middlewareStack.add(
      (next, context) => (args) => {
        const headers = (args.request as { headers?: Record<string, string> }).headers ?? {};
        sent.push({ command: String(context.commandName), sha256: headers['x-amz-content-sha256'] });
        return next(args);
      },
      { step: 'finalizeRequest', priority: 'low', name: 'probe' },
    );
    await probe.write('unsigned/small', chunksOf('{"a":1}\n'));
    await probe.write('unsigned/large', chunksOf('x'.repeat(6 * 1024 * 1024)));
    await probe.head('unsigned/small');
    const by = (command: string) => sent.filter((s) => s.command === command).map((s) => s.sha256);
    expect(by('PutObjectCommand')).toEqual(['UNSIGNED-PAYLOAD']);
    expect(by('UploadPartCommand')).toEqual(['UNSIGNED-PAYLOAD', 'UNSIGNED-PAYLOAD']);
    expect(by('HeadObjectCommand')).not.toContain('UNSIGNED-PAYLOAD');
    expect(Buffer.concat(await collect(probe.read('unsigned/large'))).length).toBe(6 * 1024 * 1024);
  });

  it("fills the next part while one is sent, and fails with S3's refusal of a part, leaving no object", async () => {
    const part = 5 * 1024 * 1024;
    // Part 1's UploadPart is held until the body has given the bytes of part 3: a writer that waited for
    // each part before filling the next would never get there (and the test would time out).
    let reachedThird!: () => void;
    const third = new Promise<void>((resolve) => {
      reachedThird = resolve;
    });
    const probe = new S3BlobStore(localS3Client(shared.s3.endpoint), shared.s3.bucket);
    const client = (probe as unknown as { s3: S3Client }).s3;
    let refuse = 0;
    client.middlewareStack.add(
      (next, context) => async (args) => {
        const input = args.input as { PartNumber?: number };
        if (context.commandName === 'UploadPartCommand' && input.PartNumber === 1) await third;
        // A refusal s3rver cannot be made to give: a mock of S3's answer, the only one in this file.
        if (context.commandName === 'UploadPartCommand' && input.PartNumber === refuse)
          throw Object.assign(new Error('part refused'), { name: 'InternalError' });
        return next(args);
      },
      { step: 'initialize', name: 'hold' },
    );
    async function* body(): AsyncGenerator<Uint8Array> {
      yield Buffer.alloc(part, 1);
      yield Buffer.alloc(part, 2);
      reachedThird();
      yield Buffer.alloc(part, 3);
      yield Buffer.alloc(10, 4);
    }
    expect(await probe.write('pipelined/whole', body())).toBe(3 * part + 10);
    const back = Buffer.concat(await collect(probe.read('pipelined/whole')));
    expect([back.length, back[0], back[part], back[2 * part], back[3 * part]]).toEqual([
      3 * part + 10,
      1,
      2,
      3,
      4,
    ]);

    refuse = 2;
    await expect(probe.write('pipelined/refused', body())).rejects.toThrow('part refused');
    expect(await probe.head('pipelined/refused')).toBeNull();
  });

  it("fails with the body's error and leaves no object when the body fails after a part was sent", async () => {
    async function* failing(): AsyncGenerator<Uint8Array> {
      yield Buffer.alloc(6 * 1024 * 1024, 1);
      throw new Error('the reader failed');
    }
    await expect(shared.blobs.write('parts/failed', failing())).rejects.toThrow('the reader failed');
    expect(await shared.blobs.head('parts/failed')).toBeNull();
  });
});
