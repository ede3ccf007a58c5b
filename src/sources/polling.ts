/**
 * What the polled sources (Modbus, 1-Wire, files) share: a fixed-rate schedule that
 * skips a poll when the previous one still runs, a hand-off to the sink with at most
 * one commit in flight, and the up/down bookkeeping of a source and its devices.
 */
import { open } from "node:fs/promises";
import type { Clock, TimerHandle } from "../clock.js";
import type { Logger } from "../ops/logger.js";
import {
  callSink,
  type DeviceState,
  isBackpressure,
  type Reading,
  type ReadingSink,
  type SourceStatus,
} from "./reading.js";

export interface PollerOptions {
  clock: Clock;
  every: number;
  /** One poll. Must not reject (a rejection is passed to onError). */
  run: () => Promise<void>;
  /** A poll was due while the previous one still ran: it is skipped, not queued. */
  onOverrun: () => void;
  onError: (err: unknown) => void;
}

/**
 * Polls at start and then every `every` on the monotonic clock (fixed rate: a slow poll
 * does not shift the ones after it). A due poll that finds the previous one running is
 * skipped and reported; polls never pile up behind a device that is slow to answer.
 */
export class Poller {
  readonly #o: PollerOptions;
  #next = 0;
  #timer: TimerHandle | undefined;
  #running: Promise<void> | undefined;
  #stopped = true;

  constructor(options: PollerOptions) {
    this.#o = options;
  }

  get running(): boolean {
    return this.#running !== undefined;
  }

  start(): void {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#next = this.#o.clock.monotonic();
    this.#tick();
  }

  /** No poll starts after this; resolves when the one running has finished. */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) this.#o.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#running;
  }

  #tick(): void {
    this.#timer = undefined;
    if (this.#stopped) return;
    if (this.#running) this.#o.onOverrun();
    else {
      const run = this.#o.run().catch((err: unknown) => this.#o.onError(err));
      this.#running = run.finally(() => {
        this.#running = undefined;
      });
    }
    const clock = this.#o.clock;
    const every = this.#o.every;
    const now = clock.monotonic();
    this.#next += every;
    // The process stood still for whole intervals (suspend, a stalled event loop): those
    // polls are gone, not owed. Keep the phase, resume with the next one.
    if (this.#next <= now) this.#next += Math.ceil((now - this.#next) / every) * every;
    if (this.#next <= now) this.#next += every;
    this.#timer = clock.setTimeout(() => this.#tick(), this.#next - now);
  }
}

export interface SinkQueueOptions {
  sink: ReadingSink;
  logger: Logger;
  clock: Clock;
  /** What the readings are, for log lines: "modbus readings". */
  what: string;
  /** Readings given up (at stop, still not stored): counted by the source. */
  onDropped: (n: number, reason: "stopped") => void;
}

/**
 * Readings on their way to the sink, one commit in flight; readings of later polls are
 * gathered meanwhile into the next.
 *
 * A commit the outbox refuses (backpressure: its disk floor, or full under
 * `when_full: block`) or that fails keeps its readings, which are offered again at the
 * next due poll (retry()) instead of polling: a polled device can be asked to wait, so
 * no more is read than can be stored and memory stays bounded by one poll. Entering and
 * leaving that state is logged once each. What is still held at stop is dropped and
 * counted (reason `stopped`).
 */
export class SinkQueue {
  readonly #o: SinkQueueOptions;
  #pending: Reading[] = [];
  #inflight: Promise<void> | undefined;
  #holding = false;
  #holdingSince = 0;

  constructor(options: SinkQueueOptions) {
    this.#o = options;
  }

  /** True while readings wait (held after a refusal, or behind a commit in flight): skip the poll. */
  get backlogged(): boolean {
    return this.#holding || (this.#inflight !== undefined && this.#pending.length > 0);
  }

  push(readings: readonly Reading[]): void {
    if (readings.length === 0) return;
    for (const r of readings) this.#pending.push(r);
    if (!this.#holding) this.#flush();
  }

  /** Offers held readings again (called where a poll was due). */
  retry(): void {
    if (this.#holding) this.#flush();
  }

  /**
   * At stop: waits for the commit in flight, offers held readings once more, and drops
   * (counting them) those that still cannot be stored.
   */
  async close(): Promise<void> {
    await this.#inflight;
    if (this.#pending.length > 0) {
      this.#flush();
      await this.#inflight;
    }
    if (this.#pending.length > 0) {
      const n = this.#pending.length;
      this.#pending = [];
      this.#o.onDropped(n, "stopped");
      this.#o.logger.warn(
        { code: "EDGEHOOK_READINGS_DROPPED", dropped: n },
        `dropped ${n} ${this.#o.what} at stop: the outbox did not take them`,
      );
    }
  }

  #flush(): void {
    if (this.#inflight || this.#pending.length === 0) return;
    const batch = this.#pending;
    this.#pending = [];
    this.#inflight = callSink(this.#o.sink, batch).then(
      () => {
        if (!this.#holding) return;
        this.#holding = false;
        const heldS = Math.round((this.#o.clock.now() - this.#holdingSince) / 1000);
        this.#o.logger.info(
          { readings: batch.length, heldS },
          `stored ${batch.length} held ${this.#o.what} after ${heldS} s; polling again`,
        );
      },
      (err: unknown) => {
        this.#pending = batch.concat(this.#pending);
        if (this.#holding) return;
        this.#holding = true;
        this.#holdingSince = this.#o.clock.now();
        const msg = `holding ${this.#pending.length} ${this.#o.what} and skipping polls until they can be stored`;
        if (isBackpressure(err))
          this.#o.logger.warn({ reason: (err as Error).message }, `outbox refuses new readings: ${msg}`);
        else this.#o.logger.error({ err }, `could not commit ${this.#o.what}: ${msg}`);
      },
    );
    void this.#inflight.finally(() => {
      this.#inflight = undefined;
      if (!this.#holding) this.#flush();
    });
  }
}

/** A source's status and since when. */
export class StatusCell {
  status: SourceStatus = "stopped";
  since = 0;
  detail: string | undefined;
  readonly #clock: Clock;

  constructor(clock: Clock) {
    this.#clock = clock;
  }

  set(status: SourceStatus, detail?: string): void {
    if (this.status !== status) this.since = this.#clock.now();
    this.status = status;
    this.detail = detail;
  }
}

/**
 * Up/down per device. A device is down while its last poll gave no reading. Transitions
 * are returned so the source logs them once, not on every poll.
 */
export class DeviceBook {
  readonly #clock: Clock;
  readonly #devices = new Map<string, DeviceState & { announced: boolean }>();

  constructor(clock: Clock) {
    this.#clock = clock;
  }

  add(id: string, sensor: string): void {
    if (this.#devices.has(id)) return;
    this.#devices.set(id, {
      id,
      sensor,
      status: "down",
      since: this.#clock.now(),
      detail: "not read yet",
      announced: false,
    });
  }

  remove(id: string): void {
    this.#devices.delete(id);
  }

  ids(): string[] {
    return [...this.#devices.keys()];
  }

  get size(): number {
    return this.#devices.size;
  }

  /** A reading came: "recovered" when the device had been reported down. */
  ok(id: string): "recovered" | undefined {
    const d = this.#devices.get(id);
    if (!d) return undefined;
    const now = this.#clock.now();
    d.last_reading = now;
    if (d.status === "up") return undefined;
    d.status = "up";
    d.since = now;
    d.detail = undefined;
    const was = d.announced;
    d.announced = false;
    return was ? "recovered" : undefined;
  }

  /** A poll gave nothing: "failed" the first time (log it), undefined while it stays down. */
  fail(id: string, detail: string): "failed" | undefined {
    const d = this.#devices.get(id);
    if (!d) return undefined;
    if (d.status === "up") d.since = this.#clock.now();
    d.status = "down";
    d.detail = detail;
    if (d.announced) return undefined;
    d.announced = true;
    return "failed";
  }

  /**
   * Every device down, without announcing each (the bus they share went away and that is
   * logged once); when the bus is back, their first reading makes them up again quietly.
   */
  markAllDown(detail: string): void {
    const now = this.#clock.now();
    for (const d of this.#devices.values()) {
      if (d.status === "up") d.since = now;
      d.status = "down";
      d.detail = detail;
    }
  }

  get(id: string): DeviceState | undefined {
    return this.#devices.get(id);
  }

  /** How many devices gave a reading in their last poll. */
  upCount(): number {
    let n = 0;
    for (const d of this.#devices.values()) if (d.status === "up") n++;
    return n;
  }

  list(): DeviceState[] {
    return [...this.#devices.values()].map(({ announced: _a, detail, last_reading, ...d }) => ({
      ...d,
      ...(detail !== undefined ? { detail } : {}),
      ...(last_reading !== undefined ? { last_reading } : {}),
    }));
  }
}

/**
 * value × scale + offset, without binary noise: 2315 × 0.01 is 23.150000000000002 in
 * IEEE 754, which would show up in webhooks. 15 significant digits are what a double
 * holds exactly, so rounding to them removes only the noise.
 */
export function applyScale(raw: number, scale: number, offset: number): number {
  if (scale === 1 && offset === 0) return raw;
  return Number((raw * scale + offset).toPrecision(15));
}

/**
 * At most `max` bytes of a file (sysfs attributes, a status file another program
 * writes), and whether there was more: a file that grew without bound must not be
 * read into memory whole.
 */
export async function readBounded(path: string, max: number): Promise<{ bytes: Buffer; truncated: boolean }> {
  const fh = await open(path, "r");
  try {
    const buf = Buffer.alloc(max + 1);
    let n = 0;
    while (n < buf.length) {
      const { bytesRead } = await fh.read(buf, n, buf.length - n, null);
      if (bytesRead === 0) break;
      n += bytesRead;
    }
    return { bytes: buf.subarray(0, Math.min(n, max)), truncated: n > max };
  } finally {
    await fh.close();
  }
}
