import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { App, Stack } from 'aws-cdk-lib';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OpenAIBatchWork, type OpenAIBatchWorkProps } from '../../infra/openai-batch-work';
import { WorkStack } from '../../infra/work-stack';
import { type LoadedWork, loadWork } from '../../infra/works';

/**
 * AWS's CloudFormation linter and an Amazon States Language validator over every shape of the stack a
 * user can deploy: what a real account would refuse at deploy time, found offline.
 */

/** The line that installs cfn-lint, where it is missing. */
const INSTALL = 'pip install cfn-lint';

const validateAsl = createRequire(import.meta.url)('asl-validator') as (definition: unknown) => {
  isValid: boolean;
  errors: unknown[];
};

type Variant = (app: App, loaded: LoadedWork) => void;

/** A work in a stack of the user's, with props that need the stack (brought resources). */
function userStack(
  app: App,
  id: string,
  loaded: LoadedWork,
  props: (stack: Stack) => Partial<OpenAIBatchWorkProps>,
): void {
  const stack = new Stack(app, id);
  new OpenAIBatchWork(stack, 'Work', { work: loaded.work, workModule: loaded.module, ...props(stack) });
}

const VARIANTS: Record<string, Variant> = {
  default: (app, loaded) => new WorkStack(app, { loaded }),
  hooked: (app, loaded) =>
    new WorkStack(app, {
      loaded,
      stackName: 'Hooked',
      options: { webhooks: true, autoStart: true, notificationEmail: 'team@example.com' },
    }),
  userBucket: (app, loaded) => {
    const datasets = new Stack(app, 'Datasets');
    const bucket = new s3.Bucket(datasets, 'Data', { enforceSSL: true });
    userStack(app, 'UserBucket', loaded, () => ({ bucket, autoStart: true }));
  },
  importedBucket: (app, loaded) =>
    userStack(app, 'ImportedBucket', loaded, (stack) => ({
      bucket: s3.Bucket.fromBucketName(stack, 'Data', 'my-datasets'),
      autoStart: true,
    })),
  importedSecret: (app, loaded) =>
    userStack(app, 'ImportedSecret', loaded, (stack) => ({
      apiKeySecret: secretsmanager.Secret.fromSecretNameV2(stack, 'Key', 'openai/api-key'),
    })),
};

/** A CloudFormation value inside the definition's Fn::Join, as a plausible literal. */
function literal(part: unknown): string {
  if (typeof part === 'string') return part;
  const token = part as { 'Fn::GetAtt'?: [string, string]; Ref?: string };
  if (token['Fn::GetAtt']) return `arn:aws:lambda:us-east-1:123456789012:function:${token['Fn::GetAtt'][0]}`;
  if (token.Ref === 'AWS::Partition') return 'aws';
  if (token.Ref === 'AWS::Region') return 'us-east-1';
  if (token.Ref === 'AWS::AccountId') return '123456789012';
  return `value-${token.Ref ?? 'unknown'}`;
}

let dir: string;
/** Each stack's template file, with the state machine definition resolved to a string. */
const templates: Record<string, string> = {};
const definitions: Record<string, unknown> = {};

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-cfn-lint-'));
  const loaded = await loadWork(new URL('../../works/example.ts', import.meta.url).pathname);
  for (const [name, variant] of Object.entries(VARIANTS)) {
    const outdir = join(dir, name);
    // Synthesized as `cdk synth` does, with CDK's built-in CloudFormation validation, whose findings fail
    // the synthesis here (by default CDK reports them as warnings only).
    const app = new App({
      outdir,
      context: { 'aws:cdk:bundling-stacks': [], '@aws-cdk/core:validateAgainstDefaultRules': true },
    });
    variant(app, loaded);
    app.synth();
    for (const file of readdirSync(outdir).filter((f) => f.endsWith('.template.json'))) {
      const path = join(outdir, file);
      const template = JSON.parse(readFileSync(path, 'utf8'));
      for (const resource of Object.values(template.Resources) as {
        Type: string;
        Properties: { DefinitionString?: unknown };
      }[]) {
        if (resource.Type !== 'AWS::StepFunctions::StateMachine') continue;
        // cfn-lint checks a definition only when it is a string (E3601), not built with Fn::Join.
        const body = resource.Properties.DefinitionString as { 'Fn::Join': [string, unknown[]] };
        resource.Properties.DefinitionString = body['Fn::Join'][1].map(literal).join('');
        definitions[`${name}/${file}`] = JSON.parse(resource.Properties.DefinitionString as string);
      }
      writeFileSync(path, JSON.stringify(template, null, 1));
      templates[`${name}/${file}`] = path;
    }
  }
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('the synthesized templates', () => {
  it('synthesize every variant, with a state machine in each work stack', () => {
    expect(Object.keys(templates).sort()).toEqual([
      'default/OpenAIBatch-example.template.json',
      'hooked/OpenAIBatch-example.template.json',
      'importedBucket/ImportedBucket.template.json',
      'importedSecret/ImportedSecret.template.json',
      'userBucket/Datasets.template.json',
      'userBucket/UserBucket.template.json',
    ]);
    expect(Object.keys(definitions)).toHaveLength(5);
  });

  it('pass cfn-lint with no error', () => {
    const version = spawnSync('cfn-lint', ['--version'], { encoding: 'utf8' });
    if (version.error || version.status !== 0)
      throw new Error(`cfn-lint is missing: install it with \`${INSTALL}\``);
    const result = spawnSync('cfn-lint', ['--format', 'parseable', '--', ...Object.values(templates)], {
      encoding: 'utf8',
    });
    // Exit status is a bit mask: 2 errors, 4 warnings, 8 informational; 1 a failure of cfn-lint itself.
    expect(result.stderr).toBe('');
    const errors = result.stdout
      .split('\n')
      .filter((line) => /:E\d{4}:/.test(line))
      .map((line) => line.replace(dir, ''));
    expect(errors).toEqual([]);
    expect((result.status ?? 1) & 3).toBe(0);
  }, 60_000);

  it("pass asl-validator: each state machine's definition is valid States Language", () => {
    for (const [name, definition] of Object.entries(definitions)) {
      const { isValid, errors } = validateAsl(definition);
      expect({ name, errors }).toEqual({ name, errors: [] });
      expect(isValid).toBe(true);
    }
  });
});
