/**
 * What the polled sources (Modbus, 1-Wire, files) share: a fixed-rate schedule that
 * skips a poll when the previous one still runs, a hand-off to the sink with at most
 * one commit in flight, and the up/down bookkeeping of a source and its devices.
 */
import { open } from "node:fs/promises";
import type { Clock, TimerHandle } from "../clock.js";
import type { DeviceState, Reading, ReadingSink, SourceStatus } from "./reading.js";

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

/**
 * Readings on their way to the sink: one commit in flight, readings of later polls
 * gathered meanwhile into the next. `backlogged` tells a source that readings already
 * wait behind a commit in flight, so it skips a poll rather than hold more in memory.
 */
export class SinkQueue {
  readonly #sink: ReadingSink;
  readonly #onLost: (err: unknown, lost: number) => void;
  #pending: Reading[] = [];
  #inflight: Promise<void> | undefined;

  constructor(sink: ReadingSink, onLost: (err: unknown, lost: number) => void) {
    this.#sink = sink;
    this.#onLost = onLost;
  }

  get backlogged(): boolean {
    return this.#inflight !== undefined && this.#pending.length > 0;
  }

  push(readings: readonly Reading[]): void {
    if (readings.length === 0) return;
    for (const r of readings) this.#pending.push(r);
    this.#flush();
  }

  /** Resolves once every reading pushed so far was committed (or reported lost). */
  async drain(): Promise<void> {
    while (this.#inflight || this.#pending.length > 0) {
      if (!this.#inflight) this.#flush();
      await this.#inflight;
    }
  }

  #flush(): void {
    if (this.#inflight || this.#pending.length === 0) return;
    const batch = this.#pending;
    this.#pending = [];
    let call: Promise<void>;
    try {
      call = this.#sink(batch);
    } catch (err) {
      call = Promise.reject(err);
    }
    // A polled device cannot resend: readings that could not be committed are lost, and said so.
    this.#inflight = call.then(
      () => undefined,
      (err: unknown) => this.#onLost(err, batch.length),
    );
    void this.#inflight.finally(() => {
      this.#inflight = undefined;
      this.#flush();
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
