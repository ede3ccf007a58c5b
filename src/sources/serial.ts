/**
 * Readings from a serial line device (Arduino, Modbus gateway, USB sensor stick).
 *
 * An absent or unplugged port is a state, not an error: the source reports `down`,
 * logs once when the port goes away and once when it is back, and reopens with a
 * backoff growing to `reopen_max`, without the agent restarting anything.
 * Lines are bounded (LineSplitter) and decoded (decode.ts); a bad line is counted
 * per reason and logged at a bounded rate, and the good lines around it go on.
 *
 * A serial device cannot be asked to wait. When a commit is refused (the outbox is at its
 * disk floor, or full under `when_full: block`) or fails, its readings are kept and
 * offered again every RETRY_MS (other failures: backing off to RETRY_MAX_MS), and new
 * lines are read and kept too, up to MAX_HELD readings. Beyond that the oldest are
 * dropped, each counted (edgehook_readings_dropped_total{reason="held_overflow"}) and
 * reported in a "dropped N since the last report" log line, rather than lost uncounted in
 * the kernel's tty buffer. At stop, what is still held after STOP_TIMEOUT_MS is dropped
 * and counted (reason "stopped").
 */
import { closeSync, constants, openSync } from "node:fs";
import { isatty, ReadStream as TtyReadStream } from "node:tty";
import { SerialPort } from "serialport";
import type { Clock, TimerHandle } from "../clock.js";
import type { SerialPortConfig } from "../config/schema.js";
import { type DropSummary, DropTally, describeDrops } from "../ops/drops.js";
import type { Logger } from "../ops/logger.js";
import { RateLimitedLog } from "../ops/logger.js";
import type { Metrics } from "../ops/metrics.js";
import { type LineDecoder, LineSplitter, serialDecoder } from "./decode.js";
import {
  callSink,
  isBackpressure,
  type Reading,
  type ReadingSink,
  type Source,
  type SourceState,
  type SourceStatus,
} from "./reading.js";

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
/** Readings kept while commits are refused or failing; beyond it the oldest are dropped (counted). */
export const MAX_HELD = 10_000;
/** A refused commit is offered again this often (the agent answers from a cached check); after other failures the wait doubles up to RETRY_MAX_MS. */
const RETRY_MS = 250;
const RETRY_MAX_MS = 30_000;
/** How long stop() keeps offering held readings before dropping them. */
const STOP_TIMEOUT_MS = 5_000;

export class SerialSource implements Source {
  readonly name: string;
  readonly #config: SerialPortConfig;
  readonly #sink: ReadingSink;
  readonly #log: Logger;
  readonly #metrics: Metrics;
  readonly #clock: Clock;
  readonly #rateLog: RateLimitedLog;

  #port: SerialPort | undefined;
  /** What the port is read through: a stream of its own (see openTtyReader), else the port. */
  #reader: TtyReadStream | undefined;
  /** Why the reader ended, for the close that follows. */
  #readerError: Error | undefined;
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
  /** Set while a commit was refused or failed: #pending is held and offered again by #retryTimer. */
  #holding = false;
  #holdingSince = 0;
  #retryTimer: TimerHandle | undefined;
  #retryDelay = RETRY_MS;
  readonly #drops: DropTally;

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
    this.#drops = new DropTally(
      60_000,
      () => opts.clock.monotonic(),
      (s) => this.#logDrops(s),
    );
  }

  state(): SourceState {
    const s: SourceState = { name: this.name, kind: "serial", status: this.#status, since: this.#since };
    if (this.#detail) s.detail = this.#detail;
    if (this.#holding) s.held = this.#pending.length;
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
    this.#closeReader();
    if (port?.isOpen) await new Promise<void>((r) => port.close(() => r()));
    port?.removeAllListeners();
    if (this.#retryTimer) this.#clock.clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    // Lines already read still reach the sink; held ones are offered for a while longer.
    const deadline = this.#clock.monotonic() + STOP_TIMEOUT_MS;
    while (this.#inflight || this.#pending.length > 0) {
      if (!this.#inflight) {
        if (this.#holding && this.#clock.monotonic() >= deadline) break;
        this.#flush();
      }
      await this.#inflight;
      if (this.#holding && this.#pending.length > 0) {
        await new Promise<void>((r) => this.#clock.setTimeout(r, RETRY_MS));
      }
    }
    if (this.#pending.length > 0) {
      this.#drop("stopped", this.#pending.length);
      this.#pending = [];
    }
    this.#drops.flush();
    this.#metrics.serialOpen.set({ port: this.#config.name }, 0);
    this.#setStatus("stopped");
  }

  // ---------------------------------------------------------------- port lifecycle

  async #open(): Promise<void> {
    const c = this.#config;
    let port: SerialPort;
    let err: Error | null;
    // Before the port is opened: serialport locks it (TIOCEXCL), which refuses later opens.
    const reader = openTtyReader(c.path);
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
      reader?.destroy();
      // Whatever goes wrong opening, the retry loop must go on.
      if (!this.#stopped) this.#wentAway(e instanceof Error ? e : new Error(String(e)));
      return;
    }
    if (this.#stopped || err) {
      reader?.destroy();
      if (this.#stopped && !err) port.close();
      else if (err) this.#wentAway(err);
      return;
    }
    this.#port = port;
    this.#splitter = new LineSplitter(c.delimiter, c.max_line_length);
    if (reader) {
      const ours = reader;
      this.#reader = ours;
      ours.on("data", (chunk: Buffer) => this.#onData(chunk));
      // Unplugged: a read fails (EIO) or the tty hangs up (end of file). serialport, which
      // does not read, would not notice: close it, and its close reports the port gone.
      const gone = (e?: Error) => {
        if (this.#reader !== ours) return;
        this.#closeReader();
        if (this.#port !== port) return;
        this.#readerError = e;
        if (port.isOpen) port.close();
        else port.emit("close", e);
      };
      ours.once("error", gone);
      ours.once("end", () => gone(new Error("port hung up")));
    } else port.on("data", (chunk: Buffer) => this.#onData(chunk));
    port.on("error", (e: Error) => {
      const s = this.#rateLog.shouldLog("port-error");
      if (s !== undefined) this.#log.warn({ err: e, suppressed: s }, "serial port error");
    });
    port.once("close", (e: Error | null) => {
      if (this.#port !== port) return;
      this.#port = undefined;
      this.#closeReader();
      port.removeAllListeners();
      if (this.#pollTimer) this.#clock.clearTimeout(this.#pollTimer);
      this.#pollTimer = undefined;
      const why = e ?? this.#readerError ?? new Error("port closed");
      this.#readerError = undefined;
      if (!this.#stopped) this.#wentAway(why);
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

  #closeReader(): void {
    const reader = this.#reader;
    this.#reader = undefined;
    if (!reader) return;
    reader.removeAllListeners();
    reader.on("error", () => {}); // a read failing while it closes has nothing left to tell
    reader.destroy();
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
    let ignored = 0;
    for (const item of splitter.push(chunk)) {
      const res = "line" in item ? decode(item.line, now) : ({ ok: false, reason: item.error } as const);
      if (res.ok) {
        for (const r of res.readings) this.#pending.push(r);
        this.#metrics.readings.inc({ source: this.name }, res.readings.length);
        if (res.ignored) ignored += res.ignored;
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
    if (ignored > 0) this.#metrics.decodeIgnoredFields.inc({ source: this.name }, ignored);
    if (this.#holding) this.#trimHeld();
    else if (this.#pending.length >= MAX_PENDING) (this.#reader ?? this.#port)?.pause();
    this.#scheduleFlush();
  }

  #scheduleFlush(): void {
    // While holding, only the retry timer offers the readings again.
    if (this.#flushScheduled || this.#inflight || this.#pending.length === 0 || this.#retryTimer) return;
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
    const input = this.#reader ?? this.#port;
    if (input?.isPaused()) input.resume();
    this.#inflight = callSink(this.#sink, batch).then(
      () => {
        if (!this.#holding) return;
        this.#holding = false;
        this.#retryDelay = RETRY_MS;
        const heldMs = this.#clock.now() - this.#holdingSince;
        this.#log.info(
          { readings: batch.length, heldMs },
          `stored ${batch.length} held serial readings after ${Math.round(heldMs / 1000)} s`,
        );
        this.#drops.flush();
      },
      (err: unknown) => {
        // A serial device cannot resend: keep the readings (bounded) and offer them again.
        const refused = isBackpressure(err);
        this.#pending = batch.concat(this.#pending);
        if (!this.#holding) {
          this.#holding = true;
          this.#holdingSince = this.#clock.now();
          this.#retryDelay = RETRY_MS;
          const msg = `holding ${this.#pending.length} serial readings until they can be stored (up to ${MAX_HELD}; beyond that the oldest are dropped and counted: a serial device cannot be asked to wait)`;
          if (refused) this.#log.warn({ reason: (err as Error).message }, `outbox refuses new readings: ${msg}`);
          else this.#log.error({ err }, `could not commit serial readings: ${msg}`);
        }
        this.#trimHeld();
        this.#drops.poll();
        if (this.#stopped) return;
        const delay = refused ? RETRY_MS : this.#retryDelay;
        if (!refused) this.#retryDelay = Math.min(this.#retryDelay * 2, RETRY_MAX_MS);
        this.#retryTimer = this.#clock.setTimeout(() => {
          this.#retryTimer = undefined;
          this.#flush();
        }, delay);
      },
    );
    void this.#inflight.finally(() => {
      this.#inflight = undefined;
      this.#scheduleFlush();
    });
  }

  /** Keeps at most MAX_HELD readings while holding, dropping (and counting) the oldest. */
  #trimHeld(): void {
    const over = this.#pending.length - MAX_HELD;
    if (over <= 0) return;
    this.#pending.splice(0, over);
    this.#drop("held_overflow", over);
  }

  #drop(reason: string, n: number): void {
    this.#metrics.readingsDropped.inc({ source: this.name, reason }, n);
    this.#drops.add(reason, this.name, n);
  }

  #logDrops(s: DropSummary): void {
    this.#log.warn(
      { code: "EDGEHOOK_READINGS_DROPPED", dropped: s.dropped, reasons: s.reasons, periodS: s.periodS },
      `dropped ${s.dropped} serial readings since the last report (${describeDrops(s)}): the outbox refused them longer than ${MAX_HELD} readings could be held; free disk space for the outbox or let it drain (see /healthz)`,
    );
  }

  #setStatus(status: SourceStatus, detail?: string): void {
    if (this.#status === status && this.#detail === detail) return;
    if (this.#status !== status) this.#since = this.#clock.now();
    this.#status = status;
    this.#detail = detail;
  }
}

/**
 * serialport reads with fs.read on libuv's thread pool, and after each chunk a second
 * read fails with EAGAIN (an exception built in C++) before it polls for the next: about
 * ten system calls and two thread hand-offs per chunk. Devices send a line or a few at a
 * time, so that was most of the CPU a serial reading cost (issue 15). A second
 * descriptor of the same tty, read as a libuv stream (epoll on the event loop, reading
 * until EAGAIN inside libuv), costs a fraction of that. serialport keeps the port: it
 * sets the line (baud rate, parity ...), locks it and writes poll commands. Anything that
 * is not a tty, or cannot be opened twice, is read through serialport as before.
 */
function openTtyReader(path: string): TtyReadStream | undefined {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOCTTY | constants.O_NONBLOCK);
  } catch {
    return undefined;
  }
  try {
    if (isatty(fd)) return new TtyReadStream(fd);
  } catch {
    // not readable as a tty stream: fall back to serialport
  }
  closeSync(fd);
  return undefined;
}

/** A short, printable excerpt of a bad line for the log. */
function printable(line: Buffer): string {
  const s = line.subarray(0, 80).toString("latin1");
  return s.replace(/[^\x20-\x7e]/g, "?") + (line.length > 80 ? "…" : "");
}
