import type { Clock, TimerHandle } from "../../src/clock.js";

/** A clock that moves only when the test says so. */
export class FakeClock implements Clock {
  #now: number;
  #mono = 0;
  #timers: { at: number; fn: () => void; handle: TimerHandle }[] = [];
  constructor(start = Date.parse("2026-01-01T00:00:00Z")) {
    this.#now = start;
  }
  now(): number {
    return this.#now;
  }
  monotonic(): number {
    return this.#mono;
  }
  setTimeout(fn: () => void, ms: number): TimerHandle {
    const handle: TimerHandle = { unref() {} };
    this.#timers.push({ at: this.#mono + Math.max(0, ms), fn, handle });
    return handle;
  }
  clearTimeout(handle: TimerHandle): void {
    this.#timers = this.#timers.filter((t) => t.handle !== handle);
  }
  /** Moves time forward, firing due timers in order. */
  advance(ms: number): void {
    const target = this.#mono + ms;
    for (;;) {
      this.#timers.sort((a, b) => a.at - b.at);
      const next = this.#timers[0];
      if (!next || next.at > target) break;
      this.#timers.shift();
      this.#now += next.at - this.#mono;
      this.#mono = next.at;
      next.fn();
    }
    this.#now += target - this.#mono;
    this.#mono = target;
  }
  /** Sets the wall clock without moving monotonic time (a clock jump). */
  jumpWall(to: number): void {
    this.#now = to;
  }
  pendingTimers(): number {
    return this.#timers.length;
  }
}
