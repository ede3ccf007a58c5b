/**
 * Is the system clock synchronised? A Raspberry Pi has no real-time clock: after boot it
 * runs from 1970 or from fake-hwclock's last saved time until NTP catches up. Webhooks signed
 * then carry a wrong `webhook-timestamp` and receivers reject them (they allow ~5 minutes),
 * so with `agent.require_clock_sync: auto` the dispatcher holds deliveries while the kernel
 * says the clock is NOT synchronised.
 *
 * How we ask, without native code (adjtimex(2) needs an addon):
 *   1. `/run/systemd/timesync/synchronized` exists → synced. systemd-timesyncd (the default
 *      on Raspberry Pi OS / Debian) creates it on its first successful sync.
 *   2. else `timedatectl show -p NTPSynchronized --value` → "yes"/"no". timedatectl reads the
 *      kernel's STA_UNSYNC flag, so this also covers chrony and ntpd.
 *   3. a wall clock before 2025 is certainly wrong (no device ships with that date now).
 * Anything else ("unknown", no systemd, no timedatectl, a container) counts as synced: holding
 * webhooks forever on a system we cannot judge would be worse than a rare stale timestamp.
 * Checked once at start and then on a slow cadence; the answer is cached, so the dispatcher's
 * check is a field read.
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import type { Clock, TimerHandle } from "../clock.js";
import type { Logger } from "../ops/logger.js";

export type SyncAnswer = "synced" | "unsynced" | "unknown";

export interface ClockSyncProbe {
  /** Whether the sync marker file exists. */
  markerExists(): boolean;
  /** Output of `timedatectl show -p NTPSynchronized --value`, or undefined when it cannot run. */
  timedatectl(): Promise<string | undefined>;
}

export const MARKER = "/run/systemd/timesync/synchronized";
/** 2025-01-01T00:00:00Z */
export const SANE_EPOCH_MS = 1_735_689_600_000;

export const systemProbe: ClockSyncProbe = {
  markerExists: () => existsSync(MARKER),
  timedatectl: () =>
    new Promise((resolve) => {
      execFile("timedatectl", ["show", "-p", "NTPSynchronized", "--value"], { timeout: 5_000 }, (err, stdout) => {
        resolve(err ? undefined : String(stdout).trim());
      });
    }),
};

export async function checkClockSync(probe: ClockSyncProbe, nowMs: number): Promise<SyncAnswer> {
  if (nowMs < SANE_EPOCH_MS) return "unsynced";
  if (probe.markerExists()) return "synced";
  const out = await probe.timedatectl();
  if (out === "yes") return "synced";
  if (out === "no") return "unsynced";
  return "unknown";
}

export interface ClockSyncOptions {
  clock: Clock;
  logger: Logger;
  probe?: ClockSyncProbe;
  /** How often to ask again (default 30 s). */
  intervalMs?: number;
}

export class ClockSyncMonitor {
  readonly #clock: Clock;
  readonly #logger: Logger;
  readonly #probe: ClockSyncProbe;
  readonly #intervalMs: number;
  #answer: SyncAnswer = "unknown";
  #timer: TimerHandle | undefined;
  #stopped = true;
  #listeners: (() => void)[] = [];

  constructor(options: ClockSyncOptions) {
    this.#clock = options.clock;
    this.#logger = options.logger;
    this.#probe = options.probe ?? systemProbe;
    this.#intervalMs = options.intervalMs ?? 30_000;
  }

  /** Asks once and waits for the answer, then keeps asking on the cadence. */
  async start(): Promise<void> {
    this.#stopped = false;
    await this.#check();
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** False only when the clock is known to be unsynchronised. */
  synced(): boolean {
    return this.#answer !== "unsynced";
  }

  get answer(): SyncAnswer {
    return this.#answer;
  }

  /** Called whenever the answer changes (the dispatcher resumes at once on sync). */
  onChange(fn: () => void): void {
    this.#listeners.push(fn);
  }

  async #check(): Promise<void> {
    let answer: SyncAnswer;
    try {
      answer = await checkClockSync(this.#probe, this.#clock.now());
    } catch {
      answer = "unknown";
    }
    if (answer !== this.#answer) {
      const was = this.#answer;
      this.#answer = answer;
      // The dispatcher logs holding and resuming (once each); this is the detail behind it.
      this.#logger.debug({ was, answer }, "clock synchronisation state changed");
      for (const fn of this.#listeners) fn();
    }
    if (this.#stopped) return;
    this.#timer = this.#clock.setTimeout(() => {
      void this.#check();
    }, this.#intervalMs);
    this.#timer.unref?.();
  }
}
