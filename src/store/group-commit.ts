/**
 * Group commit. Durability (invariant 1): commit() resolves only after the SQLite
 * transaction holding the batch committed with synchronous=FULL. Batches arriving within
 * `outbox.commit_delay` (or until GROUP_MAX_EVENTS are queued) share ONE transaction, so
 * one fsync covers many callers. After a large group the next one is gathered in the same
 * event-loop turn instead: its callers are already waiting.
 *
 * All or nothing (invariant 7): a group the outbox refuses (refusal.ts) stores nothing; a
 * batch whose rule state was discarded meanwhile (CommitOptions.valid) is rejected alone;
 * one bad batch (a duplicate event id, a body that is not JSON) fails alone, the others of
 * its group are committed one by one.
 */
import type { Clock, TimerHandle } from "../clock.js";
import type { CommitBatch } from "../events.js";
import type { Logger } from "../ops/logger.js";
import { OutboxRefusedError, type Refusal } from "./refusal.js";
import type { CommitResult } from "./types.js";

/** A group is committed at once when this many events are queued. */
export const GROUP_MAX_EVENTS = 5000;
/** A group this large means callers are queueing: the next one gathers without waiting commit_delay. */
const BUSY_GROUP = 64;

/** A batch computed from rule-engine memory that was discarded (see CommitOptions.valid). */
export class StaleBatchError extends Error {
  readonly code = "EDGEHOOK_STALE_BATCH";
  constructor() {
    super("batch computed from discarded rule state; not stored");
  }
}

export interface CommitOptions {
  /**
   * Checked when the group is written: false rejects the batch (StaleBatchError) without
   * storing it. The agent uses it so a batch the rule engine produced before it was
   * rebuilt after a refused commit cannot store state derived from the refused one.
   */
  valid?: () => boolean;
}

interface Waiter {
  batch: CommitBatch;
  valid: (() => boolean) | undefined;
  resolve: (r: CommitResult) => void;
  reject: (err: unknown) => void;
}

export class GroupCommit {
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #delayMs: number;
  readonly #refusal: () => Refusal | undefined;
  readonly #write: (batches: CommitBatch[]) => CommitResult[];
  #queue: Waiter[] = [];
  #queuedEvents = 0;
  #lastGroupSize = 0;
  #timer: TimerHandle | undefined;
  #immediate: NodeJS.Immediate | undefined;

  /**
   * `refusal` is asked before each group is written; `write` stores batches in one
   * transaction, all or none (enqueue.ts).
   */
  constructor(options: {
    clock: Clock;
    logger: Logger;
    commitDelayMs: number;
    refusal: () => Refusal | undefined;
    write: (batches: CommitBatch[]) => CommitResult[];
  }) {
    this.#clock = options.clock;
    this.#log = options.logger;
    this.#delayMs = options.commitDelayMs;
    this.#refusal = options.refusal;
    this.#write = options.write;
  }

  /** Queues the batch for the next group; resolves once that group committed. */
  commit(batch: CommitBatch, options: CommitOptions): Promise<CommitResult> {
    return new Promise<CommitResult>((resolve, reject) => {
      this.#queue.push({ batch, valid: options.valid, resolve, reject });
      this.#queuedEvents += batch.events.length;
      if (this.#queuedEvents >= GROUP_MAX_EVENTS) {
        this.flush();
      } else if (!this.#timer && !this.#immediate) {
        // Under load the callers of the last group commit again as soon as it resolved,
        // all within the same turn: gathering them needs no extra wait.
        if (this.#delayMs > 0 && this.#lastGroupSize < BUSY_GROUP) {
          this.#timer = this.#clock.setTimeout(() => {
            this.#timer = undefined;
            this.flush();
          }, this.#delayMs);
          // Not unref'd: queued batches are work the process must finish before it may exit.
        } else {
          this.#immediate = setImmediate(() => {
            this.#immediate = undefined;
            this.flush();
          });
        }
      }
    });
  }

  /** Commits every queued batch now, in one transaction. */
  flush(): void {
    if (this.#timer) {
      this.#clock.clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    if (this.#immediate) {
      clearImmediate(this.#immediate);
      this.#immediate = undefined;
    }
    let group = this.#queue;
    this.#queue = [];
    this.#queuedEvents = 0;
    this.#lastGroupSize = group.length;
    if (group.length === 0) return;
    const stale = group.filter((w) => w.valid?.() === false);
    if (stale.length > 0) {
      for (const w of stale) w.reject(new StaleBatchError());
      group = group.filter((w) => !stale.includes(w));
      if (group.length === 0) return;
    }
    // All or nothing (invariant 7): a refused group stores neither its events nor the rule
    // states and message keys that came with them, so the source must not acknowledge.
    let refusal: Refusal | undefined;
    try {
      refusal = this.#refusal();
    } catch (err) {
      for (const w of group) w.reject(err);
      return;
    }
    if (refusal) {
      const err = new OutboxRefusedError(refusal);
      for (const w of group) w.reject(err);
      return;
    }
    let results: CommitResult[];
    try {
      results = this.#write(group.map((w) => w.batch));
    } catch (err) {
      if (!isBatchSpecific(err)) {
        // The database itself failed (busy, I/O, full): retrying each batch would only
        // repeat the wait. Nothing was stored; callers must not acknowledge.
        this.#log.error({ err, batches: group.length }, "outbox commit failed; the batches were not stored");
        for (const w of group) w.reject(err);
        return;
      }
      // One bad batch (a duplicate event id, a body that is not JSON) must not fail the others.
      this.#log.warn({ err, batches: group.length }, "group commit failed; committing batches one by one");
      for (const w of group) {
        try {
          const [r] = this.#write([w.batch]);
          w.resolve(r as CommitResult);
        } catch (e) {
          w.reject(e);
        }
      }
      return;
    }
    group.forEach((w, i) => {
      w.resolve(results[i] as CommitResult);
    });
  }
}

/** Errors caused by one batch's content rather than by the database. */
function isBatchSpecific(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  if (typeof code === "string" && code.startsWith("SQLITE_")) return code.startsWith("SQLITE_CONSTRAINT");
  return true; // e.g. TypeError from JSON.stringify of a body
}
