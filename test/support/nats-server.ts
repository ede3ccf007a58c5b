/**
 * A real `nats-server -js` on a free loopback port with its JetStream store in a temp
 * directory, which a test can stop (SIGTERM), kill (SIGKILL) and start again on the same
 * port with the same store: streams and their messages survive.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { track } from "./children.js";
import { waitForPort } from "./mosquitto.js";
import { freePort } from "./ports.js";

export const NATS_SERVER = "/usr/sbin/nats-server";

export interface NatsServerOptions {
  /** Serve TLS with this certificate; with `ca`, also require client certificates. */
  tls?: { cert: string; key: string; ca?: string };
  /** Require this token from clients. */
  token?: string;
}

export class NatsServer {
  port = 0;
  #proc: ChildProcess | undefined;
  readonly #dir = mkdtempSync(join(tmpdir(), "edgehook-nats-"));

  constructor(readonly options: NatsServerOptions = {}) {}

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    if (!this.port) this.port = await freePort();
    const conf = join(this.#dir, "nats.conf");
    const { tls, token } = this.options;
    writeFileSync(
      conf,
      [
        "host: 127.0.0.1",
        `port: ${this.port}`,
        `jetstream { store_dir: "${join(this.#dir, "js")}" }`,
        ...(token ? [`authorization { token: "${token}" }`] : []),
        ...(tls
          ? [
              `tls { cert_file: "${tls.cert}", key_file: "${tls.key}"${tls.ca ? `, ca_file: "${tls.ca}", verify: true` : ""} }`,
            ]
          : []),
        "",
      ].join("\n"),
    );
    const proc = track(spawn(NATS_SERVER, ["-c", conf], { stdio: ["ignore", "ignore", "pipe"] }));
    this.#proc = proc;
    let stderr = "";
    proc.stderr?.on("data", (d) => {
      stderr += String(d);
    });
    await waitForPort(this.port, () => (proc.exitCode !== null ? `nats-server exited: ${stderr}` : undefined));
  }

  async stop(signal: "SIGTERM" | "SIGKILL" = "SIGTERM"): Promise<void> {
    const proc = this.#proc;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill(signal);
    await exited;
    this.#proc = undefined;
  }

  /** Sends a signal to the running server: SIGSTOP freezes it (connections stay open, nothing is answered), SIGCONT thaws it. */
  signal(signal: "SIGSTOP" | "SIGCONT"): void {
    this.#proc?.kill(signal);
  }

  async restart(signal: "SIGTERM" | "SIGKILL" = "SIGTERM"): Promise<void> {
    await this.stop(signal);
    await this.start();
  }
}
