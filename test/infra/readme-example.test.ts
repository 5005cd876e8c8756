import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { App, Stack } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import { afterAll, describe, expect, it } from 'vitest';

/**
 * The README's construct example, run as written: its ```ts block under "What the stack creates", put
 * beside the project root (in .local/, its relative paths one level up), bundled by the local esbuild as
 * `cdk synth` would, and synthesized.
 */

const root = new URL('../../', import.meta.url);
const readme = readFileSync(new URL('README.md', root), 'utf8');
const section = readme.slice(readme.indexOf('### What the stack creates'));
const example = /```ts\n([\s\S]*?)```/.exec(section)?.[1] ?? '';
const file = new URL(`.local/readme-example-${process.pid}.ts`, root);

afterAll(() => rmSync(file, { force: true }));

describe("the README's construct example", () => {
  it('is the block that builds an OpenAIBatchWork in a stack of your own', () => {
    expect(example).toContain("new OpenAIBatchWork(stack, 'Example', {");
  });

  it('synthesizes as written, with a bucket and a secret of your own', async () => {
    mkdirSync(new URL('.local/', root), { recursive: true });
    writeFileSync(file, `${example.replaceAll("'./", "'../")}\nexport { app, stack };\n`);
    const { app, stack } = (await import(/* @vite-ignore */ file.pathname)) as { app: App; stack: Stack };
    const assembly = app.synth();
    expect(assembly.getStackByName(stack.stackName).template).toBeDefined();
    const template = Template.fromStack(stack);
    template.resourceCountIs('AWS::StepFunctions::StateMachine', 1);
    // The secret imported by name: granted with the suffix Secrets Manager adds.
    expect(JSON.stringify(template.findResources('AWS::IAM::Policy'))).toContain(
      ':secret:openai/api-key-??????',
    );
    // autoStart with the bucket of the user's stack: EventBridge on, and its intermediate files expire.
    template.hasResourceProperties('Custom::S3BucketNotifications', {
      NotificationConfiguration: { EventBridgeConfiguration: {} },
    });
    template.hasResourceProperties('AWS::S3::Bucket', {
      LifecycleConfiguration: {
        Rules: Match.arrayWith([
          Match.objectLike({ TagFilters: [{ Key: 'openai-batch-intermediate', Value: 'ended' }] }),
        ]),
      },
    });
    template.hasResourceProperties('AWS::SNS::TopicPolicy', {
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({ Effect: 'Allow', Principal: { Service: 'cloudwatch.amazonaws.com' } }),
        ]),
      },
    });
  }, 120_000);
});
