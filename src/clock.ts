/**
 * Time as the rest of edgehook sees it. Rules, retry policy and the watchdog take a
 * Clock so unit tests can drive time by hand instead of sleeping.
 */
export interface TimerHandle {
  /** Lets the process exit while this timer is pending (see Node's Timeout.unref). */
  unref?(): void;
}

export interface Clock {
  /** Wall-clock milliseconds since the epoch. */
  now(): number;
  /** Monotonic milliseconds, for durations that must not jump with the wall clock. */
  monotonic(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  monotonic: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, Math.max(0, Math.min(ms, 2_147_483_647))),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};
