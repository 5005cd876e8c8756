import {
  ConditionalCheckFailedException,
  DeleteItemCommand,
  type DynamoDBClient,
  GetItemCommand,
  PutItemCommand,
  type PutItemCommandInput,
  paginateQuery,
  QueryCommand,
  TransactionCanceledException,
  TransactWriteItemsCommand,
  UpdateItemCommand,
} from '@aws-sdk/client-dynamodb';
import type { z } from 'zod';
import { InvariantError } from '../core/errors';
import { ConflictError, type DatasetClaim, type RunStore } from '../core/ports';
import { type Part, PartSchema, type Run, RunSchema } from '../core/run';

const S = (value: string) => ({ S: value });
const N = (value: number) => ({ N: String(value) });
const runKey = (runId: string) => ({ pk: S(`RUN#${runId}`), sk: S('META') });
const partSk = (part: number) => `PART#${String(part).padStart(8, '0')}`;
const claimKey = (work: string, hash: string) => ({ pk: S(`DATASET#${work}#${hash}`), sk: S('CLAIM') });

/**
 * Refuses to store a record its own schema would not read back: every later read of the run (each Tick,
 * MarkFailed, resume) would throw on it, and no step could mend it. A value that got past the types (an
 * answer that was not OpenAI's, a bug) stops here, named, instead.
 */
function readable(what: string, id: string, schema: z.ZodType, value: unknown): void {
  const checked = schema.safeParse(value);
  if (!checked.success)
    throw new InvariantError(
      `refusing to store ${what} ${id}, which could not be read back: ${checked.error.message}`,
    );
}

/**
 * A {@link RunStore} on one DynamoDB table (`pk`, `sk`, and index `byWork` on `gsi1pk`, `gsi1sk`): the run
 * (`RUN#id`/`META`), its parts (`RUN#id`/`PART#n`), dataset claims (`DATASET#work#hash`/`CLAIM`), the run
 * of each batch (`BATCH#id`/`RUN`) and webhook events seen (`EVENT#id`/`EVENT`, expired by TTL). Records
 * are stored as a JSON document checked with zod when read; every write is conditional on `version`.
 */
export class DynamoRunStore implements RunStore {
  constructor(
    private readonly db: DynamoDBClient,
    private readonly table: string,
  ) {}

  private runItem(run: Run) {
    readable('run', run.runId, RunSchema, run);
    return {
      ...runKey(run.runId),
      gsi1pk: S(`WORK#${run.work}`),
      gsi1sk: S(`${String(run.createdAt).padStart(15, '0')}#${run.runId}`),
      status: S(run.status),
      version: N(run.version),
      doc: S(JSON.stringify(run)),
    };
  }

  private partItem(runId: string, part: Part) {
    readable('part', `${runId}/${part.part}`, PartSchema, part);
    return {
      pk: S(`RUN#${runId}`),
      sk: S(partSk(part.part)),
      status: S(part.status),
      version: N(part.version),
      doc: S(JSON.stringify(part)),
    };
  }

  async createRun(
    run: Run,
    claimDataset: boolean,
  ): Promise<{ created: true } | { created: false; holder: DatasetClaim }> {
    const putRun = {
      Put: {
        TableName: this.table,
        Item: this.runItem(run),
        ConditionExpression: 'attribute_not_exists(pk)',
      },
    };
    const putClaim = {
      Put: {
        TableName: this.table,
        Item: {
          ...claimKey(run.work, run.datasetHash),
          runId: S(run.runId),
          status: S('running'),
          at: N(run.createdAt),
        },
        ConditionExpression: 'attribute_not_exists(pk) OR #status IN (:failed, :cancelled)',
        ExpressionAttributeNames: { '#status': 'status' },
        ExpressionAttributeValues: { ':failed': S('failed'), ':cancelled': S('cancelled') },
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD' as const,
      },
    };
    try {
      await this.db.send(
        new TransactWriteItemsCommand({ TransactItems: claimDataset ? [putRun, putClaim] : [putRun] }),
      );
      return { created: true };
    } catch (caught) {
      if ((caught as { name?: string }).name === 'UnknownOperationException') {
        return this.createRunWithoutTransactions(putRun.Put, putClaim.Put, claimDataset, run);
      }
      if (!(caught instanceof TransactionCanceledException)) throw caught;
      const claimReason = caught.CancellationReasons?.[1];
      if (claimReason?.Code === 'ConditionalCheckFailed') {
        const holder =
          claimReason.Item ??
          (
            await this.db.send(
              new GetItemCommand({
                TableName: this.table,
                Key: claimKey(run.work, run.datasetHash),
                ConsistentRead: true,
              }),
            )
          ).Item;
        return {
          created: false,
          holder: { runId: holder?.runId?.S ?? 'unknown', status: holder?.status?.S ?? 'unknown' },
        };
      }
      if (caught.CancellationReasons?.[0]?.Code === 'ConditionalCheckFailed') return { created: true }; // registered already
      throw caught;
    }
  }

  /**
   * For a DynamoDB without transactions (dynalite, the local fallback where Java is missing): the claim
   * first, then the run, each a conditional write. A crash between the two leaves a claim without its run.
   */
  private async createRunWithoutTransactions(
    putRun: PutItemCommandInput,
    putClaim: PutItemCommandInput,
    claimDataset: boolean,
    run: Run,
  ): Promise<{ created: true } | { created: false; holder: DatasetClaim }> {
    if (claimDataset) {
      try {
        const { ReturnValuesOnConditionCheckFailure: _, ...claim } = putClaim;
        await this.db.send(new PutItemCommand(claim));
      } catch (caught) {
        if (!(caught instanceof ConditionalCheckFailedException)) throw caught;
        const key = claimKey(run.work, run.datasetHash);
        const { Item } = await this.db.send(
          new GetItemCommand({ TableName: this.table, Key: key, ConsistentRead: true }),
        );
        return {
          created: false,
          holder: { runId: Item?.runId?.S ?? 'unknown', status: Item?.status?.S ?? 'unknown' },
        };
      }
    }
    try {
      await this.db.send(new PutItemCommand(putRun));
    } catch (caught) {
      if (!(caught instanceof ConditionalCheckFailedException)) throw caught; // registered already
    }
    return { created: true };
  }

  async getRun(runId: string): Promise<Run | null> {
    const { Item } = await this.db.send(
      new GetItemCommand({ TableName: this.table, Key: runKey(runId), ConsistentRead: true }),
    );
    return Item?.doc?.S ? RunSchema.parse(JSON.parse(Item.doc.S)) : null;
  }

  async reviveRun(
    run: Run,
    claimDataset: boolean,
  ): Promise<{ revived: Run } | { revived: null; holder: DatasetClaim }> {
    const next = { ...run, version: run.version + 1 };
    const putRun = {
      TableName: this.table,
      Item: this.runItem(next),
      ConditionExpression: 'version = :version',
      ExpressionAttributeValues: { ':version': N(run.version) },
    };
    const putClaim = {
      TableName: this.table,
      Item: {
        ...claimKey(run.work, run.datasetHash),
        runId: S(run.runId),
        status: S('running'),
        at: N(run.updatedAt),
      },
      ConditionExpression: 'attribute_not_exists(pk) OR #status IN (:failed, :cancelled) OR runId = :runId',
      ExpressionAttributeNames: { '#status': 'status' },
      ExpressionAttributeValues: {
        ':failed': S('failed'),
        ':cancelled': S('cancelled'),
        ':runId': S(run.runId),
      },
    };
    if (!claimDataset) return { revived: await this.putRun(run) };
    try {
      await this.db.send(
        new TransactWriteItemsCommand({
          TransactItems: [
            { Put: putRun },
            { Put: { ...putClaim, ReturnValuesOnConditionCheckFailure: 'ALL_OLD' as const } },
          ],
        }),
      );
      return { revived: next };
    } catch (caught) {
      if ((caught as { name?: string }).name === 'UnknownOperationException') {
        // No transactions (dynalite): the claim first, then the run, each a conditional write.
        try {
          await this.db.send(new PutItemCommand(putClaim));
        } catch (claimFailed) {
          if (!(claimFailed instanceof ConditionalCheckFailedException)) throw claimFailed;
          return { revived: null, holder: await this.claimHolder(run.work, run.datasetHash) };
        }
        return { revived: await this.putRun(run) };
      }
      if (!(caught instanceof TransactionCanceledException)) throw caught;
      const [runReason, claimReason] = caught.CancellationReasons ?? [];
      if (runReason?.Code === 'ConditionalCheckFailed')
        throw new ConflictError(`run ${run.runId} was changed by another writer`);
      if (claimReason?.Code === 'ConditionalCheckFailed') {
        const holder = claimReason.Item;
        return {
          revived: null,
          holder: holder
            ? { runId: holder.runId?.S ?? 'unknown', status: holder.status?.S ?? 'unknown' }
            : await this.claimHolder(run.work, run.datasetHash),
        };
      }
      throw caught;
    }
  }

  /** Who holds a dataset claim now (read consistently). */
  private async claimHolder(work: string, datasetHash: string): Promise<DatasetClaim> {
    const { Item } = await this.db.send(
      new GetItemCommand({ TableName: this.table, Key: claimKey(work, datasetHash), ConsistentRead: true }),
    );
    return { runId: Item?.runId?.S ?? 'unknown', status: Item?.status?.S ?? 'unknown' };
  }

  async putRun(run: Run): Promise<Run> {
    const next = { ...run, version: run.version + 1 };
    try {
      await this.db.send(
        new PutItemCommand({
          TableName: this.table,
          Item: this.runItem(next),
          ConditionExpression: 'version = :version',
          ExpressionAttributeValues: { ':version': N(run.version) },
        }),
      );
      return next;
    } catch (caught) {
      if (caught instanceof ConditionalCheckFailedException)
        throw new ConflictError(`run ${run.runId} was changed by another writer`);
      throw caught;
    }
  }

  async settleClaim(work: string, datasetHash: string, runId: string, status: string): Promise<void> {
    try {
      await this.db.send(
        new UpdateItemCommand({
          TableName: this.table,
          Key: claimKey(work, datasetHash),
          UpdateExpression: 'SET #status = :status',
          ConditionExpression: 'runId = :runId',
          ExpressionAttributeNames: { '#status': 'status' },
          ExpressionAttributeValues: { ':status': S(status), ':runId': S(runId) },
        }),
      );
    } catch (caught) {
      if (!(caught instanceof ConditionalCheckFailedException)) throw caught; // not this run's claim (allowSameDataset)
    }
  }

  async listParts(runId: string): Promise<Part[]> {
    const parts: Part[] = [];
    const pages = paginateQuery(
      { client: this.db },
      {
        TableName: this.table,
        KeyConditionExpression: 'pk = :pk AND begins_with(sk, :part)',
        ExpressionAttributeValues: { ':pk': S(`RUN#${runId}`), ':part': S('PART#') },
        ConsistentRead: true,
      },
    );
    for await (const page of pages)
      for (const item of page.Items ?? []) parts.push(PartSchema.parse(JSON.parse(item.doc?.S ?? '{}')));
    return parts;
  }

  async addParts(runId: string, parts: readonly Part[]): Promise<void> {
    await Promise.all(
      parts.map(async (part) => {
        try {
          await this.db.send(
            new PutItemCommand({
              TableName: this.table,
              Item: this.partItem(runId, part),
              ConditionExpression: 'attribute_not_exists(pk) OR (#status = :pending AND version = :zero)',
              ExpressionAttributeNames: { '#status': 'status' },
              ExpressionAttributeValues: { ':pending': S('pending'), ':zero': N(0) },
            }),
          );
        } catch (caught) {
          if (!(caught instanceof ConditionalCheckFailedException)) throw caught; // already under way: keep it
        }
      }),
    );
  }

  async putPart(runId: string, part: Part): Promise<Part | null> {
    const next = { ...part, version: part.version + 1 };
    try {
      await this.db.send(
        new PutItemCommand({
          TableName: this.table,
          Item: this.partItem(runId, next),
          ConditionExpression: 'version = :version',
          ExpressionAttributeValues: { ':version': N(part.version) },
        }),
      );
      return next;
    } catch (caught) {
      if (caught instanceof ConditionalCheckFailedException) return null;
      throw caught;
    }
  }

  async listRuns(work: string, limit: number): Promise<Run[]> {
    const { Items } = await this.db.send(
      new QueryCommand({
        TableName: this.table,
        IndexName: 'byWork',
        KeyConditionExpression: 'gsi1pk = :work',
        ExpressionAttributeValues: { ':work': S(`WORK#${work}`) },
        ScanIndexForward: false,
        Limit: limit,
      }),
    );
    return (Items ?? []).map((item) => RunSchema.parse(JSON.parse(item.doc?.S ?? '{}')));
  }

  async recordBatch(batchId: string, runId: string, part: number): Promise<void> {
    await this.db.send(
      new PutItemCommand({
        TableName: this.table,
        Item: { pk: S(`BATCH#${batchId}`), sk: S('RUN'), runId: S(runId), part: N(part) },
      }),
    );
  }

  async findBatch(batchId: string): Promise<{ runId: string; part: number } | null> {
    const { Item } = await this.db.send(
      new GetItemCommand({
        TableName: this.table,
        Key: { pk: S(`BATCH#${batchId}`), sk: S('RUN') },
        ConsistentRead: true,
      }),
    );
    if (!Item?.runId?.S || Item.part?.N === undefined) return null;
    return { runId: Item.runId.S, part: Number(Item.part.N) };
  }

  async recordEvent(eventId: string, expiresAtSeconds: number): Promise<boolean> {
    try {
      await this.db.send(
        new PutItemCommand({
          TableName: this.table,
          Item: { pk: S(`EVENT#${eventId}`), sk: S('EVENT'), expiresAt: N(expiresAtSeconds) },
          ConditionExpression: 'attribute_not_exists(pk)',
        }),
      );
      return true;
    } catch (caught) {
      if (caught instanceof ConditionalCheckFailedException) return false;
      throw caught;
    }
  }

  async forgetEvent(eventId: string): Promise<void> {
    await this.db.send(
      new DeleteItemCommand({ TableName: this.table, Key: { pk: S(`EVENT#${eventId}`), sk: S('EVENT') } }),
    );
  }
}
