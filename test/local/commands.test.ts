import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

/** Runs `openai-batch ARGS` as a user would; resolves with its exit code and output. */
function cli(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['bin/openai-batch.js', ...args], {
      env: { ...process.env, OPENAI_API_KEY: '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
    });
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

let dir: string;
const chatWork = new URL('../fixtures/works/chat.ts', import.meta.url).pathname;
const file = (name: string, content: string) => {
  const path = join(dir, name);
  writeFileSync(path, content);
  return path;
};
const lines = (path: string) =>
  readFileSync(path, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-cli-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('openai-batch local', () => {
  it('runs a work over a dataset with broken lines: they land in errors.jsonl by line, the rest completes', async () => {
    const records = Array.from({ length: 60 }, (_, i) =>
      JSON.stringify({ id: `q${i}`, content: `question ${i}` }),
    );
    records.splice(10, 0, '{"id": "cut", "content": "no end');
    records.splice(30, 0, '[1, 2, 3]');
    const dataset = file('questions.jsonl', `${records.join('\n')}\n`);
    const out = join(dir, 'out');
    const { code, stdout, stderr } = await cli([
      'local',
      chatWork,
      dataset,
      '--out',
      out,
      '--max-requests-per-batch',
      '25',
      '--run-id',
      'cli-1',
    ]);
    expect(stderr).toBe('');
    expect(code).toBe(0);
    expect(stdout).toMatch(
      /completed in [\d.]+s: 62 records -> 60 outputs, 2 errors, 0 skipped \(balanced: true\)/,
    );
    expect(stdout).toContain(join(out, 'outputs.jsonl'));
    const outputs = lines(join(out, 'outputs.jsonl'));
    expect(outputs.map((o) => o.id).sort()).toEqual(Array.from({ length: 60 }, (_, i) => `q${i}`).sort());
    expect(lines(join(out, 'errors.jsonl')).map((e) => [e.line, e.code])).toEqual([
      [11, 'invalid_json'],
      [31, 'not_an_object'],
    ]);
    const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
    expect(summary).toMatchObject({
      records: 62,
      outputs: 60,
      errors: 2,
      runId: 'cli-1',
      status: 'completed',
      batches: { parts: 3 },
    });
    expect(existsSync(join(out, '.state', 's3'))).toBe(true); // the stand-ins' data, to inspect
  });

  it.each([
    [
      'an unknown work',
      ['local', join('works', 'nope.ts'), 'works/example.jsonl'],
      /^error: Cannot load the work file .*nope\.ts/,
    ],
    [
      'a work with a bad setting',
      ['local', '__BAD_WORK__', 'works/example.jsonl'],
      /maxRequestsPerBatch: must be at most 50,000 .*\(got 60000\)/,
    ],
    [
      'a work with a syntax error',
      ['local', '__BROKEN_WORK__', 'works/example.jsonl'],
      /^error: Cannot load the work file .*broken\.ts/,
    ],
    [
      'a missing dataset',
      ['local', 'works/example.ts', 'no/such/file.jsonl'],
      /^error: No dataset at no\/such\/file\.jsonl: no such file or folder\./,
    ],
    [
      'an empty dataset',
      ['local', 'works/example.ts', '__EMPTY__'],
      /^error: The dataset .*empty\.jsonl is empty\./,
    ],
    [
      "a limit over OpenAI's",
      ['local', 'works/example.ts', 'works/example.jsonl', '--max-requests-per-batch', '60000'],
      /--max-requests-per-batch: maxRequestsPerBatch: must be at most 50,000/,
    ],
  ])('refuses %s with exit 2 and a message naming it', async (_, args, message) => {
    const bad = file(
      'bad.ts',
      `import { defineWork } from '${new URL('../../functions/core/work.ts', import.meta.url).pathname}';\nexport default defineWork({ name: 'bad', maxRequestsPerBatch: 60000 });\n`,
    );
    const broken = file('broken.ts', 'export default {{{ not typescript');
    const empty = file('empty.jsonl', '');
    const resolved = args.map(
      (a) => ({ __BAD_WORK__: bad, __BROKEN_WORK__: broken, __EMPTY__: empty })[a] ?? a,
    );
    const { code, stderr } = await cli(resolved);
    expect(code).toBe(2);
    expect(stderr.trim()).toMatch(message);
  });

  it.each([
    ['local', 'works/example.ts', 'works/example.jsonl', '--out', 'openai-batch-out/never'],
    ['start', 'example', 'works/example.jsonl'],
  ])('%s refuses a run id that cannot name an execution, before doing anything', async (...command) => {
    for (const [runId, message] of [
      ['r'.repeat(81), /a run id has at most 80 characters .* has 81/],
      ['my/run', /a run id is the name of an execution, which must not contain "\/"/],
    ] as const) {
      const { code, stdout, stderr } = await cli([...command, '--run-id', runId]);
      expect(code, runId).not.toBe(0);
      expect(stderr).toMatch(/option '--run-id <id>' argument '.*' is invalid/);
      expect(stderr).toMatch(message);
      expect(stdout).toBe('');
    }
  });

  it('ends a run that fails with exit 1 and the reason', async () => {
    const dataset = file('only-blank.jsonl', '\n\n   \n');
    const { code, stderr } = await cli(['local', chatWork, dataset, '--out', join(dir, 'blank')]);
    expect(code).toBe(1);
    expect(stderr).toMatch(
      /error: the run failed: The dataset has no records: its 1 object\(s\) hold only blank lines\./,
    );
  });
});

describe('npm run demo', () => {
  it('runs the example work end to end and says where the results are', async () => {
    const { code, stdout } = await cli(['demo', '--out', join(dir, 'demo')]);
    expect(code).toBe(0);
    expect(stdout).toMatch(
      /completed in [\d.]+s: 41 records -> 40 outputs, 1 errors, 0 skipped \(balanced: true\)/,
    );
    const outputs = lines(join(dir, 'demo', 'outputs.jsonl'));
    expect(outputs).toHaveLength(40);
    expect(outputs[0]).toMatchObject({ id: expect.any(String), answer: expect.any(String) });
  });
});

describe('openai-batch estimate', () => {
  it("counts requests, batches and tokens with the model's tokenizer, and prices them", async () => {
    const one = file('one.jsonl', '{"id":"1","content":"Hello!"}\n');
    const { code, stdout } = await cli(['estimate', 'works/example.ts', one, '--json']);
    expect(code).toBe(0);
    // OpenAI's counting: 3 a message + role + content ("system" 1 + 6, "user" 1 + 2), + 3 for the reply.
    expect(JSON.parse(stdout)).toMatchObject({
      records: 1,
      requests: 1,
      parts: 1,
      inputTokens: 19,
      expectedOutputTokens: 200,
      byModel: [{ model: 'gpt-4o-mini', tokenizer: 'o200k_base', priced: true }],
    });
    expect(JSON.parse(stdout).costUsd).toBeCloseTo((19 * 0.075 + 200 * 0.3) / 1e6, 9);
  });

  it('says how many lines it could not read, and prints a cost', async () => {
    const { code, stdout } = await cli(['estimate', 'works/example.ts', 'works/example.jsonl']);
    expect(code).toBe(0);
    expect(stdout).toMatch(
      /^41 records -> 40 requests in 1 batch\(es\) \(1 unreadable: `local` lists them with their lines\)/,
    );
    expect(stdout).toMatch(/cost at batch prices: about \$0\.00\d\d/);
  });

  it('names by line and parameter the requests OpenAI would refuse', async () => {
    const data = file(
      'empty-tools.jsonl',
      [
        '{"id":"a","content":"hi"}',
        '{"id":"b","content":"hi","noTools":true}',
        '{"id":"c","content":"hi"}',
      ].join('\n'),
    );
    const { code, stdout } = await cli(['estimate', 'test/fixtures/works/empty-tools.ts', data]);
    expect(code).toBe(0);
    expect(stdout).toMatch(
      /^1 request\(s\) OpenAI would refuse; they end in errors as invalid_request_body:$/m,
    );
    expect(stdout).toMatch(/^ {2}line 2 \(id b\): 'tools' empty_array: /m);
  });
});
