/** The public API a work is written with. */
export type { Counts, Reconciliation } from './accounting';
export { ConfigError, CostLimitError, DatasetError, OpenAIBatchError } from './errors';
export type {
  BatchErrorItem,
  BatchInputItem,
  BatchInputItemInput,
  BatchOutputItem,
  Endpoint,
  Usage,
} from './items';
export { ENDPOINTS } from './items';
export type { UploadContext, UploadResult, Work, WorkConfig, WorkHooks, WorkSettings } from './work';
export { defineWork, OPENAI_LIMITS } from './work';
