/**
 * What the parts of the rule engine share within one call: the series in memory, the
 * due queue, the batch being built (events, state rows, removed rows), the stats and
 * the logger. engine.ts owns one EngineCore and hands it to the parts (the series
 * machines, admission, restore, reload, the forwarder), which change it only through
 * what is here. Nothing in src/rules does IO: the agent commits the batch.
 *
 * Also the contract every series machine (alert.ts, absent.ts) keeps, and the small
 * helpers they share.
 */
import type { Clock } from "../clock.js";
import type { Severity } from "../config/schema.js";
import type { CloseReason, DataValue, Labels, RuleEventType } from "../event-data.js";
import { type CommitBatch, type EventFields, type EventOrigin, newEvent } from "../events.js";
import type { Logger, RateLimitedLog } from "../ops/logger.js";
import type { Reading, ReadingValue } from "../sources/reading.js";
import type { CompiledRule, SeriesRule } from "./compile.js";
import { LatestValues } from "./compound.js";
import { DueQueue, type Schedulable } from "./due-queue.js";

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

/** Something the due queue hands back when its time comes (a series, a forward batch). */
export interface Due extends Schedulable {
  due(core: EngineCore, now: number): void;
}

/**
 * The state machine of one series `(rule, sensor, metric)` of a rule kind that keeps
 * state. The engine finds or creates the series, checks admission and reading time, and
 * then hands it the reading; everything kind-specific is behind these methods.
 */
export interface SeriesMachine extends Due {
  readonly kind: SeriesRule["kind"];
  readonly key: string;
  readonly rule: SeriesRule;
  readonly sensor: string;
  readonly metric: string;
  /** A row exists in the store. */
  persisted: boolean;
  /** Queued for a state row at the end of this call (EngineCore.mark). */
  dirty: boolean;
  /** Agent time of its last reading (or of its creation or restore): the eviction order. */
  activeAt: number;
  /** Newest reading time seen (late detection, reading-time.ts). */
  lastTs: number;
  /** A reading that passed admission and the late check; activeAt is already set. */
  reading(core: EngineCore, r: Reading, now: number, restamped: boolean): void;
  /** Makes sure the queue looks at the series when its next time-driven change is due. */
  schedule(core: EngineCore, now: number): void;
  /** The row a restart needs, or undefined when the series is at rest (row removed). */
  state(): Record<string, unknown> | undefined;
  /** What the series' value is computed from, for rules changed while the agent is down. */
  basis(): string | undefined;
  /** Takes a reloaded rule of the same version (presentation and cadence only). */
  retarget(rule: CompiledRule): boolean;
  /** Takes a changed rule when its last value means the same under it (reload.ts). */
  adopt(core: EngineCore, rule: CompiledRule, oldBasis: string | undefined): boolean;
  /** Its rule changed or went, or it is evicted: close what a receiver sees as open. */
  end(core: EngineCore, now: number, reason: CloseReason): void;
  /** Nothing to lose by dropping it (admission.ts). */
  atRest(now: number): boolean;
  /** A receiver was told or is about to be told something: pending, firing, clearing or silent. */
  isOpen(): boolean;
  isPending(): boolean;
  /** Never evicted (the silence watch of a sensor a rule names literally). */
  pinned(): boolean;
}

const emptyBatch = (): CommitBatch => ({ events: [], states: [], removedStates: [] });

export class EngineCore {
  readonly agentId: string;
  readonly clock: Clock;
  readonly log: Logger;
  /** Rate limit of the engine's warnings, one key per kind of skipped reading. */
  readonly quiet: RateLimitedLog;
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
  readonly series = new Map<string, SeriesMachine>();
  readonly queue = new DueQueue<Due>();
  maxFutureMs: number;
  /** A series went back to rest (or the limit changed): a sweep may make room at once. */
  maySweep = true;
  /** Agent time of the current call. */
  now = 0;
  /** Work produced outside a call (restore) that goes out with the next batch. */
  carry: CommitBatch = emptyBatch();
  /** The batch the current call returns. */
  out: CommitBatch = emptyBatch();
  /** Series that need their row written (or removed) at the end of the call. */
  dirty: SeriesMachine[] = [];
  /** The newest values of the metrics `when` rules read (compound.ts). */
  readonly latest = new LatestValues();

  constructor(agentId: string, clock: Clock, log: Logger, quiet: RateLimitedLog, maxFutureMs: number) {
    this.agentId = agentId;
    this.clock = clock;
    this.log = log;
    this.quiet = quiet;
    this.maxFutureMs = maxFutureMs;
  }

  /** Starts a call: what restore carried over goes out with it. */
  begin(): void {
    this.now = this.clock.now();
    this.out = this.carry;
    this.carry = emptyBatch();
  }

  /** Ends a call: writes the rows of changed series and hands back the batch. */
  finish(): CommitBatch {
    const out = this.out;
    if (this.dirty.length > 0) {
      for (const s of this.dirty) {
        s.dirty = false;
        if (s.gone) continue;
        const state = s.state();
        if (state === undefined) {
          if (s.persisted) out.removedStates.push({ rule: s.rule.name, series: s.key });
          s.persisted = false;
        } else {
          out.states.push({ rule: s.rule.name, series: s.key, version: s.rule.version, state });
          s.persisted = true;
        }
      }
      this.dirty = [];
    }
    // A batch never names a series in both lists, so the order in which the agent
    // applies them cannot matter. Only a row removed by restore (carried over) and
    // written again in this call can meet here; the write is the newer state.
    if (out.removedStates.length > 0 && out.states.length > 0) {
      const written = new Set(out.states.map((r) => `${r.rule}\u001f${r.series}`));
      out.removedStates = out.removedStates.filter((r) => !written.has(`${r.rule}\u001f${r.series}`));
    }
    this.out = emptyBatch();
    return out;
  }

  /** Something was carried over or marked outside a call: the agent should call tick now. */
  hasPending(): boolean {
    const c = this.carry;
    return c.events.length > 0 || c.states.length > 0 || c.removedStates.length > 0 || this.dirty.length > 0;
  }

  /** The series' row is written (or removed) at the end of the call. */
  mark(s: SeriesMachine): void {
    if (s.dirty) return;
    s.dirty = true;
    this.dirty.push(s);
  }

  /** Drops a series from memory; its row, if any, goes with the batch. */
  drop(s: SeriesMachine): void {
    s.gone = true;
    if (s.persisted) this.out.removedStates.push({ rule: s.rule.name, series: s.key });
    this.series.delete(s.key);
  }

  /** An event of a rule: its body is built by newEvent (src/events.ts), with the rule's `extra`. */
  emit<K extends RuleEventType>(
    type: K,
    rule: CompiledRule,
    series: string,
    ts: number,
    now: number,
    fields: EventFields<K>,
  ): void {
    const cfg = rule.cfg;
    const origin: EventOrigin = {
      agent: this.agentId,
      rule: cfg.name,
      severity: cfg.severity,
      priority: rule.priority,
      notify: cfg.notify,
    };
    this.out.events.push(newEvent(type, origin, series, ts, now, fields, cfg.extra));
  }
}

// -------------------------------------------------------------------- helpers

/** ECMAScript Date range in ms. */
export const MAX_DATE = 8.64e15;

export const EMPTY_LABELS: Labels = Object.freeze({});

export const iso = (ms: number): string => new Date(ms).toISOString();
/** For logs: an ISO time when the number is one, the number otherwise. */
export const safeIso = (ms: number): string => (ms > -MAX_DATE && ms < MAX_DATE ? iso(ms) : String(ms));

export function labelsMatch(want: readonly (readonly [string, string])[], have: Labels): boolean {
  // No destructuring: this runs per reading and rule, and a destructured pair is an iterator.
  for (const w of want) if (have[w[0]] !== w[1]) return false;
  return true;
}

export function mergeLabels(reading: Labels, rule: Labels): Record<string, string> {
  return { ...reading, ...rule };
}

export function round6(v: number): number {
  return Math.round(v * 1e6) / 1e6;
}

export function num(v: unknown, fallback: number): number {
  return typeof v === "number" && Number.isFinite(v) ? v : fallback;
}

// Stored rows are JSON the engine wrote itself; these read them back without trusting them.

export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null;
}

export function isReadingValue(v: unknown): v is ReadingValue {
  return typeof v === "number" || typeof v === "string" || typeof v === "boolean";
}

/** A stored value as a body carries it (anything else reads as no value). */
export function dataValue(v: unknown): DataValue {
  return isReadingValue(v) ? v : null;
}

export function isLabels(v: unknown): v is Labels {
  return isRecord(v) && Object.values(v).every((x) => typeof x === "string");
}

export function isSeverity(v: unknown): v is Severity {
  return v === "info" || v === "warning" || v === "critical";
}

export function isNameList(v: unknown): v is string[] {
  return Array.isArray(v) && v.every((x) => typeof x === "string");
}
