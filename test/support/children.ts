/**
 * Processes the tests start (agents, brokers). A test that fails or times out before
 * its own cleanup must not leave them running: the setup file kills what is left,
 * by PID, after each test file.
 */
import type { ChildProcess } from "node:child_process";

const live = new Set<ChildProcess>();

export function track(proc: ChildProcess): ChildProcess {
  live.add(proc);
  proc.once("exit", () => live.delete(proc));
  return proc;
}

export function killLeftovers(): void {
  for (const proc of live) {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
  }
  live.clear();
}
