import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // The JSON report gives .ci/run the counts for its closing line.
    reporters: ['default', 'json'],
    outputFile: { json: '.local/test-results.json' },
  },
});
