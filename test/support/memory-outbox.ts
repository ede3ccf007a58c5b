/**
 * An outbox in memory, for unit tests of the dispatcher that need no SQLite file: the
 * OutboxReader contract plus the destination switches (DispatcherOutbox). It keeps the
 * SQLite outbox's semantics, and test/unit/outbox.contract.test.ts runs the OutboxReader
 * contract against both: one delivery per (event, destination); only the head of a series
 * (its earliest pending delivery) is handed out; highest priority first, then oldest;
 * deliveries in flight skipped by id or series; a head settled but not yet written
 * (`after`) lets its series go on with the delivery after it, in queue order; a retry
 * waits until its nextAt; offline retries spend no attempt. Not durable and without limits: what a test puts in stays.
 */
import type { DispatcherOutbox, FlagLike } from "../../src/delivery/dispatcher.js";
import type { NewEvent } from "../../src/events.js";
import type { AttemptRecord, Delivery, DeliveryState, Settlement } from "../../src/store/types.js";

interface Row {
  delivery: Delivery;
  state: DeliveryState;
  /** When the next attempt is due; 0 (due whatever the clock says) until the first retry. */
  nextAt: number;
  reason?: string;
  history: AttemptRecord[];
}

/** What a test may look at of one delivery. */
export interface MemoryDelivery {
  id: number;
  eventId: string;
  destination: string;
  state: DeliveryState;
  attempts: number;
  reason?: string;
  history: readonly AttemptRecord[];
}

export class MemoryOutbox implements DispatcherOutbox {
  /** In id order. */
  readonly #rows: Row[] = [];
  readonly #flags = new Map<string, FlagLike>();
  readonly #now: () => number;
  #lastId = 0;
  /** settle() calls so far (the SQLite outbox writes one transaction per call). */
  settleCalls = 0;

  /** `now` stamps the destination flags (a test's FakeClock). */
  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  /** Stores the events as a committed batch would: one delivery per distinct destination. */
  enqueue(events: readonly NewEvent[]): void {
    for (const e of events) {
      const body = Buffer.from(JSON.stringify(e.body));
      for (const destination of new Set(e.destinations)) {
        const delivery: Delivery = {
          id: ++this.#lastId,
          eventId: e.id,
          destination,
          series: e.series,
          type: e.type,
          priority: e.priority,
          attempts: 0,
          createdAt: e.createdAt,
          body,
        };
        this.#rows.push({ delivery, state: "pending", nextAt: 0, history: [] });
      }
    }
  }

  /** Every delivery, in id order. */
  deliveries(): MemoryDelivery[] {
    return this.#rows.map(({ delivery: d, state, reason, history }) => ({
      id: d.id,
      eventId: d.eventId,
      destination: d.destination,
      state,
      attempts: d.attempts,
      ...(reason === undefined ? {} : { reason }),
      history,
    }));
  }

  next(
    destination: string,
    now: number,
    limit: number,
    exclude: ReadonlySet<string>,
    after?: ReadonlyMap<string, number>,
  ): Delivery[] {
    const byQueueOrder = (a: Row, b: Row) => b.delivery.priority - a.delivery.priority || a.delivery.id - b.delivery.id;
    const picked: Row[] = [];
    for (const head of [...this.#heads(destination).values()].filter((r) => r.nextAt <= now)) {
      const { id, series } = head.delivery;
      if (exclude.has(String(id)) || exclude.has(series)) continue;
      const settled = after?.get(series);
      if (settled === undefined || id > settled) {
        picked.push(head);
        continue;
      }
      // Settled but not written: the series goes on with the delivery after it, if due.
      const succ = this.#rows.find(
        (x) =>
          x.state === "pending" &&
          x.delivery.destination === destination &&
          x.delivery.series === series &&
          x.delivery.id > settled,
      );
      if (succ !== undefined && succ.nextAt <= now) picked.push(succ);
    }
    // Heads and stand-ins alike in queue order: priority, then age.
    return picked
      .sort(byQueueOrder)
      .slice(0, Math.max(0, limit))
      .map((r) => ({ ...r.delivery }));
  }

  nextDueAt(destination: string): number | undefined {
    let at: number | undefined;
    for (const r of this.#heads(destination).values()) at = at === undefined ? r.nextAt : Math.min(at, r.nextAt);
    return at;
  }

  retryNow(destination: string, now: number): number {
    let n = 0;
    for (const r of this.#heads(destination).values()) {
      if (r.nextAt > now) {
        r.nextAt = now;
        n++;
      }
    }
    return n;
  }

  pendingCount(destination: string): number {
    return this.#rows.filter((r) => r.state === "pending" && r.delivery.destination === destination).length;
  }

  settle(settlements: Settlement[]): void {
    this.settleCalls++;
    for (const st of settlements) {
      const r = this.#rows.find((x) => x.delivery.id === st.id);
      // Already settled (a late duplicate) or unknown: nothing to record.
      if (r?.state !== "pending") continue;
      r.history = [...r.history, st.attempt];
      if (st.outcome === "retry") {
        r.nextAt = st.nextAt;
        if (st.counted) r.delivery.attempts++;
        continue;
      }
      r.delivery.attempts++;
      r.state = st.outcome;
      if (st.outcome === "dead") r.reason = st.reason;
    }
  }

  setDestinationDisabled(name: string, reason: string): void {
    this.#flags.set(name, { disabled: true, reason, since: this.#now() });
  }

  enableDestination(name: string): void {
    if (this.#flags.get(name)?.disabled) this.#flags.set(name, { disabled: false, since: this.#now() });
  }

  destinationFlags(): ReadonlyMap<string, FlagLike> {
    return this.#flags;
  }

  /** The earliest pending row of each series of `destination`. */
  #heads(destination: string): Map<string, Row> {
    const heads = new Map<string, Row>();
    for (const r of this.#rows) {
      if (r.state === "pending" && r.delivery.destination === destination && !heads.has(r.delivery.series)) {
        heads.set(r.delivery.series, r);
      }
    }
    return heads;
  }
}
