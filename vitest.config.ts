import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 180_000,
    // Two cores in CI: one worker per core keeps the timing-free tests from starving each other.
    maxWorkers: 2,
  },
});
