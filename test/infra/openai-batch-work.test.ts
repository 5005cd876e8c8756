import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type App, Stack, Validations } from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import * as sns from 'aws-cdk-lib/aws-sns';
import { AwsSolutionsChecks } from 'cdk-nag';
import { Construct } from 'constructs';
import { describe, expect, it } from 'vitest';
import { defineWork } from '../../functions/core/work';
import { DEFAULT_STEP_BUDGET_MS } from '../../functions/steps/deps';
import { INFLATE_BUDGETS } from '../../functions/steps/prepare';
import {
  executableZip,
  HEAP_WRAPPER_NAME,
  HEAP_WRAPPER_PATH,
  HEAP_WRAPPER_SCRIPT,
} from '../../infra/heap-wrapper';
import {
  MAX_TICKS,
  OpenAIBatchWork,
  type OpenAIBatchWorkProps,
  partMemory,
  STEP_OLD_SPACE_MB,
  STEP_SEMI_SPACE_MB,
} from '../../infra/openai-batch-work';
import { unbundledApp } from '../../local/definition';

const work = defineWork({ name: 'unit', model: 'gpt-4o-mini' });
const workModule = new URL('../fixtures/works/chat.ts', import.meta.url).pathname;

function synth(
  props: Partial<OpenAIBatchWorkProps> = {},
  prepare?: (stack: Stack) => Partial<OpenAIBatchWorkProps>,
) {
  const app = unbundledApp();
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
  const stack = new Stack(app, 'Test', { env: { account: '123456789012', region: 'eu-west-1' } });
  const construct = new OpenAIBatchWork(stack, 'Work', { work, workModule, ...props, ...prepare?.(stack) });
  return { template: Template.fromStack(stack), construct, stack };
}

describe('OpenAIBatchWork', () => {
  const { template } = synth();

  it('keeps the bucket private, encrypted, TLS-only, expiring intermediate files of ended runs', () => {
    template.hasResourceProperties('AWS::S3::Bucket', {
      PublicAccessBlockConfiguration: {
        BlockPublicAcls: true,
        BlockPublicPolicy: true,
        IgnorePublicAcls: true,
        RestrictPublicBuckets: true,
      },
      BucketEncryption: {
        ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }],
      },
      LifecycleConfiguration: {
        Rules: Match.arrayWith([
          Match.objectLike({
            TagFilters: [{ Key: 'openai-batch-intermediate', Value: 'ended' }],
            ExpirationInDays: 14,
            Status: 'Enabled',
          }),
          Match.objectLike({ AbortIncompleteMultipartUpload: { DaysAfterInitiation: 2 } }),
        ]),
      },
    });
    template.hasResourceProperties('AWS::S3::BucketPolicy', {
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({ Effect: 'Deny', Condition: { Bool: { 'aws:SecureTransport': 'false' } } }),
        ]),
      },
    });
  });

  it('expires nothing a running run needs: only objects tagged ended, and nothing untagged', () => {
    const [bucket] = Object.values(template.findResources('AWS::S3::Bucket'));
    const rules: { ExpirationInDays?: number; TagFilters?: unknown }[] =
      bucket?.Properties.LifecycleConfiguration.Rules ?? [];
    const expiring = rules.filter((r) => r.ExpirationInDays !== undefined);
    expect(expiring).toEqual([
      expect.objectContaining({ TagFilters: [{ Key: 'openai-batch-intermediate', Value: 'ended' }] }),
    ]);
  });

  it('lets the steps that end a run (Finalize, MarkFailed) list and tag its objects, and no other', () => {
    const taggers = (action: string) =>
      Object.entries(template.findResources('AWS::IAM::Policy'))
        .filter(([, p]) => JSON.stringify(p.Properties.PolicyDocument).includes(action))
        .map(([id]) => id.replace(/Role.*$/, ''))
        .sort();
    // Register (the shard plan), Prepare, Settle and Tick tag what they write as running.
    expect(taggers('s3:PutObjectTagging')).toEqual([
      'WorkFinalize',
      'WorkMarkFailed',
      'WorkPrepare',
      'WorkRegister',
      'WorkSettle',
      'WorkTick',
    ]);
    expect(taggers('s3:ListBucket')).toEqual(expect.arrayContaining(['WorkFinalize', 'WorkMarkFailed']));
  });

  it('makes the run table on demand, recoverable, encrypted, listable by work', () => {
    template.hasResourceProperties('AWS::DynamoDB::Table', {
      BillingMode: 'PAY_PER_REQUEST',
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      SSESpecification: { SSEEnabled: true },
      KeySchema: [
        { AttributeName: 'pk', KeyType: 'HASH' },
        { AttributeName: 'sk', KeyType: 'RANGE' },
      ],
      GlobalSecondaryIndexes: [Match.objectLike({ IndexName: 'byWork' })],
    });
  });

  it('runs every function on Node.js 22 or later, arm64, traced, with JSON logs kept a month', () => {
    const functions = Object.values(template.findResources('AWS::Lambda::Function'));
    expect(functions).toHaveLength(9);
    for (const fn of functions) {
      expect(fn.Properties).toMatchObject({
        Runtime: 'nodejs24.x',
        Architectures: ['arm64'],
        TracingConfig: { Mode: 'Active' },
        LoggingConfig: { LogFormat: 'JSON' },
      });
      // Steps stop within their budget and fit 6 minutes; Register, one call over the whole listing, 10;
      // Prepare, which may inflate a gzip object in one call, 15 (Lambda's most).
      expect(Number(fn.Properties.Timeout)).toBeLessThanOrEqual(900);
      expect(JSON.stringify(fn.Properties.Environment)).not.toMatch(/sk-|apiKey/);
    }
    // A gzip object is inflated in one Prepare call of up to INFLATE_BUDGETS budgets, with a minute to spare.
    const prepare = Object.entries(template.findResources('AWS::Lambda::Function')).find(([id]) =>
      id.startsWith('WorkPrepare'),
    );
    expect(Number(prepare?.[1].Properties.Timeout) * 1000).toBeGreaterThanOrEqual(
      INFLATE_BUDGETS * DEFAULT_STEP_BUDGET_MS + 60_000,
    );
    template.allResourcesProperties('AWS::Logs::LogGroup', { RetentionInDays: 30 });
  });

  it("sizes the memory of the part-handling functions to the work's largest part", () => {
    expect(partMemory(190_000_000)).toBe(875);
    const memory = (t: Template) =>
      Object.entries(t.findResources('AWS::Lambda::Function')).map(([id, fn]) => [
        id.replace(/Function.*$/, ''),
        fn.Properties.MemorySize,
      ]);
    expect(memory(template)).toEqual(
      expect.arrayContaining([
        ['WorkPrepare', 875],
        ['WorkTick', 875],
        ['WorkRegister', 1769],
      ]),
    );
    const small = defineWork({ name: 'small', model: 'm', maxBytesPerBatch: 10_000_000 });
    expect(memory(synth({ work: small }).template)).toEqual(expect.arrayContaining([['WorkTick', 532]]));
    expect(partMemory(200_000_000)).toBe(894);
    expect(memory(synth({ prepareMemoryMb: 4096 }).template)).toEqual(
      expect.arrayContaining([
        ['WorkPrepare', 4096],
        ['WorkTick', 875],
      ]),
    );
    for (const refused of [20_000, 512, 1000.5])
      expect(() => synth({ prepareMemoryMb: refused })).toThrow(
        `prepareMemoryMb must be a whole number from 875 (what a part of maxBytesPerBatch needs) to 10240 (got ${refused})`,
      );
  });

  it('refuses, at synth, a setting every function would refuse when it starts', () => {
    expect(() => synth({ openaiBaseUrl: 'api.example.com/v1' })).toThrow(
      'openaiBaseUrl must be an http(s) URL, such as https://api.openai.com/v1 (got api.example.com/v1)',
    );
    expect(() => synth({ openaiBaseUrl: 'ftp://example.com' })).toThrow(
      /openaiBaseUrl must be an http\(s\) URL/,
    );
    expect(synth({ openaiBaseUrl: 'https://proxy.example.com/v1' }).construct).toBeDefined();
    for (const ticks of [0, -1, 2.5, MAX_TICKS + 1])
      expect(() => synth({ maxTicksPerExecution: ticks })).toThrow(
        `maxTicksPerExecution must be a whole number from 1 to ${MAX_TICKS}`,
      );
    expect(synth({ maxTicksPerExecution: MAX_TICKS }).construct).toBeDefined();
  });

  it('refuses webhooks in a region without Lambda Function URLs, and stops a region-agnostic deploy there', () => {
    const inRegion = (region: string) => {
      const app = unbundledApp();
      const stack = new Stack(app, 'Regional', { env: { account: '123456789012', region } });
      return new OpenAIBatchWork(stack, 'Work', { work, workModule, webhooks: true });
    };
    expect(() => inRegion('us-gov-west-1')).toThrow(
      'webhooks need Lambda Function URLs, which us-gov-west-1 does not have',
    );
    expect(inRegion('us-east-1')).toBeDefined();
    const app = unbundledApp();
    const agnostic = new Stack(app, 'Agnostic');
    new OpenAIBatchWork(agnostic, 'Work', { work, workModule, webhooks: true });
    const rules = Template.fromStack(agnostic).toJSON().Rules as Record<string, { Assertions: unknown[] }>;
    const [rule] = Object.values(rules);
    expect(JSON.stringify(rule?.Assertions)).toContain('us-gov-west-1');
    expect(JSON.stringify(rule?.Assertions)).toContain('AWS::Region');
  });

  it('logs and traces the state machine, and gives it a timeout', () => {
    template.hasResourceProperties('AWS::StepFunctions::StateMachine', {
      TracingConfiguration: { Enabled: true },
      LoggingConfiguration: { Level: 'ALL', IncludeExecutionData: false },
    });
    const definition = JSON.stringify(template.findResources('AWS::StepFunctions::StateMachine'));
    expect(definition).toContain('TimeoutSeconds');
    expect(definition).not.toMatch(/QueryLanguage\\":\\"JSONata|ItemReader|waitForTaskToken|\\"Assign\\"/);
  });

  it('gives the functions where the secrets are, never a key or a secret in their environment', () => {
    const { template: hooked } = synth({ webhooks: true });
    const environments = Object.values(hooked.findResources('AWS::Lambda::Function')).map((f) =>
      JSON.stringify(f.Properties.Environment ?? {}),
    );
    expect(environments.length).toBe(10);
    for (const environment of environments) {
      expect(environment).toContain('OPENAI_SECRET_ID');
      expect(environment).not.toMatch(/sk-|whsec_|put-your-openai|OPENAI_API_KEY/);
    }
  });

  it('holds a placeholder in a new secret, which the functions refuse', () => {
    template.hasResourceProperties('AWS::SecretsManager::Secret', {
      SecretString: 'put-your-openai-api-key-here',
    });
  });

  it('alarms on failed and timed-out runs, function errors, a stuck batch and a refused key, with a dashboard', () => {
    template.resourceCountIs('AWS::CloudWatch::Alarm', 5);
    // Two stacks of one work alarm on their own runs: the stack is a dimension, and the functions are told it.
    const dimensions = Match.arrayWith([
      { Name: 'Stack', Value: 'Test' },
      { Name: 'Work', Value: work.settings.name },
    ]);
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      MetricName: 'MinutesWithoutProgress',
      Threshold: 360,
      Dimensions: dimensions,
    });
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      MetricName: 'OpenAIAccessRefused',
      Dimensions: dimensions,
    });
    template.hasResourceProperties('AWS::Lambda::Function', {
      Environment: { Variables: Match.objectLike({ STACK_NAME: 'Test' }) },
    });
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      MetricName: 'OpenAIAccessRefused',
      Namespace: 'OpenAIBatch',
      Threshold: 1,
      AlarmDescription: Match.stringLikeRegexp('OpenAI refused the API key'),
    });
    template.resourceCountIs('AWS::CloudWatch::Dashboard', 1);
  });

  it('starts a run for each object of data created under inputs/<work>/ when autoStart is set', () => {
    const { template: auto } = synth({ autoStart: true });
    auto.hasResourceProperties('Custom::S3BucketNotifications', {
      NotificationConfiguration: { EventBridgeConfiguration: {} },
    });
    auto.hasResourceProperties('AWS::Events::Rule', {
      EventPattern: {
        source: ['aws.s3'],
        'detail-type': ['Object Created'],
        detail: Match.objectLike({
          // Not for an empty object: the S3 console's folders are ones (see test/infra/start-on-upload.test.ts).
          object: { key: [{ prefix: 'inputs/unit/' }], size: [{ 'anything-but': 0 }] },
        }),
      },
      Targets: [
        Match.objectLike({
          InputTransformer: Match.objectLike({
            InputTemplate: '{"dataset":<detail-object-key>,"fromS3Event":true}',
          }),
        }),
      ],
    });
  });

  it('tells a topic when a run ends, and grants only Notify and MarkFailed to publish', () => {
    const { template: mailed } = synth({ notificationEmail: 'team@example.com' });
    mailed.hasResourceProperties('AWS::SNS::Subscription', {
      Protocol: 'email',
      Endpoint: 'team@example.com',
    });
    const publishers = Object.entries(mailed.findResources('AWS::IAM::Policy'))
      .filter(([, p]) => JSON.stringify(p.Properties.PolicyDocument).includes('sns:Publish'))
      .map(([id]) => id.replace(/Role.*$/, ''));
    expect(publishers.sort()).toEqual(['WorkMarkFailed', 'WorkNotify']);
  });

  it('uses a bucket, table and secret the user brings instead of making them', () => {
    const { template: brought } = synth({}, (stack) => ({
      bucket: s3.Bucket.fromBucketName(stack, 'B', 'my-datasets'),
      table: dynamodb.Table.fromTableName(stack, 'T', 'my-runs'),
      apiKeySecret: secretsmanager.Secret.fromSecretNameV2(stack, 'S', 'openai/key'),
    }));
    brought.resourceCountIs('AWS::S3::Bucket', 0);
    brought.resourceCountIs('AWS::DynamoDB::Table', 0);
    brought.resourceCountIs('AWS::SecretsManager::Secret', 0);
    expect(JSON.stringify(brought.findResources('AWS::IAM::Policy'))).toContain('my-datasets');
  });

  it('with webhooks: a public URL whose function checks signatures, restarts runs, and touches no data', () => {
    expect(synth().construct.webhook).toBeUndefined();
    const { template: hooked, stack } = synth({ webhooks: true });
    hooked.hasResourceProperties('AWS::Lambda::Url', { AuthType: 'NONE' });
    // Since October 2025 a public URL needs both permissions, or every delivery gets a 403.
    for (const action of ['lambda:InvokeFunctionUrl', 'lambda:InvokeFunction'])
      hooked.hasResourceProperties('AWS::Lambda::Permission', { Action: action, Principal: '*' });
    hooked.hasOutput('*', { Description: Match.stringLikeRegexp('OpenAI dashboard') });
    hooked.hasResourceProperties('AWS::SecretsManager::Secret', {
      SecretString: 'put-your-openai-webhook-signing-secret-here',
    });
    hooked.hasResourceProperties('AWS::Lambda::Function', {
      Handler: 'index.webhook',
      Environment: {
        Variables: Match.objectLike({
          WEBHOOK_SECRET_ID: Match.anyValue(),
          STATE_MACHINE_ARN: Match.anyValue(),
        }),
      },
    });
    const [, policy] =
      Object.entries(hooked.findResources('AWS::IAM::Policy')).find(([id]) => id.startsWith('WorkWebhook')) ??
      [];
    const statements = JSON.stringify(policy?.Properties.PolicyDocument);
    expect(statements).toContain('states:StopExecution');
    expect(statements).toContain(':execution:');
    expect(statements).not.toMatch(/"s3:|OpenAIApiKey/); // never the data, never the API key
    // Webhook events are remembered for a week, then expire.
    hooked.hasResourceProperties('AWS::DynamoDB::Table', {
      TimeToLiveSpecification: { AttributeName: 'expiresAt', Enabled: true },
    });
    expect(Annotations.fromStack(stack).findError('*', Match.stringLikeRegexp('AwsSolutions-'))).toEqual([]);
    expect(Annotations.fromStack(stack).findWarning('*', Match.stringLikeRegexp('AwsSolutions-'))).toEqual(
      [],
    );
  });

  it('refuses props that conflict', () => {
    expect(() =>
      synth({ notificationEmail: 'a@b.c' }, (stack) => ({
        topic: new (require('aws-cdk-lib/aws-sns').Topic)(stack, 'X'),
      })),
    ).toThrow(/either topic or notificationEmail/);
  });
});

/** The policy statements of the function behind each state (`WorkTick`, `WorkWebhook`, ...). */
function statementsOf(template: Template, fn: string): { Action: string | string[]; Resource: unknown }[] {
  return Object.entries(template.findResources('AWS::IAM::Policy'))
    .filter(([id]) => id.startsWith(`${fn}Role`))
    .flatMap(([, p]) => p.Properties.PolicyDocument.Statement);
}

/** Whether a function may do an action on a resource whose JSON contains `on`. */
function allows(template: Template, fn: string, action: string, on: string): boolean {
  return statementsOf(template, fn).some(
    (s) => [s.Action].flat().includes(action) && JSON.stringify(s.Resource).includes(on),
  );
}

describe('OpenAIBatchWork on a real account', () => {
  it('logs the state machine under /aws/vendedlogs/states/, named apart for each work of an account', () => {
    const names = ['A', 'B'].map((name) => {
      const app = unbundledApp();
      const stack = new Stack(app, `OpenAIBatch-${name}`);
      new OpenAIBatchWork(stack, 'Work', { work, workModule });
      const template = Template.fromStack(stack);
      const [machine] = Object.values(template.findResources('AWS::StepFunctions::StateMachine'));
      const destination = JSON.stringify(machine?.Properties.LoggingConfiguration);
      const [[id, group] = []] = Object.entries(template.findResources('AWS::Logs::LogGroup')).filter(
        ([, g]) => String(g.Properties.LogGroupName ?? '').startsWith('/aws/vendedlogs/states/'),
      );
      expect(destination).toContain(id); // the state machine logs to that group
      return group?.Properties.LogGroupName as string;
    });
    expect(names[0]).toMatch(/^\/aws\/vendedlogs\/states\/OpenAIBatch-A-Work-[0-9A-F]{8}$/);
    expect(names[0]).not.toBe(names[1]);
    // CloudWatch Logs: 1 to 512 characters of letters, digits and . - _ / #
    for (const name of names) expect(name).toMatch(/^[\w.\-/#]{1,512}$/);
  });

  it('grants a secret imported by name with the suffix Secrets Manager adds to its ARN', () => {
    const { template: brought } = synth({ webhooks: true }, (stack) => ({
      apiKeySecret: secretsmanager.Secret.fromSecretNameV2(stack, 'S', 'openai/api-key'),
      webhookSecret: secretsmanager.Secret.fromSecretNameV2(stack, 'W', 'openai/webhook'),
    }));
    for (const fn of ['WorkTick', 'WorkCleanUp', 'WorkMarkFailed'])
      expect(allows(brought, fn, 'secretsmanager:GetSecretValue', ':secret:openai/api-key-??????')).toBe(
        true,
      );
    expect(
      allows(brought, 'WorkWebhook', 'secretsmanager:GetSecretValue', ':secret:openai/webhook-??????'),
    ).toBe(true);
    expect(JSON.stringify(brought.findResources('AWS::IAM::Policy'))).not.toMatch(/openai\/api-key"/);
  });

  it('grants the customer-managed KMS keys of a brought bucket, table and secret to the steps that use them', () => {
    const key = (stack: Stack, id: string) =>
      kms.Key.fromKeyArn(stack, id, `arn:aws:kms:eu-west-1:123456789012:key/${id.toLowerCase()}`);
    const { template: brought } = synth({}, (stack) => ({
      bucket: s3.Bucket.fromBucketAttributes(stack, 'B', {
        bucketName: 'my-datasets',
        encryptionKey: key(stack, 'BucketKey'),
      }),
      table: dynamodb.Table.fromTableAttributes(stack, 'T', {
        tableName: 'my-runs',
        encryptionKey: key(stack, 'TableKey'),
      }),
      apiKeySecret: secretsmanager.Secret.fromSecretAttributes(stack, 'S', {
        secretCompleteArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:openai/api-key-AbCdEf',
        encryptionKey: key(stack, 'SecretKey'),
      }),
    }));
    for (const fn of ['WorkRegister', 'WorkPrepare', 'WorkTick', 'WorkMarkFailed'])
      expect(allows(brought, fn, 'kms:Decrypt', 'key/bucketkey')).toBe(true);
    for (const fn of ['WorkPrepare', 'WorkTick', 'WorkFinalize', 'WorkMarkFailed'])
      expect(allows(brought, fn, 'kms:GenerateDataKey', 'key/bucketkey')).toBe(true);
    for (const fn of ['WorkRegister', 'WorkNotify', 'WorkFinalize'])
      expect(allows(brought, fn, 'kms:Decrypt', 'key/tablekey')).toBe(true);
    expect(allows(brought, 'WorkFinalize', 'kms:GenerateDataKey', 'key/tablekey')).toBe(true);
    expect(allows(brought, 'WorkNotify', 'kms:GenerateDataKey', 'key/tablekey')).toBe(false); // reads only
    for (const fn of ['WorkTick', 'WorkCleanUp', 'WorkMarkFailed'])
      expect(allows(brought, fn, 'kms:Decrypt', 'key/secretkey')).toBe(true);
    expect(allows(brought, 'WorkRegister', 'kms:Decrypt', 'key/secretkey')).toBe(false);
    // The byWork index is the CLI's (its user's credentials): no function reads it.
    for (const fn of [
      'WorkRegister',
      'WorkPrepare',
      'WorkSettle',
      'WorkTick',
      'WorkCleanUp',
      'WorkMarkFailed',
    ])
      expect(allows(brought, fn, 'dynamodb:Query', 'my-runs/index/byWork')).toBe(false);
    expect(allows(brought, 'WorkPrepare', 'dynamodb:Query', 'my-runs')).toBe(true);
  });

  it('with autoStart, turns on EventBridge notifications of a brought or imported bucket', () => {
    const { template: imported } = synth({ autoStart: true }, (stack) => ({
      bucket: s3.Bucket.fromBucketName(stack, 'B', 'my-datasets'),
    }));
    imported.hasResourceProperties('Custom::S3BucketNotifications', {
      BucketName: 'my-datasets',
      NotificationConfiguration: { EventBridgeConfiguration: {} },
      Managed: false, // merged into the notifications the bucket already has
    });
    const { template: own } = synth({ autoStart: true }, (stack) => {
      const bucket = new s3.Bucket(stack, 'Mine', { enforceSSL: true });
      Validations.of(bucket).acknowledge({ id: 'AwsSolutions-S1', reason: "the user's own bucket" });
      return { bucket };
    });
    own.hasResourceProperties('Custom::S3BucketNotifications', {
      NotificationConfiguration: { EventBridgeConfiguration: {} },
    });
    synth({}, (stack) => ({
      bucket: s3.Bucket.fromBucketName(stack, 'B', 'my-datasets'),
    })).template.resourceCountIs('Custom::S3BucketNotifications', 0);
  });

  it("expires ended runs' intermediate files in a brought bucket, and says what an imported one needs", () => {
    const app = unbundledApp();
    const datasets = new Stack(app, 'Datasets');
    const bucket = new s3.Bucket(datasets, 'Data', { enforceSSL: true });
    for (const id of ['One', 'Two'])
      new OpenAIBatchWork(new Stack(app, id), 'Work', { work, workModule, bucket });
    const rules = Object.values(Template.fromStack(datasets).findResources('AWS::S3::Bucket'))[0]?.Properties
      .LifecycleConfiguration.Rules;
    // Once, however many works share the bucket: rule ids are unique in a bucket.
    expect(rules).toEqual([
      expect.objectContaining({
        TagFilters: [{ Key: 'openai-batch-intermediate', Value: 'ended' }],
        ExpirationInDays: 14,
      }),
    ]);
    const { stack } = synth({}, (s) => ({ bucket: s3.Bucket.fromBucketName(s, 'B', 'my-datasets') }));
    expect(
      Annotations.fromStack(stack).findInfo('*', Match.stringLikeRegexp('openai-batch-intermediate=ended')),
    ).toHaveLength(1);
  });

  it("lets CloudWatch publish this stack's alarms to the topic whose policy replaces SNS's default", () => {
    const { template: mailed } = synth({ notificationEmail: 'team@example.com' });
    const [policy] = Object.values(mailed.findResources('AWS::SNS::TopicPolicy'));
    const statements = policy?.Properties.PolicyDocument.Statement as Record<string, unknown>[];
    expect(statements).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          Effect: 'Allow',
          Principal: { Service: 'cloudwatch.amazonaws.com' },
          Action: 'sns:Publish',
          Condition: {
            StringEquals: { 'aws:SourceAccount': '123456789012' },
            ArnLike: {
              'aws:SourceArn': expect.arrayContaining([{ 'Fn::GetAtt': [expect.any(String), 'Arn'] }]),
            },
          },
        }),
      ]),
    );
    const alarms = Object.keys(mailed.findResources('AWS::CloudWatch::Alarm'));
    expect(JSON.stringify(statements)).toSatisfy((text: string) => alarms.every((a) => text.includes(a)));
  });

  it('allows CloudWatch on a brought topic that has a policy, and leaves a topic on the default policy alone', () => {
    const app = unbundledApp();
    const env = { account: '123456789012', region: 'eu-west-1' };
    const shared = new Stack(app, 'Shared', { env });
    const strict = new sns.Topic(shared, 'Strict', { enforceSSL: true });
    const open = new sns.Topic(shared, 'Open');
    new OpenAIBatchWork(new Stack(app, 'One', { env }), 'Work', { work, workModule, topic: strict });
    new OpenAIBatchWork(new Stack(app, 'Two', { env }), 'Work', { work, workModule, topic: open });
    const policies = Template.fromStack(shared).findResources('AWS::SNS::TopicPolicy');
    expect(Object.keys(policies)).toHaveLength(1); // the open topic keeps SNS's default policy
    expect(JSON.stringify(Object.values(policies)[0])).toContain(
      ':cloudwatch:eu-west-1:123456789012:alarm:*"]]}]}',
    );
  });

  it('maps stack traces to the source only where memory is ample: never on the 256 MB functions', () => {
    const { template: hooked } = synth({ webhooks: true });
    const withMaps = Object.entries(hooked.findResources('AWS::Lambda::Function'))
      .map(([id, fn]) => ({
        name: id.replace(/Function.*$/, ''),
        memory: fn.Properties.MemorySize as number,
        maps: JSON.stringify(fn.Properties.Environment).includes('--enable-source-maps'),
      }))
      .sort((a, b) => a.name.localeCompare(b.name));
    expect(withMaps.filter((f) => f.memory < 512).map((f) => f.name)).toEqual([
      'WorkContinueRun',
      'WorkNotify',
      'WorkWebhook',
    ]);
    for (const fn of withMaps) expect(fn).toEqual({ ...fn, maps: fn.memory >= 512 });
  });

  /** Each function's NODE_OPTIONS ('' where it has none), by the function's name. */
  const nodeOptionsOf = (template: Template) =>
    Object.entries(template.findResources('AWS::Lambda::Function')).map(([id, fn]) => ({
      name: id.replace(/Function.*$/, ''),
      options: (fn.Properties.Environment?.Variables?.NODE_OPTIONS as string | undefined) ?? '',
    }));

  it('bounds the heap of Prepare and Settle (old space and semi-space) and the semi-space of Tick and MarkFailed, beside their source maps', () => {
    const options = nodeOptionsOf(synth().template);
    expect(
      options
        .filter((o) => o.options.includes('--max-old-space-size'))
        .map((o) => o.name)
        .sort(),
    ).toEqual(['WorkPrepare', 'WorkSettle']);
    for (const name of ['WorkPrepare', 'WorkSettle'])
      expect(options.find((o) => o.name === name)?.options).toBe(
        `--enable-source-maps --max-old-space-size=${STEP_OLD_SPACE_MB} --max-semi-space-size=${STEP_SEMI_SPACE_MB}`,
      );
    expect(
      options
        .filter((o) => o.options.includes('--max-semi-space-size'))
        .map((o) => o.name)
        .sort(),
    ).toEqual(['WorkMarkFailed', 'WorkPrepare', 'WorkSettle', 'WorkTick']);
    for (const name of ['WorkTick', 'WorkMarkFailed'])
      expect(options.find((o) => o.name === name)?.options).toBe(
        `--enable-source-maps --max-semi-space-size=${STEP_SEMI_SPACE_MB}`,
      );
  });

  it('starts the functions that bound their heap through the heap-flags wrapper, from one layer a stack', () => {
    const { stack } = synth({}, (stack) => {
      new OpenAIBatchWork(stack, 'Other', {
        work: defineWork({ name: 'other', model: 'gpt-4o-mini' }),
        workModule,
      });
      return {};
    });
    const template = Template.fromStack(stack);
    const layers = Object.keys(template.findResources('AWS::Lambda::LayerVersion'));
    expect(layers).toHaveLength(1);
    // Uploaded as the archive written, byte for byte (a directory asset would be zipped again, with the
    // modes of the file system that synthesizes it).
    const key: string =
      template.findResources('AWS::Lambda::LayerVersion')[layers[0] as string]?.Properties.Content.S3Key;
    const staged = join((stack.node.root as App).synth().directory, `asset.${key}`);
    expect(
      readFileSync(staged).equals(executableZip(HEAP_WRAPPER_NAME, Buffer.from(HEAP_WRAPPER_SCRIPT))),
    ).toBe(true);
    const functions = Object.entries(template.findResources('AWS::Lambda::Function')).map(([id, fn]) => ({
      name: id.replace(/Function.*$/, ''),
      bounded: /--max-(old|semi)-space-size/.test(fn.Properties.Environment?.Variables?.NODE_OPTIONS ?? ''),
      wrapper: fn.Properties.Environment?.Variables?.AWS_LAMBDA_EXEC_WRAPPER,
      layers: fn.Properties.Layers,
    }));
    expect(
      functions
        .filter((f) => f.bounded)
        .map((f) => f.name)
        .sort(),
    ).toEqual(['MarkFailed', 'Prepare', 'Settle', 'Tick'].flatMap((n) => [`Other${n}`, `Work${n}`]).sort());
    for (const fn of functions)
      expect(fn).toEqual(
        fn.bounded
          ? { ...fn, wrapper: HEAP_WRAPPER_PATH, layers: [{ Ref: layers[0] }] }
          : { ...fn, wrapper: undefined, layers: undefined },
      );
  });

  it("refuses a stack where the heap-flags layer's id is taken by something else, naming it", () => {
    expect(() =>
      synth({}, (stack) => {
        new Construct(stack, 'OpenAIBatchHeapFlagsWrapper');
        return {};
      }),
    ).toThrow(/Test\/OpenAIBatchHeapFlagsWrapper: the id OpenAIBatchHeapFlagsWrapper is taken/);
  });

  it("leaves Prepare's old space to V8 for a work whose records may not fit in its bound", () => {
    const large = defineWork({ name: 'unit', model: 'gpt-4o-mini', maxRecordBytes: 64 * 1024 * 1024 });
    const options = nodeOptionsOf(synth({ work: large }).template);
    const of = (name: string) => options.find((o) => o.name === name)?.options;
    expect(of('WorkPrepare')).toBe(`--enable-source-maps --max-semi-space-size=${STEP_SEMI_SPACE_MB}`);
    expect(of('WorkSettle')).toBe(
      `--enable-source-maps --max-old-space-size=${STEP_OLD_SPACE_MB} --max-semi-space-size=${STEP_SEMI_SPACE_MB}`,
    );
  });
});

describe('cdk synth', () => {
  it('synthesizes every work offline, bundled by the local esbuild, with cdk-nag clean', () => {
    const result = spawnSync(
      'npx',
      [
        'cdk',
        'synth',
        '--quiet',
        '--output',
        `${process.env.TMPDIR ?? '/tmp'}/openai-batch-cdk-out-${process.pid}`,
      ],
      {
        encoding: 'utf8',
        env: { ...process.env, CDK_DISABLE_VERSION_CHECK: '1' },
      },
    );
    expect(result.stderr).not.toMatch(/ERROR|AwsSolutions-/);
    expect(result.status).toBe(0);
  }, 120_000);
});
