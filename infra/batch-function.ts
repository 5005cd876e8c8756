import { Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { NodejsFunction, OutputFormat } from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';

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
}

/**
 * The house Lambda: Node.js 24 on arm64, X-Ray tracing, bundled by the local esbuild as ESM with source
 * maps, its own log group with a retention, and its own role that is granted each action it needs by
 * name (no managed policy, no wildcard action).
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
    this.function = new NodejsFunction(this, 'Function', {
      entry: LAMBDA_ENTRY,
      handler: props.handler,
      runtime: lambda.Runtime.NODEJS_24_X,
      architecture: lambda.Architecture.ARM_64,
      tracing: lambda.Tracing.ACTIVE,
      timeout: props.timeout ?? Duration.minutes(1),
      memorySize: props.memorySize ?? 512,
      role: this.role,
      logGroup: this.logGroup,
      loggingFormat: lambda.LoggingFormat.JSON,
      environment: { NODE_OPTIONS: '--enable-source-maps', ...props.environment },
      bundling: {
        format: OutputFormat.ESM,
        target: 'node22',
        sourceMap: true,
        minify: true,
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

  /** The ARN of a resource in this stack's account and region. */
  arn(service: string, resource: string): string {
    const stack = Stack.of(this);
    return `arn:${stack.partition}:${service}:${stack.region}:${stack.account}:${resource}`;
  }
}
