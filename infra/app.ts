/**
 * The CDK app: one stack per work in works/ (`cdk deploy OpenAIBatch-<name>`), every stack checked by
 * cdk-nag's AwsSolutions rules; a finding that is not acknowledged with a reason fails the synth.
 */
import { App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { WorkStack } from './work-stack';
import { loadWorks } from './works';

/** Builds the app for the works given (all of works/ by default). */
export async function buildApp(app = new App(), works?: Awaited<ReturnType<typeof loadWorks>>): Promise<App> {
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
  for (const loaded of works ?? (await loadWorks())) new WorkStack(app, { loaded });
  return app;
}

if (process.argv[1] && new URL(import.meta.url).pathname === process.argv[1]) {
  const app = await buildApp();
  app.synth();
}
