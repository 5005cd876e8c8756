import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // One DynamoDB Local for all the files (test/support/global-setup.ts).
    globalSetup: ['test/support/global-setup.ts'],
    // Most test time waits on stand-ins and child processes, not on the CPU: three files at once on two
    // cores (vitest's default is cores - 1, one file at a time here) cuts the suite's wall time by more
    // than half. Tests drive time with manual clocks, so the extra load changes no result.
    maxWorkers: 3,
    // A worker keeps the modules it loaded from one file to the next, rather than loading the AWS SDK, the
    // CDK and the stand-ins again for each of some eighty files: the suite's CPU went from about 560 to 410
    // seconds, its time from 333 to 245 s. No test depends on a fresh module: none mocks modules, and the
    // few that touch process-wide state (fake timers, process listeners) put it back in afterEach/finally.
    isolate: false,
    // Timeouts only catch a hang: CI runs on a loaded 2-core machine, where a test of 35 s here (the
    // sharded run, the demo) took over 60 s once other work shared the cores.
    testTimeout: 180_000,
    hookTimeout: 180_000,
    // The JSON report gives .ci/run the counts for its closing line.
    reporters: ['default', 'json'],
    outputFile: { json: '.local/test-results.json' },
  },
});
