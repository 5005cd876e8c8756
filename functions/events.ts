import { z } from 'zod';

/**
 * The execution input a user types: `{"dataset": "s3://bucket/key"}` (an object, or a prefix ending in `/`,
 * in the work's bucket) to start a run, or `{"resumeRunId": "<run id>"}` to resume a run that failed.
 */
export const ExecutionInputSchema = z
  .object({
    dataset: z
      .string({ error: 'dataset must be a string: "s3://bucket/key" or a key in the work\'s bucket' })
      .min(1, 'dataset must not be empty')
      .optional(),
    /** A run to resume: one that failed (a person), or that continues in a new execution (the run itself). */
    resumeRunId: z.string().min(1, 'resumeRunId must not be empty').optional(),
    /** Set by autoStart's rule: `dataset` is an S3 event's object key, which may come URL-encoded. */
    fromS3Event: z.boolean().optional(),
  })
  .refine((input) => input.dataset !== undefined || input.resumeRunId !== undefined, {
    path: ['dataset'],
    message:
      'dataset is required: "s3://bucket/key" or a key in the work\'s bucket (or resumeRunId, to resume a run)',
  });

/** What Register receives: the execution input and the execution's name (the run id). */
export const RegisterEventSchema = z.object({ input: z.unknown(), executionName: z.string().min(1) });

/** What Settle, Tick, Finalize, CleanUp and Notify receive. */
export const RunEventSchema = z.object({ runId: z.string().min(1) });

/** What Prepare receives: the run, and the lane it prepares (an item of the Map over `$.run.lanes`). */
export const PrepareEventSchema = RunEventSchema.extend({ lane: z.number().int().nonnegative() });

/** What Tick receives: the run, and the execution it runs in (to end an execution that was replaced). */
export const TickEventSchema = RunEventSchema.extend({ executionName: z.string().min(1).optional() });

/** What MarkFailed receives: the whole state when a step failed, with the caught error. */
export const MarkFailedEventSchema = z.object({
  state: z.object({
    run: z.object({ runId: z.string() }).optional(),
    error: z.object({ Error: z.string().optional(), Cause: z.string().optional() }).optional(),
  }),
  /** The failing execution: a resumed run driven by another execution is left to it. */
  executionName: z.string().min(1).optional(),
});

/** What ContinueRun receives: the run to hand to a new execution of the same state machine. */
export const ContinueEventSchema = z.object({
  runId: z.string().min(1),
  /** The execution's dataset, when its input had one (a resumed execution's may not). */
  dataset: z.string().optional(),
  stateMachineArn: z.string().min(1),
  executionName: z.string().min(1),
});
