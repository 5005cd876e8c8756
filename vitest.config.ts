import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Most test time waits on stand-ins and child processes, not on the CPU: three files at once on two
    // cores (vitest's default is cores - 1, one file at a time here) cuts the suite's wall time by more
    // than half. Tests drive time with manual clocks, so the extra load changes no result.
    maxWorkers: 3,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // The JSON report gives .ci/run the counts for its closing line.
    reporters: ['default', 'json'],
    outputFile: { json: '.local/test-results.json' },
  },
});
