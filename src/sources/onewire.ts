/**
 * Readings from 1-Wire temperature probes (DS18B20 and kin) through the kernel's sysfs:
 * every `every`, the probes under `root` are listed again (a probe plugged in or
 * pulled out is noticed at the next poll) and each one's `w1_slave` is read, one at a
 * time: the kernel serialises the bus anyway, and each read blocks a thread of the
 * libuv pool for the ~750 ms of a conversion, a pool that DNS lookups also need.
 *
 * A read the driver's CRC check rejects, the power-on value 85.000 and the error value
 * -127 are counted per reason, logged at most once a minute per reason, and skipped.
 */
import { readdir } from "node:fs/promises";
import { join, resolve } from "node:path";
import type { Clock } from "../clock.js";
import type { OnewireConfig } from "../config/schema.js";
import type { Logger } from "../ops/logger.js";
import { RateLimitedLog } from "../ops/logger.js";
import type { Metrics } from "../ops/metrics.js";
import { DeviceBook, Poller, readBounded, SinkQueue, StatusCell } from "./polling.js";
import type { Reading, ReadingSink, Source, SourceState } from "./reading.js";
import { parseW1Slave, W1_PROBE_ID } from "./w1-slave.js";

export interface OnewireSourceOptions {
  config: OnewireConfig;
  sink: ReadingSink;
  logger: Logger;
  metrics: Metrics;
  clock: Clock;
  /** `root` is relative to this (the configuration file's directory). */
  baseDir: string;
}

/** w1_slave is two short lines; anything longer is not one. */
const MAX_W1_FILE = 4096;

export class OnewireSource implements Source {
  readonly name = "onewire";
  readonly #config: OnewireConfig;
  readonly #root: string;
  readonly #log: Logger;
  readonly #metrics: Metrics;
  readonly #clock: Clock;
  readonly #rateLog: RateLimitedLog;
  readonly #status: StatusCell;
  readonly #book: DeviceBook;
  readonly #queue: SinkQueue;
  readonly #poller: Poller;
  readonly #labels: Readonly<Record<string, string>>;
  #polled = false;
  #busAnnouncedDown = false;
  #lastReading: number | undefined;

  constructor(opts: OnewireSourceOptions) {
    const c = opts.config;
    this.#config = c;
    this.#root = resolve(opts.baseDir, c.root);
    const bound = opts.logger.bindings();
    this.#log = bound.component ? opts.logger : opts.logger.child({ component: "onewire" });
    this.#metrics = opts.metrics;
    this.#clock = opts.clock;
    this.#rateLog = new RateLimitedLog(60_000, () => opts.clock.now());
    this.#status = new StatusCell(opts.clock);
    this.#book = new DeviceBook(opts.clock);
    this.#labels = Object.freeze({ ...c.labels });
    // Named probes are expected: one that is not on the bus is reported as down.
    for (const [id, sensor] of Object.entries(c.names)) this.#book.add(id, sensor);
    this.#queue = new SinkQueue({
      sink: opts.sink,
      logger: this.#log,
      clock: opts.clock,
      what: "1-Wire readings",
      onDropped: (n, reason) => opts.metrics.readingsDropped.inc({ source: this.name, reason }, n),
    });
    this.#poller = new Poller({
      clock: opts.clock,
      every: c.every,
      run: () => this.#poll(),
      onOverrun: () => this.#skipped("overrun", "a poll was still running when the next was due; skipped it"),
      onError: (err) => this.#log.error({ err }, "1-Wire poll failed"),
    });
  }

  state(): SourceState {
    const s: SourceState = {
      name: this.name,
      kind: "onewire",
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
    this.#status.set("starting");
    this.#poller.start();
  }

  async stop(): Promise<void> {
    await this.#poller.stop();
    await this.#queue.close();
    this.#status.set("stopped");
  }

  #sensorOf(id: string): string {
    return this.#config.names[id] ?? id;
  }

  #skipped(reason: "overrun" | "backpressure", msg: string): void {
    this.#metrics.sourceError(this.name, reason);
    const s = this.#rateLog.shouldLog(reason);
    if (s !== undefined) this.#log.warn({ every: this.#config.every, suppressed: s }, msg);
  }

  async #poll(): Promise<void> {
    if (this.#queue.backlogged) {
      this.#queue.retry();
      this.#skipped("backpressure", "the readings of the last poll are not committed yet; skipped a poll");
      return;
    }
    let ids: string[];
    try {
      ids = (await readdir(this.#root)).filter((n) => W1_PROBE_ID.test(n)).sort();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? String(err);
      this.#status.set("down", code);
      if (!this.#busAnnouncedDown) {
        this.#busAnnouncedDown = true;
        this.#log.warn(
          { root: this.#root, reason: code, hint: "enable the bus: dtoverlay=w1-gpio in /boot/firmware/config.txt" },
          "1-Wire bus not found; looking again every poll",
        );
      }
      return;
    }
    if (this.#busAnnouncedDown) {
      this.#busAnnouncedDown = false;
      this.#log.info({ root: this.#root }, "1-Wire bus is back");
    }
    this.#track(ids);
    const started = this.#clock.monotonic();
    const readings: Reading[] = [];
    for (const id of ids) {
      const r = await this.#readProbe(id);
      if (r) readings.push(r);
    }
    this.#queue.push(readings);
    this.#metrics.pollDuration.observe({ source: this.name }, (this.#clock.monotonic() - started) / 1000);
    if (readings.length > 0) {
      this.#metrics.readings.inc({ source: this.name }, readings.length);
      this.#lastReading = this.#clock.now();
    }
    const total = this.#book.size;
    const up = this.#book.upCount();
    if (ids.length === 0) this.#status.set("down", `no temperature probes under ${this.#root}`);
    else if (up === 0) this.#status.set("down", "no probe gives a reading");
    else this.#status.set("up", up < total ? `${total - up} of ${total} probes give no reading` : undefined);
  }

  /** Probes that appeared, disappeared, or are named but missing. */
  #track(ids: string[]): void {
    const present = new Set(ids);
    const appeared: string[] = [];
    for (const id of ids) {
      if (this.#book.get(id) === undefined) {
        this.#book.add(id, this.#sensorOf(id));
        appeared.push(id);
      }
    }
    if (!this.#polled) {
      this.#polled = true;
      const found = ids.map((id) => ({ id, sensor: this.#sensorOf(id) }));
      if (found.length > 0) this.#log.info({ root: this.#root, probes: found }, "1-Wire probes found");
      else this.#log.warn({ root: this.#root }, "no 1-Wire temperature probes found; looking again every poll");
    } else {
      for (const id of appeared) this.#log.info({ id, sensor: this.#sensorOf(id) }, "1-Wire probe appeared");
    }
    for (const id of this.#book.ids()) {
      if (present.has(id)) continue;
      if (this.#config.names[id] !== undefined) {
        if (this.#book.fail(id, "not on the bus") === "failed") {
          this.#log.warn({ id, sensor: this.#sensorOf(id) }, "1-Wire probe missing");
        }
      } else {
        this.#book.remove(id);
        this.#log.warn({ id, sensor: this.#sensorOf(id) }, "1-Wire probe disappeared");
      }
    }
  }

  async #readProbe(id: string): Promise<Reading | undefined> {
    const sensor = this.#sensorOf(id);
    let text: string;
    try {
      const { bytes } = await readBounded(join(this.#root, id, "w1_slave"), MAX_W1_FILE);
      text = bytes.toString("latin1");
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? String(err);
      this.#metrics.sourceError(this.name, "io");
      this.#failed(id, sensor, "io", code);
      return undefined;
    }
    const r = parseW1Slave(text);
    if (!r.ok) {
      // A failed read (CRC) is an error of the bus; a value the probe should not give is bad data.
      if (r.reason === "crc") this.#metrics.sourceError(this.name, "crc");
      else this.#metrics.decodeErrors.inc({ source: this.name, reason: r.reason });
      this.#failed(id, sensor, r.reason, r.reason);
      return undefined;
    }
    if (this.#book.ok(id) === "recovered") this.#log.info({ id, sensor }, "1-Wire probe gives readings again");
    return {
      sensor,
      metric: this.#config.metric,
      value: r.celsius,
      ts: this.#clock.now(),
      source: this.name,
      labels: this.#labels,
    };
  }

  #failed(id: string, sensor: string, reason: string, detail: string): void {
    const s = this.#rateLog.shouldLog(reason);
    if (s !== undefined) this.#log.warn({ id, sensor, reason: detail, suppressed: s }, "skipped a 1-Wire reading");
    if (this.#book.fail(id, detail) === "failed")
      this.#log.warn({ id, sensor, reason: detail }, "1-Wire probe gives no reading");
  }
}
