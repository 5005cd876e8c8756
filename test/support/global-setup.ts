import { launchDynamoServer, SHARED_DYNAMODB_ENV } from '../../local/stand-ins';

/**
 * One DynamoDB Local for every test file: each in-memory stand-in a test starts is then a table of its own
 * on it (`startDynamo`), not a JVM of its own, which took 2 CPU seconds to start, in each of some thirty
 * files. The test processes inherit the variable that names it. It starts in the background: a run of
 * files that use no DynamoDB does not wait for it, and a stand-in waits until it answers.
 */
export default async function setup(): Promise<() => Promise<void>> {
  const { server, ready } = await launchDynamoServer();
  ready.catch((caught: unknown) => {
    process.stderr.write(`global-setup: the shared DynamoDB Local did not start: ${String(caught)}\n`);
  });
  process.env[SHARED_DYNAMODB_ENV] = JSON.stringify({ endpoint: server.endpoint, kind: server.kind });
  return async () => {
    delete process.env[SHARED_DYNAMODB_ENV];
    await server.stop();
  };
}
