import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Kills agents and brokers a failed test left running.
    setupFiles: ["test/support/setup.ts"],
    pool: "forks",
    // Integration tests start brokers, ptys and agent processes; two cores here.
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
