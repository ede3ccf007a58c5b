/**
 * Modbus devices for integration tests, in a child process (modbus-slave.mjs): a
 * ServerTCP on a free loopback port, or an RTU slave on the device side of a socat pty
 * pair. Several unit ids answer behind one process; each can be told to go silent,
 * answer exceptions or (RTU) bad CRCs.
 */
import { type ChildProcess, fork } from "node:child_process";
import { resolve } from "node:path";
import { track } from "./children.js";
import type { SocatPty } from "./socat.js";

const SCRIPT = resolve(import.meta.dirname, "modbus-slave.mjs");

export type Table = "holding" | "input" | "coil" | "discrete";
export type Behaviour =
  | { mode: "ok"; delayMs?: number }
  | { mode: "silent" }
  | { mode: "exception"; code: number }
  | { mode: "bad_crc" };

export interface ServedRequest {
  unit: number;
  table: Table;
  address: number;
  count: number;
}

export class ModbusSlave {
  #proc: ChildProcess | undefined;
  #seq = 0;
  #waiting = new Map<number, { resolve: (m: Record<string, unknown>) => void; reject: (e: Error) => void }>();
  port = 0;

  private constructor(readonly args: string[]) {}

  /** ServerTCP on 127.0.0.1 (`port`, or a free one). */
  static async tcp(port?: number): Promise<ModbusSlave> {
    const s = new ModbusSlave(["tcp", ...(port ? [String(port)] : [])]);
    await s.start();
    return s;
  }

  /** An RTU slave on `pty.feedPath` (the agent opens `pty.devPath`). */
  static async rtu(pty: SocatPty): Promise<ModbusSlave> {
    const s = new ModbusSlave(["rtu", pty.feedPath]);
    await s.start();
    return s;
  }

  get url(): string {
    return `tcp://127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    const p = this.#proc;
    return p !== undefined && p.exitCode === null && p.signalCode === null;
  }

  /** Starts the process (again, after stop(): a TCP server comes back on the same port). */
  async start(): Promise<void> {
    const args = this.args[0] === "tcp" && this.port ? ["tcp", String(this.port)] : this.args;
    const proc = track(fork(SCRIPT, args, { stdio: ["ignore", "inherit", "inherit", "ipc"] }));
    this.#proc = proc;
    const ready = new Promise<void>((resolveReady, reject) => {
      const timer = setTimeout(() => reject(new Error("modbus slave did not start")), 10_000);
      proc.on("message", (m: Record<string, unknown>) => {
        if (m.ready) {
          clearTimeout(timer);
          if (typeof m.port === "number") this.port = m.port;
          resolveReady();
          return;
        }
        const w = this.#waiting.get(m.id as number);
        if (!w) return;
        this.#waiting.delete(m.id as number);
        if (m.ok) w.resolve(m);
        else w.reject(new Error(String(m.error)));
      });
      proc.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`modbus slave exited with ${code}`));
        for (const w of this.#waiting.values()) w.reject(new Error("modbus slave exited"));
        this.#waiting.clear();
      });
    });
    await ready;
  }

  #call(op: string, body: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    const proc = this.#proc;
    if (!proc?.connected) return Promise.reject(new Error("modbus slave is not running"));
    const id = ++this.#seq;
    return new Promise((resolveCall, reject) => {
      this.#waiting.set(id, { resolve: resolveCall, reject });
      proc.send({ id, op, ...body });
    });
  }

  /** The unit ids that answer at all (default: 1). */
  async units(units: number[]): Promise<void> {
    await this.#call("units", { units });
  }

  /** Registers as 16-bit words, coils and discrete inputs as booleans. */
  async set(unit: number, table: Table, address: number, values: (number | boolean)[]): Promise<void> {
    await this.#call("set", { unit, table, address, values });
  }

  async behave(unit: number, b: Behaviour): Promise<void> {
    await this.#call("behave", { unit, ...b });
  }

  /** Reads touching an address never set answer exception 2 (illegal data address). */
  async strict(unit: number, on = true): Promise<void> {
    await this.#call("strict", { unit, on });
  }

  /**
   * Read requests served since the last call, and the most answers owed at once (above 1:
   * a master asked again before it had its answer, which an RTU bus does not allow).
   */
  async served(): Promise<{ requests: ServedRequest[]; maxOwed: number }> {
    const r = await this.#call("requests");
    return { requests: r.requests as ServedRequest[], maxOwed: r.maxOwed as number };
  }

  /** RTU: open the pty again after socat was restarted (the device side of a replug). */
  async attach(): Promise<void> {
    await this.#call("attach");
  }

  /** SIGKILL: the device (or gateway) is gone at once. */
  async stop(): Promise<void> {
    const proc = this.#proc;
    this.#proc = undefined;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill("SIGKILL");
    await exited;
  }
}

/** The 16-bit words of a value as a device stores it (big-endian words unless `wordOrder` little). */
export function words(
  type: "int16" | "uint16" | "int32" | "uint32" | "float32" | "float64",
  value: number,
  wordOrder: "big" | "little" = "big",
  byteOrder: "big" | "little" = "big",
): number[] {
  const size = { int16: 2, uint16: 2, int32: 4, uint32: 4, float32: 4, float64: 8 }[type];
  const b = Buffer.alloc(size);
  if (type === "int16") b.writeInt16BE(value);
  else if (type === "uint16") b.writeUInt16BE(value);
  else if (type === "int32") b.writeInt32BE(value);
  else if (type === "uint32") b.writeUInt32BE(value);
  else if (type === "float32") b.writeFloatBE(value);
  else b.writeDoubleBE(value);
  const out: number[] = [];
  for (let i = 0; i < size; i += 2) out.push(byteOrder === "big" ? b.readUInt16BE(i) : b.readUInt16LE(i));
  return wordOrder === "big" ? out : out.reverse();
}
