import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Kills agents and brokers a failed test left running.
    setupFiles: ["test/support/setup.ts"],
    pool: "forks",
    // Integration tests start brokers, ptys and agent processes, and mostly wait on them: the
    // whole suite keeps about 0.7 of this machine's two cores busy with two workers. A third
    // worker overlaps those waits.
    maxWorkers: 3,
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
