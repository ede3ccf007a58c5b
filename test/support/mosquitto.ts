/**
 * A real mosquitto on a free loopback port, which a test can stop and restart on
 * the same port (persistent sessions survive a restart through its own persistence file,
 * unless `persistence: false`).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { chmodSync, mkdtempSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { track } from "./children.js";
import { freePort } from "./ports.js";

export interface MosquittoOptions {
  /** Keep sessions and queued messages across a restart (default true). */
  persistence?: boolean;
  /** Messages queued per client beyond those in flight; more are dropped (default 1,000,000; mosquitto's own is 1,000). */
  maxQueued?: number;
  /** QoS 1/2 messages in flight per client; 0 = unlimited (default 0; mosquitto's own is 20). */
  maxInflight?: number;
  /** Seconds between $SYS updates (mosquitto's default is 10). */
  sysInterval?: number;
  /** Serve mqtts with this server certificate, and require a client certificate signed by `ca`. */
  tls?: { ca: string; cert: string; key: string };
  /** More mosquitto.conf lines (e.g. `acl_file ...`). */
  extra?: string[];
}

export class Mosquitto {
  port = 0;
  #proc: ChildProcess | undefined;
  #dir = mkdtempSync(join(tmpdir(), "edgehook-mosq-"));

  constructor(readonly options: MosquittoOptions = {}) {}

  get url(): string {
    return `${this.options.tls ? "mqtts" : "mqtt"}://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    if (!this.port) this.port = await freePort();
    const conf = join(this.#dir, "mosquitto.conf");
    // Started as root, mosquitto drops to the `mosquitto` user, which must be able to
    // write its persistence file here; otherwise nothing survives a restart.
    chmodSync(this.#dir, 0o777);
    writeFileSync(
      conf,
      [
        `listener ${this.port} 127.0.0.1`,
        "allow_anonymous true",
        // Without it, a client awaiting several QoS 1 publishes gets the later PUBACKs only after
        // its delayed ACK (~40 ms each round): 1,200 readings took 14 s to publish in crash.test.
        "set_tcp_nodelay true",
        `persistence ${this.options.persistence === false ? "false" : "true"}`,
        `persistence_location ${this.#dir}/`,
        `max_queued_messages ${this.options.maxQueued ?? 1_000_000}`,
        `max_inflight_messages ${this.options.maxInflight ?? 0}`,
        ...(this.options.sysInterval === undefined ? [] : [`sys_interval ${this.options.sysInterval}`]),
        ...(this.options.tls
          ? [
              `cafile ${this.options.tls.ca}`,
              `certfile ${this.options.tls.cert}`,
              `keyfile ${this.options.tls.key}`,
              "require_certificate true",
            ]
          : []),
        ...(this.options.extra ?? []),
        "",
      ].join("\n"),
    );
    const proc = track(spawn("mosquitto", ["-c", conf], { stdio: ["ignore", "ignore", "pipe"] }));
    this.#proc = proc;
    let stderr = "";
    proc.stderr?.on("data", (d) => {
      stderr += String(d);
    });
    await waitForPort(this.port, () => (proc.exitCode !== null ? `mosquitto exited: ${stderr}` : undefined));
  }

  /** SIGTERM, so mosquitto writes its persistence file (queued QoS 1 messages survive). */
  async stop(): Promise<void> {
    const proc = this.#proc;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill("SIGTERM");
    await exited;
    this.#proc = undefined;
  }

  /** SIGKILL: no persistence file is written, open connections just drop. */
  async kill(): Promise<void> {
    const proc = this.#proc;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill("SIGKILL");
    await exited;
    this.#proc = undefined;
  }

  /** Sends a signal to the running server: SIGSTOP freezes it (connections stay open, nothing is answered), SIGCONT thaws it. */
  signal(signal: "SIGSTOP" | "SIGCONT"): void {
    this.#proc?.kill(signal);
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }
}

export async function waitForPort(port: number, failed: () => string | undefined, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const why = failed();
    if (why) throw new Error(why);
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, "127.0.0.1");
      s.once("connect", () => {
        s.destroy();
        resolve(true);
      });
      s.once("error", () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`port ${port} did not open within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
