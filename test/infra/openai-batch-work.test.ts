import { spawnSync } from 'node:child_process';
import { App, Stack, Validations } from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { AwsSolutionsChecks } from 'cdk-nag';
import { describe, expect, it } from 'vitest';
import { defineWork } from '../../functions/core/work';
import { OpenAIBatchWork, type OpenAIBatchWorkProps, partMemory } from '../../infra/openai-batch-work';

const work = defineWork({ name: 'unit', model: 'gpt-4o-mini' });
const workModule = new URL('../fixtures/works/chat.ts', import.meta.url).pathname;

function synth(
  props: Partial<OpenAIBatchWorkProps> = {},
  prepare?: (stack: Stack) => Partial<OpenAIBatchWorkProps>,
) {
  const app = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
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
    // Prepare and Tick tag what they write as running.
    expect(taggers('s3:PutObjectTagging')).toEqual([
      'WorkFinalize',
      'WorkMarkFailed',
      'WorkPrepare',
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
    expect(functions).toHaveLength(8);
    for (const fn of functions) {
      expect(fn.Properties).toMatchObject({
        Runtime: 'nodejs24.x',
        Architectures: ['arm64'],
        TracingConfig: { Mode: 'Active' },
        LoggingConfig: { LogFormat: 'JSON' },
      });
      expect(Number(fn.Properties.Timeout)).toBeLessThanOrEqual(360);
      expect(JSON.stringify(fn.Properties.Environment)).not.toMatch(/sk-|apiKey/);
    }
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
        ['WorkRegister', 512],
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
    expect(() => synth({ prepareMemoryMb: 20_000 })).toThrow(
      /prepareMemoryMb must be between 128 and 10240 \(got 20000\)/,
    );
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
    expect(environments.length).toBe(9);
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
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      MetricName: 'MinutesWithoutProgress',
      Threshold: 360,
    });
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      MetricName: 'OpenAIAccessRefused',
      Namespace: 'OpenAIBatch',
      Threshold: 1,
      AlarmDescription: Match.stringLikeRegexp('OpenAI refused the API key'),
    });
    template.resourceCountIs('AWS::CloudWatch::Dashboard', 1);
  });

  it('starts a run for each object created under inputs/<work>/ when autoStart is set', () => {
    const { template: auto } = synth({ autoStart: true });
    auto.hasResourceProperties('Custom::S3BucketNotifications', {
      NotificationConfiguration: { EventBridgeConfiguration: {} },
    });
    auto.hasResourceProperties('AWS::Events::Rule', {
      EventPattern: {
        source: ['aws.s3'],
        'detail-type': ['Object Created'],
        detail: Match.objectLike({ object: { key: [{ prefix: 'inputs/unit/' }] } }),
      },
      Targets: [
        Match.objectLike({
          InputTransformer: Match.objectLike({ InputTemplate: '{"dataset":<detail-object-key>}' }),
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
