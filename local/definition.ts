import { App } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { buildApp } from '../infra/app';
import type { WorkStack } from '../infra/work-stack';
import type { LoadedWork } from '../infra/works';

/** A state machine definition in the Amazon States Language. */
export type Definition = { StartAt: string; States: Record<string, Record<string, unknown>> } & Record<
  string,
  unknown
>;

/** The account and region fake ARNs are made in. */
const FAKE = { partition: 'aws', region: 'us-east-1', account: '123456789012' };

/** A CloudFormation value inside a Fn::Join, as it stands when there is no deployment. */
function resolveToken(part: unknown): string {
  if (typeof part === 'string') return part;
  const token = part as { 'Fn::GetAtt'?: [string, string]; Ref?: string };
  if (token['Fn::GetAtt']) {
    const [logicalId] = token['Fn::GetAtt'];
    return `arn:${FAKE.partition}:lambda:${FAKE.region}:${FAKE.account}:function:${logicalId}`;
  }
  if (token.Ref === 'AWS::Partition') return FAKE.partition;
  if (token.Ref === 'AWS::Region') return FAKE.region;
  if (token.Ref === 'AWS::AccountId') return FAKE.account;
  return `local-${token.Ref ?? 'value'}`;
}

/**
 * An App that synthesizes a stack to read its template here, not to deploy it: its functions are not
 * bundled, and CDK's built-in CloudFormation validation does not run. That validation (a WebAssembly
 * engine) took 2.6 of the 3.6 s of a first synthesis and 0.4 of the 0.5 s of each one after, where a
 * local run, the benchmarks and the tests need only the template. `cdk synth` and `cdk deploy`
 * (infra/app.ts) keep it (it reports warnings there), and test/infra/cfn-lint.test.ts synthesizes with it
 * and fails on an error it finds.
 */
export function unbundledApp(): App {
  return new App({
    builtinCloudFormationValidation: false,
    context: { 'aws:cdk:bundling-stacks': [] },
  });
}

/**
 * Synthesizes the work's stack (without bundling) and takes its state machine definition from the
 * template, as deployed, with CloudFormation references replaced by fake ARNs. The local runner executes
 * exactly this definition, so what runs here is what runs in the cloud.
 */
export async function synthesizeDefinition(
  loaded: LoadedWork,
): Promise<{ definition: Definition; template: Template; stack: WorkStack }> {
  const app = await buildApp(unbundledApp(), [loaded]);
  const stack = app.node.children.find(
    (c) => c.node.id === `OpenAIBatch-${loaded.work.settings.name}`,
  ) as WorkStack;
  const template = Template.fromStack(stack);
  const machines = Object.values(template.findResources('AWS::StepFunctions::StateMachine'));
  const body = (machines[0]?.Properties as { DefinitionString?: unknown } | undefined)?.DefinitionString;
  if (!body) throw new Error('the stack has no state machine');
  const text =
    typeof body === 'string'
      ? body
      : (body as { 'Fn::Join': [string, unknown[]] })['Fn::Join'][1].map(resolveToken).join('');
  return { definition: JSON.parse(text) as Definition, template, stack };
}
