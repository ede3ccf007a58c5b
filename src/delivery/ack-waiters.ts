/**
 * Publishes waiting for a broker's acknowledgement, kept per connection: the mqtt:// and
 * nats:// transports share this. Each waiter settles exactly once, with whichever comes
 * first: the acknowledgement (or refusal) its publish reports, its timeout, its abort signal,
 * or the end of its connection.
 */
import type { Outcome } from "./policy.js";

interface Waiter {
  settle(outcome: Outcome): void;
  /** Resolves once settled. */
  done: Promise<void>;
}

export interface WaitOptions {
  signal?: AbortSignal | undefined;
  /** The outcome when `signal` aborts (also when it already has: then nothing is published). */
  aborted: () => Outcome;
  /** Without a timeout here, the publish's own timeout must settle it. */
  timeoutMs?: number;
  timedOut?: () => Outcome;
}

export class AckWaiters<C extends object> {
  readonly #byConnection = new Map<C, Set<Waiter>>();

  /** Runs `publish` on `connection` and resolves with the first outcome. Never rejects. */
  wait(connection: C, publish: (settle: (outcome: Outcome) => void) => void, options: WaitOptions): Promise<Outcome> {
    const { signal } = options;
    return new Promise<Outcome>((resolve) => {
      let waiters = this.#byConnection.get(connection);
      if (waiters === undefined) {
        waiters = new Set();
        this.#byConnection.set(connection, waiters);
      }
      const set = waiters;
      let settled: () => void = () => undefined;
      let timer: NodeJS.Timeout | undefined;
      const waiter: Waiter = {
        done: new Promise<void>((r) => {
          settled = r;
        }),
        settle: (outcome) => {
          if (!set.delete(waiter)) return;
          clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
          settled();
          resolve(outcome);
        },
      };
      const onAbort = () => waiter.settle(options.aborted());
      const { timeoutMs, timedOut } = options;
      if (timeoutMs !== undefined && timedOut !== undefined) {
        timer = setTimeout(() => waiter.settle(timedOut()), timeoutMs);
      }
      set.add(waiter);
      if (signal?.aborted) {
        onAbort();
        return;
      }
      signal?.addEventListener("abort", onAbort, { once: true });
      publish(waiter.settle);
    });
  }

  /** The connection went away: everything waiting on it settles with `outcome()`. */
  lost(connection: C, outcome: () => Outcome): void {
    const waiters = this.#byConnection.get(connection);
    this.#byConnection.delete(connection);
    for (const w of [...(waiters ?? [])]) w.settle(outcome());
  }

  /** Resolves once everything waiting on `connection` has settled. */
  async drained(connection: C | undefined): Promise<void> {
    if (connection === undefined) return;
    await Promise.all([...(this.#byConnection.get(connection) ?? [])].map((w) => w.done));
  }
}
