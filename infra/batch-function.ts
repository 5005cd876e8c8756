import { Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { NodejsFunction, OutputFormat } from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import type * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import type * as sns from 'aws-cdk-lib/aws-sns';
import { Construct } from 'constructs';
import { HEAP_WRAPPER_PATH, heapWrapperLayer } from './heap-wrapper';

/** Where the Lambda entry point is: every state's function is the same bundle with another handler. */
export const LAMBDA_ENTRY = new URL('../functions/lambda.ts', import.meta.url).pathname;

/** Props of {@link BatchFunction}. */
export interface BatchFunctionProps {
  /** The exported handler in functions/lambda.ts (register, prepare, tick, ...). */
  readonly handler: string;
  /** Path of the work's module, bundled in as `@work`. */
  readonly workModule: string;
  /** @default Duration.minutes(1) */
  readonly timeout?: Duration;
  /** @default 512 */
  readonly memorySize?: number;
  /** @default logs.RetentionDays.ONE_MONTH */
  readonly logRetention?: logs.RetentionDays;
  /** Environment shared by every function of the work. */
  readonly environment?: Readonly<Record<string, string>>;
  /**
   * Stack traces mapped to the TypeScript source (`--enable-source-maps` and a bundled source map).
   * Node reads and keeps the whole map at the first stack trace it prints: measured on the bundle, a
   * function's memory goes from 90 MB to 177 MB, plus about 270 ms, the first time an error is logged.
   * Ample room at 512 MB and more; at 256 MB it would take two thirds of the memory at the moment
   * something already went wrong, so there the bundle keeps its names (esbuild's `keepNames`) instead
   * and a stack trace names the functions it passed through.
   * @default true when memorySize is 512 MB or more
   */
  readonly sourceMaps?: boolean;
  /**
   * V8 heap flags for NODE_OPTIONS (`--max-old-space-size`, `--max-semi-space-size`: see step-memory.ts):
   * V8 otherwise grows its heap towards the function's memory, holding garbage it has not yet collected.
   * A function given any starts through the stack's heap-flags wrapper (infra/heap-wrapper.ts), so that
   * Lambda's start script cannot override them.
   */
  readonly heapFlags?: readonly string[];
}

/** NODE_OPTIONS for source maps and heap bounds, when either is asked for. */
function nodeOptions(sourceMaps: boolean, heapFlags: readonly string[] = []): Record<string, string> {
  const options = [...(sourceMaps ? ['--enable-source-maps'] : []), ...heapFlags];
  return options.length > 0 ? { NODE_OPTIONS: options.join(' ') } : {};
}

/** The smallest memory (MB) at which a function maps its stack traces to the source by default. */
export const SOURCE_MAPS_FROM_MB = 512;

/**
 * The house Lambda: Node.js 24 on arm64, X-Ray tracing, bundled by the local esbuild as ESM (with source
 * maps where memory allows: see `sourceMaps`), its own log group with a retention, and its own role that
 * is granted each action it needs by name (no managed policy, no wildcard action), through CDK's grants
 * where the resource may bring a KMS key.
 */
export class BatchFunction extends Construct {
  public readonly function: NodejsFunction;
  public readonly role: iam.Role;
  public readonly logGroup: logs.LogGroup;

  constructor(scope: Construct, id: string, props: BatchFunctionProps) {
    super(scope, id);
    this.logGroup = new logs.LogGroup(this, 'Logs', {
      retention: props.logRetention ?? logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    this.role = new iam.Role(this, 'Role', { assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com') });
    this.role.addToPolicy(
      new iam.PolicyStatement({
        actions: ['logs:CreateLogStream', 'logs:PutLogEvents'],
        resources: [this.logGroup.logGroupArn],
      }),
    );
    const memorySize = props.memorySize ?? 512;
    const sourceMaps = props.sourceMaps ?? memorySize >= SOURCE_MAPS_FROM_MB;
    const bounded = (props.heapFlags ?? []).length > 0;
    this.function = new NodejsFunction(this, 'Function', {
      entry: LAMBDA_ENTRY,
      handler: props.handler,
      runtime: lambda.Runtime.NODEJS_24_X,
      architecture: lambda.Architecture.ARM_64,
      tracing: lambda.Tracing.ACTIVE,
      timeout: props.timeout ?? Duration.minutes(1),
      memorySize,
      role: this.role,
      logGroup: this.logGroup,
      loggingFormat: lambda.LoggingFormat.JSON,
      environment: {
        ...nodeOptions(sourceMaps, props.heapFlags),
        ...(bounded ? { AWS_LAMBDA_EXEC_WRAPPER: HEAP_WRAPPER_PATH } : {}),
        ...props.environment,
      },
      ...(bounded ? { layers: [heapWrapperLayer(this)] } : {}),
      bundling: {
        format: OutputFormat.ESM,
        target: 'node22',
        sourceMap: sourceMaps,
        minify: true,
        keepNames: !sourceMaps,
        mainFields: ['module', 'main'],
        banner:
          "import { createRequire } from 'node:module'; const require = createRequire(import.meta.url);",
        esbuildArgs: { '--alias:@work': props.workModule },
        externalModules: [],
      },
    });
  }

  /** Grants actions on resources to this function, by name. */
  allow(actions: string[], resources: string[]): void {
    this.role.addToPolicy(new iam.PolicyStatement({ actions, resources }));
  }

  /**
   * Grants object actions (`s3:GetObject`, `s3:PutObject`, ...) on every object of a bucket, through
   * CDK's grants, so that a bucket encrypted with a customer-managed key also grants the key: Decrypt to
   * read, GenerateDataKey and Decrypt to write (a multipart upload decrypts its parts to complete).
   */
  allowObjects(bucket: s3.IBucket, actions: string[]): void {
    const writes = actions.includes('s3:PutObject');
    const reads = actions.includes('s3:GetObject');
    const keyActions = [
      ...(writes ? ['kms:GenerateDataKey'] : []),
      ...(reads || writes ? ['kms:Decrypt'] : []),
    ];
    s3.BucketGrants.fromBucket(bucket).actionsOnObjectKeys(this.role, '*', ...actions, ...keyActions);
  }

  /** Grants listing a bucket's object keys (listing needs no use of the bucket's KMS key). */
  allowListing(bucket: s3.IBucket): void {
    iam.Grant.addToPrincipal({
      grantee: this.role,
      actions: ['s3:ListBucket'],
      resourceArns: [bucket.bucketArn],
    });
  }

  /**
   * Grants item actions on a table and the indexes named (an imported table does not know its indexes,
   * so CDK's `grant` would leave them out), and the use of the table's customer-managed key.
   */
  allowTable(table: dynamodb.ITable, actions: string[], indexes: readonly string[] = []): void {
    iam.Grant.addToPrincipal({
      grantee: this.role,
      actions,
      resourceArns: [table.tableArn, ...indexes.map((index) => `${table.tableArn}/index/${index}`)],
    });
    const writes = actions.some((a) => /^dynamodb:(Put|Update|Delete)Item$/.test(a));
    table.encryptionKey?.grant(
      this.role,
      'kms:Decrypt',
      'kms:DescribeKey',
      ...(writes ? ['kms:Encrypt', 'kms:GenerateDataKey'] : []),
    );
  }

  /**
   * Grants reading a secret with CDK's `grantRead`: a secret imported by name gets the `-??????` suffix
   * Secrets Manager adds to its ARN, and a customer-managed key is granted for Secrets Manager's use.
   * CDK's grant adds `secretsmanager:DescribeSecret` (the secret's metadata, never its value).
   */
  allowSecret(secret: secretsmanager.ISecret): void {
    secret.grantRead(this.role);
    // CDK grants the key in the key's own policy, which an imported key does not take: the role gets it
    // too, for Secrets Manager's use only (a key policy that delegates to IAM, as the default does, honours it).
    if (secret.encryptionKey) {
      this.role.addToPolicy(
        new iam.PolicyStatement({
          actions: ['kms:Decrypt'],
          resources: [secret.encryptionKey.keyArn],
          conditions: {
            StringEquals: { 'kms:ViaService': `secretsmanager.${Stack.of(this).region}.amazonaws.com` },
          },
        }),
      );
    }
  }

  /** Grants publishing to a topic, and its KMS key where it has one. */
  allowPublish(topic: sns.ITopic): void {
    topic.grantPublish(this.role);
  }

  /** The ARN of a resource in this stack's account and region. */
  arn(service: string, resource: string): string {
    const stack = Stack.of(this);
    return `arn:${stack.partition}:${service}:${stack.region}:${stack.account}:${resource}`;
  }
}
