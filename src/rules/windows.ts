/**
 * Sliding windows for `aggregate` and `rate_*` rules. Samples enter with the agent's
 * clock (`at`) and leave once older than the window, so a sensor whose own clock is
 * wrong cannot empty or freeze a window. Windows live in memory only: after a restart
 * they refill from new readings (documented in engine.ts).
 *
 * Each add is amortised O(1): a running sum for avg, monotonic deques for min/max.
 */

/** Upper bound on samples kept per window, so a chatty sensor cannot grow memory without limit. */
export const MAX_WINDOW_SAMPLES = 10_000;

export type AggregateFn = "avg" | "min" | "max" | "count";

/** A FIFO of numbers backed by an array with a moving head (no shift() per sample). */
class Fifo {
  items: number[] = [];
  head = 0;
  get length(): number {
    return this.items.length - this.head;
  }
  push(v: number): void {
    this.items.push(v);
  }
  // Callers look at an end only when the FIFO is not empty; NaN would be a bug showing.
  first(): number {
    return this.items[this.head] ?? Number.NaN;
  }
  last(): number {
    return this.items[this.items.length - 1] ?? Number.NaN;
  }
  shift(): void {
    this.head++;
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
  }
  popLast(): void {
    this.items.pop();
    if (this.items.length === this.head) {
      this.items = [];
      this.head = 0;
    }
  }
}

/** avg/min/max/count of the samples received in the last `overMs` of agent time. */
export class AggregateWindow {
  readonly #fn: AggregateFn;
  readonly #overMs: number;
  // Parallel FIFOs: arrival time, value, and a sequence number so the deques can tell
  // whether their head is the sample being evicted.
  readonly #at = new Fifo();
  readonly #val = new Fifo();
  #sum = 0;
  #seq = 0;
  #headSeq = 0;
  // Monotonic deque of [seq, value] for min (ascending) or max (descending).
  readonly #dqSeq = new Fifo();
  readonly #dqVal = new Fifo();

  constructor(fn: AggregateFn, overMs: number) {
    this.#fn = fn;
    this.#overMs = overMs;
  }

  get count(): number {
    return this.#at.length;
  }

  /** When the oldest sample leaves the window (the aggregate changes without a reading). */
  nextExpiry(): number | undefined {
    return this.#at.length === 0 ? undefined : this.#at.first() + this.#overMs;
  }

  add(at: number, value: number): void {
    if (this.#at.length >= MAX_WINDOW_SAMPLES) this.#evictOne();
    this.#at.push(at);
    this.#val.push(value);
    this.#sum += value;
    const seq = this.#seq++;
    if (this.#fn === "min" || this.#fn === "max") {
      const keepMin = this.#fn === "min";
      while (this.#dqVal.length > 0) {
        const tail = this.#dqVal.last();
        if (keepMin ? tail >= value : tail <= value) {
          this.#dqVal.popLast();
          this.#dqSeq.popLast();
        } else break;
      }
      this.#dqSeq.push(seq);
      this.#dqVal.push(value);
    }
  }

  /** Drops samples that arrived `over` or longer ago (a 1m window at 12:01 no longer holds 12:00). */
  evict(now: number): void {
    const cutoff = now - this.#overMs;
    while (this.#at.length > 0 && this.#at.first() <= cutoff) this.#evictOne();
  }

  /** The aggregate of what is in the window; undefined when empty (count is then 0). */
  value(): number | undefined {
    const n = this.#at.length;
    switch (this.#fn) {
      case "count":
        return n;
      case "avg":
        return n === 0 ? undefined : this.#sum / n;
      default:
        return this.#dqVal.length === 0 ? undefined : this.#dqVal.first();
    }
  }

  #evictOne(): void {
    const v = this.#val.first();
    this.#at.shift();
    this.#val.shift();
    this.#sum -= v;
    if (this.#at.length === 0) this.#sum = 0; // no float drift left behind in an empty window
    const seq = this.#headSeq++;
    if (this.#dqSeq.length > 0 && this.#dqSeq.first() === seq) {
      this.#dqSeq.shift();
      this.#dqVal.shift();
    }
  }
}

/**
 * Change per second between the oldest and newest sample in the window. Membership is
 * by agent time; the time difference is taken from the readings' own timestamps, so a
 * backlog delivered in one burst after an outage (same arrival time, hours apart in
 * measurement time) gives the real rate instead of a huge spike.
 */
export class RateWindow {
  readonly #overMs: number;
  readonly #at = new Fifo();
  readonly #ts = new Fifo();
  readonly #val = new Fifo();

  constructor(overMs: number) {
    this.#overMs = overMs;
  }

  get count(): number {
    return this.#at.length;
  }

  add(at: number, ts: number, value: number): void {
    if (this.#at.length >= MAX_WINDOW_SAMPLES) this.#evictOne();
    this.#at.push(at);
    this.#ts.push(ts);
    this.#val.push(value);
  }

  evict(now: number): void {
    const cutoff = now - this.#overMs;
    while (this.#at.length > 0 && this.#at.first() <= cutoff) this.#evictOne();
  }

  /** Per second; undefined with fewer than two samples or no time between them. */
  perSecond(): number | undefined {
    if (this.#at.length < 2) return undefined;
    const dt = this.#ts.last() - this.#ts.first();
    if (dt <= 0) return undefined;
    return ((this.#val.last() - this.#val.first()) * 1000) / dt;
  }

  #evictOne(): void {
    this.#at.shift();
    this.#ts.shift();
    this.#val.shift();
  }
}
