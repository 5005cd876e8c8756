import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LocalEnvironment, startLocalEnvironment } from '../../local/runner';
import { startDynalite } from '../../local/stand-ins';

/** This machine's first address that is not loopback, if it has one. */
const outside = Object.values(networkInterfaces())
  .flat()
  .find((a) => a && !a.internal && a.family === 'IPv4')?.address;

/** Whether a TCP connection to host:port is accepted. */
function accepts(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port, timeout: 2_000 });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
    socket.once('timeout', () => {
      socket.destroy();
      resolve(false);
    });
  });
}

const portOf = (url: string) => Number(new URL(url).port);

let env: LocalEnvironment;
let dir: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-loopback-'));
  env = await startLocalEnvironment(dir, { kind: 'emulator' }, false, { webhooks: true });
});

afterAll(async () => {
  await env?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!outside)('the local stand-ins listen on loopback only', () => {
  it("refuses connections from the machine's other address to the emulator, s3rver, the webhook receiver and dynalite", async () => {
    const dynalite = await startDynalite('loopback');
    try {
      const servers = {
        emulator: portOf(env.openai.baseURL),
        s3rver: portOf(env.s3.endpoint),
        'webhook receiver': portOf(env.webhooks?.url ?? ''),
        dynalite: portOf(dynalite.endpoint),
      };
      for (const [name, port] of Object.entries(servers)) {
        expect([name, await accepts('127.0.0.1', port)]).toEqual([name, true]);
        expect([name, await accepts(outside ?? '', port)]).toEqual([name, false]);
      }
    } finally {
      await dynalite.stop();
    }
  });

  it("knows that DynamoDB Local, AWS's own jar, listens on every interface (it has no option to bind one)", async () => {
    if (env.dynamo.kind !== 'dynamodb-local') return;
    // Documented in the README; if a later version binds loopback only, this fails and the note goes.
    expect(await accepts(outside ?? '', portOf(env.dynamo.endpoint))).toBe(true);
  });
});
