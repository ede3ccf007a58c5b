/**
 * A real sd_notify socket: an AF_UNIX datagram socket bound by a python3 child (Node
 * cannot open one), which prints each datagram as one JSON string per line. Use its
 * `path` as NOTIFY_SOCKET. A path starting with "@" binds in the abstract namespace,
 * as systemd does for some services.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const RECEIVER = `
import json, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\\0" + path[1:] if path.startswith("@") else path)
print(json.dumps("LISTENING"), flush=True)
while True:
    data = s.recv(65536)
    print(json.dumps(data.decode("utf-8", "replace")), flush=True)
`;

export interface NotifyMessage {
  /** Arrival time, Date.now(). */
  at: number;
  /** Parsed VAR=VALUE lines of one datagram. */
  fields: Record<string, string>;
  raw: string;
}

export class NotifySocket {
  readonly path: string;
  readonly messages: NotifyMessage[] = [];
  #dir: string | undefined;
  #proc: ChildProcess | undefined;
  #waiters: (() => void)[] = [];

  /** `abstract`: bind "@edgehook-test-<random>" instead of a file in a temp dir. */
  constructor(options: { abstract?: boolean } = {}) {
    if (options.abstract) {
      this.path = `@edgehook-test-${process.pid}-${Math.random().toString(36).slice(2)}`;
    } else {
      this.#dir = mkdtempSync(join(tmpdir(), "edgehook-notify-"));
      this.path = join(this.#dir, "notify.sock");
    }
  }

  async start(): Promise<void> {
    const proc = spawn("python3", ["-c", RECEIVER, this.path], { stdio: ["ignore", "pipe", "pipe"] });
    this.#proc = proc;
    let stderr = "";
    proc.stderr?.on("data", (d) => {
      stderr += String(d);
    });
    await new Promise<void>((resolve, reject) => {
      const lines = createInterface({ input: proc.stdout! });
      lines.on("line", (line) => {
        const raw = JSON.parse(line) as string;
        if (raw === "LISTENING") return resolve();
        const fields: Record<string, string> = {};
        for (const l of raw.split("\n")) {
          const eq = l.indexOf("=");
          if (eq > 0) fields[l.slice(0, eq)] = l.slice(eq + 1);
        }
        this.messages.push({ at: Date.now(), fields, raw });
        for (const w of this.#waiters.splice(0)) w();
      });
      proc.once("error", reject);
      proc.once("exit", (code) => reject(new Error(`notify receiver exited (${code}): ${stderr}`)));
    });
  }

  /** Messages that set `name` (e.g. "READY"), ignoring systemd-notify's BARRIER=1 datagrams. */
  with(name: string): NotifyMessage[] {
    return this.messages.filter((m) => name in m.fields);
  }

  /** Resolves when `count` messages setting `name` have arrived; rejects after timeoutMs. */
  async waitFor(name: string, count = 1, timeoutMs = 5_000): Promise<NotifyMessage[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.with(name);
      if (found.length >= count) return found;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`expected ${count} ${name}= message(s), got ${found.length}: ${JSON.stringify(this.messages)}`);
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  async stop(): Promise<void> {
    const proc = this.#proc;
    if (proc && proc.exitCode === null && proc.signalCode === null) {
      const exited = new Promise((r) => proc.once("exit", r));
      proc.kill("SIGKILL");
      await exited;
    }
    this.#proc = undefined;
    if (this.#dir) rmSync(this.#dir, { recursive: true, force: true });
  }
}
