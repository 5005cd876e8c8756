import {
  Annotations,
  Aws,
  CfnOutput,
  CfnRule,
  Duration,
  Fn,
  Names,
  RemovalPolicy,
  SecretValue,
  Stack,
  Token,
  Validations,
} from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as actions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subscriptions from 'aws-cdk-lib/aws-sns-subscriptions';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import { INTERMEDIATE_TAG } from '../functions/adapters/s3-blob-store';
import { API_KEY_PLACEHOLDER, WEBHOOK_SECRET_PLACEHOLDER } from '../functions/adapters/secret';
import type { WorkSettings } from '../functions/core/work';
import { BatchFunction } from './batch-function';
import { startOnUploadDetail } from './start-on-upload';
import { runDefinition, TASKS, type TaskName } from './state-machine';
import { heapFlagsOf, STEP_OLD_SPACE_MB, STEP_SEMI_SPACE_MB } from './step-memory';

/**
 * Props of {@link OpenAIBatchWork}. A brought resource is typed as CDK's interface or its class: under
 * `exactOptionalPropertyTypes` CDK's classes do not meet their own interfaces, and a user's `new s3.Bucket`
 * should pass without a cast.
 */
export interface OpenAIBatchWorkProps {
  /** The work's validated settings (from `defineWork`). */
  readonly work: { readonly settings: WorkSettings };
  /** Path of the work's module, bundled into the functions. */
  readonly workModule: string;
  /** Bucket for datasets, requests, outputs, errors and summaries. @default a new encrypted, private bucket */
  readonly bucket?: s3.IBucket | s3.Bucket;
  /** Bucket for the data bucket's server access logs (only for a bucket this construct creates). @default none */
  readonly serverAccessLogsBucket?: s3.IBucket | s3.Bucket;
  /**
   * Table for runs, parts and dataset claims: string keys `pk` and `sk`, and a global index `byWork` on
   * string keys `gsi1pk` and `gsi1sk` (with webhooks, also time to live on `expiresAt`). @default a new on-demand table with point-in-time recovery
   */
  readonly table?: dynamodb.ITable | dynamodb.Table;
  /**
   * The secret that holds the OpenAI API key (the key itself, or JSON with `apiKey`). @default a new secret
   * holding a placeholder: put the key in it after deploying
   */
  readonly apiKeySecret?: secretsmanager.ISecret | secretsmanager.Secret;
  /** Another OpenAI-compatible endpoint. @default OpenAI's own */
  readonly openaiBaseUrl?: string;
  /** Email to tell when a run ends (a topic is created). Not with `topic`. @default none */
  readonly notificationEmail?: string;
  /** Topic to tell when a run ends. Not with `notificationEmail`. @default none */
  readonly topic?: sns.ITopic | sns.Topic;
  /** Start a run for each object created under `inputs/<work>/` (not for an empty one, or a folder). @default false */
  readonly autoStart?: boolean;
  /** Alarm when a batch has made no progress for this long. @default Duration.hours(6) */
  readonly stuckBatchAlarmAfter?: Duration;
  /** Ticks one execution runs before the run continues in a new one (the 25,000-event history). @default 1500 */
  readonly maxTicksPerExecution?: number;
  /**
   * Memory of the Prepare function in MB. A lane's memory does not grow with the dataset (custom_ids go
   * to id files, not to memory): it holds the part it uploads and up to 262,144 id entries. More memory
   * also gives Lambda more CPU, so a lane validates and writes requests faster.
   * (10,240 at most.) @default partMemory(maxBytesPerBatch), 875 for the default parts
   */
  readonly prepareMemoryMb?: number;
  /** Log retention of the functions and the state machine. @default logs.RetentionDays.ONE_MONTH */
  readonly logRetention?: logs.RetentionDays;
  /**
   * A webhook endpoint (a Lambda Function URL) for OpenAI to call when a batch ends, so that the run goes
   * on within seconds; polling stays as the safety net. @default the work's `webhooks` setting
   */
  readonly webhooks?: boolean;
  /**
   * The secret that holds OpenAI's webhook signing secret (`whsec_...`, or JSON with `webhookSecret`).
   * @default with webhooks, a new secret holding a placeholder: put the signing secret in it
   */
  readonly webhookSecret?: secretsmanager.ISecret | secretsmanager.Secret;
}

/**
 * The state machine's log group: under `/aws/vendedlogs/states/`, which Step Functions delivers to
 * without adding each group to the account's CloudWatch Logs resource policy (5,120 characters, shared
 * by every state machine of the account and region); named by the stack and the construct, with the hash
 * of the construct's path, so that two works (or two stacks of one work) in an account never collide.
 */
export function runLogGroupName(scope: Construct): string {
  const safe = (text: string) => text.replace(/[^A-Za-z0-9._-]/g, '').slice(0, 100);
  const stack = Stack.of(scope);
  const stackName = Token.isUnresolved(stack.stackName) ? stack.stackName : safe(stack.stackName);
  return `/aws/vendedlogs/states/${stackName}-${safe(scope.node.id)}-${Names.uniqueId(scope).slice(-8)}`;
}

/**
 * Expires intermediate files, and only those of runs that ended: a running run's request files are tagged
 * `running` however long it lasts. Days count from the writing, so an ended run's older objects go at the
 * next pass.
 */
export const EXPIRE_INTERMEDIATES: s3.LifecycleRule = {
  id: 'openai-batch-expire-intermediate-files',
  tagFilters: { [INTERMEDIATE_TAG.key]: INTERMEDIATE_TAG.ended },
  expiration: Duration.days(14),
};

/** Brought buckets that already have the rule: works sharing a bucket add it once (rule ids are unique). */
const expiringBuckets = new WeakSet<s3.Bucket>();

/** A stack's region or account as cdk-nag prints it: the value, or the pseudo parameter when unknown. */
const known = (value: string, pseudo: string) => (Token.isUnresolved(value) ? pseudo : value);

/**
 * The most ticks one execution may run: about 9 history events a tick (the Task, the Choice and the Wait
 * states), under Step Functions' 25,000 with room for the prepare phase and the wind-down.
 */
export const MAX_TICKS = 2500;

/** Regions without Lambda Function URLs, where the webhook receiver cannot be made (cfn-lint's data). */
export const REGIONS_WITHOUT_FUNCTION_URLS: readonly string[] = [
  'ap-east-2',
  'ap-south-2',
  'ap-southeast-4',
  'ap-southeast-5',
  'ap-southeast-6',
  'ap-southeast-7',
  'ca-west-1',
  'cn-northwest-1',
  'eu-central-2',
  'eu-south-2',
  'il-central-1',
  'me-central-1',
  'mx-central-1',
  'us-gov-east-1',
  'us-gov-west-1',
];

/** The webhook receiver's function: small and quick, it only records and restarts. */
export const WEBHOOK_SIZING = { memorySize: 256, timeout: Duration.seconds(30) };

export { STEP_OLD_SPACE_MB, STEP_SEMI_SPACE_MB };

/** Memory and timeout per state: Prepare and Tick stream files and upload parts of up to 200 MB. */
export const SIZING: Record<TaskName, { memorySize: number; timeout: Duration }> = {
  // Register lists the dataset twice and reads the first two bytes of every object, 32 at a time: about a
  // millisecond of CPU an object with TLS, so 100,000 objects need a whole vCPU (1,769 MB) to end in about
  // two minutes; at 512 MB (0.29 vCPU) they took longer than its 5 minutes, and every retry began again.
  Register: { memorySize: 1769, timeout: Duration.minutes(10) },
  // memory: partMemory(maxBytesPerBatch). A step stops within its budget (4 minutes), but one that inflates a
  // gzip object does so whole, in up to INFLATE_BUDGETS budgets (12 minutes; see steps/prepare.ts).
  Prepare: { memorySize: 1024, timeout: Duration.minutes(15) },
  Settle: { memorySize: 1024, timeout: Duration.minutes(6) }, // rewrites parts that lost a duplicate
  Tick: { memorySize: 1024, timeout: Duration.minutes(6) }, // memory: partMemory(maxBytesPerBatch)
  Finalize: { memorySize: 512, timeout: Duration.minutes(2) },
  CleanUp: { memorySize: 512, timeout: Duration.minutes(5) },
  Notify: { memorySize: 256, timeout: Duration.seconds(30) },
  MarkFailed: { memorySize: 1024, timeout: Duration.minutes(6) }, // collects as Tick: partMemory too
  ContinueRun: { memorySize: 256, timeout: Duration.seconds(30) },
};

/**
 * Memory (MB) for the functions that stream and upload parts: the OpenAI client holds much of an upload
 * in memory (1.8 times the file, measured), so twice the largest part plus 512 MB for the runtime.
 */
export function partMemory(maxBytesPerBatch: number): number {
  return Math.min(10_240, Math.ceil((2 * maxBytesPerBatch) / 1024 ** 2) + 512);
}

/** The exported handler of each state in functions/lambda.ts. */
const HANDLERS: Record<TaskName, string> = {
  Register: 'register',
  Prepare: 'prepare',
  Settle: 'settle',
  Tick: 'tick',
  Finalize: 'finalize',
  CleanUp: 'cleanUp',
  Notify: 'notify',
  MarkFailed: 'markFailed',
  ContinueRun: 'continueRun',
};

/**
 * One work on AWS: its bucket, run table and key secret (created or brought), a function per state, the
 * reconciler state machine, notifications, alarms and a dashboard. Start a run with the execution input
 * `{"dataset": "s3://<bucket>/<key or prefix>"}`.
 */
export class OpenAIBatchWork extends Construct {
  public readonly bucket: s3.IBucket;
  public readonly table: dynamodb.ITable;
  public readonly apiKeySecret: secretsmanager.ISecret;
  public readonly topic: sns.ITopic | undefined;
  public readonly functions: Readonly<Record<TaskName, BatchFunction>>;
  public readonly stateMachine: sfn.StateMachine;
  public readonly alarms: readonly cloudwatch.Alarm[];
  public readonly dashboard: cloudwatch.Dashboard;
  /** Whether a run starts for each object of data created under `inputs/<work>/`. */
  public readonly autoStart: boolean;
  /** The webhook receiver, its public URL and its signing secret, when webhooks are on. */
  public readonly webhook:
    | {
        readonly function: BatchFunction;
        readonly url: lambda.FunctionUrl;
        readonly secret: secretsmanager.ISecret;
      }
    | undefined;

  constructor(scope: Construct, id: string, props: OpenAIBatchWorkProps) {
    super(scope, id);
    if (props.topic && props.notificationEmail)
      throw new Error('OpenAIBatchWork: give either topic or notificationEmail, not both');
    const least = partMemory(props.work.settings.maxBytesPerBatch);
    if (
      props.prepareMemoryMb !== undefined &&
      !(
        Number.isInteger(props.prepareMemoryMb) &&
        props.prepareMemoryMb >= least &&
        props.prepareMemoryMb <= 10_240
      )
    ) {
      // A lane uploads shard 0's parts itself: it needs the memory Tick has for a part.
      throw new Error(
        `OpenAIBatchWork: prepareMemoryMb must be a whole number from ${least} (what a part of maxBytesPerBatch needs) to 10240 (got ${props.prepareMemoryMb})`,
      );
    }
    // The functions check their environment when they start: a value they refuse would stop every one.
    if (props.openaiBaseUrl !== undefined && !Token.isUnresolved(props.openaiBaseUrl)) {
      let url: URL | null = null;
      try {
        url = new URL(props.openaiBaseUrl);
      } catch {
        // said below
      }
      if (!url || (url.protocol !== 'https:' && url.protocol !== 'http:'))
        throw new Error(
          `OpenAIBatchWork: openaiBaseUrl must be an http(s) URL, such as https://api.openai.com/v1 (got ${props.openaiBaseUrl})`,
        );
    }
    if (
      props.maxTicksPerExecution !== undefined &&
      !(
        Number.isInteger(props.maxTicksPerExecution) &&
        props.maxTicksPerExecution >= 1 &&
        props.maxTicksPerExecution <= MAX_TICKS
      )
    ) {
      throw new Error(
        `OpenAIBatchWork: maxTicksPerExecution must be a whole number from 1 to ${MAX_TICKS}: an execution's history holds 25,000 events, about 9 a tick (got ${props.maxTicksPerExecution})`,
      );
    }
    if (props.bucket && props.serverAccessLogsBucket)
      throw new Error(
        'OpenAIBatchWork: serverAccessLogsBucket applies only to a bucket this construct creates',
      );
    const { settings } = props.work;
    const stack = Stack.of(this);

    // The casts: CDK's classes do not meet their own interfaces under exactOptionalPropertyTypes.
    const brought = props.bucket as s3.IBucket | undefined;
    this.bucket = brought ?? (this.createBucket(props) as s3.IBucket);
    if (brought) this.expireIntermediatesIn(brought);
    this.table = (props.table as dynamodb.ITable | undefined) ?? (this.createTable() as dynamodb.ITable);
    this.apiKeySecret =
      (props.apiKeySecret as secretsmanager.ISecret | undefined) ??
      (new secretsmanager.Secret(this, 'OpenAIApiKey', {
        description: `OpenAI API key for the openai-batch work "${settings.name}": replace the placeholder with the key`,
        secretStringValue: SecretValue.unsafePlainText(API_KEY_PLACEHOLDER),
      }) as secretsmanager.ISecret);
    if (!props.apiKeySecret) {
      Validations.of(this.apiKeySecret).acknowledge({
        id: 'AwsSolutions-SMG4',
        reason:
          'OpenAI API keys are issued and rotated in the OpenAI dashboard; no Lambda can rotate them. The secret is updated by hand.',
      });
    }
    this.topic =
      (props.topic as sns.ITopic | undefined) ??
      (props.notificationEmail ? this.createTopic(props.notificationEmail) : undefined);

    const environment: Record<string, string> = {
      BUCKET_NAME: this.bucket.bucketName,
      TABLE_NAME: this.table.tableName,
      OPENAI_SECRET_ID: this.apiKeySecret.secretArn,
      EVENT_BUS_NAME: 'default',
      MAX_TICKS_PER_EXECUTION: String(props.maxTicksPerExecution ?? 1500),
      // The second dimension of the functions' metrics (see metricDimensions).
      STACK_NAME: stack.stackName,
      ...(this.topic ? { TOPIC_ARN: this.topic.topicArn } : {}),
      ...(props.openaiBaseUrl ? { OPENAI_BASE_URL: props.openaiBaseUrl } : {}),
    };
    const functions = {} as Record<TaskName, BatchFunction>;
    for (const name of TASKS) {
      functions[name] = new BatchFunction(this, name, {
        handler: HANDLERS[name],
        workModule: props.workModule,
        environment,
        ...SIZING[name],
        ...(name === 'Prepare' || name === 'Tick' || name === 'MarkFailed'
          ? { memorySize: partMemory(settings.maxBytesPerBatch) }
          : {}),
        ...(name === 'Prepare' && props.prepareMemoryMb ? { memorySize: props.prepareMemoryMb } : {}),
        heapFlags: heapFlagsOf(name, settings.maxRecordBytes),
        ...(props.logRetention ? { logRetention: props.logRetention } : {}),
      });
    }
    this.functions = functions;
    this.grant(stack);

    const logGroup = new logs.LogGroup(this, 'RunLogs', {
      logGroupName: runLogGroupName(this),
      retention: props.logRetention ?? logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    this.stateMachine = new sfn.StateMachine(this, 'Run', {
      definitionBody: sfn.DefinitionBody.fromChainable(
        runDefinition(
          new Construct(this, 'States'),
          Object.fromEntries(TASKS.map((n) => [n, functions[n].function])) as Record<
            TaskName,
            BatchFunction['function']
          >,
          settings.prepareConcurrency,
        ),
      ),
      tracingEnabled: true,
      // Covers 1,500 ticks at the longest poll (15.6 days); under the 24.8 days a JS timer can count locally.
      timeout: Duration.days(20),
      logs: { destination: logGroup, level: sfn.LogLevel.ALL, includeExecutionData: false },
    });
    // A separate policy: the function's own default policy would make the state machine depend on itself.
    new iam.Policy(this, 'ContinueRunPolicy', {
      roles: [functions.ContinueRun.role],
      statements: [
        new iam.PolicyStatement({
          actions: ['states:StartExecution'],
          resources: [this.stateMachine.stateMachineArn],
        }),
      ],
    });

    this.webhook =
      (props.webhooks ?? settings.webhooks) ? this.createWebhook(props, environment, stack) : undefined;

    this.autoStart = props.autoStart ?? false;
    if (this.autoStart) this.startOnUpload(settings.name);
    this.alarms = this.createAlarms(props.stuckBatchAlarmAfter ?? Duration.hours(6), settings.name);
    this.dashboard = this.createDashboard(settings.name);
    this.acknowledgeFindings();

    new CfnOutput(this, 'BucketName', {
      value: this.bucket.bucketName,
      description: 'Put datasets here, for example under inputs/',
    });
    new CfnOutput(this, 'StateMachineArn', {
      value: this.stateMachine.stateMachineArn,
      description: 'Start a run: {"dataset": "s3://<bucket>/<key>"}',
    });
    new CfnOutput(this, 'ApiKeySecretArn', {
      value: this.apiKeySecret.secretArn,
      description: 'Put the OpenAI API key in this secret',
    });
    new CfnOutput(this, 'TableName', { value: this.table.tableName });
  }

  private createBucket(props: OpenAIBatchWorkProps): s3.Bucket {
    const bucket = new s3.Bucket(this, 'Data', {
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      enforceSSL: true,
      encryption: s3.BucketEncryption.S3_MANAGED,
      removalPolicy: RemovalPolicy.RETAIN,
      ...(props.serverAccessLogsBucket
        ? {
            serverAccessLogsBucket: props.serverAccessLogsBucket as s3.IBucket,
            serverAccessLogsPrefix: 'openai-batch/',
          }
        : {}),
      lifecycleRules: [
        EXPIRE_INTERMEDIATES,
        { id: 'abort-incomplete-uploads', abortIncompleteMultipartUploadAfter: Duration.days(2) },
      ],
    });
    if (!props.serverAccessLogsBucket) {
      Validations.of(bucket).acknowledge({
        id: 'AwsSolutions-S1',
        reason:
          'Server access logs are optional: pass serverAccessLogsBucket where the account requires them. Access is private, TLS-only and IAM-scoped to this work.',
      });
    }
    return bucket;
  }

  /**
   * A brought bucket defined in a CDK app gets the rule that expires ended runs' intermediate files; an
   * imported one cannot be changed from here, so the synth says what to add (the README shows how).
   */
  private expireIntermediatesIn(bucket: s3.IBucket): void {
    if (bucket instanceof s3.Bucket) {
      if (!expiringBuckets.has(bucket)) bucket.addLifecycleRule(EXPIRE_INTERMEDIATES);
      expiringBuckets.add(bucket);
      return;
    }
    Annotations.of(this).addInfo(
      `OpenAIBatchWork: the imported bucket ${bucket.bucketName} gets no lifecycle rule from this stack: add one that expires objects tagged ${INTERMEDIATE_TAG.key}=${INTERMEDIATE_TAG.ended} (the intermediate files of ended runs), or they stay until the runs are cleaned up`,
    );
  }

  private createTable(): dynamodb.Table {
    const table = new dynamodb.Table(this, 'Runs', {
      partitionKey: { name: 'pk', type: dynamodb.AttributeType.STRING },
      sortKey: { name: 'sk', type: dynamodb.AttributeType.STRING },
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      encryption: dynamodb.TableEncryption.AWS_MANAGED,
      removalPolicy: RemovalPolicy.RETAIN,
      timeToLiveAttribute: 'expiresAt', // webhook event ids, kept a week against replays
    });
    table.addGlobalSecondaryIndex({
      indexName: 'byWork',
      partitionKey: { name: 'gsi1pk', type: dynamodb.AttributeType.STRING },
      sortKey: { name: 'gsi1sk', type: dynamodb.AttributeType.STRING },
    });
    return table;
  }

  private createTopic(email: string): sns.Topic {
    const topic = new sns.Topic(this, 'Notifications', { enforceSSL: true });
    topic.addSubscription(new subscriptions.EmailSubscription(email));
    Validations.of(topic).acknowledge({
      id: 'AwsSolutions-SNS2',
      reason:
        'Messages carry run ids, counts and S3 locations, never record contents or keys; SSE with a KMS key is not needed for them.',
    });
    return topic;
  }

  /**
   * Each function gets the actions its step calls, by name, on this work's resources only, through CDK's
   * grants: a secret imported by name gets its ARN's `-??????` suffix, and the customer-managed KMS keys
   * of a brought bucket, table, secret or topic are granted with them.
   */
  private grant(stack: Stack): void {
    const f = this.functions;
    const bucket = this.bucket;
    // No function is granted the byWork index: only the CLI reads it, with its user's own credentials.
    const bus = [`arn:${stack.partition}:events:${stack.region}:${stack.account}:event-bus/default`];
    // A step run again removes an output or error file it left empty: DeleteObject is part of writing.
    const write = ['s3:PutObject', 's3:PutObjectTagging', 's3:AbortMultipartUpload', 's3:DeleteObject'];

    // Register lists the dataset's objects, reads their first bytes (gzip?), and writes the shard plan and
    // the object list, which it removes again when it refuses the run (the dataset is taken, or changed).
    f.Register.allowObjects(bucket, ['s3:GetObject', ...write]);
    f.Register.allowListing(bucket);
    // Resuming a failed run, it reads the run's parts (a Query) to find files that expired.
    f.Register.allowTable(this.table, ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:Query']);

    f.Prepare.allowObjects(bucket, ['s3:GetObject', ...write]);
    f.Prepare.allowListing(bucket); // the id files a crashed step of its shard left, to delete them
    f.Prepare.allowTable(this.table, ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:Query']);
    f.Prepare.allowSecret(this.apiKeySecret); // lane 0 sends shard 0's parts while the rest prepares

    // Settle reads the lanes' id files, rewrites the parts a duplicate is dropped from, and lists and
    // deletes its own state files (runs/<runId>/state/...).
    f.Settle.allowObjects(bucket, ['s3:GetObject', ...write]);
    f.Settle.allowListing(bucket);
    f.Settle.allowTable(this.table, ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:Query']);

    f.Tick.allowObjects(bucket, ['s3:GetObject', ...write]);
    // A file gone (a resumed run's expired plan) must read as missing: S3 answers 404, not 403, only to
    // a caller that may list the bucket.
    f.Tick.allowListing(bucket);
    f.Tick.allowTable(this.table, ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:Query']);
    f.Tick.allowSecret(this.apiKeySecret);

    f.Finalize.allowObjects(bucket, ['s3:PutObject', 's3:AbortMultipartUpload']); // the summary: never intermediate
    // An ended run's intermediate objects are listed and tagged `ended` for the lifecycle rule.
    const markEnded = (fn: BatchFunction) => {
      fn.allowObjects(bucket, ['s3:PutObjectTagging']);
      fn.allowListing(bucket);
    };
    markEnded(f.Finalize);
    f.Finalize.allowTable(this.table, [
      'dynamodb:GetItem',
      'dynamodb:PutItem',
      'dynamodb:Query',
      'dynamodb:UpdateItem',
    ]);

    f.CleanUp.allowObjects(bucket, ['s3:DeleteObject']);
    f.CleanUp.allowListing(bucket);
    f.CleanUp.allowTable(this.table, ['dynamodb:GetItem', 'dynamodb:Query']);
    f.CleanUp.allowSecret(this.apiKeySecret);

    for (const announcer of [f.Notify, f.MarkFailed]) {
      announcer.allow(['events:PutEvents'], bus);
      if (this.topic) announcer.allowPublish(this.topic);
    }
    f.Notify.allowTable(this.table, ['dynamodb:GetItem']);
    f.MarkFailed.allowTable(this.table, [
      'dynamodb:GetItem',
      'dynamodb:PutItem',
      'dynamodb:Query',
      'dynamodb:UpdateItem',
    ]);
    f.MarkFailed.allowSecret(this.apiKeySecret);
    f.MarkFailed.allowObjects(bucket, ['s3:GetObject', ...write]); // collects finished batches as Tick does
    markEnded(f.MarkFailed);
  }

  /**
   * The webhook receiver: a public Function URL (OpenAI cannot sign AWS requests) whose every delivery is
   * checked against OpenAI's signing secret before anything else is read.
   */
  private createWebhook(
    props: OpenAIBatchWorkProps,
    environment: Record<string, string>,
    stack: Stack,
  ): NonNullable<OpenAIBatchWork['webhook']> {
    // The receiver is a Lambda Function URL, which some regions do not have: CloudFormation would refuse
    // the stack with "Unrecognized resource types". Said at synth where the region is known, else by a
    // rule that stops the deploy in such a region before anything is made.
    const without = [...REGIONS_WITHOUT_FUNCTION_URLS];
    if (!Token.isUnresolved(stack.region)) {
      if (without.includes(stack.region))
        throw new Error(
          `OpenAIBatchWork: webhooks need Lambda Function URLs, which ${stack.region} does not have: deploy without webhooks (runs poll), or in another region`,
        );
    } else {
      new CfnRule(this, 'WebhookRegion', {
        assertions: [
          {
            assert: Fn.conditionNot(Fn.conditionContains(without, Aws.REGION)),
            assertDescription:
              'Webhooks need Lambda Function URLs, which this region does not have: deploy without webhooks (runs poll), or in another region.',
          },
        ],
      });
    }
    const secret =
      (props.webhookSecret as secretsmanager.ISecret | undefined) ??
      (new secretsmanager.Secret(this, 'WebhookSigningSecret', {
        description: `OpenAI webhook signing secret for the openai-batch work "${props.work.settings.name}": replace the placeholder with the whsec_... secret`,
        secretStringValue: SecretValue.unsafePlainText(WEBHOOK_SECRET_PLACEHOLDER),
      }) as secretsmanager.ISecret);
    if (!props.webhookSecret) {
      Validations.of(secret).acknowledge({
        id: 'AwsSolutions-SMG4',
        reason:
          'Webhook signing secrets are issued and rotated in the OpenAI dashboard; no Lambda can rotate them. The secret is updated by hand.',
      });
    }
    const fn = new BatchFunction(this, 'Webhook', {
      handler: 'webhook',
      workModule: props.workModule,
      environment: {
        ...environment,
        WEBHOOK_SECRET_ID: secret.secretArn,
        STATE_MACHINE_ARN: this.stateMachine.stateMachineArn,
      },
      ...WEBHOOK_SIZING,
      ...(props.logRetention ? { logRetention: props.logRetention } : {}),
    });
    fn.allowTable(this.table, ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:DeleteItem']);
    fn.allowSecret(secret);
    fn.allow(['states:StartExecution'], [this.stateMachine.stateMachineArn]);
    fn.allow(
      ['states:StopExecution'],
      [
        `arn:${stack.partition}:states:${stack.region}:${stack.account}:execution:${this.stateMachine.stateMachineName}:*`,
      ],
    );
    Validations.of(fn).acknowledge({
      id: 'AwsSolutions-IAM5[Resource::*]',
      reason:
        'X-Ray tracing (xray:PutTraceSegments, xray:PutTelemetryRecords) has no resource-level permissions; CDK grants it on *.',
    });
    Validations.of(fn).acknowledge({
      id: `AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:${known(stack.region, '<AWS::Region>')}:${known(stack.account, '<AWS::AccountId>')}:execution:<${stack.getLogicalId(this.stateMachine.node.defaultChild as sfn.CfnStateMachine)}.Name>:*]`,
      reason:
        "The receiver stops the waiting execution of a run: any execution of this work's own state machine.",
    });
    const url = fn.function.addFunctionUrl({ authType: lambda.FunctionUrlAuthType.NONE });
    new CfnOutput(this, 'WebhookUrl', {
      value: url.url,
      description: 'Add this endpoint in the OpenAI dashboard (Settings > Webhooks) for batch events',
    });
    new CfnOutput(this, 'WebhookSecretArn', {
      value: secret.secretArn,
      description: "Put the endpoint's signing secret (whsec_...) in this secret",
    });
    return { function: fn, url, secret };
  }

  /** Turns on the bucket's EventBridge notifications (a brought or imported one too) and starts a run per upload. */
  private startOnUpload(work: string): void {
    // On an imported bucket CDK's custom resource merges EventBridge into the notifications already set.
    this.bucket.enableEventBridgeNotification();
    new events.Rule(this, 'StartOnUpload', {
      description: `Start an openai-batch run for each object of data created under inputs/${work}/`,
      eventPattern: {
        source: ['aws.s3'],
        detailType: ['Object Created'],
        detail: startOnUploadDetail(this.bucket.bucketName, work),
      },
      targets: [
        new targets.SfnStateMachine(this.stateMachine, {
          input: events.RuleTargetInput.fromObject({
            dataset: events.EventField.fromPath('$.detail.object.key'),
            // The key comes from an S3 event: Register also tries it URL-decoded (see steps/register.ts).
            fromS3Event: true,
          }),
        }),
      ],
    });
  }

  /**
   * The dimensions of the functions' own metrics: the work, and the stack, so that two stacks of one work
   * in an account (dev and prod) alarm on their own runs alone.
   */
  private metricDimensions(work: string): Record<string, string> {
    return { Work: work, Stack: Stack.of(this).stackName };
  }

  private createAlarms(stuckAfter: Duration, work: string): cloudwatch.Alarm[] {
    const alarm = (id: string, metric: cloudwatch.IMetric, description: string, threshold = 1) =>
      new cloudwatch.Alarm(this, id, {
        metric,
        threshold,
        evaluationPeriods: 1,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
        alarmDescription: description,
      });
    const alarms = [
      alarm(
        'RunsFailed',
        this.stateMachine.metricFailed({ period: Duration.minutes(5) }),
        `A run of ${work} failed`,
      ),
      alarm(
        'RunsTimedOut',
        this.stateMachine.metricTimedOut({ period: Duration.minutes(5) }),
        `A run of ${work} timed out`,
      ),
      alarm(
        'FunctionErrors',
        new cloudwatch.MathExpression({
          expression: TASKS.map((_, i) => `e${i}`).join('+'),
          usingMetrics: Object.fromEntries(
            TASKS.map((n, i) => [
              `e${i}`,
              this.functions[n].function.metricErrors({ period: Duration.minutes(5) }),
            ]),
          ),
          period: Duration.minutes(5),
        }),
        `A function of ${work} threw (a retry may have recovered)`,
      ),
      alarm(
        'BatchStuck',
        new cloudwatch.Metric({
          namespace: 'OpenAIBatch',
          metricName: 'MinutesWithoutProgress',
          dimensionsMap: this.metricDimensions(work),
          statistic: 'Maximum',
          period: Duration.minutes(15),
        }),
        `A batch or run of ${work} has made no progress for ${stuckAfter.toMinutes()} minutes (stuck validating or finalizing, or OpenAI unavailable that long: see openai-batch status)`,
        stuckAfter.toMinutes(),
      ),
      alarm(
        'OpenAIAccessRefused',
        new cloudwatch.Metric({
          namespace: 'OpenAIBatch',
          metricName: 'OpenAIAccessRefused',
          dimensionsMap: this.metricDimensions(work),
          statistic: 'Maximum',
          period: Duration.minutes(15),
        }),
        `OpenAI refused the API key or the account's quota for a run of ${work}: the run waits until a person fixes the key (the stack's secret) or the billing; openai-batch status shows OpenAI's message`,
      ),
    ];
    const topic = this.topic;
    if (topic) {
      for (const a of alarms) a.addAlarmAction(new actions.SnsAction(topic));
      this.letAlarmsPublish(topic, alarms);
    }
    return alarms;
  }

  /**
   * A topic's policy replaces SNS's default one, which is what lets the account's alarms publish (the
   * created topic's policy, made by `enforceSSL`, holds only a Deny): CloudWatch is allowed to publish
   * this stack's alarms, from this account. A topic without a policy keeps the default, which allows
   * them already; giving it one here would take the default from every other publisher. An imported
   * topic's policy cannot be changed from here: the synth says what it needs.
   */
  private letAlarmsPublish(topic: sns.ITopic, alarms: cloudwatch.Alarm[]): void {
    const stack = Stack.of(this);
    if (!(topic instanceof sns.Topic)) {
      Annotations.of(this).addInfo(
        `OpenAIBatchWork: if the imported topic ${topic.topicArn} has a policy of its own, it must allow cloudwatch.amazonaws.com to sns:Publish (with aws:SourceAccount ${stack.account}), or alarm e-mails are never sent`,
      );
      return;
    }
    if (!topic.node.tryFindChild('Policy')) return;
    // Alarms of this stack by ARN; a topic in another stack would then depend on this one, so there any
    // alarm of the account.
    const sourceArns =
      Stack.of(topic) === stack
        ? alarms.map((a) => a.alarmArn)
        : [`arn:${stack.partition}:cloudwatch:${stack.region}:${stack.account}:alarm:*`];
    topic.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: `CloudWatchAlarms${Names.uniqueId(this).slice(-8)}`,
        principals: [new iam.ServicePrincipal('cloudwatch.amazonaws.com')],
        actions: ['sns:Publish'],
        resources: [topic.topicArn],
        conditions: {
          StringEquals: { 'aws:SourceAccount': stack.account },
          ArnLike: { 'aws:SourceArn': sourceArns },
        },
      }),
    );
  }

  private createDashboard(work: string): cloudwatch.Dashboard {
    const dashboard = new cloudwatch.Dashboard(this, 'Dashboard');
    dashboard.addWidgets(
      new cloudwatch.GraphWidget({
        title: `${work}: runs`,
        left: [
          this.stateMachine.metricStarted(),
          this.stateMachine.metricSucceeded(),
          this.stateMachine.metricFailed(),
        ],
      }),
      new cloudwatch.GraphWidget({
        title: `${work}: function errors`,
        left: TASKS.map((n) => this.functions[n].function.metricErrors({ label: n })),
      }),
      new cloudwatch.GraphWidget({
        title: `${work}: function duration`,
        left: TASKS.map((n) => this.functions[n].function.metricDuration({ label: n })),
      }),
      new cloudwatch.GraphWidget({
        title: `${work}: longest time a batch made no progress (minutes)`,
        left: [
          new cloudwatch.Metric({
            namespace: 'OpenAIBatch',
            metricName: 'MinutesWithoutProgress',
            dimensionsMap: this.metricDimensions(work),
            statistic: 'Maximum',
          }),
        ],
        right: [
          new cloudwatch.Metric({
            namespace: 'OpenAIBatch',
            metricName: 'OpenAIAccessRefused',
            dimensionsMap: this.metricDimensions(work),
            statistic: 'Maximum',
            label: 'OpenAI refuses the key or quota',
          }),
        ],
      }),
    );
    return dashboard;
  }

  private acknowledgeFindings(): void {
    const stack = Stack.of(this);
    for (const name of TASKS) {
      const fn = this.functions[name].function.node.defaultChild as lambda.CfnFunction;
      Validations.of(this.stateMachine).acknowledge({
        id: `AwsSolutions-IAM5[Resource::<${stack.getLogicalId(fn)}.Arn>:*]`,
        reason:
          "Step Functions may invoke any version of this work's own function; CDK grants <function ARN>:* for that.",
      });
    }
    Validations.of(this.stateMachine).acknowledge({
      id: 'AwsSolutions-IAM5[Resource::*]',
      reason:
        'X-Ray tracing and CloudWatch Logs delivery for Step Functions have no resource-level permissions; CDK grants them on *.',
    });
    for (const name of TASKS) {
      Validations.of(this.functions[name]).acknowledge({
        id: 'AwsSolutions-IAM5[Resource::*]',
        reason:
          'X-Ray tracing (xray:PutTraceSegments, xray:PutTelemetryRecords) has no resource-level permissions; CDK grants it on *.',
      });
    }
    const ownBucket = this.bucket.node.defaultChild as s3.CfnBucket | undefined;
    const objects = ownBucket
      ? `<${stack.getLogicalId(ownBucket)}.Arn>/*`
      : Token.isUnresolved(this.bucket.bucketName)
        ? null // a bucket from another stack: acknowledge its ARN where it is known
        : `arn:<AWS::Partition>:s3:::${this.bucket.bucketName}/*`;
    if (objects) {
      Validations.of(this).acknowledge({
        id: `AwsSolutions-IAM5[Resource::${objects}]`,
        reason:
          "Objects are named by run id at run time (runs/<runId>/...) and datasets by the user; access is limited to this work's own bucket.",
      });
    }
    if (this.autoStart) {
      // CDK adds its bucket-notifications handler during synthesis, so it is acknowledged by the stack
      // (the bucket's, where a brought bucket is defined in another stack).
      for (const owner of new Set([stack, Stack.of(this.bucket)]))
        Validations.of(owner).acknowledge({
          id: 'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]',
          reason:
            "CDK's bucket-notifications custom resource (autoStart): it runs once at deploy time to turn on EventBridge for the bucket.",
        });
    }
  }
}
