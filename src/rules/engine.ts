/**
 * The rule engine: per-series state machines over readings. Pure — no IO and no timers
 * of its own. The agent hands it readings (`process`) and, when `nextDueAt()` says so,
 * calls `tick()`; every call returns one CommitBatch (events + changed series states +
 * removed states) that the agent commits in one transaction before acknowledging the
 * readings (design invariant 1).
 *
 * Decisions an operator can rely on (each has a unit test in test/unit/rules*.test.ts):
 *
 * - Time. `for`, `clear_for`, `cooldown`, `repeat_every`, windows and `absent_for` run on
 *   the agent's clock (the injected Clock), so a sensor with a wrong clock cannot stall
 *   or rush them. Bodies carry the time of the reading that caused the event; events
 *   caused by time alone (a `for` completing on tick, silence, repeats, batches) carry
 *   the agent's time. `rate_*` divides by the readings' own time difference (see
 *   windows.ts).
 * - Boundaries: strictly above / strictly below (conditions.ts).
 * - Late readings: a reading older than the newest one already seen for its series
 *   (ts < last ts) is counted in `stats.late`, logged (rate-limited, with the sensor and
 *   how far behind it is) and ignored for that series: it changes no state, enters no
 *   window and does not end a silence. A delayed duplicate can therefore never resolve a
 *   firing alert or flap it. Equal timestamps are processed normally. Forwarding rules
 *   send late readings anyway (telemetry wants every point; the body carries its time).
 * - Readings from the future: a reading stamped more than `maxFutureMs` ahead of the
 *   agent's clock (a sensor clock in the year 2100, microseconds read as milliseconds, a
 *   zoneless time read in the wrong zone) is re-stamped with the agent's time, counted in
 *   `stats.future` and logged (rate-limited, with sensor and skew). Its value is real and
 *   judged like any other, so an alert still fires. Refusing it instead would turn a
 *   wrong sensor clock into lost alerts; keeping its time would make every later reading
 *   of the series "late". A re-stamped reading does not move its series' late guard
 *   (that compares the sensor's own times only), so the readings after it are judged
 *   normally. No time further ahead than the bound is ever kept: a series whose newest
 *   reading time is beyond it (the agent's clock was set back, or a row stored by an
 *   older version) forgets that time, on restore and when its next reading arrives.
 * - Values: numeric conditions read numbers, booleans as 1/0 and numeric text; other
 *   values are counted in `stats.nonNumeric` and skipped. `equals` compares as text.
 * - Cooldown: after a resolve, a condition that comes back waits (pending) until the
 *   cooldown is over, then fires if it still holds. Nothing is lost, it is only delayed.
 * - Aggregates are evaluated at each reading, and while an alert is pending or firing
 *   also when a sample leaves the window, so a `count` alert clears when the readings
 *   stop. An emptied avg/min/max window is "no data", not a value: the state is kept.
 * - Persistence: a state row is written only when something a restart needs changes:
 *   pending (with the pending-since time), firing, clearing, resolved with a cooldown, a
 *   sensor first seen or going silent/returning, a buffered batch reading. A reading that
 *   changes nothing writes nothing. Aggregate and rate windows are not persisted; after a
 *   restart they refill from new readings (a rate needs two samples again). A batch
 *   never names one series in both `states` and `removedStates`, so the order in which
 *   the agent applies the two lists does not matter.
 * - Restart (restore): a firing series stays firing (no second firing) and resolves
 *   normally. A pending or clearing series continues from where it was: its timer keeps
 *   its start, and it completes on time with or without a new reading, exactly as a
 *   running agent completes `for` on the last reading it has (one that arrives in the
 *   meantime and contradicts it interrupts it as usual). If the time ran out during the
 *   downtime it completes at the first tick after restore. Repeats and cooldowns continue
 *   their schedule. The latest value is not written per reading, so an event caused by
 *   time alone after a restart, before the series' next reading, carries the value stored
 *   at its last state change (pending, firing, clearing or the previous repeat).
 *   absent_for: the silence timer of a series seen before the restart starts again at
 *   restore time, so the agent's own downtime is not reported as sensor silence (and a
 *   restart after a long outage does not raise a storm of sensor.silent). A series that
 *   was silent stays silent (no second sensor.silent) and reports sensor.returned later.
 * - absent_for watches a whole sensor when `match.metric` is `*` (any metric keeps it
 *   alive; series metric "*"), otherwise each (sensor, metric). With literal names it
 *   watches from the start, so a sensor that never reports is reported too.
 * - Series limit (`maxSeries`, agent.max_series): at the limit a new series first gets
 *   room by eviction, in this order: series at rest (ok, nothing stored, empty windows:
 *   nothing is lost); ok or seen series that keep state (a cooldown, window samples, the
 *   silence watch of a sensor) and had no reading for QUIET_IDLE_MS, least recently
 *   active first; then pending, firing, clearing and silent series that had no reading
 *   for OPEN_IDLE_MS, least recently active first and only as many as new series are
 *   waiting. An open one is closed for its receivers with reason "series limit" (so no
 *   alert stays open forever for a series nobody tracks; a later reading starts it
 *   afresh). Never evicted: a pending or open series that had a reading in the last
 *   OPEN_IDLE_MS (a firing alert that is still reporting outranks a newcomer), and the
 *   silence watch of a sensor an absent_for rule names literally. Restored series count
 *   as active at restore. When nothing can go, the new series' readings are skipped,
 *   counted in `stats.seriesLimit` and logged: the first time (with the sensor turned
 *   away), then once a minute with counts while it lasts, and when there is room again.
 * - Reload: a rule with the same version (hash of its state-defining fields) keeps its
 *   series and takes the new severity/labels/extra/notify/repeat/cooldown. A removed rule
 *   ends its series: firing ones send `alert.resolved` (silent ones `sensor.returned`)
 *   with reason "rule removed", and their rows are removed. A changed rule (same name,
 *   same kind) judges its series again on their last known value, so an operator who
 *   lowers a threshold does not get `alert.resolved` for a value that is above both:
 *   - a firing (or clearing) series that the new rule would keep firing (the value is
 *     not clear under its condition and hysteresis) stays firing: no event, its `since`,
 *     repeats and windows continue; otherwise it is resolved with reason "rule changed";
 *   - a pending series whose value still meets the new condition stays pending from
 *     when it started (a new `for` counts from there); otherwise it is ok again, quietly;
 *   - an ok series stays ok until its next reading (a stale value never fires);
 *   - a silent `absent_for` series stays silent; a seen one keeps its last time.
 *   Carried over only when the series still matches the new rule and its value means the
 *   same (raw value, or the same aggregate/rate window); otherwise the series ends as
 *   with a removed rule, with reason "rule changed". The same applies to a rule changed
 *   while the agent was down (rows record what their value is). A batched forward rule
 *   sends what it buffered first.
 */
import type { Clock } from "../clock.js";
import type { RuleConfig, Severity } from "../config/schema.js";
import { type CommitBatch, type EventType, type NewEvent, newEventId, type SeriesStateRow } from "../events.js";
import { type Logger, RateLimitedLog, silentLogger } from "../ops/logger.js";
import { parseSeriesKey, type SeriesId, seriesKey } from "../series-key.js";
import type { Reading, ReadingValue } from "../sources/reading.js";
import { type CompiledRule, compileRule, toNumber } from "./conditions.js";
import { DueQueue, type Schedulable } from "./due-queue.js";
import { AggregateWindow, RateWindow } from "./windows.js";

/** Readings per `readings` event at most; a full buffer is sent before `batch_every`. */
export const MAX_BATCH = 1000;
/** The (sensor, metric) → rules cache is cleared when it grows past this many pairs. */
const MATCH_CACHE_LIMIT = 50_000;
/** Sensor part of the series key of buffered batch readings. */
const BATCH_SENSOR = "\u0000batch";
/** ECMAScript Date range in ms. */
const MAX_DATE = 8.64e15;

const OK = 0;
const PENDING = 1;
const FIRING = 2;
const CLEARING = 3;
type Phase = typeof OK | typeof PENDING | typeof FIRING | typeof CLEARING;
const PHASE_NAMES = ["ok", "pending", "firing", "clearing"] as const;

const EMPTY_LABELS: Readonly<Record<string, string>> = Object.freeze({});

export interface RuleEngineOptions {
  agentId: string;
  rules: readonly RuleConfig[];
  clock: Clock;
  /**
   * Most series kept in memory (design invariant 6: sensor names come from topics and
   * lines, so their number is not ours to choose). What happens at the limit is in the
   * header ("Series limit"). Default 100,000.
   */
  maxSeries?: number;
  /**
   * Readings stamped more than this many ms ahead of the clock are processed with the
   * clock's time instead (see the header). Default 5 minutes.
   */
  maxFutureMs?: number;
  /** Where skipped, late and re-stamped readings are reported (rate-limited). */
  logger?: Logger;
}

export const DEFAULT_MAX_SERIES = 100_000;
/** A series with state but nothing open must have had no reading this long to be evicted. */
export const QUIET_IDLE_MS = 60_000;
/** A pending, firing or silent series must have had no reading this long to be evicted. */
export const OPEN_IDLE_MS = 3_600_000;
/** One sweep makes room for this share of the limit (so sweeps stay rare under churn). */
const SWEEP_SHARE = 0.01;
export const DEFAULT_MAX_FUTURE_MS = 5 * 60_000;
/** Each kind of skipped reading is logged at most this often, with the count in between. */
const LOG_INTERVAL_MS = 60_000;
/** At the limit, a sweep that found nothing to evict is not tried again for this long (it is O(series)). */
const SWEEP_INTERVAL_MS = 60_000;

export interface RuleEngineStats {
  /** Readings older than the newest seen for their series, ignored for state. */
  late: number;
  /** Readings a numeric rule could not read as a number. */
  nonNumeric: number;
  /** Buffered batch readings dropped because their rule was removed while the agent was down. */
  droppedBatched: number;
  /** State rows from before a restart that no longer fit a rule and were removed. */
  staleStates: number;
  /** Readings whose ts is not a usable time (NaN, before the Date range), skipped. */
  badTime: number;
  /** Readings stamped more than maxFutureMs ahead of the clock, processed with the clock's time. */
  future: number;
  /** Series whose newest reading time was beyond maxFutureMs ahead of the clock, and was forgotten. */
  futureState: number;
  /** Readings of new series skipped because `maxSeries` series are active. */
  seriesLimit: number;
  /** Series evicted to make room (all kinds). */
  seriesEvicted: number;
  /** ... of which ok or seen series that kept state (a cooldown, window samples, a silence watch). */
  seriesEvictedIdle: number;
  /** ... of which pending, firing or silent series (open ones closed with reason "series limit"). */
  seriesEvictedOpen: number;
}

/** Who receives an event and how it is ranked; from the rule, or from a stored row. */
interface EventMeta {
  name: string;
  severity: Severity;
  priority: number;
  notify: readonly string[];
}

interface SeriesBase extends Schedulable {
  readonly key: string;
  rule: CompiledRule;
  readonly sensor: string;
  readonly metric: string;
  /** A row exists in the store. */
  persisted: boolean;
  /** Queued for a state row at the end of this call. */
  dirty: boolean;
  /** Agent time of its last reading (or of its creation or restore): the eviction order. */
  activeAt: number;
}

interface AlertSeries extends SeriesBase {
  readonly kind: "alert";
  phase: Phase;
  /** Newest reading time seen (late detection). */
  lastTs: number;
  lastLabels: Readonly<Record<string, string>>;
  raw: ReadingValue | undefined;
  /** Last compared value: the reading, its aggregate or its rate. */
  value: number | string | boolean | undefined;
  /** Agent time the condition started (pending since). */
  pendingAt: number;
  /** Reading time the condition started: the body's `since`. */
  sinceTs: number;
  firedAt: number;
  clearingAt: number;
  notifiedAt: number;
  repeats: number;
  cooldownUntil: number;
  agg: AggregateWindow | undefined;
  rate: RateWindow | undefined;
}

interface AbsentSeries extends SeriesBase {
  readonly kind: "absent";
  silent: boolean;
  /** The series has been seen (row written), as opposed to watched from a literal name. */
  seen: boolean;
  lastTs: number;
  lastSeenAt: number;
  raw: ReadingValue | undefined;
  lastLabels: Readonly<Record<string, string>>;
  /** Agent time the silence began (last reading, or restore/start time). */
  silenceFrom: number;
  /** The body's `since` of the silence: last reading time, or watch start. */
  sinceTs: number;
}

interface BatchEntry {
  key: string;
  sensor: string;
  metric: string;
  value: ReadingValue;
  ts: number;
  labels: Readonly<Record<string, string>>;
  /** The row written for it in the current call, if any (see #flush). */
  row: SeriesStateRow | undefined;
}

interface BatchBuffer extends Schedulable {
  readonly kind: "batch";
  rule: CompiledRule;
  readonly key: string;
  entries: BatchEntry[];
}

type Series = AlertSeries | AbsentSeries;
type Due = Series | BatchBuffer;

interface Target {
  rule: CompiledRule;
  key: string;
  series: Series | undefined;
}

const NO_TARGETS: Target[] = [];

const iso = (ms: number): string => new Date(ms).toISOString();
/** For logs: an ISO time when the number is one, the number otherwise. */
const safeIso = (ms: number): string => (ms > -MAX_DATE && ms < MAX_DATE ? iso(ms) : String(ms));

export class RuleEngine {
  readonly #agentId: string;
  readonly #clock: Clock;
  #maxSeries: number;
  #maxFutureMs: number;
  readonly #log: Logger;
  readonly #quiet: RateLimitedLog;
  #lastSweep = Number.NEGATIVE_INFINITY;
  /** The last sweep made a full share of room, or a series went quiet since: a sweep may help at once. */
  #maySweep = true;
  /** Readings of new series turned away since the last sweep: how many open series it may evict. */
  #demand = 0;
  /** New series are being turned away (for logging the change). */
  #refusing = false;
  /** Turned away since the last series-limit log line. */
  #turnedAway = 0;
  #fullLoggedAt = Number.NEGATIVE_INFINITY;
  #stillLoggedAt = Number.NEGATIVE_INFINITY;
  #roomLoggedAt = Number.NEGATIVE_INFINITY;
  #rules: CompiledRule[];
  #byName: Map<string, CompiledRule>;
  readonly #series = new Map<string, Series>();
  readonly #batches = new Map<string, BatchBuffer>();
  #cache = new Map<string, Map<string, Target[]>>();
  #cacheSize = 0;
  readonly #queue = new DueQueue<Due>();
  #batchSeq = 0;
  /** Started lazily, at the first call, so the constructor only assigns. */
  #started = false;
  /** Work produced outside a call (restore) that goes out with the next batch. */
  #carry: CommitBatch = { events: [], states: [], removedStates: [] };
  #out: CommitBatch = { events: [], states: [], removedStates: [] };
  #now = 0;
  #dirty: Series[] = [];
  /** Batch entries whose row was written in the current call. */
  #fresh: BatchEntry[] = [];

  readonly stats: RuleEngineStats = {
    late: 0,
    nonNumeric: 0,
    droppedBatched: 0,
    staleStates: 0,
    badTime: 0,
    future: 0,
    futureState: 0,
    seriesLimit: 0,
    seriesEvicted: 0,
    seriesEvictedIdle: 0,
    seriesEvictedOpen: 0,
  };

  constructor(opts: RuleEngineOptions) {
    this.#maxSeries = opts.maxSeries ?? DEFAULT_MAX_SERIES;
    this.#maxFutureMs = opts.maxFutureMs ?? DEFAULT_MAX_FUTURE_MS;
    this.#log = opts.logger ?? silentLogger();
    this.#quiet = new RateLimitedLog(LOG_INTERVAL_MS, () => opts.clock.now());
    this.#agentId = opts.agentId;
    this.#clock = opts.clock;
    this.#rules = opts.rules.map(compileRule);
    this.#byName = new Map(this.#rules.map((r) => [r.name, r]));
  }

  // ------------------------------------------------------------------ public API

  /** Loads the rows committed before a restart. Call once, before the first reading. */
  restore(rows: SeriesStateRow[]): void {
    this.#start();
    const now = this.#clock.now();
    this.#now = now;
    const batchRows: { seq: number; row: SeriesStateRow; rule: CompiledRule }[] = [];
    // New buffered readings must never reuse the key of a stored one, whatever its rule.
    for (const row of rows) {
      const id = parseSeriesKey(row.series);
      const seq = id?.sensor === BATCH_SENSOR ? Number(id.metric) : Number.NaN;
      if (Number.isInteger(seq) && seq >= this.#batchSeq) this.#batchSeq = seq + 1;
    }
    for (const row of rows) {
      const rule = this.#byName.get(row.rule);
      const id = parseSeriesKey(row.series);
      const st = row.state as Record<string, unknown> | null;
      if (!rule || rule.version !== row.version || id === undefined || typeof st !== "object" || st === null) {
        const adopted = rule !== undefined && this.#restoreChanged(rule, row, id, st, now);
        if (!adopted) this.#endStaleRow(row, id, st, rule ? "rule changed" : "rule removed", rule);
        continue;
      }
      const { sensor, metric } = id;
      if (rule.kind === "forward") {
        if (sensor === BATCH_SENSOR && rule.batchMs !== undefined) {
          batchRows.push({ seq: Number(metric), row, rule });
        } else {
          this.#carry.removedStates.push({ rule: row.rule, series: row.series });
        }
        continue;
      }
      const s = rule.kind === "alert" ? this.#restoreAlert(rule, row.series, sensor, metric, st, now) : undefined;
      const a = rule.kind === "absent" ? this.#restoreAbsent(rule, row.series, sensor, metric, st, now) : undefined;
      const series = s ?? a;
      if (!series) {
        this.stats.staleStates++;
        this.#carry.removedStates.push({ rule: row.rule, series: row.series });
        continue;
      }
      const old = this.#series.get(series.key);
      if (old) old.gone = true;
      this.#series.set(series.key, series);
      this.#scheduleNext(series, now);
    }
    batchRows.sort((x, y) => x.seq - y.seq);
    for (const { row, rule } of batchRows) {
      const st = row.state as Record<string, unknown>;
      if (typeof st.sensor !== "string" || typeof st.metric !== "string" || typeof st.ts !== "number") continue;
      const value = st.value as ReadingValue;
      const buf = this.#batchFor(rule);
      buf.entries.push({
        key: row.series,
        sensor: st.sensor,
        metric: st.metric,
        value,
        ts: st.ts,
        labels: (st.labels as Record<string, string> | undefined) ?? EMPTY_LABELS,
        row: undefined,
      });
    }
    for (const buf of this.#batches.values()) {
      if (buf.entries.length > 0 && buf.rule.batchMs !== undefined) this.#queue.schedule(buf, now + buf.rule.batchMs);
    }
    this.#cache.clear();
    this.#cacheSize = 0;
  }

  process(readings: readonly Reading[]): CommitBatch {
    this.#begin();
    const now = this.#now;
    const horizon = now + this.#maxFutureMs;
    for (let i = 0; i < readings.length; i++) {
      let r = readings[i] as Reading;
      // NaN, or before what a Date can hold: no body could carry its time.
      if (!(r.ts > -MAX_DATE)) {
        this.#badTime(r);
        continue;
      }
      // From the future (up to +Infinity): judged now, at the agent's time (see the header).
      const restamped = r.ts > horizon;
      if (restamped) r = this.#restamp(r, now);
      const targets = this.#targets(r.sensor, r.metric);
      for (let j = 0; j < targets.length; j++) {
        const t = targets[j] as Target;
        const rule = t.rule;
        if (rule.labels !== undefined && !labelsMatch(rule.labels, r.labels)) continue;
        if (rule.kind === "alert") this.#alertReading(t, r, now, restamped);
        else if (rule.kind === "absent") this.#absentReading(t, r, now, restamped);
        else this.#forwardReading(rule, r, now);
      }
    }
    return this.#finish();
  }

  tick(): CommitBatch {
    this.#begin();
    const now = this.#now;
    for (const item of this.#queue.takeDue(now)) {
      if (item.gone) continue;
      if (item.kind === "batch") {
        if (item.entries.length > 0) this.#flush(item, now);
      } else if (item.kind === "alert") {
        this.#alertDue(item, now);
        this.#scheduleNext(item, now);
      } else {
        this.#absentDue(item, now);
        this.#scheduleNext(item, now);
      }
    }
    return this.#finish();
  }

  /** Series with state in memory (for metrics). */
  get seriesCount(): number {
    return this.#series.size;
  }

  nextDueAt(): number | undefined {
    this.#start();
    const c = this.#carry;
    if (c.events.length > 0 || c.states.length > 0 || c.removedStates.length > 0) return this.#clock.now();
    // Rows restore decided to rewrite (a changed rule adopted, a future time forgotten).
    if (this.#dirty.length > 0) return this.#clock.now();
    return this.#queue.peek();
  }

  /** New rules (see the header for what happens to their series) and, optionally, new limits. */
  reconfigure(
    rules: readonly RuleConfig[],
    limits: Pick<RuleEngineOptions, "maxFutureMs" | "maxSeries"> = {},
  ): CommitBatch {
    this.#begin();
    const now = this.#now;
    if (limits.maxFutureMs !== undefined) this.#maxFutureMs = limits.maxFutureMs;
    if (limits.maxSeries !== undefined && limits.maxSeries !== this.#maxSeries) {
      this.#maxSeries = limits.maxSeries;
      this.#maySweep = true;
    }
    const next = rules.map(compileRule);
    const nextByName = new Map(next.map((r) => [r.name, r]));
    for (const [key, s] of this.#series) {
      const nr = nextByName.get(s.rule.name);
      if (nr && nr.version === s.rule.version) {
        s.rule = nr;
        continue;
      }
      if (nr && this.#adopt(s, nr, s.kind === "alert" ? valueBasis(s.rule) : undefined)) continue;
      this.#endSeries(s, now, nr ? "rule changed" : "rule removed");
      s.gone = true;
      if (s.persisted) this.#out.removedStates.push({ rule: s.rule.name, series: key });
      this.#series.delete(key);
    }
    for (const [name, buf] of this.#batches) {
      const nr = nextByName.get(name);
      if (nr && nr.version === buf.rule.version) {
        buf.rule = nr;
        continue;
      }
      // Nothing a forward rule buffered is lost on reload: it goes out under the old rule.
      if (buf.entries.length > 0) this.#flush(buf, now);
      buf.gone = true;
      this.#batches.delete(name);
    }
    this.#rules = next;
    this.#byName = nextByName;
    this.#cache.clear();
    this.#cacheSize = 0;
    this.#watchKnownSensors(now);
    // Repeat and cooldown may have changed on kept rules: schedule everything afresh.
    this.#queue.clear();
    for (const s of this.#series.values()) {
      s.dueAt = undefined;
      this.#scheduleNext(s, now);
    }
    for (const b of this.#batches.values()) {
      b.dueAt = undefined;
      if (b.entries.length > 0 && b.rule.batchMs !== undefined) this.#queue.schedule(b, now + b.rule.batchMs);
    }
    return this.#finish();
  }

  // ------------------------------------------------------------------ call framing

  #start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#watchKnownSensors(this.#clock.now());
  }

  #begin(): void {
    this.#start();
    this.#now = this.#clock.now();
    this.#out = this.#carry;
    this.#carry = { events: [], states: [], removedStates: [] };
  }

  #finish(): CommitBatch {
    const out = this.#out;
    const dirty = this.#dirty;
    if (dirty.length > 0) {
      for (let i = 0; i < dirty.length; i++) {
        const s = dirty[i] as Series;
        s.dirty = false;
        if (s.gone) continue;
        const state = s.kind === "alert" ? alertState(s) : absentState(s);
        if (state === undefined) {
          if (s.persisted) out.removedStates.push({ rule: s.rule.name, series: s.key });
          s.persisted = false;
        } else {
          out.states.push({ rule: s.rule.name, series: s.key, version: s.rule.version, state });
          s.persisted = true;
        }
      }
      this.#dirty = [];
    }
    if (this.#fresh.length > 0) {
      for (const e of this.#fresh) e.row = undefined;
      this.#fresh = [];
    }
    // A batch never names a series in both lists, so the order in which the agent
    // applies them cannot matter. Only a row removed by restore (carried over) and
    // written again in this call can meet here; the write is the newer state.
    if (out.removedStates.length > 0 && out.states.length > 0) {
      const written = new Set(out.states.map((r) => `${r.rule}\u001f${r.series}`));
      out.removedStates = out.removedStates.filter((r) => !written.has(`${r.rule}\u001f${r.series}`));
    }
    this.#out = { events: [], states: [], removedStates: [] };
    return out;
  }

  #mark(s: Series): void {
    if (s.dirty) return;
    s.dirty = true;
    this.#dirty.push(s);
  }

  // ------------------------------------------------------------------ matching

  /** Rules whose sensor and metric globs match, cached per pair (labels are checked per reading). */
  #targets(sensor: string, metric: string): Target[] {
    let bySensor = this.#cache.get(sensor);
    let targets = bySensor?.get(metric);
    if (targets !== undefined) return targets;
    targets = NO_TARGETS;
    for (const rule of this.#rules) {
      if (!rule.sensor(sensor) || !rule.metric(metric)) continue;
      if (targets === NO_TARGETS) targets = [];
      const key =
        rule.kind === "absent" && rule.perSensor
          ? seriesKey(rule.name, sensor, "*")
          : seriesKey(rule.name, sensor, metric);
      targets.push({ rule, key, series: this.#series.get(key) });
    }
    if (this.#cacheSize >= MATCH_CACHE_LIMIT) {
      this.#cache.clear();
      this.#cacheSize = 0;
      bySensor = undefined;
    }
    if (bySensor === undefined) {
      bySensor = new Map();
      this.#cache.set(sensor, bySensor);
    }
    bySensor.set(metric, targets);
    this.#cacheSize++;
    return targets;
  }

  // ------------------------------------------------------------------ memory bound

  /** Room for the series of this reading? At the limit, sweeps (see the header); else turns it away. */
  #admit(now: number, r: Reading, rule: CompiledRule): boolean {
    if (this.#series.size >= this.#maxSeries && (this.#maySweep || now - this.#lastSweep >= SWEEP_INTERVAL_MS)) {
      this.#sweep(now);
    }
    if (this.#series.size < this.#maxSeries) {
      if (this.#refusing) this.#roomAgain(now);
      return true;
    }
    this.#refuse(now, r, rule);
    return false;
  }

  /**
   * Evicts, in this order, until a share of the limit is free: every series at rest
   * (nothing to lose); then ok/seen series with state that had no reading for
   * QUIET_IDLE_MS, least recently active first; then, only as many as new series are
   * waiting, pending and open (firing, clearing, silent) series that had no reading for
   * OPEN_IDLE_MS, least recently active first, pending before open. An open one is closed
   * for its receivers (`alert.resolved`/`sensor.returned`, reason "series limit"). Never
   * evicted: series that are pending or open and active, and the silence watch of a
   * sensor an absent_for rule names literally. O(series), so not tried again for a
   * minute when it freed less than its share, unless a series went quiet meanwhile.
   */
  #sweep(now: number): void {
    this.#lastSweep = now;
    const share = Math.max(1, Math.ceil(this.#maxSeries * SWEEP_SHARE));
    const want = this.#series.size - this.#maxSeries + share;
    let freed = 0;
    const quiet: Series[] = [];
    const open: Series[] = [];
    for (const s of this.#series.values()) {
      if (s.kind === "absent" && s.sensor === s.rule.knownSensor) continue;
      if (atRest(s, now)) {
        this.#evict(s, now);
        freed++;
      } else if (!isOpen(s)) {
        if (now - s.activeAt >= QUIET_IDLE_MS) quiet.push(s);
      } else if (now - s.activeAt >= OPEN_IDLE_MS) open.push(s);
    }
    const byAge = (a: Series, b: Series) => a.activeAt - b.activeAt;
    let idle = 0;
    if (freed < want && quiet.length > 0) {
      quiet.sort(byAge);
      for (let i = 0; i < quiet.length && freed < want; i++, freed++, idle++) this.#evict(quiet[i] as Series, now);
    }
    let closed = 0;
    let oldest: Series | undefined;
    if (freed < want && open.length > 0) {
      // Pending first (nothing was sent for them), then by age.
      open.sort((a, b) => Number(isPending(b)) - Number(isPending(a)) || byAge(a, b));
      const limit = Math.min(want - freed, this.#demand + 1);
      oldest = open[0];
      for (let i = 0; i < open.length && closed < limit; i++, freed++, closed++) this.#evict(open[i] as Series, now);
    }
    this.stats.seriesEvictedIdle += idle;
    this.stats.seriesEvictedOpen += closed;
    this.#maySweep = freed >= share;
    this.#demand = 0;
    if (idle + closed > 0) {
      const suppressed = this.#quiet.shouldLog("evicted");
      if (suppressed !== undefined) {
        this.#log.warn(
          {
            evicted_idle: idle,
            evicted_open: closed,
            ...(oldest
              ? {
                  oldest: { rule: oldest.rule.name, sensor: oldest.sensor, metric: oldest.metric },
                  idle_s: Math.round((now - oldest.activeAt) / 1000),
                }
              : {}),
            max_series: this.#maxSeries,
            evicted_total: this.stats.seriesEvicted,
            suppressed,
          },
          "series limit: evicted idle series to make room for new ones",
        );
      }
    }
  }

  #evict(s: Series, now: number): void {
    this.#endSeries(s, now, "series limit");
    s.gone = true;
    if (s.persisted) this.#out.removedStates.push({ rule: s.rule.name, series: s.key });
    this.#series.delete(s.key);
    this.stats.seriesEvicted++;
  }

  #refuse(now: number, r: Reading, rule: CompiledRule): void {
    this.stats.seriesLimit++;
    this.#turnedAway++;
    this.#demand++;
    const starting = !this.#refusing;
    this.#refusing = true;
    // The change is logged (at most once a minute); while it lasts, a line a minute with counts.
    if (starting ? now - this.#fullLoggedAt < LOG_INTERVAL_MS : now - this.#stillLoggedAt < LOG_INTERVAL_MS) return;
    if (starting) this.#fullLoggedAt = now;
    this.#stillLoggedAt = now;
    this.#log.warn(
      {
        rule: rule.name,
        sensor: r.sensor,
        metric: r.metric,
        source: r.source,
        series: this.#series.size,
        max_series: this.#maxSeries,
        turned_away: this.#turnedAway,
        series_limit_total: this.stats.seriesLimit,
      },
      starting
        ? "series limit reached: readings of new series are skipped (agent.max_series)"
        : "series limit: readings of new series are still skipped (agent.max_series)",
    );
    this.#turnedAway = 0;
  }

  #roomAgain(now: number): void {
    this.#refusing = false;
    if (now - this.#roomLoggedAt < LOG_INTERVAL_MS) return;
    this.#roomLoggedAt = now;
    this.#log.info(
      {
        series: this.#series.size,
        max_series: this.#maxSeries,
        turned_away: this.#turnedAway,
        series_limit_total: this.stats.seriesLimit,
        evicted_total: this.stats.seriesEvicted,
      },
      "series limit: room for new series again",
    );
    this.#turnedAway = 0;
  }

  // ------------------------------------------------------------------ reading times

  /**
   * True (counted, logged) when the reading is older than the newest one of its series.
   * A newest time beyond the future bound is forgotten first: it can only come from a
   * clock that was set back since, and would make every reading late until it passes.
   */
  #isLate(s: Series, r: Reading, now: number): boolean {
    if (s.lastTs > now + this.#maxFutureMs) this.#forgetFutureTs(s, now);
    if (!(r.ts < s.lastTs)) return false;
    this.stats.late++;
    const suppressed = this.#quiet.shouldLog("late");
    if (suppressed !== undefined) {
      this.#log.warn(
        {
          rule: s.rule.name,
          sensor: r.sensor,
          metric: r.metric,
          source: r.source,
          ts: iso(r.ts),
          newest_ts: iso(s.lastTs),
          behind_s: (s.lastTs - r.ts) / 1000,
          late_total: this.stats.late,
          suppressed,
        },
        "late reading ignored by the rule: older than the newest reading of its series",
      );
    }
    return true;
  }

  #forgetFutureTs(s: Series, now: number): void {
    this.stats.futureState++;
    const suppressed = this.#quiet.shouldLog("future_state");
    if (suppressed !== undefined) {
      this.#log.warn(
        {
          rule: s.rule.name,
          sensor: s.sensor,
          metric: s.metric,
          newest_ts: safeIso(s.lastTs),
          ahead_s: Math.round((s.lastTs - now) / 1000),
          max_future_skew_s: this.#maxFutureMs / 1000,
          suppressed,
        },
        "newest reading time of a series is ahead of the agent's clock (was the clock set back?): forgotten",
      );
    }
    s.lastTs = Number.NEGATIVE_INFINITY;
  }

  #restamp(r: Reading, now: number): Reading {
    this.stats.future++;
    const suppressed = this.#quiet.shouldLog("future");
    if (suppressed !== undefined) {
      this.#log.warn(
        {
          sensor: r.sensor,
          metric: r.metric,
          source: r.source,
          ts: safeIso(r.ts),
          ahead_s: Number.isFinite(r.ts) ? Math.round((r.ts - now) / 1000) : null,
          max_future_skew_s: this.#maxFutureMs / 1000,
          future_total: this.stats.future,
          suppressed,
        },
        "reading stamped ahead of the agent's clock: judged with its arrival time instead",
      );
    }
    return { ...r, ts: now };
  }

  #badTime(r: Reading): void {
    this.stats.badTime++;
    const suppressed = this.#quiet.shouldLog("bad_time");
    if (suppressed !== undefined) {
      this.#log.warn(
        {
          sensor: r.sensor,
          metric: r.metric,
          source: r.source,
          ts: String(r.ts),
          bad_time_total: this.stats.badTime,
          suppressed,
        },
        "reading without a usable time skipped",
      );
    }
  }

  // ------------------------------------------------------------------ alert rules

  #alertReading(t: Target, r: Reading, now: number, restamped: boolean): void {
    const rule = t.rule;
    let s = t.series as AlertSeries | undefined;
    if (s === undefined || s.gone) {
      s = this.#series.get(t.key) as AlertSeries | undefined;
      if (s === undefined) {
        if (!this.#admit(now, r, rule)) return;
        s = newAlertSeries(rule, t.key, r.sensor, r.metric, now);
        this.#series.set(t.key, s);
      }
      t.series = s;
    }
    if (!restamped && this.#isLate(s, r, now)) return;
    s.activeAt = now;
    const cond = rule.condition!;
    let v: number | string;
    let x = 0;
    if (cond.numeric) {
      x = toNumber(r.value);
      if (!Number.isFinite(x)) {
        this.stats.nonNumeric++;
        return;
      }
      v = x;
    } else {
      v = typeof r.value === "string" ? r.value : String(r.value);
    }
    if (!restamped) s.lastTs = r.ts;
    s.lastLabels = r.labels;
    s.raw = r.value;
    if (rule.aggregate !== undefined) {
      if (s.agg === undefined) s.agg = new AggregateWindow(rule.aggregate.fn, rule.aggregate.overMs);
      s.agg.evict(now);
      s.agg.add(now, x);
      v = s.agg.value() as number;
    } else if (rule.rate !== undefined) {
      if (s.rate === undefined) s.rate = new RateWindow(rule.rate.windowMs);
      s.rate.evict(now);
      s.rate.add(now, r.ts, x);
      const perSecond = s.rate.perSecond();
      if (perSecond === undefined) return;
      v = perSecond * rule.rate.factor;
    }
    s.value = cond.numeric ? v : r.value;
    this.#step(s, v, r.ts, now);
    if (s.agg !== undefined && s.phase !== OK) {
      const expiry = s.agg.nextExpiry();
      if (expiry !== undefined) this.#queue.schedule(s, expiry);
    }
  }

  #pendingDue(s: AlertSeries): number {
    const due = s.pendingAt + s.rule.forMs;
    return Math.max(s.cooldownUntil, due);
  }

  #step(s: AlertSeries, v: number | string, ts: number, now: number): void {
    const cond = s.rule.condition!;
    switch (s.phase) {
      case OK: {
        if (!cond.active(v)) return;
        s.pendingAt = now;
        s.sinceTs = ts;
        const due = this.#pendingDue(s);
        if (now >= due) this.#fire(s, ts, now);
        else {
          s.phase = PENDING;
          this.#mark(s);
          this.#queue.schedule(s, due);
        }
        return;
      }
      case PENDING: {
        if (!cond.active(v)) {
          s.phase = OK;
          this.#mark(s);
          this.#maySweep = true;
          return;
        }
        const due = this.#pendingDue(s);
        if (now >= due) this.#fire(s, ts, now);
        else this.#queue.schedule(s, due);
        return;
      }
      case FIRING: {
        if (!cond.clear(v)) return;
        if (s.rule.clearForMs === 0) this.#resolve(s, ts, now, "cleared");
        else {
          s.phase = CLEARING;
          s.clearingAt = now;
          this.#mark(s);
          this.#queue.schedule(s, now + s.rule.clearForMs);
        }
        return;
      }
      default: {
        if (!cond.clear(v)) {
          s.phase = FIRING;
          this.#mark(s);
          return;
        }
        const due = s.clearingAt + s.rule.clearForMs;
        if (now >= due) this.#resolve(s, ts, now, "cleared");
        else this.#queue.schedule(s, due);
      }
    }
  }

  #alertDue(s: AlertSeries, now: number): void {
    // A window that loses samples changes its aggregate without any reading: an open
    // alert (count of door openings, say) must be able to clear when the readings stop.
    if (s.agg !== undefined && s.phase !== OK) {
      s.agg.evict(now);
      const v = s.agg.value();
      if (v !== undefined) {
        s.value = v;
        this.#step(s, v, now, now);
      }
    }
    if (s.phase === PENDING && now >= this.#pendingDue(s)) {
      this.#fire(s, now, now);
      return;
    }
    if (s.phase === CLEARING && now >= s.clearingAt + s.rule.clearForMs) {
      this.#resolve(s, now, now, "cleared");
      return;
    }
    const every = s.rule.repeatMs;
    if ((s.phase === FIRING || s.phase === CLEARING) && every !== undefined && now >= s.notifiedAt + every) {
      s.notifiedAt = now;
      s.repeats++;
      const data = this.#alertData(s, s.value);
      data.repeat = s.repeats;
      data.firing_for_s = Math.round((now - s.firedAt) / 1000);
      this.#emit("alert.repeat", s.rule.cfg, s.rule.priority, s.key, now, now, data, s.rule.cfg.extra);
      this.#mark(s);
    }
  }

  #fire(s: AlertSeries, ts: number, now: number): void {
    s.phase = FIRING;
    s.firedAt = now;
    s.notifiedAt = now;
    s.repeats = 0;
    this.#mark(s);
    const cfg = s.rule.cfg;
    this.#emit("alert.firing", cfg, s.rule.priority, s.key, ts, now, this.#alertData(s, s.value), cfg.extra);
    if (s.rule.repeatMs !== undefined) this.#queue.schedule(s, now + s.rule.repeatMs);
  }

  #resolve(s: AlertSeries, ts: number, now: number, reason: string): void {
    const data = this.#alertData(s, s.value);
    data.duration_s = Math.max(0, Math.round((ts - s.sinceTs) / 1000));
    data.reason = reason;
    const cfg = s.rule.cfg;
    this.#emit("alert.resolved", cfg, s.rule.priority, s.key, ts, now, data, cfg.extra);
    s.phase = OK;
    s.cooldownUntil = s.rule.cooldownMs !== undefined ? now + s.rule.cooldownMs : 0;
    this.#mark(s);
    this.#maySweep = true;
  }

  #alertData(s: AlertSeries, value: unknown): Record<string, unknown> {
    const rule = s.rule;
    const cfg = rule.cfg;
    const cond = rule.condition!;
    const data: Record<string, unknown> = {
      agent: this.#agentId,
      rule: rule.name,
      sensor: s.sensor,
      metric: s.metric,
      // Aggregates and rates are computed: 6 decimals are plenty and read better than 2.666666666666667.
      value:
        value === undefined
          ? null
          : rule.kind === "alert" && typeof value === "number" && (rule.aggregate || rule.rate)
            ? round6(value)
            : value,
      threshold: cond.threshold,
      condition: cond.name,
      severity: cfg.severity,
      labels: mergeLabels(s.lastLabels, cfg.labels),
      since: iso(s.sinceTs),
    };
    if (rule.aggregate !== undefined) {
      data.aggregate = { fn: rule.aggregate.fn, over_s: rule.aggregate.overMs / 1000 };
      data.reading_value = s.raw ?? null;
    } else if (rule.rate !== undefined) {
      data.rate_per = cfg.rate_per;
      data.rate_window_s = rule.rate.windowMs / 1000;
      data.reading_value = s.raw ?? null;
    }
    return data;
  }

  #restoreAlert(
    rule: CompiledRule,
    key: string,
    sensor: string,
    metric: string,
    st: Record<string, unknown>,
    now: number,
  ): AlertSeries | undefined {
    const phase = PHASE_NAMES.indexOf(st.phase as (typeof PHASE_NAMES)[number]);
    if (phase < 0) return undefined;
    const s = newAlertSeries(rule, key, sensor, metric, now);
    s.persisted = true;
    s.phase = phase as Phase;
    s.pendingAt = num(st.pending_at, now);
    s.sinceTs = num(st.since, now);
    s.firedAt = num(st.fired_at, now);
    s.clearingAt = num(st.clearing_at, now);
    s.notifiedAt = num(st.notified_at, s.firedAt);
    s.repeats = num(st.repeats, 0);
    s.cooldownUntil = num(st.cooldown_until, 0);
    s.value = st.value as number | string | boolean | undefined;
    if (st.labels && typeof st.labels === "object") s.lastLabels = st.labels as Record<string, string>;
    if (phase === OK && s.cooldownUntil <= now) {
      // Only an expired cooldown was left: nothing to keep.
      this.#carry.removedStates.push({ rule: rule.name, series: key });
      return undefined;
    }
    return s;
  }

  // ------------------------------------------------------------------ absent_for rules

  #absentReading(t: Target, r: Reading, now: number, restamped: boolean): void {
    let s = t.series as AbsentSeries | undefined;
    if (s === undefined || s.gone) {
      s = this.#series.get(t.key) as AbsentSeries | undefined;
      if (s === undefined) {
        if (!this.#admit(now, r, t.rule)) return;
        s = newAbsentSeries(t.rule, t.key, r.sensor, t.rule.perSensor ? "*" : r.metric, now);
        this.#series.set(t.key, s);
      }
      t.series = s;
    }
    if (!restamped && this.#isLate(s, r, now)) return;
    s.activeAt = now;
    if (s.silent) {
      // Built before the update, so last_seen is the reading before the silence.
      s.silent = false;
      this.#mark(s);
      const data = this.#absentData(s);
      data.value = r.value;
      data.labels = mergeLabels(r.labels, s.rule.cfg.labels);
      data.duration_s = Math.max(0, Math.round((now - s.silenceFrom) / 1000));
      data.reason = "reading received";
      this.#emit("sensor.returned", s.rule.cfg, s.rule.priority, s.key, r.ts, now, data, s.rule.cfg.extra);
    }
    if (!restamped) s.lastTs = r.ts;
    s.lastSeenAt = now;
    s.raw = r.value;
    s.lastLabels = r.labels;
    if (!s.seen) {
      s.seen = true;
      this.#mark(s);
    }
    this.#queue.schedule(s, now + (s.rule.absentMs as number));
  }

  #absentDue(s: AbsentSeries, now: number): void {
    if (s.silent || now < s.lastSeenAt + (s.rule.absentMs as number)) return;
    s.silent = true;
    s.silenceFrom = s.lastSeenAt;
    s.sinceTs = Number.isFinite(s.lastTs) ? s.lastTs : s.lastSeenAt;
    this.#mark(s);
    this.#emit("sensor.silent", s.rule.cfg, s.rule.priority, s.key, now, now, this.#absentData(s), s.rule.cfg.extra);
  }

  #absentData(s: AbsentSeries): Record<string, unknown> {
    const cfg = s.rule.cfg;
    return {
      agent: this.#agentId,
      rule: s.rule.name,
      sensor: s.sensor,
      metric: s.metric,
      value: s.raw ?? null,
      threshold: (s.rule.absentMs as number) / 1000,
      condition: "absent_for",
      severity: cfg.severity,
      labels: mergeLabels(s.lastLabels, cfg.labels),
      since: iso(s.sinceTs),
      last_seen: Number.isFinite(s.lastTs) ? iso(s.lastTs) : null,
      absent_for_s: (s.rule.absentMs as number) / 1000,
    };
  }

  /** Absent rules with literal names watch their series from the start, seen or not. */
  #watchKnownSensors(now: number): void {
    for (const rule of this.#rules) {
      if (rule.kind !== "absent" || rule.knownSensor === undefined) continue;
      const metric = rule.perSensor ? "*" : rule.knownMetric;
      if (metric === undefined) continue;
      const key = seriesKey(rule.name, rule.knownSensor, metric);
      if (this.#series.has(key)) continue;
      const s = newAbsentSeries(rule, key, rule.knownSensor, metric, now);
      s.seen = false;
      this.#series.set(key, s);
      this.#scheduleNext(s, now);
    }
  }

  #restoreAbsent(
    rule: CompiledRule,
    key: string,
    sensor: string,
    metric: string,
    st: Record<string, unknown>,
    now: number,
  ): AbsentSeries | undefined {
    if (st.phase !== "seen" && st.phase !== "silent") return undefined;
    const s = newAbsentSeries(rule, key, sensor, metric, now);
    s.persisted = true;
    s.seen = true;
    s.lastTs = num(st.last_ts, Number.NEGATIVE_INFINITY);
    if (s.lastTs > now + this.#maxFutureMs) {
      // Never let a time from the future outlive a restart: forget it, and rewrite the row.
      this.#forgetFutureTs(s, now);
      this.#mark(s);
    }
    if (st.labels && typeof st.labels === "object") s.lastLabels = st.labels as Record<string, string>;
    if (st.phase === "silent") {
      s.silent = true;
      s.silenceFrom = num(st.silence_from, now);
      s.sinceTs = num(st.since, s.silenceFrom);
    }
    // lastSeenAt = now: the silence timer restarts at restore time (see the header).
    return s;
  }

  // ------------------------------------------------------------------ forward rules

  #forwardReading(rule: CompiledRule, r: Reading, now: number): void {
    if (rule.batchMs === undefined) {
      const cfg = rule.cfg;
      const data: Record<string, unknown> = {
        agent: this.#agentId,
        rule: rule.name,
        sensor: r.sensor,
        metric: r.metric,
        value: r.value,
        labels: mergeLabels(r.labels, cfg.labels),
        source: r.source,
      };
      this.#emit("reading", cfg, rule.priority, seriesKey(rule.name, r.sensor, r.metric), r.ts, now, data, cfg.extra);
      return;
    }
    const buf = this.#batchFor(rule);
    const key = seriesKey(rule.name, BATCH_SENSOR, String(this.#batchSeq++));
    // One small row per buffered reading, so an acknowledged reading survives a crash
    // before its batch is sent; the flush removes the rows in the same commit.
    const row: SeriesStateRow = {
      rule: rule.name,
      series: key,
      version: rule.version,
      state: { sensor: r.sensor, metric: r.metric, value: r.value, ts: r.ts, labels: r.labels },
    };
    this.#out.states.push(row);
    const entry: BatchEntry = {
      key,
      sensor: r.sensor,
      metric: r.metric,
      value: r.value,
      ts: r.ts,
      labels: r.labels,
      row,
    };
    buf.entries.push(entry);
    this.#fresh.push(entry);
    if (buf.entries.length >= MAX_BATCH) this.#flush(buf, now);
    else if (buf.entries.length === 1) this.#queue.schedule(buf, now + rule.batchMs);
  }

  #batchFor(rule: CompiledRule): BatchBuffer {
    let buf = this.#batches.get(rule.name);
    if (buf === undefined) {
      buf = {
        kind: "batch",
        rule,
        key: seriesKey(rule.name, "*", "*"),
        entries: [],
        dueAt: undefined,
        dueToken: 0,
        gone: false,
      };
      this.#batches.set(rule.name, buf);
    }
    return buf;
  }

  #flush(buf: BatchBuffer, now: number): void {
    const entries = buf.entries;
    buf.entries = [];
    buf.dueAt = undefined;
    const cfg = buf.rule.cfg;
    let newest = Number.NEGATIVE_INFINITY;
    let unwritten: Set<SeriesStateRow> | undefined;
    const readings = entries.map((e) => {
      if (e.ts > newest) newest = e.ts;
      // Written in this same call: take the row back instead of writing and removing it.
      if (e.row !== undefined) {
        unwritten ??= new Set();
        unwritten.add(e.row);
      } else this.#out.removedStates.push({ rule: buf.rule.name, series: e.key });
      return {
        sensor: e.sensor,
        metric: e.metric,
        value: e.value,
        ts: iso(e.ts),
        labels: mergeLabels(e.labels, cfg.labels),
      };
    });
    if (unwritten !== undefined) {
      const drop = unwritten;
      this.#out.states = this.#out.states.filter((r) => !drop.has(r));
    }
    const data: Record<string, unknown> = {
      agent: this.#agentId,
      rule: buf.rule.name,
      count: readings.length,
      readings,
    };
    this.#emit("readings", cfg, buf.rule.priority, buf.key, newest, now, data, cfg.extra);
  }

  // ------------------------------------------------------------------ shared

  #scheduleNext(s: Series, now: number): void {
    if (s.kind === "absent") {
      if (!s.silent) this.#queue.schedule(s, s.lastSeenAt + (s.rule.absentMs as number));
      return;
    }
    let due = Number.POSITIVE_INFINITY;
    if (s.phase === PENDING) due = this.#pendingDue(s);
    else if (s.phase === CLEARING) due = s.clearingAt + s.rule.clearForMs;
    if ((s.phase === FIRING || s.phase === CLEARING) && s.rule.repeatMs !== undefined) {
      const r = s.notifiedAt + s.rule.repeatMs;
      if (r < due) due = r;
    }
    if (s.agg !== undefined && s.phase !== OK) {
      const expiry = s.agg.nextExpiry();
      if (expiry !== undefined && expiry < due) due = expiry;
    }
    if (due !== Number.POSITIVE_INFINITY) this.#queue.schedule(s, Math.max(due, now));
  }

  /**
   * A changed rule takes over a series when the series still matches it and its last
   * value means the same (see the header). Returns false when the series must end.
   * `oldBasis` is what the series' value was computed from (valueBasis of the old rule).
   */
  #adopt(s: Series, nr: CompiledRule, oldBasis: string | undefined): boolean {
    if (nr.kind !== s.rule.kind || !nr.sensor(s.sensor)) return false;
    if (nr.labels !== undefined && !labelsMatch(nr.labels, s.lastLabels)) return false;
    if (s.kind === "absent") {
      // Whole-sensor series (metric "*") and per-metric series have different keys.
      if (nr.perSensor ? s.metric !== "*" : s.metric === "*" || !nr.metric(s.metric)) return false;
      s.rule = nr;
      if (s.persisted || s.seen || s.silent) this.#mark(s);
      return true;
    }
    if (!nr.metric(s.metric) || valueBasis(nr) !== oldBasis) return false;
    const cond = nr.condition!;
    // Raw values are judged again as the new condition reads them (number or text).
    const src = nr.aggregate === undefined && nr.rate === undefined ? (s.raw ?? s.value) : s.value;
    let v: number | string | undefined;
    if (src !== undefined && src !== null) {
      if (!cond.numeric) v = String(src);
      else {
        const x = toNumber(src);
        if (Number.isFinite(x)) v = x;
      }
    }
    if (s.phase === FIRING || s.phase === CLEARING) {
      if (v === undefined || cond.clear(v)) return false;
      s.phase = FIRING;
      s.value = cond.numeric ? v : src;
    } else if (s.phase === PENDING && (v === undefined || !cond.active(v))) {
      s.phase = OK;
    }
    s.rule = nr;
    if (s.persisted || s.phase !== OK) this.#mark(s);
    return true;
  }

  /** A stored row whose rule changed while the agent was down: adopted like a reload does, if it can be. */
  #restoreChanged(
    rule: CompiledRule,
    row: SeriesStateRow,
    id: SeriesId | undefined,
    st: Record<string, unknown> | null,
    now: number,
  ): boolean {
    if (id === undefined || st === null || typeof st !== "object" || id.sensor === BATCH_SENSOR) return false;
    if (rule.kind !== "alert" && rule.kind !== "absent") return false;
    const { sensor, metric } = id;
    const key = seriesKey(rule.name, sensor, metric);
    if (key !== row.series) return false;
    const s =
      rule.kind === "alert"
        ? this.#restoreAlert(rule, key, sensor, metric, st, now)
        : this.#restoreAbsent(rule, key, sensor, metric, st, now);
    if (s === undefined) return false;
    if (!this.#adopt(s, rule, typeof st.basis === "string" ? st.basis : undefined)) {
      s.gone = true;
      return false;
    }
    const old = this.#series.get(key);
    if (old) old.gone = true;
    this.#series.set(key, s);
    this.#mark(s);
    this.#scheduleNext(s, now);
    return true;
  }

  /** A series whose rule was changed or removed: close what a receiver sees as open. */
  #endSeries(s: Series, now: number, reason: string): void {
    if (s.kind === "alert") {
      if (s.phase !== FIRING && s.phase !== CLEARING) return;
      const data = this.#alertData(s, s.value);
      data.duration_s = Math.max(0, Math.round((now - s.firedAt) / 1000));
      data.reason = reason;
      this.#emit("alert.resolved", s.rule.cfg, s.rule.priority, s.key, now, now, data, s.rule.cfg.extra);
    } else if (s.silent) {
      const data = this.#absentData(s);
      data.duration_s = Math.max(0, Math.round((now - s.silenceFrom) / 1000));
      data.reason = reason;
      this.#emit("sensor.returned", s.rule.cfg, s.rule.priority, s.key, now, now, data, s.rule.cfg.extra);
    }
  }

  /**
   * A stored row that no longer fits a rule (removed or changed while the agent was
   * down): an open alert or silence is closed with what the row remembers, and the row
   * is removed. Both go out with the next batch.
   */
  #endStaleRow(
    row: SeriesStateRow,
    id: SeriesId | undefined,
    st: Record<string, unknown> | null,
    reason: string,
    current: CompiledRule | undefined,
  ): void {
    this.stats.staleStates++;
    this.#carry.removedStates.push({ rule: row.rule, series: row.series });
    if (st === null || typeof st !== "object" || id === undefined) return;
    const { sensor, metric } = id;
    const now = this.#now;
    if (sensor === BATCH_SENSOR) {
      // Buffered telemetry of a forward rule: send it under the rule's current definition
      // when the rule still exists, otherwise there is nobody to send it to.
      if (current && current.kind === "forward" && current.batchMs !== undefined && typeof st.ts === "number") {
        this.#carry.removedStates.pop();
        this.stats.staleStates--;
        this.#batchFor(current).entries.push({
          key: row.series,
          sensor: String(st.sensor),
          metric: String(st.metric),
          value: st.value as ReadingValue,
          ts: st.ts,
          labels: (st.labels as Record<string, string> | undefined) ?? EMPTY_LABELS,
          row: undefined,
        });
      } else this.stats.droppedBatched++;
      return;
    }
    const active = st.phase === "firing" || st.phase === "clearing" || st.phase === "silent";
    if (!active || !Array.isArray(st.notify)) return;
    const meta: EventMeta = {
      name: row.rule,
      severity: (st.severity as Severity | undefined) ?? "warning",
      priority: num(st.priority, 0),
      notify: st.notify as string[],
    };
    const silent = st.phase === "silent";
    const data: Record<string, unknown> = {
      agent: this.#agentId,
      rule: row.rule,
      sensor,
      metric,
      value: st.value ?? null,
      severity: meta.severity,
      labels: (st.labels as Record<string, string> | undefined) ?? {},
      since: iso(num(st.since, now)),
      duration_s: Math.max(0, Math.round((now - num(silent ? st.silence_from : st.fired_at, now)) / 1000)),
      reason,
    };
    this.#carry.events.push(
      this.#event(silent ? "sensor.returned" : "alert.resolved", meta, row.series, now, now, data),
    );
  }

  #emit(
    type: EventType,
    cfg: RuleConfig,
    priority: number,
    series: string,
    ts: number,
    now: number,
    data: Record<string, unknown>,
    extra: Readonly<Record<string, unknown>>,
  ): void {
    for (const k in extra) data[k] = extra[k];
    const meta: EventMeta = { name: cfg.name, severity: cfg.severity, priority, notify: cfg.notify };
    this.#out.events.push(this.#event(type, meta, series, ts, now, data));
  }

  #event(
    type: EventType,
    meta: EventMeta,
    series: string,
    ts: number,
    now: number,
    data: Record<string, unknown>,
  ): NewEvent {
    return {
      id: newEventId(now),
      type,
      rule: meta.name,
      series,
      severity: meta.severity,
      priority: meta.priority,
      destinations: meta.notify,
      createdAt: now,
      body: { type, timestamp: iso(ts), data },
    };
  }
}

// -------------------------------------------------------------------- helpers

function newAlertSeries(rule: CompiledRule, key: string, sensor: string, metric: string, now: number): AlertSeries {
  return {
    kind: "alert",
    key,
    rule,
    sensor,
    metric,
    persisted: false,
    dirty: false,
    activeAt: now,
    dueAt: undefined,
    dueToken: 0,
    gone: false,
    phase: OK,
    lastTs: Number.NEGATIVE_INFINITY,
    lastLabels: EMPTY_LABELS,
    raw: undefined,
    value: undefined,
    pendingAt: 0,
    sinceTs: 0,
    firedAt: 0,
    clearingAt: 0,
    notifiedAt: 0,
    repeats: 0,
    cooldownUntil: 0,
    agg: undefined,
    rate: undefined,
  };
}

function newAbsentSeries(rule: CompiledRule, key: string, sensor: string, metric: string, now: number): AbsentSeries {
  return {
    kind: "absent",
    key,
    rule,
    sensor,
    metric,
    persisted: false,
    dirty: false,
    activeAt: now,
    dueAt: undefined,
    dueToken: 0,
    gone: false,
    silent: false,
    seen: true,
    lastTs: Number.NEGATIVE_INFINITY,
    lastSeenAt: now,
    raw: undefined,
    lastLabels: EMPTY_LABELS,
    silenceFrom: now,
    sinceTs: now,
  };
}

/**
 * Nothing to lose by dropping it: an alert series that is ok, has no stored row, no
 * cooldown and no samples in its window. (Only its late-reading guard goes, which a
 * reading older than a forgotten one cannot turn into a flap: it starts from ok.)
 */
function atRest(s: Series, now: number): boolean {
  if (s.kind !== "alert" || s.phase !== OK || s.persisted || s.dirty || s.cooldownUntil > now) return false;
  if (s.agg !== undefined) {
    s.agg.evict(now);
    if (s.agg.count > 0) return false;
  }
  if (s.rate !== undefined) {
    s.rate.evict(now);
    if (s.rate.count > 0) return false;
  }
  return true;
}

/** Something a receiver was told or is about to be told: pending, firing, clearing or silent. */
function isOpen(s: Series): boolean {
  return s.kind === "alert" ? s.phase !== OK : s.silent;
}

function isPending(s: Series): boolean {
  return s.kind === "alert" && s.phase === PENDING;
}

/** The row a restart needs, or undefined when the series is at rest (row removed). */
function alertState(s: AlertSeries): Record<string, unknown> | undefined {
  const cfg = s.rule.cfg;
  switch (s.phase) {
    case OK:
      return s.cooldownUntil > 0 ? { phase: "ok", cooldown_until: s.cooldownUntil } : undefined;
    case PENDING:
      return {
        phase: "pending",
        pending_at: s.pendingAt,
        since: s.sinceTs,
        value: s.value ?? null,
        basis: valueBasis(s.rule),
        ...(s.cooldownUntil > 0 ? { cooldown_until: s.cooldownUntil } : {}),
      };
    default:
      return {
        phase: PHASE_NAMES[s.phase],
        since: s.sinceTs,
        fired_at: s.firedAt,
        ...(s.phase === CLEARING ? { clearing_at: s.clearingAt } : {}),
        notified_at: s.notifiedAt,
        repeats: s.repeats,
        value: s.value ?? null,
        // What the value is, so a rule changed while the agent is down can judge it again.
        basis: valueBasis(s.rule),
        // Enough to send alert.resolved if the rule is removed while the agent is down.
        severity: cfg.severity,
        priority: s.rule.priority,
        notify: cfg.notify,
        labels: mergeLabels(s.lastLabels, cfg.labels),
      };
  }
}

function absentState(s: AbsentSeries): Record<string, unknown> | undefined {
  if (!s.seen && !s.silent) return undefined;
  const cfg = s.rule.cfg;
  if (!s.silent) {
    return {
      phase: "seen",
      last_ts: Number.isFinite(s.lastTs) ? s.lastTs : null,
      labels: s.lastLabels,
    };
  }
  return {
    phase: "silent",
    last_ts: Number.isFinite(s.lastTs) ? s.lastTs : null,
    since: s.sinceTs,
    silence_from: s.silenceFrom,
    value: s.raw ?? null,
    labels: mergeLabels(s.lastLabels, cfg.labels),
    severity: cfg.severity,
    priority: s.rule.priority,
    notify: cfg.notify,
  };
}

/** What an alert series' value is computed from: `raw`, `avg:300000`, `rate:60000:60`. */
function valueBasis(rule: CompiledRule): string {
  if (rule.aggregate !== undefined) return `${rule.aggregate.fn}:${rule.aggregate.overMs}`;
  if (rule.rate !== undefined) return `rate:${rule.rate.windowMs}:${rule.rate.factor}`;
  return "raw";
}

function labelsMatch(want: readonly (readonly [string, string])[], have: Readonly<Record<string, string>>): boolean {
  for (let i = 0; i < want.length; i++) {
    const w = want[i] as readonly [string, string];
    if (have[w[0]] !== w[1]) return false;
  }
  return true;
}

function mergeLabels(
  reading: Readonly<Record<string, string>>,
  rule: Readonly<Record<string, string>>,
): Record<string, string> {
  return { ...reading, ...rule };
}

function round6(v: number): number {
  return Math.round(v * 1e6) / 1e6;
}

function num(v: unknown, fallback: number): number {
  return typeof v === "number" && Number.isFinite(v) ? v : fallback;
}
