import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { type LocalEnvironment, type OpenAITarget, startLocalEnvironment } from '../../local/runner';

/** The stand-ins a test file shares, set once its beforeAll has run. */
export interface SharedEnvironment {
  readonly env: LocalEnvironment;
}

/**
 * Starts the local environment (s3rver, DynamoDB Local and, unless `target` says otherwise, the
 * emulator) under a temporary directory named `<prefix>…` before the file's tests, and stops it and
 * removes the directory after them.
 */
export function localEnvironment(prefix: string, target?: OpenAITarget): SharedEnvironment {
  const shared = {} as { env: LocalEnvironment };
  let dir: string | undefined;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), prefix));
    shared.env = await startLocalEnvironment(dir, target);
  }, 60_000);
  afterAll(async () => {
    await shared.env?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });
  return shared;
}
