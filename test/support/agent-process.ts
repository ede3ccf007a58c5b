/**
 * The real agent as a child process (`node bin/edgehook.js run --config FILE`), with its
 * JSON log lines collected so tests can await what an operator would read in journald.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { track } from "./children.js";

const spawnTracked = (...args: Parameters<typeof spawn>) => track(spawn(...args));

export const BIN = resolve(import.meta.dirname, "../../bin/edgehook.js");

export interface LogLine {
  level: string;
  msg: string;
  [k: string]: unknown;
}

export function tempDir(prefix = "edgehook-test-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function writeConfig(dir: string, yaml: string): string {
  const file = join(dir, "agent.yaml");
  writeFileSync(file, yaml, { mode: 0o600 });
  return file;
}

/** Runs an edgehook command to completion. */
export function edgehook(args: string[], env: NodeJS.ProcessEnv = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    encoding: "utf8",
    env: { ...process.env, ...env },
    timeout: 30_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * Runs an edgehook command to completion without blocking the event loop, for commands
 * that talk to a server living in the test process (spawnSync would deadlock them).
 */
export function edgehookAsync(
  args: string[],
  env: NodeJS.ProcessEnv = {},
  timeoutMs = 30_000,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const proc = spawnTracked(process.execPath, [BIN, ...args], {
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    proc.stdout?.on("data", (d: Buffer) => {
      stdout += d.toString("utf8");
    });
    proc.stderr?.on("data", (d: Buffer) => {
      stderr += d.toString("utf8");
    });
    const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
    proc.once("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** What an MQTT source logs once its first connection attempt has settled either way. */
const MQTT_SETTLED = new Set([
  "subscribed to MQTT topics",
  "broker refused the subscription",
  "MQTT broker not reachable; retrying",
  "MQTT connection lost; reconnecting",
  "MQTT error",
]);

export class AgentProcess {
  readonly logs: LogLine[] = [];
  stderr = "";
  #proc: ChildProcess | undefined;
  #waiters: { pred: (l: LogLine) => boolean; resolve: (l: LogLine) => void }[] = [];
  #exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }> | undefined;

  constructor(
    readonly configFile: string,
    readonly env: NodeJS.ProcessEnv = {},
  ) {}

  get pid(): number | undefined {
    return this.#proc?.pid;
  }

  /** Starts the agent and resolves once it logged "edgehook running". */
  async start(timeoutMs = 15_000): Promise<void> {
    const proc = spawnTracked(process.execPath, [BIN, "run", "--config", this.configFile], {
      env: { ...process.env, ...this.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.#proc = proc;
    this.#exit = new Promise((r) => proc.once("exit", (code, signal) => r({ code, signal })));
    let buf = "";
    proc.stdout?.on("data", (d: Buffer) => {
      buf += d.toString("utf8");
      let i = buf.indexOf("\n");
      while (i >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        i = buf.indexOf("\n");
        try {
          const parsed = JSON.parse(line) as LogLine;
          this.logs.push(parsed);
          for (const w of [...this.#waiters]) {
            if (w.pred(parsed)) {
              this.#waiters = this.#waiters.filter((x) => x !== w);
              w.resolve(parsed);
            }
          }
        } catch {
          // Not a log line.
        }
      }
    });
    proc.stderr?.on("data", (d: Buffer) => {
      this.stderr += d.toString("utf8");
    });
    const from = this.logs.length;
    const exited = this.#exit.then((e) => {
      throw new Error(`agent exited during start (${e.code ?? e.signal}): ${this.stderr}`);
    });
    await Promise.race([this.waitForLog((l) => l.msg === "edgehook running", "start", timeoutMs, from), exited]);
    // "edgehook running" does not wait for the broker (offline is not failure), so a reading
    // published now could reach the broker before the agent's subscription and be dropped.
    // With an MQTT source, wait until this start has subscribed, or has said why not.
    if (this.logs.slice(from).some((l) => l.msg === "connecting to MQTT broker")) {
      await Promise.race([
        this.waitForLog((l) => MQTT_SETTLED.has(l.msg), "the MQTT subscription (or why not)", timeoutMs, from),
        exited,
      ]);
    }
  }

  /** Resolves with the first log line matching `pred`, looking at lines from index `from` on. */
  waitForLog(pred: (l: LogLine) => boolean, what: string, timeoutMs = 15_000, from = 0): Promise<LogLine> {
    const found = this.logs.slice(from).find(pred);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        reject(new Error(`timed out waiting for log: ${what}\n${this.logs.map((l) => JSON.stringify(l)).join("\n")}`));
      }, timeoutMs);
      const waiter = {
        pred,
        resolve: (l: LogLine) => {
          clearTimeout(timer);
          resolve(l);
        },
      };
      this.#waiters.push(waiter);
    });
  }

  kill(signal: NodeJS.Signals): void {
    this.#proc?.kill(signal);
  }

  async exited(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (!this.#exit) throw new Error("not started");
    return this.#exit;
  }

  /** SIGTERM and wait; SIGKILL if it does not exit within `timeoutMs`. */
  async stop(timeoutMs = 15_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const proc = this.#proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return this.exited();
    proc.kill("SIGTERM");
    const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
    const r = await this.exited();
    clearTimeout(timer);
    return r;
  }
}

/**
 * An edgehook command that runs until it exits or is stopped (`edgehook tap`), with its
 * output awaited as it arrives.
 */
export class CommandProcess {
  stdout = "";
  stderr = "";
  readonly exited: Promise<number | null>;
  readonly #proc: ChildProcess;
  #waiters: (() => void)[] = [];

  constructor(args: string[], env: NodeJS.ProcessEnv = {}) {
    const proc = spawnTracked(process.execPath, [BIN, ...args], {
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.#proc = proc;
    const poke = () => {
      for (const w of [...this.#waiters]) w();
    };
    proc.stdout?.on("data", (d: Buffer) => {
      this.stdout += d.toString("utf8");
      poke();
    });
    proc.stderr?.on("data", (d: Buffer) => {
      this.stderr += d.toString("utf8");
      poke();
    });
    this.exited = new Promise((r) =>
      proc.once("close", (code) => {
        r(code);
        poke();
      }),
    );
  }

  /** Resolves when `pred` holds, checked at each output chunk; rejects after `timeoutMs` or at exit. */
  waitFor(pred: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
    if (pred()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (pred()) finish();
        else if (this.#proc.exitCode !== null || this.#proc.signalCode !== null) fail("it exited");
      };
      const timer = setTimeout(() => fail(`${timeoutMs} ms passed`), timeoutMs);
      const finish = () => {
        clearTimeout(timer);
        this.#waiters = this.#waiters.filter((w) => w !== check);
        resolve();
      };
      const fail = (why: string) => {
        clearTimeout(timer);
        this.#waiters = this.#waiters.filter((w) => w !== check);
        reject(new Error(`waiting for ${what}: ${why}\nstdout:\n${this.stdout}\nstderr:\n${this.stderr}`));
      };
      this.#waiters.push(check);
    });
  }

  kill(signal: NodeJS.Signals): void {
    this.#proc.kill(signal);
  }
}
