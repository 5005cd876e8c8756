import { Stack, type StackProps } from 'aws-cdk-lib';
import type { Construct } from 'constructs';
import { OpenAIBatchWork, type OpenAIBatchWorkProps } from './openai-batch-work';
import type { LoadedWork } from './works';

/** Props of {@link WorkStack}. */
export interface WorkStackProps extends StackProps {
  readonly loaded: LoadedWork;
  /** Passed to the construct as they are. */
  readonly options?: Omit<OpenAIBatchWorkProps, 'work' | 'workModule'>;
}

/** One stack per work, named `OpenAIBatch-<name>`. */
export class WorkStack extends Stack {
  public readonly batch: OpenAIBatchWork;

  constructor(scope: Construct, props: WorkStackProps) {
    const { work, module } = props.loaded;
    super(scope, `OpenAIBatch-${work.settings.name}`, {
      description: `openai-batch work "${work.settings.name}"`,
      ...props,
    });
    this.batch = new OpenAIBatchWork(this, 'Work', { work, workModule: module, ...props.options });
  }
}
