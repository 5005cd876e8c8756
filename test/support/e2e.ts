import { PutObjectCommand } from '@aws-sdk/client-s3';
import { beforeAll } from 'vitest';
import type { Handlers } from '../../functions/handlers';
import { type LoadedWork, loadWork } from '../../infra/works';
import { type Definition, synthesizeDefinition } from '../../local/definition';
import type { LocalEnvironment } from '../../local/runner';
import { localEnvironment, type SharedEnvironment } from './local-environment';

/** A work of test/fixtures/works/, loaded, with its state machine's definition. */
export interface FixtureWork {
  readonly loaded: LoadedWork;
  readonly definition: Definition;
}

/** Loads the fixture work `name` (test/fixtures/works/<name>.ts) and synthesizes its definition. */
export async function fixtureWork(name: string): Promise<FixtureWork> {
  const loaded = await loadWork(new URL(`../fixtures/works/${name}.ts`, import.meta.url).pathname);
  return { loaded, definition: (await synthesizeDefinition(loaded)).definition };
}

/**
 * An end-to-end test file's set-up: the local environment under a temporary directory named `<prefix>…`
 * (see {@link localEnvironment}) and the fixture work `fixture`, both ready once its beforeAll has run.
 */
export function e2eEnvironment(fixture: string, prefix: string): SharedEnvironment & FixtureWork {
  const shared = localEnvironment(prefix);
  const e2e = {} as { env: LocalEnvironment; loaded: LoadedWork; definition: Definition };
  Object.defineProperty(e2e, 'env', { get: () => shared.env });
  beforeAll(async () => {
    Object.assign(e2e, await fixtureWork(fixture));
  }, 60_000);
  return e2e;
}

/**
 * Puts a dataset of `records` records at inputs/<runId>.jsonl, with ids `<runId>-<i>` and content
 * `question <id>`; returns the ids.
 */
export async function putRecords(env: LocalEnvironment, runId: string, records: number): Promise<string[]> {
  const ids = Array.from({ length: records }, (_, i) => `${runId}-${i}`);
  await env.s3.client.send(
    new PutObjectCommand({
      Bucket: env.s3.bucket,
      Key: `inputs/${runId}.jsonl`,
      Body: ids.map((id) => JSON.stringify({ id, content: `question ${id}` })).join('\n'),
    }),
  );
  return ids;
}

/**
 * Handlers whose `at`-th Tick fails for good, before it runs (an InvariantError: fatal, no retry, so the
 * run goes to MarkFailed), calling `onFail` then. No stand-in fails that way on its own.
 */
export function fatalTickAt(at: number, onFail: () => void = () => {}): (handlers: Handlers) => Handlers {
  let ticks = 0;
  return (handlers) => ({
    ...handlers,
    Tick: async (event: unknown) => {
      ticks += 1;
      if (ticks === at) {
        onFail();
        throw Object.assign(new Error(`a bug found at tick ${at}`), { name: 'InvariantError' });
      }
      return handlers.Tick(event);
    },
  });
}
