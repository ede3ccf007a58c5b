/**
 * Readings from a serial line device (Arduino, Modbus gateway, USB sensor stick).
 *
 * An absent or unplugged port is a state, not an error: the source reports `down`,
 * logs once when the port goes away and once when it is back, and reopens with a
 * backoff growing to `reopen_max`, without the agent restarting anything.
 * Lines are bounded (LineSplitter) and decoded (decode.ts); a bad line is counted
 * per reason and logged at a bounded rate, and the good lines around it go on.
 */
import { SerialPort } from "serialport";
import type { Clock, TimerHandle } from "../clock.js";
import type { SerialPortConfig } from "../config/schema.js";
import type { Logger } from "../ops/logger.js";
import { RateLimitedLog } from "../ops/logger.js";
import type { Metrics } from "../ops/metrics.js";
import { type LineDecoder, LineSplitter, serialDecoder } from "./decode.js";
import type { Reading, ReadingSink, Source, SourceState, SourceStatus } from "./reading.js";

export interface SerialSourceOptions {
  config: SerialPortConfig;
  sink: ReadingSink;
  logger: Logger;
  metrics: Metrics;
  clock: Clock;
}

/** First reopen delay; doubles up to reopen_max. */
const REOPEN_MIN_MS = 250;
/** Readings gathered while a commit is in flight before the port is paused. */
const MAX_PENDING = 10_000;

export class SerialSource implements Source {
  readonly name: string;
  readonly #config: SerialPortConfig;
  readonly #sink: ReadingSink;
  readonly #log: Logger;
  readonly #metrics: Metrics;
  readonly #clock: Clock;
  readonly #rateLog: RateLimitedLog;

  #port: SerialPort | undefined;
  #decode: LineDecoder | undefined;
  #splitter: LineSplitter | undefined;
  #status: SourceStatus = "stopped";
  #since = 0;
  #detail: string | undefined;
  #stopped = true;
  #everOpened = false;
  #announcedDown = false;
  #reopenDelay = REOPEN_MIN_MS;
  #reopenTimer: TimerHandle | undefined;
  #pollTimer: TimerHandle | undefined;

  #pending: Reading[] = [];
  #inflight: Promise<void> | undefined;
  #flushScheduled = false;

  constructor(opts: SerialSourceOptions) {
    this.name = `serial:${opts.config.name}`;
    this.#config = opts.config;
    this.#sink = opts.sink;
    // The agent may already have bound these; pino would repeat the keys.
    const bound = opts.logger.bindings();
    this.#log =
      bound.component && bound.port ? opts.logger : opts.logger.child({ component: "serial", port: opts.config.name });
    this.#metrics = opts.metrics;
    this.#clock = opts.clock;
    this.#rateLog = new RateLimitedLog(60_000, () => opts.clock.now());
  }

  state(): SourceState {
    const s: SourceState = { name: this.name, kind: "serial", status: this.#status, since: this.#since };
    if (this.#detail) s.detail = this.#detail;
    return s;
  }

  async start(): Promise<void> {
    this.#stopped = false;
    this.#decode = serialDecoder(this.#config);
    this.#setStatus("starting");
    this.#metrics.serialOpen.set({ port: this.#config.name }, 0);
    await this.#open();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#reopenTimer) this.#clock.clearTimeout(this.#reopenTimer);
    if (this.#pollTimer) this.#clock.clearTimeout(this.#pollTimer);
    this.#reopenTimer = undefined;
    this.#pollTimer = undefined;
    const port = this.#port;
    this.#port = undefined;
    if (port?.isOpen) await new Promise<void>((r) => port.close(() => r()));
    port?.removeAllListeners();
    // Lines already read still reach the sink.
    while (this.#inflight || this.#pending.length > 0) {
      if (!this.#inflight) this.#flush();
      await this.#inflight;
    }
    this.#metrics.serialOpen.set({ port: this.#config.name }, 0);
    this.#setStatus("stopped");
  }

  // ---------------------------------------------------------------- port lifecycle

  async #open(): Promise<void> {
    const c = this.#config;
    let port: SerialPort;
    let err: Error | null;
    try {
      port = new SerialPort({
        path: c.path,
        baudRate: c.baud_rate,
        dataBits: c.data_bits,
        parity: c.parity,
        stopBits: c.stop_bits,
        autoOpen: false,
      });
      err = await new Promise<Error | null>((resolve) => port.open((e) => resolve(e ?? null)));
    } catch (e) {
      // Whatever goes wrong opening, the retry loop must go on.
      if (!this.#stopped) this.#wentAway(e instanceof Error ? e : new Error(String(e)));
      return;
    }
    if (this.#stopped) {
      if (!err) port.close();
      return;
    }
    if (err) {
      this.#wentAway(err);
      return;
    }
    this.#port = port;
    this.#splitter = new LineSplitter(c.delimiter, c.max_line_length);
    port.on("data", (chunk: Buffer) => this.#onData(chunk));
    port.on("error", (e: Error) => {
      const s = this.#rateLog.shouldLog("port-error");
      if (s !== undefined) this.#log.warn({ err: e, suppressed: s }, "serial port error");
    });
    port.once("close", (e: Error | null) => {
      if (this.#port !== port) return;
      this.#port = undefined;
      port.removeAllListeners();
      if (this.#pollTimer) this.#clock.clearTimeout(this.#pollTimer);
      this.#pollTimer = undefined;
      if (!this.#stopped) this.#wentAway(e ?? new Error("port closed"));
    });
    this.#metrics.serialOpen.set({ port: c.name }, 1);
    this.#reopenDelay = REOPEN_MIN_MS;
    if (this.#announcedDown) this.#log.info({ path: c.path }, "serial port is back");
    else if (!this.#everOpened) this.#log.info({ path: c.path, baudRate: c.baud_rate }, "serial port open");
    this.#everOpened = true;
    this.#announcedDown = false;
    this.#setStatus("up");
    this.#schedulePoll(true);
  }

  #wentAway(err: Error): void {
    this.#metrics.serialOpen.set({ port: this.#config.name }, 0);
    const code = (err as NodeJS.ErrnoException).code ?? err.message;
    this.#setStatus("down", String(code));
    if (!this.#announcedDown) {
      this.#announcedDown = true;
      const hint = /permission denied|EACCES/i.test(err.message)
        ? "add the edgehook user to the group owning the device (often dialout)"
        : undefined;
      this.#log.warn(
        { path: this.#config.path, reason: err.message, hint, retryMaxMs: this.#config.reopen_max },
        this.#everOpened ? "serial port went away; reopening when it returns" : "serial port not available; retrying",
      );
    } else this.#log.debug({ err }, "serial port still not available");
    const delay = this.#reopenDelay;
    this.#reopenDelay = Math.min(this.#reopenDelay * 2, this.#config.reopen_max);
    this.#reopenTimer = this.#clock.setTimeout(() => {
      this.#reopenTimer = undefined;
      if (!this.#stopped) void this.#open();
    }, delay);
    this.#reopenTimer.unref?.();
  }

  #schedulePoll(first: boolean): void {
    const poll = this.#config.poll;
    if (!poll || this.#stopped) return;
    this.#pollTimer = this.#clock.setTimeout(
      () => {
        this.#pollTimer = undefined;
        const port = this.#port;
        if (!port || this.#stopped) return;
        port.write(poll.command, (err) => {
          if (err) {
            const s = this.#rateLog.shouldLog("poll");
            if (s !== undefined) this.#log.warn({ err, suppressed: s }, "could not write the poll command");
          }
        });
        this.#schedulePoll(false);
      },
      first ? 0 : poll.every,
    );
  }

  // ---------------------------------------------------------------- lines

  #onData(chunk: Buffer): void {
    const splitter = this.#splitter;
    const decode = this.#decode;
    if (!splitter || !decode) return;
    const now = this.#clock.now();
    for (const item of splitter.push(chunk)) {
      const res = "line" in item ? decode(item.line, now) : ({ ok: false, reason: item.error } as const);
      if (res.ok) {
        for (const r of res.readings) this.#pending.push(r);
        this.#metrics.readings.inc({ source: this.name }, res.readings.length);
        continue;
      }
      // Blank lines are keep-alives of many devices, not errors.
      if (res.reason === "empty") continue;
      this.#metrics.decodeErrors.inc({ source: this.name, reason: res.reason });
      const suppressed = this.#rateLog.shouldLog(`decode:${res.reason}`);
      if (suppressed !== undefined) {
        const sample = "line" in item ? printable(item.line) : undefined;
        this.#log.warn({ reason: res.reason, line: sample, suppressed }, "skipped a line that could not be decoded");
      }
    }
    if (this.#pending.length >= MAX_PENDING) this.#port?.pause();
    this.#scheduleFlush();
  }

  #scheduleFlush(): void {
    if (this.#flushScheduled || this.#inflight || this.#pending.length === 0) return;
    this.#flushScheduled = true;
    setImmediate(() => {
      this.#flushScheduled = false;
      this.#flush();
    });
  }

  #flush(): void {
    if (this.#inflight || this.#pending.length === 0) return;
    const batch = this.#pending;
    this.#pending = [];
    if (this.#port?.isPaused()) this.#port.resume();
    this.#inflight = callSink(this.#sink, batch).then(
      () => undefined,
      (err: unknown) => {
        // A serial device cannot resend; the readings are lost, and said so.
        const s = this.#rateLog.shouldLog("sink");
        if (s !== undefined) {
          this.#log.error({ err, lost: batch.length, suppressed: s }, "could not commit serial readings");
        }
      },
    );
    void this.#inflight.finally(() => {
      this.#inflight = undefined;
      this.#scheduleFlush();
    });
  }

  #setStatus(status: SourceStatus, detail?: string): void {
    if (this.#status === status && this.#detail === detail) return;
    if (this.#status !== status) this.#since = this.#clock.now();
    this.#status = status;
    this.#detail = detail;
  }
}

/** A sink that throws instead of rejecting must not break the batching loop. */
function callSink(sink: ReadingSink, readings: Reading[]): Promise<void> {
  try {
    return sink(readings);
  } catch (err) {
    return Promise.reject(err);
  }
}

/** A short, printable excerpt of a bad line for the log. */
function printable(line: Buffer): string {
  const s = line.subarray(0, 80).toString("latin1");
  return s.replace(/[^\x20-\x7e]/g, "?") + (line.length > 80 ? "…" : "");
}
