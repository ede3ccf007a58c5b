/**
 * Runs in every test file's worker. Kills the agents and brokers a failed test left
 * running, and gives each file its own temporary directory (TMPDIR, which os.tmpdir()
 * and the child processes follow), removed afterwards with everything the file and its
 * children created there, whether or not each test cleaned up after itself.
 */
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll } from "vitest";
import { killLeftovers } from "./children.js";

const base = tmpdir();
const dir = mkdtempSync(join(base, "edgehook-tests-"));
// Tests that switch to an unprivileged user (runuser) must be able to reach their files.
chmodSync(dir, 0o755);
process.env.TMPDIR = dir;

afterAll(() => {
  killLeftovers();
  process.env.TMPDIR = base;
  rmSync(dir, { recursive: true, force: true });
});
