/**
 * Readings from Modbus devices: one source per bus (an RTU adapter or a TCP endpoint),
 * polling every device on it every `every`, one request at a time (an RTU bus is shared
 * and many TCP gateways serialise requests anyway).
 *
 * The bus is a state, like a serial port: a missing adapter or refused connection is
 * `down`, logged once each way, and reopened with a backoff growing to `reopen_max`.
 * A device that does not answer is counted, marked down and logged on change; the
 * others are read as usual. Bad answers (CRC errors, exception responses, values out
 * of range) are counted per reason, logged at most once a minute per reason, skipped.
 *
 * The protocol client is modbus-serial, loaded only when a bus connects; serialport's
 * native binding only for an RTU bus (loadModbusSerial).
 */
import Module, { createRequire } from "node:module";
import { sep } from "node:path";
import type { ModbusRTU } from "modbus-serial/ModbusRTU.js";
import type { Clock, TimerHandle } from "../clock.js";
import type { ModbusBusConfig } from "../config/schema.js";
import type { Logger } from "../ops/logger.js";
import { RateLimitedLog } from "../ops/logger.js";
import type { Metrics } from "../ops/metrics.js";
import { decodeSpec, isBitTable, planReads, type ReadRequest, splitRequest } from "./modbus-registers.js";
import { type ModbusEndpoint, parseModbusUrl, rtuFrameGapMs } from "./modbus-url.js";
import { DeviceBook, Poller, SinkQueue, StatusCell } from "./polling.js";
import type { Reading, ReadingSink, Source, SourceState } from "./reading.js";

export interface ModbusSourceOptions {
  config: ModbusBusConfig;
  sink: ReadingSink;
  logger: Logger;
  metrics: Metrics;
  clock: Clock;
}

/** First reopen delay; doubles up to reopen_max. */
const REOPEN_MIN_MS = 250;

/** Exception codes, Modbus Application Protocol v1.1b3 §7. */
const EXCEPTIONS: Readonly<Record<number, string>> = {
  1: "illegal function",
  2: "illegal data address",
  3: "illegal data value",
  4: "server device failure",
  5: "acknowledge",
  6: "server device busy",
  8: "memory parity error",
  10: "gateway path unavailable",
  11: "gateway target device failed to respond",
};
const ILLEGAL_DATA_ADDRESS = 2;

/** Why a request failed; the `reason` label of edgehook_source_errors_total. */
export type RequestFailure =
  /** No answer within `timeout`. */
  | "timeout"
  /** An RTU answer whose CRC does not match (line noise, two devices talking at once). */
  | "crc"
  /** The device answered with an exception (e.g. 2: illegal data address). */
  | "exception"
  /** An answer of the wrong length, unit or function. */
  | "bad_response"
  /** The connection or port went away while asking. */
  | "disconnected";

export interface ClassifiedError {
  reason: RequestFailure;
  detail: string;
  code?: number;
}

/** Sorts what modbus-serial rejects with into our reasons. */
export function classifyModbusError(err: unknown): ClassifiedError {
  const e = (err ?? {}) as { name?: unknown; message?: unknown; errno?: unknown; modbusCode?: unknown };
  const message = typeof e.message === "string" ? e.message : String(err);
  if (typeof e.modbusCode === "number") {
    const code = e.modbusCode;
    return { reason: "exception", code, detail: `exception ${code}: ${EXCEPTIONS[code] ?? "unknown"}` };
  }
  if (e.name === "TransactionTimedOutError" || e.errno === "ETIMEDOUT") return { reason: "timeout", detail: "timeout" };
  if (/CRC error/i.test(message)) return { reason: "crc", detail: "CRC error" };
  if (e.name === "PortNotOpenError" || err instanceof Disconnected) return { reason: "disconnected", detail: message };
  return { reason: "bad_response", detail: message };
}

class Disconnected extends Error {}

interface Device {
  id: string;
  unit: number;
  sensor: string;
  labels: Readonly<Record<string, string>>;
  plan: ReadRequest[];
}

interface Connection {
  client: ModbusRTU;
  /** Rejects when the connection is given up: a request waiting on it ends at once. */
  lost: Promise<never>;
  lose: (err: Error) => void;
}

export class ModbusSource implements Source {
  readonly name: string;
  readonly #config: ModbusBusConfig;
  readonly #endpoint: ModbusEndpoint;
  readonly #log: Logger;
  readonly #metrics: Metrics;
  readonly #clock: Clock;
  readonly #rateLog: RateLimitedLog;
  readonly #status: StatusCell;
  readonly #book: DeviceBook;
  readonly #queue: SinkQueue;
  readonly #poller: Poller;
  readonly #devices: Device[];

  #conn: Connection | undefined;
  #stopped = true;
  #everOpened = false;
  #announcedDown = false;
  #reopenDelay = REOPEN_MIN_MS;
  #reopenTimer: TimerHandle | undefined;
  #lastReading: number | undefined;

  constructor(opts: ModbusSourceOptions) {
    const c = opts.config;
    this.name = `modbus:${c.name}`;
    this.#config = c;
    const endpoint = parseModbusUrl(c.url);
    if ("error" in endpoint) throw new Error(`modbus ${c.name}: url: ${endpoint.error}`);
    this.#endpoint = endpoint;
    const bound = opts.logger.bindings();
    this.#log = bound.component && bound.bus ? opts.logger : opts.logger.child({ component: "modbus", bus: c.name });
    this.#metrics = opts.metrics;
    this.#clock = opts.clock;
    this.#rateLog = new RateLimitedLog(60_000, () => opts.clock.now());
    this.#status = new StatusCell(opts.clock);
    this.#book = new DeviceBook(opts.clock);
    this.#devices = c.devices.map((d) => ({
      id: String(d.unit_id),
      unit: d.unit_id,
      sensor: d.sensor,
      labels: Object.freeze({ ...c.labels, ...d.labels }),
      plan: planReads(d.registers, c.max_gap),
    }));
    for (const d of this.#devices) this.#book.add(d.id, d.sensor);
    this.#queue = new SinkQueue({
      sink: opts.sink,
      logger: this.#log,
      clock: opts.clock,
      what: "modbus readings",
      onDropped: (n, reason) => opts.metrics.readingsDropped.inc({ source: this.name, reason }, n),
    });
    this.#poller = new Poller({
      clock: opts.clock,
      every: c.every,
      run: () => this.#poll(),
      onOverrun: () => this.#skipped("overrun", "a poll was still running when the next was due; skipped it"),
      onError: (err) => this.#log.error({ err }, "modbus poll failed"),
    });
  }

  /** Requests each device needs per poll (after any split); for tests and the bench. */
  requestsPerPoll(): number {
    return this.#devices.reduce((n, d) => n + d.plan.length, 0);
  }

  state(): SourceState {
    const s: SourceState = {
      name: this.name,
      kind: "modbus",
      status: this.#status.status,
      since: this.#status.since,
      devices: this.#book.list(),
    };
    if (this.#status.detail) s.detail = this.#status.detail;
    if (this.#lastReading !== undefined) s.last_reading = this.#lastReading;
    s.errors = this.#metrics.sourceErrorCount(this.name);
    return s;
  }

  async start(): Promise<void> {
    this.#stopped = false;
    this.#status.set("starting");
    await this.#open();
    this.#poller.start();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#reopenTimer) this.#clock.clearTimeout(this.#reopenTimer);
    this.#reopenTimer = undefined;
    const conn = this.#conn;
    this.#conn = undefined;
    // The request in flight ends now instead of at its timeout.
    if (conn) this.#dispose(conn, new Disconnected("stopping"));
    await this.#poller.stop();
    await this.#queue.close();
    this.#status.set("stopped");
  }

  // ---------------------------------------------------------------- connection

  async #open(): Promise<void> {
    let client: ModbusRTU;
    try {
      client = await this.#connect();
    } catch (err) {
      if (!this.#stopped) this.#wentAway(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    let lose!: (err: Error) => void;
    const lost = new Promise<never>((_, reject) => {
      lose = reject;
    });
    lost.catch(() => {});
    const conn: Connection = { client, lost, lose };
    if (this.#stopped) {
      this.#dispose(conn, new Disconnected("stopping"));
      return;
    }
    this.#conn = conn;
    client.on("close", () => this.#lose(conn, new Disconnected("connection closed")));
    client.on("error", (err: unknown) => {
      const s = this.#rateLog.shouldLog("port-error");
      if (s !== undefined) this.#log.warn({ err, suppressed: s }, "modbus connection error");
    });
    this.#reopenDelay = REOPEN_MIN_MS;
    const where = this.#where();
    if (this.#announcedDown) this.#log.info(where, "modbus bus is back");
    else if (!this.#everOpened) this.#log.info(where, "modbus bus open");
    this.#everOpened = true;
    this.#announcedDown = false;
    this.#status.set("up");
  }

  async #connect(): Promise<ModbusRTU> {
    const Client = loadModbusSerial(this.#endpoint.transport);
    const client = new Client();
    client.setTimeout(this.#config.timeout);
    // Until connected, failures arrive through the promise; an error event must not crash.
    client.on("error", () => {});
    const ep = this.#endpoint;
    try {
      if (ep.transport === "tcp") await client.connectTCP(ep.host, { port: ep.port });
      else {
        await client.connectRTUBuffered(ep.path, {
          baudRate: ep.baud_rate,
          parity: ep.parity,
          dataBits: ep.data_bits,
          stopBits: ep.stop_bits,
        });
      }
    } catch (err) {
      closeClient(client);
      throw err;
    }
    return client;
  }

  /** The connection went away (closed, reset, adapter unplugged): down, and reopen. */
  #lose(conn: Connection, err: Error): void {
    if (this.#conn !== conn) return;
    this.#conn = undefined;
    this.#dispose(conn, err);
    if (!this.#stopped) this.#wentAway(err);
  }

  #dispose(conn: Connection, err: Error): void {
    conn.lose(err);
    closeClient(conn.client);
  }

  #wentAway(err: Error): void {
    const code = (err as NodeJS.ErrnoException).code ?? err.message;
    this.#status.set("down", String(code));
    this.#book.markAllDown("bus down");
    if (!this.#announcedDown) {
      this.#announcedDown = true;
      const hint = /permission denied|EACCES/i.test(err.message)
        ? "add the edgehook user to the group owning the device (often dialout)"
        : undefined;
      this.#log.warn(
        { ...this.#where(), reason: err.message, hint, retryMaxMs: this.#config.reopen_max },
        this.#everOpened ? "modbus bus went away; reopening when it returns" : "modbus bus not available; retrying",
      );
    } else this.#log.debug({ err }, "modbus bus still not available");
    const delay = this.#reopenDelay;
    this.#reopenDelay = Math.min(this.#reopenDelay * 2, this.#config.reopen_max);
    this.#reopenTimer = this.#clock.setTimeout(() => {
      this.#reopenTimer = undefined;
      if (!this.#stopped) void this.#open();
    }, delay);
    this.#reopenTimer.unref?.();
  }

  #where(): Record<string, unknown> {
    const ep = this.#endpoint;
    return ep.transport === "tcp" ? { host: ep.host, port: ep.port } : { path: ep.path, baudRate: ep.baud_rate };
  }

  // ---------------------------------------------------------------- polling

  #skipped(reason: "overrun" | "backpressure", msg: string): void {
    this.#metrics.sourceError(this.name, reason);
    const s = this.#rateLog.shouldLog(reason);
    if (s !== undefined) this.#log.warn({ every: this.#config.every, suppressed: s }, msg);
  }

  async #poll(): Promise<void> {
    const conn = this.#conn;
    if (!conn || this.#stopped) return;
    // A reset TCP connection does not always say so with a close event.
    if (!conn.client.isOpen) {
      this.#lose(conn, new Disconnected("connection closed"));
      return;
    }
    if (this.#queue.backlogged) {
      this.#queue.retry();
      this.#skipped("backpressure", "the readings of the last poll are not committed yet; skipped a poll");
      return;
    }
    const started = this.#clock.monotonic();
    const readings: Reading[] = [];
    try {
      for (const device of this.#devices) {
        if (this.#conn !== conn) return;
        await this.#pollDevice(conn, device, readings);
      }
    } finally {
      this.#queue.push(readings);
    }
    if (this.#conn !== conn) return;
    this.#metrics.pollDuration.observe({ source: this.name }, (this.#clock.monotonic() - started) / 1000);
    const up = this.#book.upCount();
    const total = this.#devices.length;
    if (up === 0) {
      // "unit 1: timeout", "unit 1: exception 2: illegal data address", or for several: why, if they agree.
      const why = new Set(this.#book.list().map((d) => d.detail ?? "no reading"));
      const one = this.#devices.length === 1 ? this.#devices[0] : undefined;
      const [only] = why;
      const detail = one
        ? `unit ${one.unit}: ${only}`
        : why.size === 1
          ? `no device gives a reading (${only})`
          : "no device gives a reading";
      this.#status.set("down", detail);
    } else this.#status.set("up", up < total ? `${total - up} of ${total} devices not answering` : undefined);
  }

  async #pollDevice(conn: Connection, device: Device, out: Reading[]): Promise<void> {
    let got = 0;
    let failure: string | undefined;
    const plan = device.plan;
    for (let i = 0; i < plan.length; i++) {
      const req = plan[i]!;
      let response: { registers?: Uint8Array; bits?: readonly boolean[] };
      try {
        response = await this.#request(conn, device.unit, req);
      } catch (err) {
        const c = classifyModbusError(err);
        if (c.reason === "disconnected" || this.#conn !== conn) {
          if (this.#conn === conn) this.#lose(conn, err instanceof Error ? err : new Disconnected(c.detail));
          return;
        }
        this.#metrics.sourceError(this.name, c.reason);
        failure = c.detail;
        if (c.reason === "exception" && c.code === ILLEGAL_DATA_ADDRESS && req.specs.length > 1) {
          // Some devices refuse a read that spans registers they do not have: read those one by one from now on.
          plan.splice(i, 1, ...splitRequest(req));
          i--;
          this.#log.info(
            { unit: device.unit, table: req.table, address: req.address, count: req.count },
            "modbus device refused a combined read (illegal data address); reading those registers one by one",
          );
          continue;
        }
        // A device that does not answer one request will not answer the next: do not
        // spend a timeout per request on it while the others wait.
        if (c.reason === "timeout") break;
        const s = this.#rateLog.shouldLog(c.reason);
        if (s !== undefined) {
          this.#log.warn(
            {
              unit: device.unit,
              table: req.table,
              address: req.address,
              count: req.count,
              reason: c.reason,
              detail: c.detail,
              suppressed: s,
            },
            "modbus request failed",
          );
        }
        continue;
      }
      const ts = this.#clock.now();
      for (const spec of req.specs) {
        const v = decodeSpec(spec, req, response);
        if (v.ok) {
          out.push({
            sensor: device.sensor,
            metric: spec.metric,
            value: v.value,
            ts,
            source: this.name,
            labels: device.labels,
          });
          got++;
          continue;
        }
        this.#metrics.decodeErrors.inc({ source: this.name, reason: v.reason });
        failure ??= `no valid value (${v.reason})`;
        const s = this.#rateLog.shouldLog(v.reason);
        if (s !== undefined) {
          this.#log.warn(
            { unit: device.unit, metric: spec.metric, address: spec.address, reason: v.reason, suppressed: s },
            "skipped a modbus value",
          );
        }
      }
    }
    if (got > 0) {
      this.#metrics.readings.inc({ source: this.name }, got);
      this.#lastReading = this.#clock.now();
      if (this.#book.ok(device.id) === "recovered") {
        this.#log.info({ unit: device.unit, sensor: device.sensor }, "modbus device answers again");
      }
    } else if (this.#book.fail(device.id, failure ?? "no reading") === "failed") {
      this.#log.warn({ unit: device.unit, sensor: device.sensor, reason: failure }, "modbus device not answering");
    }
  }

  async #request(
    conn: Connection,
    unit: number,
    req: ReadRequest,
  ): Promise<{ registers?: Uint8Array; bits?: readonly boolean[] }> {
    const ep = this.#endpoint;
    // RTU frames must be separated by 3.5 characters of silence.
    if (ep.transport === "rtu") await this.#sleep(rtuFrameGapMs(ep.baud_rate));
    if (this.#conn !== conn) throw new Disconnected("connection closed");
    const client = conn.client;
    client.setID(unit);
    const call = isBitTable(req.table)
      ? (req.table === "coil"
          ? client.readCoils(req.address, req.count)
          : client.readDiscreteInputs(req.address, req.count)
        ).then((r) => ({ bits: r.data }))
      : (req.table === "holding"
          ? client.readHoldingRegisters(req.address, req.count)
          : client.readInputRegisters(req.address, req.count)
        ).then((r) => ({ registers: r.buffer }));
    // Settles later when the connection is given up first; nothing may wait on it then.
    call.catch(() => {});
    return Promise.race([call, conn.lost]);
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.#clock.setTimeout(resolve, ms));
  }
}

type ModbusClientClass = new () => ModbusRTU;
let modbusSerial: ModbusClientClass | undefined;

/**
 * modbus-serial's client class, loaded on first use. A TCP bus loads it without
 * serialport: serialport's native binding adds ~10 MiB of RSS (measured with
 * scripts/bench/modbus.mjs) that Modbus TCP never uses, and modbus-serial 8 requires
 * its RTU port inside a try/catch for installs without the optional serialport. Its
 * connectRTUBuffered() requires the RTU port again when called, so an RTU bus started
 * later in the same process loads serialport then. Should a future modbus-serial not
 * load without it, it is loaded with it.
 */
function loadModbusSerial(transport: "tcp" | "rtu"): ModbusClientClass {
  if (modbusSerial) return modbusSerial;
  const require = createRequire(import.meta.url);
  if (transport === "tcp") {
    const resolver = Module as unknown as {
      _resolveFilename: (request: string, parent: unknown, ...rest: unknown[]) => string;
    };
    const resolve = resolver._resolveFilename;
    resolver._resolveFilename = function (this: unknown, request: string, parent: unknown, ...rest: unknown[]) {
      const from = (parent as { filename?: string } | undefined)?.filename ?? "";
      if (request === "serialport" && from.includes(`${sep}modbus-serial${sep}`)) {
        throw Object.assign(new Error("serialport is not loaded for Modbus TCP"), { code: "MODULE_NOT_FOUND" });
      }
      return resolve.call(this, request, parent, ...rest);
    };
    try {
      modbusSerial = require("modbus-serial") as ModbusClientClass;
    } catch {
      delete require.cache[require.resolve("modbus-serial")];
    } finally {
      resolver._resolveFilename = resolve;
    }
  }
  modbusSerial ??= require("modbus-serial") as ModbusClientClass;
  return modbusSerial;
}

/**
 * Releases a client whatever state it is in. TCP sockets are destroyed (close() waits
 * for a close event a reset socket never sends); serial ports are closed.
 */
function closeClient(client: ModbusRTU): void {
  // ModbusRTU is an EventEmitter; its typings declare only on().
  (client as unknown as NodeJS.EventEmitter).removeAllListeners();
  client.on("error", () => {});
  const port = (client as unknown as { _port?: { destroy?: unknown; isOpen?: boolean } })._port;
  if (!port) return;
  if (typeof port.destroy === "function") client.destroy(() => {});
  else if (port.isOpen) client.close(() => {});
}
