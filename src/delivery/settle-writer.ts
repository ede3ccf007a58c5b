/**
 * Collects delivery outcomes and writes them with one `outbox.settle` call (one SQLite
 * transaction, one fsync on the SD card): a delivered outcome at most `delayMs` (1 s by
 * default) after it is known, a failed or dead one at most `soonMs` (50 ms); at once when
 * 2,048 are waiting, when the dispatcher is stopping, or when it asks (`flush`: a lane has
 * nothing else to send while a failed outcome holds a series back). Before any of that,
 * what waits rides on the outbox's next transaction, whatever it is for (SettleRider: most
 * often the commit of a new event), so outcomes of events that keep coming cost no
 * transaction of their own. A write that fails keeps every outcome and tries again a second
 * later.
 *
 * Order per series while an outcome waits (design invariant 5): a failed outcome keeps its
 * series in the lane's `exclude` until it is written (the retry time is not on disk yet). A
 * delivered or dead one releases its series at once (`lane.after`: the outbox hands out the
 * delivery after it), unless PIPELINE_MAX outcomes are already waiting. After a crash in
 * between, the earlier one is still pending and is sent again with the same id, after the
 * later one; the receiver's first arrivals are in order.
 *
 * The batching delay runs on the event loop (setTimeout), not the injected Clock: it groups
 * I/O and must keep running when a test freezes logical time.
 */
import type { Logger, RateLimitedLog } from "../ops/logger.js";
import type { AttemptRecord, OutboxReader, Settlement, SettleRider } from "../store/types.js";
import type { Lane } from "./lane.js";
import type { Decision } from "./policy.js";

/**
 * Most outcomes in one write. Under load this, not the delay, decides when outcomes are
 * written: each transaction fsyncs and blocks the event loop, so fewer, larger ones leave
 * more of the thread to delivery. Draining a backlog over 256 series, 2,048 instead of 512
 * used about a fifth less CPU per webhook and drained about a fifth faster (median of 4,
 * alternating, in one run); the transaction takes a few tens of ms.
 */
export const SETTLE_BATCH_MAX = 2048;
/**
 * Delivered outcomes do not hold their series back while they wait (pipelining), so the
 * wait only groups writes. Each transaction appends its own WAL frames and fsyncs them,
 * which costs at least a few 4 KiB pages of storage writes however few rows it holds: at a
 * few events a second, the next event's commit carries them (SettleRider), and 1 s writes
 * whatever no commit took with one transaction instead of one each (issue 15: the flash
 * bench, 35.9 → about 21 KB written per event with the wait alone).
 * Under load SETTLE_BATCH_MAX writes sooner. The cost: after a crash or power cut, up to 1 s
 * of delivered webhooks are sent again (same webhook-id), as any delivery in flight is.
 */
export const SETTLE_DELAY_MS = 1000;
/**
 * Longest wait before a failed or dead outcome is written: a failed one holds its series
 * back until then (a lane with nothing else to send writes at once, pump.ts), and the
 * operator should see a dead one (`edgehook queue list`) by the time its series has moved
 * on. 50 ms rather than 20 ms: draining a backlog over 256 series, it cut the dispatcher's
 * CPU per webhook by about 15 % (fewer, larger transactions).
 */
export const SETTLE_SOON_MS = 50;
/**
 * Outcomes waiting to be written beyond which a series no longer goes on before its last
 * outcome is written (the outbox cannot keep up, or writes fail: do not run ahead of it).
 */
const PIPELINE_MAX = 4 * SETTLE_BATCH_MAX;
/** After a failed write, the next try. */
const RETRY_WRITE_MS = 1_000;

export interface PendingSettle {
  lane: Lane;
  settlement: Settlement;
  series: string;
  /** Delivered or dead: the series went on before this was written (Lane.after). */
  released?: boolean;
}

export interface SettleWriterOptions {
  outbox: Pick<OutboxReader, "settle">;
  log: Logger;
  /** The dispatcher's rate-limited log. */
  quiet(): RateLimitedLog;
  /** Longest wait before a delivered outcome is written. */
  delayMs: number;
  /** Longest wait before a failed or dead outcome is written. */
  soonMs: number;
  /** The dispatcher is stopping: write at once, do not schedule retries. */
  stopping(): boolean;
  /** Outcomes of these (the batch written, in order) are on disk; their series are released. */
  written(batch: readonly PendingSettle[]): void;
}

export class SettleWriter implements SettleRider {
  readonly #o: SettleWriterOptions;
  #pending: PendingSettle[] = [];
  /** Taken by a transaction of the outbox that has not ended yet (take()). */
  #riding: PendingSettle[] | undefined;
  #timer: NodeJS.Timeout | undefined;
  /** When the timer fires (performance.now()). */
  #timerDue = 0;

  constructor(options: SettleWriterOptions) {
    this.#o = options;
  }

  /** Outcomes collected and not yet written. */
  get size(): number {
    return this.#pending.length + (this.#riding?.length ?? 0);
  }

  queue(p: PendingSettle): void {
    const { settlement, lane } = p;
    if (settlement.outcome !== "retry" && this.#pending.length < PIPELINE_MAX && lane.state !== "disabled") {
      // Delivered or dead: nothing about it changes any more, so the next event of the
      // series may go while this waits to be written. After a crash in between, this one
      // is sent again (same webhook-id) after the later one; first arrivals stay in order.
      lane.after.set(p.series, settlement.id);
      lane.exclude.delete(p.series);
      p.released = true;
    }
    this.#pending.push(p);
    lane.unwritten++;
    if (!p.released) lane.holding++;
    if (this.#pending.length >= SETTLE_BATCH_MAX || this.#o.stopping()) {
      this.flush();
    } else {
      this.#arm(settlement.outcome === "delivered" ? this.#o.delayMs : this.#o.soonMs);
    }
  }

  /** Makes sure a write comes within `wait` ms. */
  #arm(wait: number): void {
    const due = performance.now() + wait;
    if (this.#timer && this.#timerDue <= due) return;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timerDue = due;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.flush();
    }, wait);
  }

  // The outbox's side (SettleRider): the outcomes waiting ride on its next transaction, which
  // is most often an event being committed, so they cost no transaction of their own.

  take(): Settlement[] {
    // Only outcomes that have waited half the delay: the outcomes of events a few a second
    // apart still share one write (the index pages a settle touches are written once for
    // them all), and the commit carries them before the delay would cost a transaction.
    if (this.#pending.length === 0 || this.#riding) return [];
    if (this.#timer && this.#timerDue - performance.now() > this.#o.delayMs / 2) return [];
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#riding = this.#pending;
    this.#pending = [];
    return this.#riding.map((p) => p.settlement);
  }

  committed(): void {
    const batch = this.#riding;
    this.#riding = undefined;
    if (batch) this.#written(batch);
  }

  rolledBack(): void {
    const batch = this.#riding;
    this.#riding = undefined;
    if (!batch) return;
    this.#pending = batch.concat(this.#pending);
    this.#arm(this.#o.soonMs);
  }

  /** Writes everything collected now. */
  flush(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#pending.length === 0) return;
    const batch = this.#pending;
    this.#pending = [];
    try {
      this.#o.outbox.settle(batch.map((p) => p.settlement));
    } catch (err) {
      // Keep the series excluded (or, delivered ones, in `after`) and try again: releasing
      // them would resend deliveries whose outcome is known but not yet written.
      const n = this.#o.quiet().shouldLog("settle");
      if (n !== undefined) this.#o.log.error({ err, suppressed: n }, "writing delivery outcomes failed; retrying");
      this.#pending = batch.concat(this.#pending);
      if (!this.#o.stopping()) this.#arm(RETRY_WRITE_MS);
      return;
    }
    this.#written(batch);
  }

  #written(batch: readonly PendingSettle[]): void {
    for (const p of batch) {
      p.lane.unwritten--;
      if (!p.released) {
        p.lane.holding--;
        p.lane.exclude.delete(p.series);
      } else if (p.lane.after.get(p.series) === p.settlement.id) p.lane.after.delete(p.series);
    }
    this.#o.written(batch);
  }
}

/** What is written for one delivery after `decision`. */
export function settlementFor(id: number, decision: Decision, attempt: AttemptRecord, now: number): Settlement {
  switch (decision.action) {
    case "delivered":
      return { id, outcome: "delivered", attempt };
    case "offline":
      return { id, outcome: "retry", attempt, nextAt: now, counted: false };
    case "retry":
      return { id, outcome: "retry", attempt, nextAt: decision.nextAt, counted: decision.counted };
    case "dead":
      return { id, outcome: "dead", attempt, reason: decision.reason };
  }
}
