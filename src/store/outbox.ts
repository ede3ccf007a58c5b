/**
 * The durable outbox: events stored once, one delivery row per (event, destination),
 * drained by the dispatcher head-of-series first. This file is the Outbox the agent, the
 * dispatcher and `edgehook queue` hold: it opens one database (db.ts) and composes the
 * parts below over it (connection.ts: the handle, the counters and the one write path).
 * Each part states the policy it implements:
 *
 *   group-commit.ts    durability: commit() resolves after its group's transaction
 *                      committed (synchronous=FULL); one fsync per group; all or nothing
 *   enqueue.ts         what one committed batch writes (events, deliveries, rule states,
 *                      message keys), and the limit check after it
 *   heads.ts           order per series (series heads) and the dispatcher's side:
 *                      next, nextDueAt, retryNow, settle (OutboxReader)
 *   limits.ts          the stated policy when a limit is reached: max_age, max_events,
 *                      max_bytes (drop lowest priority, oldest first), keep_delivered;
 *                      maintain()
 *   drop-report.ts     every drop counted and logged (rate-limited summaries, no count lost)
 *   refusal.ts         backpressure: min_free_disk, when_full: block and damage refuse
 *                      whole groups; nothing is dropped meanwhile
 *   damage.ts          SQLITE_CORRUPT/NOTADB/IOERR met while running
 *   counters.ts        bounded memory: counts kept in tables in the same transactions and
 *                      mirrored in memory; changes by another process noticed
 *   queries.ts         read-only operator side: stats, list, show, totals, gauges
 *   operator.ts        replay and purge
 *   rule-state.ts, destination-flags.ts, event-rewrite.ts, message-keys.ts
 *                      rule state per series, 410-disabled destinations, the event-time
 *                      correction, MQTT message keys and sessions
 *
 * Memory does not grow with the backlog, and no query loads more than a bounded batch of
 * rows. A closed outbox hands out nothing (next() is empty, refusal() undefined); the
 * operator queries throw "outbox is not open".
 */
import type { Clock, TimerHandle } from "../clock.js";
import type { CommitBatch, SeriesStateRow } from "../events.js";
import type { Logger } from "../ops/logger.js";
import type { Metrics } from "../ops/metrics.js";
import type { SessionRecord } from "../sources/reading.js";
import { OutboxConnection } from "./connection.js";
import { type Damage, DamageWatch } from "./damage.js";
import { openDatabase } from "./db.js";
import { DestinationFlags } from "./destination-flags.js";
import { DropReport } from "./drop-report.js";
import { Enqueue } from "./enqueue.js";
import { EventRewrite } from "./event-rewrite.js";
import { type CommitOptions, GroupCommit } from "./group-commit.js";
import { SeriesHeads } from "./heads.js";
import { type OutboxLimits, Retention } from "./limits.js";
import { RELEASE_DELAY_MS } from "./message-keys.js";
import { OperatorWrites } from "./operator.js";
import { Queries } from "./queries.js";
import { Admission, type Refusal } from "./refusal.js";
import { RuleStates } from "./rule-state.js";
import type {
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
  SettleRider,
} from "./types.js";

export { type Damage, damageKind } from "./damage.js";
export { DROP_REPORT_MS } from "./drop-report.js";
export { type CommitOptions, GROUP_MAX_EVENTS, StaleBatchError } from "./group-commit.js";
export { DELIVERY_OVERHEAD, EVENT_OVERHEAD, MAINTAIN_MAX_ROWS, type OutboxLimits } from "./limits.js";
export { OutboxRefusedError, type Refusal } from "./refusal.js";
export { HISTORY_LENGTH } from "./rows.js";

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

/** The parts of an open outbox, all over one connection. */
interface Parts {
  conn: OutboxConnection;
  heads: SeriesHeads;
  retention: Retention;
  enqueue: Enqueue;
  states: RuleStates;
  queries: Queries;
  operator: OperatorWrites;
  flags: DestinationFlags;
  rewrite: EventRewrite;
}

export class Outbox implements OutboxReader {
  readonly #file: string;
  readonly #limits: OutboxLimits;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #metrics: Metrics;
  readonly #check: boolean;
  #maxAge: Readonly<Record<string, number>>;
  // These outlive a close and reopen: damage is sticky, the refusal gauge and the drop
  // summary carry on, queued batches are flushed by close().
  readonly #damage: DamageWatch;
  readonly #drops: DropReport;
  readonly #admission: Admission;
  readonly #group: GroupCommit;
  #transactions = 0;
  #releaseTimer: TimerHandle | undefined;
  #rider: SettleRider | undefined;
  #parts: Parts | undefined;

  constructor(options: OutboxOptions) {
    this.#file = options.file;
    this.#limits = options.limits;
    this.#clock = options.clock;
    this.#log = options.logger;
    this.#metrics = options.metrics;
    this.#check = options.check ?? true;
    this.#maxAge = options.destinationMaxAge ?? {};
    const common = { clock: options.clock, logger: options.logger, metrics: options.metrics };
    this.#damage = new DamageWatch(options.file, options.clock, options.logger);
    this.#drops = new DropReport({ ...common, limits: options.limits });
    this.#admission = new Admission({ ...common, file: options.file, limits: options.limits, damage: this.#damage });
    this.#group = new GroupCommit({
      clock: options.clock,
      logger: options.logger,
      commitDelayMs: options.limits.commit_delay,
      refusal: () => this.refusal(),
      write: (batches) => this.#open.enqueue.write(batches),
    });
  }

  /** The parts; using them on a closed outbox is a programming error. */
  get #open(): Parts {
    if (!this.#parts) throw new Error("outbox is not open");
    return this.#parts;
  }

  // ------------------------------------------------------------ lifecycle

  open(): void {
    if (this.#parts) return;
    validateOptions(this.#file, this.#limits, this.#maxAge);
    const db = openDatabase(this.#file, { logger: this.#log, check: this.#check, now: () => this.#clock.now() });
    const conn = new OutboxConnection(db, this.#damage, (delta) => {
      this.#transactions++;
      this.#drops.count(delta);
    });
    const clock = this.#clock;
    const heads = new SeriesHeads(conn, clock);
    const retention = new Retention({ conn, heads, clock, limits: this.#limits, maxAge: () => this.#maxAge });
    const states = new RuleStates(conn, this.#log);
    this.#parts = {
      conn,
      heads,
      retention,
      states,
      enqueue: new Enqueue(conn, states, retention),
      queries: new Queries({ conn, clock, metrics: this.#metrics, file: this.#file }),
      operator: new OperatorWrites({ conn, heads, retention, clock }),
      flags: new DestinationFlags(conn, clock),
      rewrite: new EventRewrite(conn),
    };
    conn.start(this.#check, this.#log);
    this.#carry(this.#parts);
  }

  /** Commits what is queued, reports drops not yet logged, then closes the database. Safe to call twice. */
  close(): void {
    if (!this.#parts) return;
    this.flush();
    this.#writeReleasedKeys();
    this.#drops.flush();
    // No PRAGMA optimize/ANALYZE: every query is written for a named index, and planner
    // statistics gathered on a small outbox could steer it wrong on a large one.
    this.#parts.conn.db.close();
    this.#parts = undefined;
  }

  get isOpen(): boolean {
    return this.#parts !== undefined;
  }

  /**
   * Changes whenever another connection (`edgehook queue replay`, `destination enable`)
   * committed to the file (PRAGMA data_version); our own commits leave it as it is.
   */
  dataVersion(): number {
    return this.#open.conn.counters.dataVersion();
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

  // ------------------------------------------------------------ commit (group-commit.ts, enqueue.ts)

  /**
   * Stores the batch's events (one delivery per destination) and rule states atomically.
   * Resolves once the transaction carrying it committed durably; rejects if that
   * transaction failed (then nothing of the batch is stored: do not acknowledge it).
   * The group waits commit_delay on the injected clock: with a FakeClock advance it,
   * call flush(), or use commit_delay 0 (the next turn of the event loop).
   */
  commit(batch: CommitBatch, options: CommitOptions = {}): Promise<CommitResult> {
    if (!this.#parts) return Promise.reject(new Error("outbox is not open"));
    return this.#group.commit(batch, options);
  }

  /** Commits every queued batch now, in one transaction. */
  flush(): void {
    this.#group.flush();
  }

  // ------------------------------------------------------------ dispatcher side (heads.ts)

  next(...args: Parameters<OutboxReader["next"]>): Delivery[] {
    return this.#parts?.heads.next(...args) ?? [];
  }

  nextDueAt(destination: string): number | undefined {
    return this.#parts?.heads.nextDueAt(destination);
  }

  retryNow(destination: string, now: number): number {
    return this.#parts?.heads.retryNow(destination, now) ?? 0;
  }

  /** True when a delivery of this series waits for this destination (heartbeat coalescing). */
  hasPending(destination: string, series: string): boolean {
    return this.#open.heads.hasPending(destination, series);
  }

  pendingCount(destination: string): number {
    return this.#parts?.heads.pendingCount(destination) ?? 0;
  }

  settle(settlements: Settlement[]): void {
    this.#parts?.heads.settle(settlements);
  }

  /** Outcomes waiting to be written go with the next transaction, whatever it is for. */
  carry(rider: SettleRider | undefined): void {
    this.#rider = rider;
    if (this.#parts) this.#carry(this.#parts);
  }

  #carry(parts: Parts): void {
    const rider = this.#rider;
    if (!rider) {
      parts.conn.carry(undefined);
      return;
    }
    parts.conn.carry((delta) => {
      const settlements = rider.take();
      if (settlements.length === 0) return undefined;
      parts.heads.settleIn(settlements, delta);
      return rider;
    });
  }

  // ------------------------------------------------------------ rule state, destination flags, event times

  loadStates(): SeriesStateRow[] {
    return this.#open.states.load();
  }

  setDestinationDisabled(name: string, reason: string): void {
    this.#open.flags.disable(name, reason);
  }

  /** Re-enables a destination; false when it was not disabled. */
  enableDestination(name: string): boolean {
    return this.#open.flags.enable(name);
  }

  destinationFlags(): Record<string, DestinationFlag> {
    return this.#open.flags.all();
  }

  /** The stored body of an event that no attempt has used yet, or undefined. */
  unsentBody(eventId: string): Buffer | undefined {
    return this.#open.rewrite.unsentBody(eventId);
  }

  /**
   * Replaces the stored bodies of events no attempt has used yet (the event-time
   * correction after the clock synchronised, see src/event-time.ts), in one
   * transaction. Returns how many were replaced.
   */
  rewriteUnsent(bodies: ReadonlyMap<string, Buffer>): number {
    if (bodies.size === 0) return 0;
    return this.#open.rewrite.rewriteUnsent(bodies);
  }

  // ------------------------------------------------------------ operator (queries.ts, operator.ts)

  stats(): DestinationStats[] {
    return this.#open.queries.stats();
  }

  /** Totals the limits are checked against. */
  totals(): { events: number; bytes: number; pending: number } {
    return this.#open.queries.totals();
  }

  list(query: { state?: DeliveryState; destination?: string; limit?: number } = {}): DeliveryListing[] {
    return this.#open.queries.list(query);
  }

  show(eventId: string): EventDetail | undefined {
    return this.#open.queries.show(eventId);
  }

  /**
   * Puts settled deliveries back to pending with their attempts reset. They keep their
   * place in their series: a replayed row older than the current head becomes the head.
   * Returns how many rows went back to pending.
   */
  replay(target: ReplayTarget): number {
    return this.#open.operator.replay(target);
  }

  /** Deletes settled rows older than the given age; returns how many deliveries went. */
  purge(request: PurgeRequest): number {
    return this.#open.operator.purge(request);
  }

  // ------------------------------------------------------------ source message keys (message-keys.ts)

  /** Keys of committed source messages not released (see CommitBatch.messageKeys, MessageLedger). */
  messageKeys(): string[] {
    return this.#parts?.conn.messageKeys.keys() ?? [];
  }

  /**
   * Forgets keys of messages that can no longer be redelivered. They are deleted by the
   * next transaction, whatever it is for, or within RELEASE_DELAY_MS.
   */
  releaseMessageKeys(keys: readonly string[]): void {
    if (!this.#parts?.conn.messageKeys.release(keys) || this.#releaseTimer) return;
    this.#releaseTimer = this.#clock.setTimeout(() => {
      this.#releaseTimer = undefined;
      this.#writeReleasedKeys();
    }, RELEASE_DELAY_MS);
  }

  /** What is remembered of a source session (e.g. an MQTT persistent session); undefined: never had one. */
  session(scope: string): SessionRecord | undefined {
    return this.#parts?.conn.messageKeys.session(scope);
  }

  rememberSession(scope: string, record: SessionRecord): void {
    const conn = this.#parts?.conn;
    if (conn) conn.write(() => conn.messageKeys.rememberSession(scope, record, this.#clock.now()));
  }

  #writeReleasedKeys(): void {
    if (this.#releaseTimer) {
      this.#clock.clearTimeout(this.#releaseTimer);
      this.#releaseTimer = undefined;
    }
    const conn = this.#parts?.conn;
    if (!conn?.messageKeys.owed) return;
    try {
      conn.write(() => undefined);
    } catch (err) {
      // They stay released in memory and are deleted with a later transaction.
      this.#log.warn({ err }, "could not delete released message keys");
    }
  }

  // ------------------------------------------------------------ maintenance (limits.ts), metrics

  /**
   * Prunes old settled rows, expires pending rows past max_age, enforces max_events and
   * max_bytes, and refreshes the outbox metrics. Call on a timer (e.g. every 30 s) and
   * again soon when the result says `more`.
   */
  maintain(): MaintainResult {
    const parts = this.#parts;
    if (!parts) return { pruned: 0, expired: 0, dropped: {}, more: false };
    const result = parts.retention.maintain();
    parts.queries.updateMetrics();
    this.#drops.poll();
    return result;
  }

  /** Brings the outbox gauges up to date (called before each /metrics scrape). */
  refreshMetrics(): void {
    this.#open.queries.updateMetrics();
  }

  // ------------------------------------------------------------ damage, refusal (damage.ts, refusal.ts)

  /**
   * A SQLITE_CORRUPT, SQLITE_NOTADB or SQLITE_IOERR (any extended code) seen since open,
   * or undefined. Sticky: the file cannot be trusted until the agent restarts, checks it
   * and salvages what is readable (db.ts). Meanwhile refusal() refuses new events.
   */
  get damage(): Damage | undefined {
    return this.#damage.current;
  }

  /**
   * Whether the outbox refuses new events now, and why: free disk under min_free_disk,
   * damage, or (when_full: block) max_events/max_bytes reached once delivered and dead
   * rows made what room they could. commit() refuses whole groups for the same reasons;
   * callers ask first so that work they cannot store is not started (and is offered again).
   */
  refusal(): Refusal | undefined {
    const parts = this.#parts;
    return parts && this.#admission.refusal(parts.conn, parts.retention);
  }
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
