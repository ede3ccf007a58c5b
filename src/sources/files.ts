/**
 * Readings from a file read every `every`: numbers the kernel already exposes (the SoC
 * temperature in /sys/class/thermal, a battery's charge in /sys/class/power_supply) or
 * a status file another program rewrites. The content is decoded like a serial line
 * (decode.ts: `number`, `kv`, `json`); numbers are then scaled (`scale`, `offset`).
 *
 * A file that cannot be read is `down`, logged when that starts and when it ends, and
 * read again at the next poll. Content that cannot be decoded is counted per reason
 * and logged at most once a minute per reason.
 */
import { resolve } from "node:path";
import type { Clock } from "../clock.js";
import type { PolledFileConfig } from "../config/schema.js";
import type { Logger } from "../ops/logger.js";
import { RateLimitedLog } from "../ops/logger.js";
import type { Metrics } from "../ops/metrics.js";
import { type LineDecoder, serialDecoder } from "./decode.js";
import { applyScale, Poller, readBounded, SinkQueue, StatusCell } from "./polling.js";
import type { ReadingSink, Source, SourceState } from "./reading.js";

export interface FileSourceOptions {
  config: PolledFileConfig;
  sink: ReadingSink;
  logger: Logger;
  metrics: Metrics;
  clock: Clock;
  /** A relative `path` is relative to this (the configuration file's directory). */
  baseDir: string;
}

export class FileSource implements Source {
  readonly name: string;
  readonly #config: PolledFileConfig;
  readonly #path: string;
  readonly #decode: LineDecoder;
  readonly #log: Logger;
  readonly #metrics: Metrics;
  readonly #clock: Clock;
  readonly #rateLog: RateLimitedLog;
  readonly #status: StatusCell;
  readonly #queue: SinkQueue;
  readonly #poller: Poller;
  #announcedDown = false;
  #lastReading: number | undefined;

  constructor(opts: FileSourceOptions) {
    const c = opts.config;
    this.name = `file:${c.name ?? c.path}`;
    this.#config = c;
    this.#path = resolve(opts.baseDir, c.path);
    this.#decode = serialDecoder(
      {
        name: c.name ?? c.path,
        encoding: "utf8",
        format: c.format,
        columns: undefined,
        pattern: undefined,
        sensor: c.sensor,
        metric: c.metric,
        value: c.value,
        values: c.values,
        timestamp: c.timestamp,
        states: undefined,
        labels: c.labels,
      },
      this.name,
    );
    const bound = opts.logger.bindings();
    this.#log = bound.component && bound.path ? opts.logger : opts.logger.child({ component: "files", path: c.path });
    this.#metrics = opts.metrics;
    this.#clock = opts.clock;
    this.#rateLog = new RateLimitedLog(60_000, () => opts.clock.now());
    this.#status = new StatusCell(opts.clock);
    this.#queue = new SinkQueue({
      sink: opts.sink,
      logger: this.#log,
      clock: opts.clock,
      what: "file readings",
      onDropped: (n, reason) => opts.metrics.readingsDropped.inc({ source: this.name, reason }, n),
    });
    this.#poller = new Poller({
      clock: opts.clock,
      every: c.every,
      run: () => this.#poll(),
      onOverrun: () => this.#skipped("overrun", "a read was still running when the next was due; skipped it"),
      onError: (err) => this.#log.error({ err }, "file poll failed"),
    });
  }

  state(): SourceState {
    const s: SourceState = { name: this.name, kind: "file", status: this.#status.status, since: this.#status.since };
    if (this.#status.detail) s.detail = this.#status.detail;
    if (this.#lastReading !== undefined) s.last_reading = this.#lastReading;
    s.errors = this.#metrics.sourceErrorCount(this.name);
    return s;
  }

  async start(): Promise<void> {
    this.#status.set("starting");
    this.#poller.start();
  }

  async stop(): Promise<void> {
    await this.#poller.stop();
    await this.#queue.close();
    this.#status.set("stopped");
  }

  #skipped(reason: "overrun" | "backpressure", msg: string): void {
    this.#metrics.sourceError(this.name, reason);
    const s = this.#rateLog.shouldLog(reason);
    if (s !== undefined) this.#log.warn({ every: this.#config.every, suppressed: s }, msg);
  }

  async #poll(): Promise<void> {
    if (this.#queue.backlogged) {
      this.#queue.retry();
      this.#skipped("backpressure", "the readings of the last read are not committed yet; skipped a read");
      return;
    }
    let bytes: Buffer;
    let truncated: boolean;
    try {
      ({ bytes, truncated } = await readBounded(this.#path, this.#config.max_size));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? String(err);
      this.#metrics.sourceError(this.name, "io");
      this.#status.set("down", code);
      if (!this.#announcedDown) {
        this.#announcedDown = true;
        this.#log.warn({ file: this.#path, reason: code }, "polled file cannot be read; trying again every poll");
      }
      return;
    }
    if (this.#announcedDown) {
      this.#announcedDown = false;
      this.#log.info({ file: this.#path }, "polled file can be read again");
    }
    const res = truncated ? ({ ok: false, reason: "too_large" } as const) : this.#decode(bytes, this.#clock.now());
    if (!res.ok) {
      this.#metrics.decodeErrors.inc({ source: this.name, reason: res.reason });
      this.#status.set("down", res.reason);
      const s = this.#rateLog.shouldLog(res.reason);
      if (s !== undefined) {
        const sample = truncated
          ? undefined
          : bytes
              .subarray(0, 80)
              .toString("latin1")
              .replace(/[^\x20-\x7e]/g, "?");
        this.#log.warn(
          { reason: res.reason, content: sample, suppressed: s },
          "skipped a file whose content could not be decoded",
        );
      }
      return;
    }
    const { scale, offset } = this.#config;
    const readings = res.readings.map((r) =>
      typeof r.value === "number" ? { ...r, value: applyScale(r.value, scale, offset) } : r,
    );
    this.#metrics.readings.inc({ source: this.name }, readings.length);
    this.#lastReading = this.#clock.now();
    this.#status.set("up");
    this.#queue.push(readings);
  }
}
