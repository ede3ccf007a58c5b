/**
 * Event times on a device without a battery-backed clock.
 *
 * A Raspberry Pi boots with a wrong wall clock (1970, or fake-hwclock's last saved time)
 * until NTP syncs. With `agent.require_clock_sync: auto` nothing is signed meanwhile
 * (clock-sync.ts), but events are still created and committed, and their times come
 * from that wrong clock. What we do about it:
 *
 * - Every event created while the kernel says the clock is unsynchronised carries
 *   `data.clock: "unsynchronized"`, so a receiver knows its times may be off.
 * - For each such event we keep a monotonic reference (wall and monotonic time at
 *   creation; monotonic time does not jump when NTP steps the clock). When the clock
 *   becomes synchronised while the agent is still running, the jump is measured per
 *   event as (wall now − wall then) − (monotonic now − monotonic then), and the stored
 *   body of every event not yet sent is rewritten: times that came from the agent's
 *   own clock (`timestamp` within 2 s of the creation time, i.e. arrival time, and
 *   `data.since` then too) are shifted by the jump, and `data.clock` becomes
 *   `"corrected"` with `data.clock_correction_s`. Times taken from a sensor's payload
 *   are left alone: they come from the sensor's clock, not ours. Nothing is rewritten
 *   after an attempt used the body (signatures cover the stored bytes).
 * - After a restart before the sync the monotonic reference is gone: those events keep
 *   `"unsynchronized"` and their uncorrected times.
 *
 * Memory is bounded: at most MAX_REMEMBERED events are remembered; later ones are marked
 * but not corrected.
 */
import type { Clock } from "./clock.js";
import type { NewEvent } from "./events.js";

export const MAX_REMEMBERED = 10_000;
/** A body time this close to the creation time came from the agent's clock (arrival time). */
const AGENT_TIME_SLACK_MS = 2_000;

interface Reference {
  wall: number;
  mono: number;
}

export class EventTimes {
  readonly #clock: Clock;
  readonly #max: number;
  #unsynced = new Map<string, Reference>();

  constructor(clock: Clock, max = MAX_REMEMBERED) {
    this.#clock = clock;
    this.#max = max;
  }

  /** Events created while the clock is unsynchronised, marked as such and remembered. */
  mark(events: readonly NewEvent[]): NewEvent[] {
    const ref = { wall: this.#clock.now(), mono: this.#clock.monotonic() };
    return events.map((e) => {
      if (this.#unsynced.size < this.#max) this.#unsynced.set(e.id, ref);
      return { ...e, body: { ...e.body, data: { ...e.body.data, clock: "unsynchronized" } } };
    });
  }

  get remembered(): number {
    return this.#unsynced.size;
  }

  /**
   * The clock is now synchronised: corrected bodies for the remembered events, given
   * their stored bodies (`bodyOf` returns undefined for events no longer stored).
   * Forgets them all.
   */
  corrections(bodyOf: (id: string) => Buffer | undefined): Map<string, Buffer> {
    const now = { wall: this.#clock.now(), mono: this.#clock.monotonic() };
    const out = new Map<string, Buffer>();
    for (const [id, ref] of this.#unsynced) {
      const stored = bodyOf(id);
      if (!stored) continue;
      const corrected = correctBody(stored, ref, now);
      if (corrected) out.set(id, corrected);
    }
    this.#unsynced = new Map();
    return out;
  }
}

/** The body with agent-clock times shifted by the measured jump, or undefined if not ours. */
export function correctBody(stored: Buffer, then: Reference, now: Reference): Buffer | undefined {
  let body: { timestamp?: unknown; data?: Record<string, unknown> };
  try {
    body = JSON.parse(stored.toString("utf8"));
  } catch {
    return undefined;
  }
  if (body.data?.clock !== "unsynchronized") return undefined;
  const jump = now.wall - then.wall - (now.mono - then.mono);
  const ts = typeof body.timestamp === "string" ? Date.parse(body.timestamp) : Number.NaN;
  const fromAgentClock = Number.isFinite(ts) && Math.abs(ts - then.wall) <= AGENT_TIME_SLACK_MS;
  const data: Record<string, unknown> = { ...body.data, clock: "corrected", clock_correction_s: 0 };
  let timestamp = body.timestamp;
  if (fromAgentClock) {
    timestamp = new Date(ts + jump).toISOString();
    const since = typeof data.since === "string" ? Date.parse(data.since) : Number.NaN;
    if (Number.isFinite(since)) data.since = new Date(since + jump).toISOString();
    data.clock_correction_s = Math.round(jump / 1000);
  }
  return Buffer.from(JSON.stringify({ ...body, timestamp, data }), "utf8");
}
