/**
 * The durable outbox: events stored once, one delivery row per (event, destination),
 * drained by the dispatcher head-of-series first.
 *
 * Durability (invariant 1): commit() resolves only after the SQLite transaction holding
 * the batch committed with synchronous=FULL. Batches arriving within
 * `outbox.commit_delay` (or until GROUP_MAX_EVENTS are queued) share ONE transaction,
 * so one fsync covers many callers (group commit). After a large group the next one
 * is gathered in the same event-loop turn instead: its callers are already waiting.
 * An event without destinations is not stored (nothing to deliver); the rule states of
 * its batch are.
 *
 * Order (invariant 5): within one (destination, series) the delivery with the lowest
 * id that is still pending is the series "head" (is_head = 1, at most one, enforced by
 * a unique partial index). Only heads are handed out; a head in backoff blocks its
 * series, other series go on. Heads are maintained on enqueue, settle, drop, expiry and
 * replay, so next() reads a small index instead of scanning the backlog.
 *
 * Limits and what happens when one is reached (invariant 6) — the stated policy:
 *
 * - max_age (destination max_age, else outbox.max_age): a pending delivery older than
 *   this (by created_at) becomes dead with reason `expired`, counted as
 *   drops{reason="expired"}. Runs in maintain().
 * - max_events (stored events; one event sent to two destinations counts once) and max_bytes (body bytes plus a fixed allowance per
 *   event and per delivery for columns and indexes, see EVENT_OVERHEAD): checked after
 *   every committed batch against in-memory counters, and in maintain(). When over:
 *     1. delivered rows are pruned, oldest settled first (not counted as drops);
 *     2. dead rows are pruned, oldest settled first (drops{reason="dead_pruned"});
 *     3. pending deliveries are dropped, LOWEST priority first and oldest first
 *        within it (drops{reason="max_events"|"max_bytes"}).
 *   Every drop is counted (drops{reason, destination}) and logged: the first after a quiet
 *   spell at once, then one summary a minute ("dropped N since the last report", by reason
 *   and destination, saying what to do) and the rest at close; no count is lost to a rate
 *   limit (invariant 7). At most
 *   MAINTAIN_MAX_ROWS rows go per commit or pass, so a limit lowered on a full outbox is
 *   reached over a few passes (maintain() says `more`) rather than in one long block.
 *   That is `when_full: drop_oldest` (the default). With `when_full: block` step 3 never
 *   happens: once a limit is reached (after steps 1 and 2), commit() refuses new groups
 *   (OutboxRefusedError, EDGEHOOK_OUTBOX_FULL) until deliveries settle and make room. A
 *   group admitted just under the limit is stored whole, so the limit can be passed by
 *   one group.
 * - min_free_disk: while free space on the data directory's filesystem is under it,
 *   commit() refuses whole groups (OutboxRefusedError, EDGEHOOK_DISK_FLOOR): neither
 *   their events nor the rule states and message keys that came with them are stored, so
 *   an alert is never half done (invariant 7). refusal() says so before any work is done;
 *   it is logged when it starts and ends, and shown by edgehook_outbox_refusing.
 * - keep_delivered: delivered rows are pruned this long after delivery; dead rows are
 *   pruned outbox.max_age after they died. Runs in maintain(), at most
 *   MAINTAIN_MAX_ROWS rows per pass so one pass never blocks the event loop for long.
 *
 * Damage (invariant 7, and a worn SD card): a SQLITE_CORRUPT/NOTADB/IOERR met while
 * running is recorded once (`damage`, logged fatal with what to do); from then on
 * refusal() refuses new events and the agent's /healthz fails, so systemd restarts it and
 * openDatabase() salvages the readable rows into a fresh file (db.ts, salvage.ts).
 *
 * Memory does not grow with the backlog: counts live in the `counts`/`totals` tables,
 * updated in the same transactions as the rows, recounted from the rows when the agent
 * opens the outbox, and mirrored in memory, so limits never need COUNT(*) per commit;
 * no query loads more than a bounded batch of rows.
 *
 * Another process (`edgehook queue ...`) may open the same file while the agent runs
 * (WAL); PRAGMA data_version tells us when it changed something, and the in-memory
 * mirror of the counters is then reloaded.
 */
import { statfsSync, statSync } from "node:fs";
import { dirname } from "node:path";
import type { Database } from "better-sqlite3";
import type { Clock, TimerHandle } from "../clock.js";
import type { OutboxConfig } from "../config/schema.js";
import { EdgehookError } from "../errors.js";
import type { CommitBatch, SeriesStateRow } from "../events.js";
import { type DropSummary, DropTally, describeDrops } from "../ops/drops.js";
import type { Logger } from "../ops/logger.js";
import type { Metrics } from "../ops/metrics.js";
import type { SessionRecord } from "../sources/reading.js";
import { openDatabase } from "./db.js";
import { MessageKeyStore, RELEASE_DELAY_MS } from "./message-keys.js";
import type {
  AttemptRecord,
  CommitResult,
  Delivery,
  DeliveryListing,
  DeliveryState,
  DestinationFlag,
  DestinationStats,
  EventDetail,
  MaintainResult,
  OutboxReader,
  PurgeRequest,
  ReplayTarget,
  Settlement,
} from "./types.js";

/** Bytes counted per stored event on top of its body (row, id index). */
export const EVENT_OVERHEAD = 160;
/** Bytes counted per delivery row (row and its index entries). */
export const DELIVERY_OVERHEAD = 200;
/** A group is committed at once when this many events are queued. */
export const GROUP_MAX_EVENTS = 5000;
/** A group this large means callers are queueing: the next one gathers without waiting commit_delay. */
const BUSY_GROUP = 64;
/** Attempts kept per delivery for `queue show`. */
export const HISTORY_LENGTH = 10;
/** Rows handled per transaction by maintenance, replay and purge. */
const BATCH_ROWS = 5000;
/** Rows pruned/expired per maintain() pass. */
export const MAINTAIN_MAX_ROWS = 20_000;
/** How long a free-disk reading is trusted. */
const DISK_CHECK_MS = 1000;
/** when_full: block: once full, new events are taken again below this share of both limits. */
const FULL_RESUME = 0.9;
/** Drops are logged as one summary at most this often ("dropped N since the last report"). */
export const DROP_REPORT_MS = 60_000;

/**
 * next_at of a delivery that has not been tried yet: due whatever the wall clock says,
 * so a clock stepped backwards (NTP after a boot without RTC) never holds back new events.
 */
const DUE_NOW = 0;
const PENDING = 0;
const DELIVERED = 1;
const DEAD = 2;
const STATE_NAMES: readonly DeliveryState[] = ["pending", "delivered", "dead"];
const STATE_CODES: Record<DeliveryState, number> = { pending: PENDING, delivered: DELIVERED, dead: DEAD };

/** The `outbox` settings; `when_full` defaults to drop_oldest. */
export type OutboxLimits = Omit<OutboxConfig, "when_full"> & { when_full?: OutboxConfig["when_full"] };

/** Why the outbox stores nothing new right now (see Outbox.refusal). */
export interface Refusal {
  /**
   * `disk_floor`: free disk under min_free_disk; `full`: max_events/max_bytes reached with
   * when_full: block; `damaged`: the database failed while running (see Outbox.damage).
   */
  reason: "disk_floor" | "full" | "damaged";
  /** Epoch ms since when it refuses. */
  since: number;
  /** For the operator: what is short and what to do. */
  detail: string;
}

/**
 * A commit the outbox refused as a whole (nothing of it stored): the disk floor, or a full
 * outbox under `when_full: block`. Sources keep the readings unacknowledged and offer
 * them again; nothing is dropped.
 */
export class OutboxRefusedError extends EdgehookError {
  readonly refusal: Refusal;
  constructor(refusal: Refusal) {
    super(refusalCode(refusal.reason), `outbox refuses new events (${refusal.reason}): ${refusal.detail}`);
    this.refusal = refusal;
  }
}

function refusalCode(
  reason: Refusal["reason"],
): "EDGEHOOK_DISK_FLOOR" | "EDGEHOOK_OUTBOX_FULL" | "EDGEHOOK_DB_CORRUPT" {
  return reason === "disk_floor"
    ? "EDGEHOOK_DISK_FLOOR"
    : reason === "full"
      ? "EDGEHOOK_OUTBOX_FULL"
      : "EDGEHOOK_DB_CORRUPT";
}

/**
 * Which better-sqlite3 error codes mean the file cannot be trusted: SQLITE_CORRUPT and
 * SQLITE_NOTADB (`corrupt`), SQLITE_IOERR (`io_error`), with any extended code
 * (SQLITE_CORRUPT_INDEX, SQLITE_IOERR_WRITE, ...). Busy, full or constraint errors do not.
 */
export function damageKind(code: string): Damage["kind"] | undefined {
  if (code.startsWith("SQLITE_CORRUPT") || code.startsWith("SQLITE_NOTADB")) return "corrupt";
  if (code.startsWith("SQLITE_IOERR")) return "io_error";
  return undefined;
}

/** The database failed while running: SQLITE_CORRUPT/NOTADB (`corrupt`) or SQLITE_IOERR (`io_error`). */
export interface Damage {
  kind: "corrupt" | "io_error";
  /** The SQLite error code, extended where SQLite gave one (SQLITE_IOERR_WRITE, ...). */
  sqliteCode: string;
  message: string;
  /** Epoch ms when it was first seen. */
  since: number;
}

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

export interface OutboxOptions {
  /** Path of the SQLite file (`<data_dir>/outbox.db`). */
  file: string;
  limits: OutboxLimits;
  clock: Clock;
  logger: Logger;
  metrics: Metrics;
  /** Per-destination max_age (ms) overriding limits.max_age. */
  destinationMaxAge?: Readonly<Record<string, number>>;
  /**
   * Run the integrity check on open and move a damaged file aside (default true).
   * `edgehook queue` passes false: only the agent may move the database.
   */
  check?: boolean;
}

interface Waiter {
  batch: CommitBatch;
  valid: (() => boolean) | undefined;
  resolve: (r: CommitResult) => void;
  reject: (err: unknown) => void;
}

/** Changes made by one transaction, applied to the counters when it committed. */
class Delta {
  readonly counts = new Map<string, { destination: string; state: number; n: number }>();
  events = 0;
  bytes = 0;
  readonly drops: Record<string, number> = {};
  /** The same drops per destination: `reason\u0000destination` → n. */
  readonly dropsAt = new Map<string, number>();
  count(destination: string, state: number, n: number): void {
    const key = `${destination}\u0000${state}`;
    const c = this.counts.get(key);
    if (c) c.n += n;
    else this.counts.set(key, { destination, state, n });
  }
  drop(reason: string, destination: string, n: number): void {
    if (!(n > 0)) return;
    this.drops[reason] = (this.drops[reason] ?? 0) + n;
    const key = `${reason}\u0000${destination}`;
    this.dropsAt.set(key, (this.dropsAt.get(key) ?? 0) + n);
  }
}

interface DeliveryRow {
  id: number;
  event_id: string;
  destination: string;
  series: string;
  type: string;
  priority: number;
  state: number;
  attempts: number;
  created_at: number;
  next_at: number;
  settled_at: number | null;
  last_status: number | null;
  last_error: string | null;
  reason: string | null;
}

const LISTING_COLUMNS = `d.id, e.id AS event_id, d.destination, d.series, e.type, d.priority, d.state, d.attempts,
  d.created_at, d.next_at, d.settled_at, d.last_status, d.last_error, d.reason`;

function prepareAll(db: Database) {
  return {
    insertEvent: db.prepare(
      `INSERT INTO events (id, type, rule, series, severity, priority, created_at, size, body)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ),
    insertDelivery: db.prepare(
      `INSERT INTO deliveries (event_seq, destination, series, priority, created_at, is_head, next_at)
       VALUES (?, ?, ?, ?, ?, ?, ?)`,
    ),
    hasPending: db
      .prepare("SELECT 1 FROM deliveries WHERE destination = ? AND series = ? AND state = 0 LIMIT 1")
      .pluck(),
    firstPending: db
      .prepare("SELECT id FROM deliveries WHERE destination = ? AND series = ? AND state = 0 ORDER BY id LIMIT 1")
      .pluck(),
    headOf: db.prepare("SELECT id FROM deliveries WHERE destination = ? AND series = ? AND is_head = 1").pluck(),
    setHead: db.prepare("UPDATE deliveries SET is_head = ? WHERE id = ?"),
    upsertState: db.prepare(
      `INSERT INTO series_state (rule, series, version, state) VALUES (?, ?, ?, ?)
       ON CONFLICT (rule, series) DO UPDATE SET version = excluded.version, state = excluded.state`,
    ),
    deleteState: db.prepare("DELETE FROM series_state WHERE rule = ? AND series = ?"),
    unsentEvent: db.prepare(
      `SELECT seq, size, length(body) AS len, body FROM events e WHERE id = ?
         AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.history IS NOT NULL)`,
    ),
    replaceBody: db.prepare("UPDATE events SET body = ?, size = ? WHERE seq = ?"),
    loadStates: db.prepare("SELECT rule, series, version, state FROM series_state"),
    // Walks the heads in priority/id order and stops after LIMIT due ones; without the
    // hint SQLite prefers the next_at index and sorts every due head (10,000 series).
    // Bodies are read only for the heads handed out (eventOf): most heads a busy lane sees
    // are in flight and skipped.
    next: db.prepare(
      `SELECT d.id, d.event_seq, d.destination, d.series, d.priority, d.attempts, d.created_at, d.next_at
       FROM deliveries d INDEXED BY deliveries_next_heads
       WHERE d.destination = ? AND d.is_head = 1 AND d.next_at <= ?
       ORDER BY d.priority DESC, d.id LIMIT ?`,
    ),
    eventOf: db.prepare("SELECT id, type, body FROM events WHERE seq = ?"),
    nextDueAt: db.prepare("SELECT MIN(next_at) FROM deliveries WHERE destination = ? AND is_head = 1").pluck(),
    // The pending delivery of a series after a given one (deliveries_pending_by_series).
    nextInSeries: db.prepare(
      `SELECT id, event_seq, destination, series, priority, attempts, created_at, next_at FROM deliveries
       WHERE destination = ? AND series = ? AND state = 0 AND id > ? ORDER BY id LIMIT 1`,
    ),
    // Only heads are ever retried, so only heads can wait (deliveries_next_due).
    retryNow: db.prepare("UPDATE deliveries SET next_at = ? WHERE destination = ? AND is_head = 1 AND next_at > ?"),
    oldestPending: db.prepare("SELECT MIN(created_at) FROM deliveries WHERE destination = ? AND is_head = 1").pluck(),
    forSettle: db.prepare("SELECT destination, series, state, history FROM deliveries WHERE id = ?"),
    markSettled: db.prepare(
      `UPDATE deliveries SET state = ?, is_head = 0, settled_at = ?, attempts = attempts + ?, last_status = ?,
         last_error = ?, reason = ?, history = ? WHERE id = ?`,
    ),
    markRetry: db.prepare(
      `UPDATE deliveries SET next_at = ?, attempts = attempts + ?, last_status = ?, last_error = ?, history = ?
       WHERE id = ?`,
    ),
    counts: db.prepare("SELECT destination, state, n FROM counts"),
    totals: db.prepare("SELECT key, value FROM totals"),
    addCount: db.prepare(
      `INSERT INTO counts (destination, state, n) VALUES (?, ?, ?)
       ON CONFLICT (destination, state) DO UPDATE SET n = n + excluded.n`,
    ),
    addTotal: db.prepare("UPDATE totals SET value = value + ? WHERE key = ?"),
    dataVersion: db.prepare("PRAGMA data_version").pluck(),
    // Pruning settled rows: oldest settled first. The `state <> 0` term lets SQLite use the partial index.
    settledBefore: db.prepare(
      `SELECT id, event_seq, destination FROM deliveries
       WHERE state <> 0 AND state = ? AND settled_at < ? ORDER BY settled_at LIMIT ?`,
    ),
    deleteDelivery: db.prepare("DELETE FROM deliveries WHERE id = ?"),
    deleteOrphanEvent: db
      .prepare(
        "DELETE FROM events WHERE seq = ? AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_seq = ?) RETURNING size",
      )
      .pluck(),
    priorityAbove: db
      .prepare("SELECT priority FROM deliveries WHERE state = 0 AND priority > ? ORDER BY priority LIMIT 1")
      .pluck(),
    expiring: db.prepare(
      `SELECT id, series FROM deliveries
       WHERE state = 0 AND priority = ? AND destination = ? AND created_at < ? LIMIT ?`,
    ),
    markExpired: db.prepare(
      "UPDATE deliveries SET state = 2, is_head = 0, settled_at = ?, reason = 'expired' WHERE id = ?",
    ),
    oldestOfPriority: db.prepare(
      `SELECT id, event_seq, destination, series, is_head, created_at FROM deliveries
       WHERE state = 0 AND priority = ? AND destination = ? ORDER BY created_at LIMIT ?`,
    ),
    setFlag: db.prepare(
      `INSERT INTO destination_flags (name, disabled, reason, since) VALUES (?, ?, ?, ?)
       ON CONFLICT (name) DO UPDATE SET disabled = excluded.disabled, reason = excluded.reason, since = excluded.since`,
    ),
    flags: db.prepare("SELECT name, disabled, reason, since FROM destination_flags"),
    list: db.prepare(
      `SELECT ${LISTING_COLUMNS} FROM deliveries d JOIN events e ON e.seq = d.event_seq
       WHERE (@state IS NULL OR d.state = @state) AND (@destination IS NULL OR d.destination = @destination)
       ORDER BY d.id DESC LIMIT @limit`,
    ),
    // Delivered or dead rows, most recently settled first, through the prune index (a
    // few dead rows among a million delivered ones are found without a scan).
    listSettled: db.prepare(
      `SELECT ${LISTING_COLUMNS} FROM deliveries d INDEXED BY deliveries_prune_settled
       JOIN events e ON e.seq = d.event_seq
       WHERE d.state <> 0 AND d.state = @state AND (@destination IS NULL OR d.destination = @destination)
       ORDER BY d.state DESC, d.settled_at DESC LIMIT @limit`,
    ),
    eventById: db.prepare(
      "SELECT seq, id, type, rule, series, severity, priority, created_at, body FROM events WHERE id = ?",
    ),
    deliveriesOfEvent: db.prepare(
      `SELECT ${LISTING_COLUMNS}, d.history FROM deliveries d JOIN events e ON e.seq = d.event_seq
       WHERE d.event_seq = ? ORDER BY d.id`,
    ),
    settledOfEvent: db.prepare(
      "SELECT id, destination, series, state FROM deliveries WHERE event_seq = ? AND state <> 0",
    ),
    deadOf: db.prepare(
      `SELECT id, destination, series, state FROM deliveries
       WHERE state <> 0 AND state = 2 AND destination = ? LIMIT ?`,
    ),
    markReplayed: db.prepare(
      `UPDATE deliveries SET state = 0, is_head = 0, attempts = 0, next_at = ?, settled_at = NULL, reason = NULL
       WHERE id = ?`,
    ),
  };
}

type Statements = ReturnType<typeof prepareAll>;

export class Outbox implements OutboxReader {
  readonly #file: string;
  readonly #limits: OutboxLimits;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #metrics: Metrics;
  readonly #check: boolean;
  #maxAge: Readonly<Record<string, number>>;
  #db: Database | undefined;
  #statements: Statements | undefined;
  #tx!: (fn: () => unknown) => unknown;

  #queue: Waiter[] = [];
  #queuedEvents = 0;
  #lastGroupSize = 0;
  #timer: TimerHandle | undefined;
  #immediate: NodeJS.Immediate | undefined;

  /** Mirror of the `counts` table: destination → [pending, delivered, dead]. */
  #counts = new Map<string, [number, number, number]>();
  #events = 0;
  #bytes = 0;
  #dataVersion = 0;
  #transactions = 0;

  #diskCheckedAt = Number.NEGATIVE_INFINITY;
  #diskFree: number | undefined;
  #roomCheckedAt = Number.NEGATIVE_INFINITY;
  #refusing: Refusal | undefined;
  #damage: Damage | undefined;
  readonly #drops: DropTally;
  /** Keys of committed MQTT messages the broker may still redeliver (message-keys.ts). */
  #messageKeys: MessageKeyStore | undefined;
  #releaseTimer: TimerHandle | undefined;

  constructor(options: OutboxOptions) {
    this.#file = options.file;
    this.#limits = options.limits;
    this.#clock = options.clock;
    this.#log = options.logger;
    this.#metrics = options.metrics;
    this.#check = options.check ?? true;
    this.#maxAge = options.destinationMaxAge ?? {};
    this.#drops = new DropTally(
      DROP_REPORT_MS,
      () => options.clock.monotonic(),
      (s) => this.#logDrops(s),
    );
  }

  /** The prepared statements; using them on a closed outbox is a programming error. */
  get #s(): Statements {
    if (!this.#statements) throw new Error("outbox is not open");
    return this.#statements;
  }

  // ------------------------------------------------------------ lifecycle

  open(): void {
    if (this.#db) return;
    validateOptions(this.#file, this.#limits, this.#maxAge);
    const db = openDatabase(this.#file, { logger: this.#log, check: this.#check, now: () => this.#clock.now() });
    this.#db = db;
    this.#statements = prepareAll(db);
    this.#messageKeys = new MessageKeyStore(db);
    const tx = db.transaction((fn: () => unknown) => fn());
    // IMMEDIATE takes the write lock up front, so busy_timeout applies instead of a
    // deferred read turning into SQLITE_BUSY when another process writes.
    this.#tx = (fn) => tx.immediate(fn);
    // The agent recounts at start (one pass, like the integrity check before it), so a
    // counter that ever drifted cannot bend the limits for the rest of the run.
    if (this.#check) this.#recount();
    this.#loadCounters();
  }

  /** Commits what is queued, reports drops not yet logged, then closes the database. Safe to call twice. */
  close(): void {
    if (!this.#db) return;
    this.flush();
    this.#writeReleasedKeys();
    this.#drops.flush();
    // No PRAGMA optimize/ANALYZE: every query is written for a named index, and planner
    // statistics gathered on a small outbox could steer it wrong on a large one.
    this.#db.close();
    this.#db = undefined;
    this.#statements = undefined;
    this.#messageKeys = undefined;
  }

  get isOpen(): boolean {
    return this.#db !== undefined;
  }

  /**
   * Changes whenever another connection (`edgehook queue replay`, `destination enable`)
   * committed to the file (PRAGMA data_version); our own commits leave it as it is.
   */
  dataVersion(): number {
    return this.#s.dataVersion.get() as number;
  }

  /** Destination max_age overrides after a config reload. */
  setDestinationMaxAge(maxAge: Readonly<Record<string, number>>): void {
    validateOptions(this.#file, this.#limits, maxAge);
    this.#maxAge = maxAge;
  }

  /** Transactions committed since open (group commit makes this much less than commit() calls). */
  get transactionCount(): number {
    return this.#transactions;
  }

  // ------------------------------------------------------------ commit (group commit)

  /**
   * Stores the batch's events (one delivery per destination) and rule states atomically.
   * Resolves once the transaction carrying it committed durably; rejects if that
   * transaction failed (then nothing of the batch is stored: do not acknowledge it).
   * The group waits commit_delay on the injected clock: with a FakeClock advance it,
   * call flush(), or use commit_delay 0 (the next turn of the event loop).
   */
  commit(batch: CommitBatch, options: CommitOptions = {}): Promise<CommitResult> {
    if (!this.#db) return Promise.reject(new Error("outbox is not open"));
    return new Promise<CommitResult>((resolve, reject) => {
      this.#queue.push({ batch, valid: options.valid, resolve, reject });
      this.#queuedEvents += batch.events.length;
      if (this.#queuedEvents >= GROUP_MAX_EVENTS) {
        this.flush();
      } else if (!this.#timer && !this.#immediate) {
        // Under load the callers of the last group commit again as soon as it resolved,
        // all within the same turn: gathering them needs no extra wait.
        if (this.#limits.commit_delay > 0 && this.#lastGroupSize < BUSY_GROUP) {
          this.#timer = this.#clock.setTimeout(() => {
            this.#timer = undefined;
            this.flush();
          }, this.#limits.commit_delay);
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
      refusal = this.refusal();
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
      results = this.#commitGroup(group.map((w) => w.batch));
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
          const [r] = this.#commitGroup([w.batch]);
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

  #commitGroup(batches: CommitBatch[]): CommitResult[] {
    return this.#write((delta) => {
      // Per transaction: does (destination, series) already have a pending row?
      const memo = new Map<string, boolean>();
      return batches.map((b) => this.#commitBatch(b, delta, memo));
    });
  }

  #commitBatch(b: CommitBatch, delta: Delta, memo: Map<string, boolean>): CommitResult {
    const s = this.#s;
    for (const st of b.states) s.upsertState.run(st.rule, st.series, st.version, JSON.stringify(st.state) ?? "null");
    for (const r of b.removedStates) s.deleteState.run(r.rule, r.series);
    if (b.messageKeys) this.#messageKeys?.insert(b.messageKeys);
    const dropped: Record<string, number> = {};
    for (const e of b.events) {
      const destinations = new Set(e.destinations);
      if (destinations.size === 0) continue;
      const body = Buffer.from(JSON.stringify(e.body));
      const size = body.length + EVENT_OVERHEAD + DELIVERY_OVERHEAD * destinations.size;
      const seq = s.insertEvent.run(
        e.id,
        e.type,
        e.rule,
        e.series,
        e.severity,
        e.priority,
        e.createdAt,
        size,
        body,
      ).lastInsertRowid;
      for (const d of destinations) {
        const key = `${d}\u0000${e.series}`;
        let hasPending = memo.get(key);
        if (hasPending === undefined) hasPending = s.hasPending.get(d, e.series) !== undefined;
        s.insertDelivery.run(seq, d, e.series, e.priority, e.createdAt, hasPending ? 0 : 1, DUE_NOW);
        memo.set(key, true);
        delta.count(d, PENDING, 1);
      }
      delta.events++;
      delta.bytes += size;
    }
    if (this.#overLimit(delta)) {
      const before = { ...delta.drops };
      this.#enforceLimits(delta);
      for (const [reason, n] of Object.entries(delta.drops)) {
        const added = n - (before[reason] ?? 0);
        if (added > 0) dropped[reason] = added;
      }
      // Drops may have emptied a series: its next row must become head again.
      memo.clear();
    }
    return { accepted: b.events.length, dropped };
  }

  // ------------------------------------------------------------ dispatcher side

  next(
    destination: string,
    now: number,
    limit: number,
    exclude: ReadonlySet<string>,
    after?: ReadonlyMap<string, number>,
  ): Delivery[] {
    if (limit <= 0 || !this.#db) return [];
    // Reads bodies from the file: where damage met while running shows first (#guard).
    return this.#guard(() => this.#next(destination, now, limit, exclude, after));
  }

  #next(
    destination: string,
    now: number,
    limit: number,
    exclude: ReadonlySet<string>,
    after?: ReadonlyMap<string, number>,
  ): Delivery[] {
    // In-flight rows are at most one per series and are heads, so limit + |exclude| is
    // enough; a series in `after` is replaced by its successor or skipped.
    const rows = this.#s.next.all(destination, now, limit + exclude.size + (after?.size ?? 0)) as NextRow[];
    const out: Delivery[] = [];
    for (const head of rows) {
      if (exclude.has(String(head.id)) || exclude.has(head.series)) continue;
      let r: NextRow | undefined = head;
      const settled = after?.get(head.series);
      if (settled !== undefined && head.id <= settled) {
        // The head's outcome is known to the caller but not written yet: the series goes
        // on with the first pending delivery after it, if that one is due.
        const succ = this.#s.nextInSeries.get(destination, head.series, settled) as NextRow | undefined;
        r = succ !== undefined && succ.next_at <= now ? succ : undefined;
      }
      if (r === undefined) continue;
      const e = this.#s.eventOf.get(r.event_seq) as { id: string; type: string; body: Buffer } | undefined;
      if (e === undefined) continue;
      out.push({
        id: r.id,
        eventId: e.id,
        destination: r.destination,
        series: r.series,
        type: e.type,
        priority: r.priority,
        attempts: r.attempts,
        createdAt: r.created_at,
        body: e.body,
      });
      if (out.length >= limit) break;
    }
    return out;
  }

  nextDueAt(destination: string): number | undefined {
    if (!this.#db) return undefined;
    const at = this.#guard(() => this.#s.nextDueAt.get(destination) as number | null);
    return at ?? undefined;
  }

  retryNow(destination: string, now: number): number {
    if (!this.#db) return 0;
    return this.#s.retryNow.run(now, destination, now).changes;
  }

  pendingCount(destination: string): number {
    if (!this.#db) return 0;
    this.#syncCounters();
    return this.#counts.get(destination)?.[0] ?? 0;
  }

  settle(settlements: Settlement[]): void {
    if (settlements.length === 0 || !this.#db) return;
    const s = this.#s;
    const now = this.#clock.now();
    this.#write((delta) => {
      for (const st of settlements) {
        const row = s.forSettle.get(st.id) as
          | { destination: string; series: string; state: number; history: string | null }
          | undefined;
        // Already settled, dropped or purged meanwhile: nothing to record.
        if (!row || row.state !== PENDING) continue;
        const history = appendHistory(row.history, st.attempt);
        const error = st.attempt.error === undefined ? null : clip(st.attempt.error);
        const status = st.attempt.status ?? null;
        if (st.outcome === "retry") {
          s.markRetry.run(st.nextAt, st.counted ? 1 : 0, status, error, history, st.id);
          continue;
        }
        const state = st.outcome === "delivered" ? DELIVERED : DEAD;
        const reason = st.outcome === "dead" ? clip(st.reason) : null;
        s.markSettled.run(state, now, 1, status, error, reason, history, st.id);
        delta.count(row.destination, PENDING, -1);
        delta.count(row.destination, state, 1);
        this.#fixHead(row.destination, row.series);
      }
    });
  }

  /** Makes the earliest pending row of (destination, series) its only head. */
  #fixHead(destination: string, series: string): void {
    const s = this.#s;
    const first = s.firstPending.get(destination, series) as number | undefined;
    const current = s.headOf.get(destination, series) as number | undefined;
    if (first === current) return;
    if (current !== undefined) s.setHead.run(0, current);
    if (first !== undefined) s.setHead.run(1, first);
  }

  // ------------------------------------------------------------ rule state

  loadStates(): SeriesStateRow[] {
    if (!this.#db) throw new Error("outbox is not open");
    const rows = this.#guard(() => this.#s.loadStates.all() as StateRow[]);
    const out: SeriesStateRow[] = [];
    for (const r of rows) {
      try {
        out.push({ rule: r.rule, series: r.series, version: r.version, state: JSON.parse(r.state) });
      } catch (err) {
        // One unreadable row must not stop the agent from starting: that series starts fresh.
        this.#log.warn(
          { err, rule: r.rule, series: r.series },
          "unreadable rule state skipped; the series starts fresh",
        );
      }
    }
    return out;
  }

  // ------------------------------------------------------------ destination flags

  setDestinationDisabled(name: string, reason: string): void {
    this.#s.setFlag.run(name, 1, clip(reason), this.#clock.now());
  }

  /** Re-enables a destination; false when it was not disabled. */
  enableDestination(name: string): boolean {
    const flag = this.destinationFlags()[name];
    if (!flag?.disabled) return false;
    this.#s.setFlag.run(name, 0, null, this.#clock.now());
    return true;
  }

  destinationFlags(): Record<string, DestinationFlag> {
    const out: Record<string, DestinationFlag> = {};
    for (const r of this.#s.flags.all() as {
      name: string;
      disabled: number;
      reason: string | null;
      since: number | null;
    }[]) {
      const flag: DestinationFlag = { disabled: r.disabled === 1 };
      if (r.reason !== null) flag.reason = r.reason;
      if (r.since !== null) flag.since = r.since;
      out[r.name] = flag;
    }
    return out;
  }

  // ------------------------------------------------------------ operator queries

  stats(): DestinationStats[] {
    this.#syncCounters();
    const now = this.#clock.now();
    const out: DestinationStats[] = [];
    for (const [destination, [pending, delivered, dead]] of [...this.#counts].sort(([a], [b]) => a.localeCompare(b))) {
      if (pending === 0 && delivered === 0 && dead === 0) continue;
      const oldest = pending > 0 ? (this.#s.oldestPending.get(destination) as number | null) : null;
      out.push({
        destination,
        pending,
        delivered,
        dead,
        oldestPendingAgeMs: oldest === null ? null : Math.max(0, now - oldest),
      });
    }
    return out;
  }

  /** Totals the limits are checked against. */
  totals(): { events: number; bytes: number; pending: number } {
    this.#syncCounters();
    let pending = 0;
    for (const [p] of this.#counts.values()) pending += p;
    return { events: this.#events, bytes: this.#bytes, pending };
  }

  list(query: { state?: DeliveryState; destination?: string; limit?: number } = {}): DeliveryListing[] {
    const state = query.state === undefined ? null : STATE_CODES[query.state];
    const stmt = state === null || state === PENDING ? this.#s.list : this.#s.listSettled;
    const rows = stmt.all({
      state,
      destination: query.destination ?? null,
      limit: query.limit ?? 50,
    }) as DeliveryRow[];
    return rows.map(toListing);
  }

  show(eventId: string): EventDetail | undefined {
    const e = this.#s.eventById.get(eventId) as
      | {
          seq: number;
          id: string;
          type: string;
          rule: string;
          series: string;
          severity: string;
          priority: number;
          created_at: number;
          body: Buffer;
        }
      | undefined;
    if (!e) return undefined;
    const deliveries = (this.#s.deliveriesOfEvent.all(e.seq) as (DeliveryRow & { history: string | null })[]).map(
      (r) => ({ ...toListing(r), history: parseHistory(r.history) }),
    );
    return {
      id: e.id,
      type: e.type,
      rule: e.rule,
      series: e.series,
      severity: e.severity,
      priority: e.priority,
      createdAt: e.created_at,
      body: e.body.toString("utf8"),
      deliveries,
    };
  }

  /**
   * Puts settled deliveries back to pending with their attempts reset. They keep their
   * place in their series: a replayed row older than the current head becomes the head.
   * Returns how many rows went back to pending.
   */
  replay(target: ReplayTarget): number {
    const s = this.#s;
    const requeue = (rows: { id: number; destination: string; series: string; state: number }[], delta: Delta) => {
      const series = new Map<string, [string, string]>();
      for (const r of rows) {
        s.markReplayed.run(DUE_NOW, r.id);
        delta.count(r.destination, r.state, -1);
        delta.count(r.destination, PENDING, 1);
        series.set(`${r.destination}\u0000${r.series}`, [r.destination, r.series]);
      }
      for (const [d, ser] of series.values()) this.#fixHead(d, ser);
    };
    if ("eventId" in target) {
      const e = s.eventById.get(target.eventId) as { seq: number } | undefined;
      if (!e) return 0;
      return this.#write((delta) => {
        const rows = s.settledOfEvent.all(e.seq) as {
          id: number;
          destination: string;
          series: string;
          state: number;
        }[];
        requeue(rows, delta);
        return rows.length;
      });
    }
    let total = 0;
    for (;;) {
      const n = this.#write((delta) => {
        const rows = s.deadOf.all(target.destination, BATCH_ROWS) as {
          id: number;
          destination: string;
          series: string;
          state: number;
        }[];
        requeue(rows, delta);
        return rows.length;
      });
      total += n;
      if (n < BATCH_ROWS) return total;
    }
  }

  /** Deletes settled rows older than the given age; returns how many deliveries went. */
  purge(request: PurgeRequest): number {
    const cutoff = this.#clock.now() - request.olderThanMs;
    let total = 0;
    for (const state of new Set(request.states)) {
      for (;;) {
        const n = this.#write((delta) => this.#deleteSettled(STATE_CODES[state], cutoff, BATCH_ROWS, delta));
        total += n;
        if (n < BATCH_ROWS) break;
      }
    }
    return total;
  }

  // ------------------------------------------------------------ maintenance

  /**
   * Prunes old settled rows, expires pending rows past max_age, enforces max_events and
   * max_bytes, and refreshes the outbox metrics. Call on a timer (e.g. every 30 s) and
   * again soon when the result says `more`.
   */
  /** The stored body of an event that no attempt has used yet, or undefined. */
  unsentBody(eventId: string): Buffer | undefined {
    const row = this.#s.unsentEvent.get(eventId) as { body: Buffer } | undefined;
    return row?.body;
  }

  /**
   * Replaces the stored bodies of events no attempt has used yet (the event-time
   * correction after the clock synchronised, see src/event-time.ts), in one
   * transaction. Returns how many were replaced.
   */
  rewriteUnsent(bodies: ReadonlyMap<string, Buffer>): number {
    if (bodies.size === 0) return 0;
    return this.#write((delta) => {
      let n = 0;
      for (const [id, body] of bodies) {
        const row = this.#s.unsentEvent.get(id) as { seq: number; size: number; len: number } | undefined;
        if (!row) continue;
        const size = row.size - row.len + body.length;
        this.#s.replaceBody.run(body, size, row.seq);
        delta.bytes += size - row.size;
        n++;
      }
      return n;
    });
  }

  // ------------------------------------------------------------ source message keys

  /** Keys of committed source messages not released (see CommitBatch.messageKeys, MessageLedger). */
  messageKeys(): string[] {
    return this.#messageKeys?.keys() ?? [];
  }

  /**
   * Forgets keys of messages that can no longer be redelivered. They are deleted by the
   * next transaction, whatever it is for, or within RELEASE_DELAY_MS.
   */
  releaseMessageKeys(keys: readonly string[]): void {
    if (!this.#messageKeys?.release(keys) || this.#releaseTimer) return;
    this.#releaseTimer = this.#clock.setTimeout(() => {
      this.#releaseTimer = undefined;
      this.#writeReleasedKeys();
    }, RELEASE_DELAY_MS);
  }

  /** What is remembered of a source session (e.g. an MQTT persistent session); undefined: never had one. */
  session(scope: string): SessionRecord | undefined {
    return this.#messageKeys?.session(scope);
  }

  rememberSession(scope: string, record: SessionRecord): void {
    const keys = this.#messageKeys;
    if (keys) this.#write(() => keys.rememberSession(scope, record, this.#clock.now()));
  }

  #writeReleasedKeys(): void {
    if (this.#releaseTimer) {
      this.#clock.clearTimeout(this.#releaseTimer);
      this.#releaseTimer = undefined;
    }
    if (!this.#db || !this.#messageKeys?.owed) return;
    try {
      this.#write(() => undefined);
    } catch (err) {
      // They stay released in memory and are deleted with a later transaction.
      this.#log.warn({ err }, "could not delete released message keys");
    }
  }

  maintain(): MaintainResult {
    const result: MaintainResult = { pruned: 0, expired: 0, dropped: {}, more: false };
    if (!this.#db) return result;
    this.#syncCounters();
    const now = this.#clock.now();
    let budget = MAINTAIN_MAX_ROWS;
    const prune = (state: number, cutoff: number) => {
      while (budget > 0) {
        const n = this.#write((delta) => this.#deleteSettled(state, cutoff, Math.min(BATCH_ROWS, budget), delta));
        result.pruned += n;
        budget -= n;
        if (n === 0) return;
      }
      result.more = true;
    };
    prune(DELIVERED, now - this.#limits.keep_delivered);
    prune(DEAD, now - this.#limits.max_age);
    if (budget > 0) {
      const { expired, more } = this.#expire(now, budget);
      result.expired = expired;
      result.more ||= more;
    } else {
      result.more = true;
    }
    if (this.#overLimit()) {
      const { drops, over } = this.#write((delta) => {
        const stillOver = this.#enforceLimits(delta);
        return { drops: { ...delta.drops }, over: stillOver };
      });
      result.dropped = drops;
      result.more ||= over;
    }
    this.#updateMetrics();
    this.#drops.poll();
    return result;
  }

  #expire(now: number, budget: number): { expired: number; more: boolean } {
    const s = this.#s;
    let expired = 0;
    const destinations = [...this.#counts].filter(([, c]) => c[0] > 0).map(([d]) => d);
    for (const destination of destinations) {
      const cutoff = now - (this.#maxAge[destination] ?? this.#limits.max_age);
      let priority = Number.MIN_SAFE_INTEGER;
      for (;;) {
        const p = s.priorityAbove.get(priority) as number | undefined;
        if (p === undefined) break;
        priority = p;
        for (;;) {
          if (budget <= 0) return { expired, more: true };
          const n = this.#write((delta) => {
            const rows = s.expiring.all(p, destination, cutoff, Math.min(BATCH_ROWS, budget)) as {
              id: number;
              series: string;
            }[];
            const series = new Set<string>();
            for (const r of rows) {
              s.markExpired.run(now, r.id);
              series.add(r.series);
            }
            for (const ser of series) this.#fixHead(destination, ser);
            delta.count(destination, PENDING, -rows.length);
            delta.count(destination, DEAD, rows.length);
            delta.drop("expired", destination, rows.length);
            return rows.length;
          });
          expired += n;
          budget -= n;
          if (n === 0) break;
        }
      }
    }
    return { expired, more: false };
  }

  #overLimit(delta?: Delta): boolean {
    const events = this.#events + (delta?.events ?? 0);
    const bytes = this.#bytes + (delta?.bytes ?? 0);
    return events > this.#limits.max_events || bytes > this.#limits.max_bytes;
  }

  /**
   * Inside a write transaction: prunes, then drops, until back under both limits or
   * MAINTAIN_MAX_ROWS rows went (a lowered limit on a full outbox converges over a few
   * passes instead of blocking the event loop for seconds). True when still over.
   * With when_full: block pending deliveries are never dropped (step 3 is skipped: new
   * events are refused instead). `fraction` < 1 prunes further, down to that share of
   * the limits (making room under block).
   */
  #enforceLimits(delta: Delta, fraction = 1): boolean {
    let budget = MAINTAIN_MAX_ROWS;
    const overBy = () => {
      const events = this.#events + delta.events;
      const bytes = this.#bytes + delta.bytes;
      const byEvents = events - Math.floor(this.#limits.max_events * fraction);
      const avg = events > 0 ? bytes / events : 1;
      const byBytes = Math.ceil((bytes - Math.floor(this.#limits.max_bytes * fraction)) / Math.max(1, avg));
      return {
        n: Math.min(BATCH_ROWS, budget, Math.max(byEvents, byBytes, 0)),
        reason: byEvents >= byBytes ? "max_events" : "max_bytes",
      };
    };
    // 1. delivered rows, oldest first: already done, losing them costs only history.
    for (let o = overBy(); o.n > 0; o = overBy()) {
      const n = this.#deleteSettled(DELIVERED, Number.MAX_SAFE_INTEGER, o.n, delta);
      budget -= n;
      if (n === 0) break;
    }
    // 2. dead rows, oldest first: they would only be sent again by an operator's replay.
    for (let o = overBy(); o.n > 0; o = overBy()) {
      const n = this.#deleteSettled(DEAD, Number.MAX_SAFE_INTEGER, o.n, delta, "dead_pruned");
      budget -= n;
      if (n === 0) break;
    }
    // 3. pending rows: lowest priority first, oldest first within it.
    for (let o = overBy(); o.n > 0 && this.#limits.when_full !== "block"; o = overBy()) {
      const n = this.#dropPending(o.n, o.reason, delta);
      budget -= n;
      if (n === 0) break;
    }
    return this.#overLimit(delta);
  }

  #dropPending(n: number, reason: string, delta: Delta): number {
    const s = this.#s;
    const lowest = s.priorityAbove.get(Number.MIN_SAFE_INTEGER) as number | undefined;
    if (lowest === undefined) return 0;
    type Row = {
      id: number;
      event_seq: number;
      destination: string;
      series: string;
      is_head: number;
      created_at: number;
    };
    const candidates: Row[] = [];
    const destinations = new Set(this.#counts.keys());
    for (const k of delta.counts.values()) destinations.add(k.destination);
    for (const d of destinations) candidates.push(...(s.oldestOfPriority.all(lowest, d, n) as Row[]));
    candidates.sort((a, b) => a.created_at - b.created_at || a.id - b.id);
    const victims = candidates.slice(0, n);
    const heads = new Map<string, [string, string]>();
    for (const v of victims) {
      s.deleteDelivery.run(v.id);
      delta.count(v.destination, PENDING, -1);
      delta.drop(reason, v.destination, 1);
      if (v.is_head === 1) heads.set(`${v.destination}\u0000${v.series}`, [v.destination, v.series]);
    }
    for (const [d, ser] of heads.values()) this.#fixHead(d, ser);
    this.#deleteOrphans(
      victims.map((v) => v.event_seq),
      delta,
    );
    return victims.length;
  }

  /**
   * Deletes up to `limit` rows of `state` settled before `cutoff`, oldest first; counted
   * as drops of `dropReason` when given.
   */
  #deleteSettled(state: number, cutoff: number, limit: number, delta: Delta, dropReason?: string): number {
    const s = this.#s;
    const rows = s.settledBefore.all(state, cutoff, limit) as { id: number; event_seq: number; destination: string }[];
    for (const r of rows) {
      s.deleteDelivery.run(r.id);
      delta.count(r.destination, state, -1);
      if (dropReason) delta.drop(dropReason, r.destination, 1);
    }
    this.#deleteOrphans(
      rows.map((r) => r.event_seq),
      delta,
    );
    return rows.length;
  }

  #deleteOrphans(seqs: number[], delta: Delta): void {
    for (const seq of new Set(seqs)) {
      const size = this.#s.deleteOrphanEvent.get(seq, seq) as number | undefined;
      if (size !== undefined) {
        delta.events--;
        delta.bytes -= size;
      }
    }
  }

  // ------------------------------------------------------------ counters, disk, metrics

  /** Runs fn in one IMMEDIATE transaction; counters follow only if it committed. */
  #write<T>(fn: (delta: Delta) => T): T {
    if (!this.#db) throw new Error("outbox is not open");
    this.#syncCounters();
    const delta = new Delta();
    const keys = this.#messageKeys;
    let result: T;
    try {
      result = this.#tx(() => {
        // Released message keys ride on whatever this transaction is for.
        keys?.writeReleases();
        const r = fn(delta);
        for (const c of delta.counts.values()) {
          if (c.n !== 0) this.#s.addCount.run(c.destination, c.state, c.n);
        }
        if (delta.events !== 0) this.#s.addTotal.run(delta.events, "events");
        if (delta.bytes !== 0) this.#s.addTotal.run(delta.bytes, "bytes");
        return r;
      }) as T;
    } catch (err) {
      keys?.rolledBack();
      this.#noteDamage(err);
      throw err;
    }
    keys?.committed();
    this.#transactions++;
    for (const c of delta.counts.values()) {
      const entry = this.#counts.get(c.destination) ?? [0, 0, 0];
      entry[c.state] = (entry[c.state] as number) + c.n;
      this.#counts.set(c.destination, entry);
    }
    this.#events += delta.events;
    this.#bytes += delta.bytes;
    this.#countDrops(delta);
    return result;
  }

  /** Rewrites the `counts`/`totals` tables from the rows; warns when they had drifted. */
  #recount(): void {
    const db = this.#db as Database;
    this.#tx(() => {
      const snapshot = () =>
        JSON.stringify([
          db.prepare("SELECT destination, state, n FROM counts WHERE n <> 0 ORDER BY destination, state").all(),
          this.#s.totals.all(),
        ]);
      const before = snapshot();
      db.exec(`
        DELETE FROM counts;
        INSERT INTO counts (destination, state, n)
          SELECT destination, state, COUNT(*) FROM deliveries GROUP BY destination, state;
        UPDATE totals SET value = (SELECT COUNT(*) FROM events) WHERE key = 'events';
        UPDATE totals SET value = (SELECT COALESCE(SUM(size), 0) FROM events) WHERE key = 'bytes';
      `);
      const after = snapshot();
      if (before !== after) {
        this.#log.warn({ before, after }, "outbox counters did not match the stored rows; recounted");
      }
    });
  }

  #loadCounters(): void {
    this.#counts.clear();
    for (const r of this.#s.counts.all() as { destination: string; state: number; n: number }[]) {
      const entry = this.#counts.get(r.destination) ?? [0, 0, 0];
      entry[r.state] = r.n;
      this.#counts.set(r.destination, entry);
    }
    for (const r of this.#s.totals.all() as { key: string; value: number }[]) {
      if (r.key === "events") this.#events = r.value;
      if (r.key === "bytes") this.#bytes = r.value;
    }
    this.#dataVersion = this.#s.dataVersion.get() as number;
  }

  /** Reloads the counters when another process (edgehook queue) changed the file. */
  #syncCounters(): void {
    this.#guard(() => {
      const v = this.#s.dataVersion.get() as number;
      if (v !== this.#dataVersion) this.#loadCounters();
    });
  }

  // ------------------------------------------------------------ damage while running

  /**
   * A SQLITE_CORRUPT, SQLITE_NOTADB or SQLITE_IOERR (any extended code) seen since open,
   * or undefined. Sticky: the file cannot be trusted until the agent restarts, checks it
   * and salvages what is readable (db.ts). Meanwhile refusal() refuses new events.
   */
  get damage(): Damage | undefined {
    return this.#damage;
  }

  /** Runs fn; a database error that means damage is recorded (and logged once) before it is rethrown. */
  #guard<T>(fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      this.#noteDamage(err);
      throw err;
    }
  }

  #noteDamage(err: unknown): void {
    const code = (err as { code?: unknown } | undefined)?.code;
    if (typeof code !== "string" || this.#damage) return;
    const kind = damageKind(code);
    if (!kind) return;
    this.#damage = { kind, sqliteCode: code, message: (err as Error).message, since: this.#clock.now() };
    this.#log.fatal(
      {
        err,
        sqliteCode: code,
        file: this.#file,
        code: kind === "corrupt" ? "EDGEHOOK_DB_CORRUPT" : "EDGEHOOK_DB_IO_ERROR",
      },
      `outbox database ${this.#file} ${kind === "corrupt" ? "is damaged" : "had an I/O error"} while running (${code}: ${(err as Error).message}). /healthz now reports failing and the systemd watchdog is no longer fed, so systemd restarts edgehook (or restart it yourself: systemctl restart edgehook); at start the file is checked and every readable row is salvaged into a fresh one, the damaged file is kept beside it. New readings wait at their source until then. Check the storage now: dmesg, the SD card's health; replace a card that keeps failing.`,
    );
  }

  // ------------------------------------------------------------ refusal (backpressure)

  /**
   * Whether the outbox refuses new events now, and why: free disk under min_free_disk,
   * or (when_full: block) max_events/max_bytes reached once delivered and dead rows made
   * what room they could. Cheap: free space is read at most once a second, the limits
   * are in-memory counters. commit() refuses whole groups for the same reasons; callers
   * ask first so that work they cannot store is not started (and is offered again).
   * Logs when it starts and stops refusing.
   */
  refusal(): Refusal | undefined {
    if (!this.#db) return undefined;
    let reason: Refusal["reason"] | undefined;
    let detail = "";
    const free = this.#freeDisk();
    if (this.#damage) {
      reason = "damaged";
      detail = `${this.#damage.sqliteCode} since ${new Date(this.#damage.since).toISOString()}; restart edgehook to salvage the database`;
    } else if (free !== undefined && free < this.#limits.min_free_disk) {
      reason = "disk_floor";
      detail = `${mib(free)} free on ${dirname(this.#file)}, outbox.min_free_disk is ${mib(this.#limits.min_free_disk)}; free up space there or lower outbox.min_free_disk`;
    } else if (this.#full()) {
      reason = "full";
      detail = `${this.#events} events and ${mib(this.#bytes)} stored, outbox.max_events is ${this.#limits.max_events} and outbox.max_bytes ${mib(this.#limits.max_bytes)} (when_full: block); events are stored again as destinations accept them`;
    }
    const was = this.#refusing;
    if (reason === undefined) {
      if (was) {
        this.#refusing = undefined;
        this.#metrics.outboxRefusing.set({ reason: was.reason }, 0);
        this.#log.info(
          { reason: was.reason, refusedMs: this.#clock.now() - was.since },
          `outbox accepts new events again (${was.reason} is over after ${Math.round((this.#clock.now() - was.since) / 1000)} s); held readings are being committed`,
        );
      }
      return undefined;
    }
    if (was?.reason === reason) {
      was.detail = detail;
      return was;
    }
    if (was) this.#metrics.outboxRefusing.set({ reason: was.reason }, 0);
    const refusal: Refusal = { reason, since: this.#clock.now(), detail };
    this.#refusing = refusal;
    this.#metrics.outboxRefusing.set({ reason }, 1);
    this.#log.warn(
      { reason, code: refusalCode(reason) },
      `outbox refuses new events (${reason}): ${detail}. Nothing is dropped meanwhile: MQTT messages stay unacknowledged at the broker, serial readings are held (up to a bound, then dropped and counted), and rule state is not advanced; all of it is committed once there is room`,
    );
    return refusal;
  }

  /** Free bytes on the data directory's filesystem, read at most once a second. */
  #freeDisk(): number | undefined {
    const mono = this.#clock.monotonic();
    if (mono - this.#diskCheckedAt < DISK_CHECK_MS) return this.#diskFree;
    this.#diskCheckedAt = mono;
    try {
      const st = statfsSync(dirname(this.#file));
      this.#diskFree = Number(st.bavail) * Number(st.bsize);
    } catch {
      // Cannot tell: keep the last answer.
    }
    return this.#diskFree;
  }

  /**
   * when_full: block and full, even after pruning delivered and dead rows. Full starts
   * at a limit and ends only below FULL_RESUME of both (hysteresis), so a steady overload
   * alternates in long stretches instead of refusing and accepting every other commit.
   */
  #full(): boolean {
    if (this.#limits.when_full !== "block") return false;
    this.#syncCounters();
    const wasFull = this.#refusing?.reason === "full";
    const fraction = wasFull ? FULL_RESUME : 1;
    const full = () =>
      wasFull
        ? this.#events > this.#limits.max_events * fraction || this.#bytes > this.#limits.max_bytes * fraction
        : this.#events >= this.#limits.max_events || this.#bytes >= this.#limits.max_bytes;
    if (!full()) return false;
    const mono = this.#clock.monotonic();
    let settled = 0;
    for (const c of this.#counts.values()) settled += c[DELIVERED] + c[DEAD];
    if (settled > 0 && mono - this.#roomCheckedAt >= DISK_CHECK_MS) {
      this.#roomCheckedAt = mono;
      this.#write((delta) => this.#enforceLimits(delta, FULL_RESUME));
    }
    return full();
  }

  /** Every drop is counted (metric) and goes into the next log summary (invariant 7). */
  #countDrops(delta: Delta): void {
    for (const [key, n] of delta.dropsAt) {
      const [reason = "", destination = ""] = key.split("\u0000");
      this.#metrics.drops.inc({ reason, destination }, n);
      this.#drops.add(reason, destination, n);
    }
  }

  #logDrops(s: DropSummary): void {
    const advice = Object.keys(s.reasons).map((reason) => dropAdvice(reason, this.#limits));
    this.#log.warn(
      {
        code: "EDGEHOOK_OUTBOX_DROPPED",
        dropped: s.dropped,
        reasons: s.reasons,
        destinations: s.by,
        periodS: s.periodS,
      },
      `outbox dropped ${s.dropped} deliveries since the last report (${describeDrops(s)}); ${advice.join("; ")}`,
    );
  }

  /** Brings the outbox gauges up to date (called before each /metrics scrape). */
  refreshMetrics(): void {
    this.#updateMetrics();
  }

  #updateMetrics(): void {
    this.#guard(() => this.#updateMetricsUnguarded());
  }

  #updateMetricsUnguarded(): void {
    const now = this.#clock.now();
    for (const [destination, c] of this.#counts) {
      c.forEach((n, state) => {
        this.#metrics.outboxDepth.set({ destination, state: STATE_NAMES[state] as string }, n);
      });
      const oldest = c[0] > 0 ? (this.#s.oldestPending.get(destination) as number | null) : null;
      this.#metrics.oldestPendingSeconds.set({ destination }, oldest === null ? 0 : Math.max(0, now - oldest) / 1000);
    }
    let bytes = 0;
    for (const f of [this.#file, `${this.#file}-wal`]) {
      try {
        bytes += statSync(f).size;
      } catch {
        // no WAL file right now
      }
    }
    this.#metrics.outboxBytes.set(bytes);
  }
}

interface NextRow {
  id: number;
  event_seq: number;
  destination: string;
  series: string;
  priority: number;
  attempts: number;
  created_at: number;
  next_at: number;
}

interface StateRow {
  rule: string;
  series: string;
  version: string;
  state: string;
}

/** The schema validates the YAML; this catches a wrong value passed in code, naming it. */
function validateOptions(file: string, limits: OutboxLimits, maxAge: Readonly<Record<string, number>>): void {
  if (typeof file !== "string" || file === "") throw new TypeError("outbox file must be a non-empty path");
  const positive: (keyof OutboxLimits)[] = ["max_events", "max_bytes", "max_age", "keep_delivered"];
  for (const key of positive) {
    const v = limits[key];
    if (typeof v !== "number" || !(v > 0)) throw new TypeError(`outbox.${key} must be a positive number (is ${v})`);
  }
  for (const key of ["min_free_disk", "commit_delay"] as const) {
    const v = limits[key];
    if (typeof v !== "number" || !(v >= 0)) throw new TypeError(`outbox.${key} must be a number >= 0 (is ${v})`);
  }
  for (const [name, v] of Object.entries(maxAge)) {
    if (!(v > 0)) throw new TypeError(`destinations.${name}.max_age must be a positive duration (is ${v})`);
  }
}

/** Errors caused by one batch's content rather than by the database. */
function isBatchSpecific(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  if (typeof code === "string" && code.startsWith("SQLITE_")) return code.startsWith("SQLITE_CONSTRAINT");
  return true; // e.g. TypeError from JSON.stringify of a body
}

function toListing(r: DeliveryRow): DeliveryListing {
  return {
    id: r.id,
    eventId: r.event_id,
    destination: r.destination,
    series: r.series,
    type: r.type,
    priority: r.priority,
    state: STATE_NAMES[r.state] ?? "pending",
    attempts: r.attempts,
    createdAt: r.created_at,
    nextAt: r.state === PENDING ? r.next_at : null,
    settledAt: r.settled_at,
    lastStatus: r.last_status,
    lastError: r.last_error,
    reason: r.reason,
  };
}

function appendHistory(json: string | null, attempt: AttemptRecord): string {
  const history = parseHistory(json);
  const entry: AttemptRecord = { at: attempt.at, durationMs: Math.round(attempt.durationMs) };
  if (attempt.status !== undefined) entry.status = attempt.status;
  if (attempt.error !== undefined) entry.error = clip(attempt.error);
  history.push(entry);
  return JSON.stringify(history.slice(-HISTORY_LENGTH));
}

function parseHistory(json: string | null): AttemptRecord[] {
  if (!json) return [];
  try {
    const parsed: unknown = JSON.parse(json);
    return Array.isArray(parsed) ? (parsed as AttemptRecord[]) : [];
  } catch {
    return []; // history is informational; a damaged one starts over
  }
}

function clip(text: string): string {
  return text.length > 300 ? `${text.slice(0, 297)}...` : text;
}

function dropAdvice(reason: string, limits: OutboxLimits): string {
  switch (reason) {
    case "expired":
      return "expired: pending deliveries outlived max_age without being accepted; check that the destination is reachable, or raise max_age";
    case "dead_pruned":
      return "dead_pruned: the outbox was full and dead deliveries were removed to make room (they can no longer be replayed); purge or replay dead deliveries sooner, or raise outbox.max_events/max_bytes";
    default:
      return `${reason}: the outbox was full (max_events=${limits.max_events}, max_bytes=${limits.max_bytes}) and pending deliveries were dropped, lowest priority and oldest first; receivers are not keeping up or are unreachable: fix the destination, or raise outbox.${reason}`;
  }
}

/** Bytes as MiB with one decimal, for log lines. */
function mib(bytes: number): string {
  return `${(bytes / 1048576).toFixed(1)} MiB`;
}
