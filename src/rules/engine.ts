/**
 * The rule engine: per-series state machines over readings. Pure — no IO and no timers
 * of its own, and it never touches SQLite. The agent hands it readings (`process`) and,
 * when `nextDueAt()` says so, calls `tick()`; every call returns one CommitBatch (events
 * + changed series states + removed states) that the agent commits in one transaction
 * before acknowledging the readings (design invariant 1).
 *
 * This file routes: it matches readings to rules (globs per pair, cached; labels per
 * reading), checks their time (reading-time.ts) and room for new series (admission.ts),
 * and hands each reading to the series machine of its rule's kind (alert.ts, absent.ts;
 * forward.ts for forward rules, which keep no series). Restart is restore.ts, reload is
 * reload.ts. The decisions an operator can rely on are written at the top of each of
 * those files; each has a unit test in test/unit/rules*.test.ts.
 *
 * - Time: everything runs on the agent's clock (the injected Clock), so a sensor with a
 *   wrong clock cannot stall or rush it. Bodies carry the time of the reading that
 *   caused the event; events caused by time alone (a `for` completing on tick, silence,
 *   repeats, batches) carry the agent's time.
 * - Persistence: a state row is written only when something a restart needs changes
 *   (the machines say what), never per reading. A batch never names one series in both
 *   `states` and `removedStates`, so the order in which the agent applies the two lists
 *   does not matter.
 */
import type { Clock } from "../clock.js";
import type { DeriveConfig, RuleConfig } from "../config/schema.js";
import type { CommitBatch, SeriesStateRow } from "../events.js";
import { type Logger, RateLimitedLog, silentLogger } from "../ops/logger.js";
import { seriesKey } from "../series-key.js";
import type { Reading } from "../sources/reading.js";
import { watchKnownSensors } from "./absent.js";
import { DEFAULT_MAX_SERIES, SeriesLimit } from "./admission.js";
import { AlertSeries } from "./alert.js";
import { type CompiledRule, compileRule, type ForwardRule, type SeriesRule } from "./compile.js";
import type { CompoundRuleRef } from "./compound.js";
import { EngineCore, labelsMatch, MAX_DATE, type RuleEngineStats, type SeriesMachine } from "./core.js";
import { Deriver } from "./derive.js";
import { Forwarder } from "./forward.js";
import { badTime, isLate, restamp } from "./reading-time.js";
import { reloadRules, rescheduleAll } from "./reload.js";
import { restoreRows } from "./restore.js";
import { newSeries } from "./series.js";

export { DEFAULT_MAX_SERIES, OPEN_IDLE_MS, QUIET_IDLE_MS } from "./admission.js";
export type { RuleEngineStats } from "./core.js";
export { MAX_BATCH } from "./forward.js";

/** The (sensor, metric) → rules cache is cleared when it grows past this many pairs. */
const MATCH_CACHE_LIMIT = 50_000;
export const DEFAULT_MAX_FUTURE_MS = 5 * 60_000;
/** Each kind of skipped reading is logged at most this often, with the count in between. */
const LOG_INTERVAL_MS = 60_000;

export interface RuleEngineOptions {
  agentId: string;
  rules: readonly RuleConfig[];
  clock: Clock;
  /**
   * Most series kept in memory (design invariant 6: sensor names come from topics and
   * lines, so their number is not ours to choose). What happens at the limit is in
   * admission.ts. Default 100,000.
   */
  maxSeries?: number;
  /**
   * Readings stamped more than this many ms ahead of the clock are processed with the
   * clock's time instead (see reading-time.ts). Default 5 minutes.
   */
  maxFutureMs?: number;
  /** Where skipped, late and re-stamped readings are reported (rate-limited). */
  logger?: Logger;
  /** `derive:` metrics, computed before the rules see a reading (derive.ts). */
  derive?: readonly DeriveConfig[];
}

/**
 * A rule whose globs match a (sensor, metric) pair, with the key and series it feeds.
 * Both members have the same fields in the same order, and `labels` is copied from the
 * rule, so the loop over targets (once per reading and rule) reads one object shape
 * whatever the kind of rule.
 */
type Target = TargetOf<"series", SeriesRule> | TargetOf<"forward", ForwardRule>;

interface TargetOf<K extends string, R extends CompiledRule> {
  readonly kind: K;
  readonly rule: R;
  readonly labels: R["labels"];
  readonly key: string;
  /** The series' metric: the reading's, or "*" for a whole-sensor absent_for watch. */
  readonly metric: string;
  series: SeriesMachine | undefined;
}

const NO_TARGETS: Target[] = [];

export class RuleEngine {
  readonly #core: EngineCore;
  readonly #limit: SeriesLimit;
  readonly #forwarder = new Forwarder();
  #deriver: Deriver;
  #rules: CompiledRule[];
  #byName: Map<string, CompiledRule>;
  #cache = new Map<string, Map<string, Target[]>>();
  #cacheSize = 0;
  /** Started lazily, at the first call, so the constructor only assigns. */
  #started = false;

  constructor(opts: RuleEngineOptions) {
    const log = opts.logger ?? silentLogger();
    const quiet = new RateLimitedLog(LOG_INTERVAL_MS, () => opts.clock.now());
    this.#core = new EngineCore(opts.agentId, opts.clock, log, quiet, opts.maxFutureMs ?? DEFAULT_MAX_FUTURE_MS);
    this.#limit = new SeriesLimit(opts.maxSeries ?? DEFAULT_MAX_SERIES);
    this.#rules = opts.rules.map(compileRule);
    this.#byName = new Map(this.#rules.map((r) => [r.name, r]));
    this.#core.latest.setRules(compoundRules(this.#rules));
    this.#deriver = new Deriver(opts.derive ?? []);
  }

  get stats(): RuleEngineStats {
    return this.#core.stats;
  }

  /** Loads the rows committed before a restart (restore.ts). Call once, before the first reading. */
  restore(rows: SeriesStateRow[]): void {
    this.#start();
    const core = this.#core;
    const now = core.clock.now();
    core.now = now;
    restoreRows(core, this.#byName, this.#forwarder, rows, now);
    this.#clearCache();
  }

  process(readings: readonly Reading[]): CommitBatch {
    const core = this.#begin();
    const now = core.now;
    const horizon = now + core.maxFutureMs;
    for (let r of readings) {
      // NaN, or before what a Date can hold: no body could carry its time.
      if (!(r.ts > -MAX_DATE)) {
        badTime(core, r);
        continue;
      }
      // From the future (up to +Infinity): judged now, at the agent's time (reading-time.ts).
      const restamped = r.ts > horizon;
      if (restamped) r = restamp(core, r, now);
      this.#route(core, r, now, restamped);
      if (!this.#deriver.empty) {
        for (const d of this.#deriver.derive(r, now)) this.#route(core, d, now, restamped);
      }
    }
    return this.#finish();
  }

  /** One reading (from a source or derived) to the rules it concerns. */
  #route(core: EngineCore, r: Reading, now: number, restamped: boolean): void {
    const latest = core.latest;
    if (latest.watches(r.sensor, r.metric)) {
      latest.record(r, restamped ? now : r.ts, now);
      // Another sensor's metric: the series of the rules that read it are judged again.
      const followers = latest.changed ? latest.followers(r.sensor, r.metric) : undefined;
      if (followers !== undefined) {
        for (const rule of followers) {
          for (const key of latest.seriesOf(rule)) {
            const s = core.series.get(key);
            if (s instanceof AlertSeries && !s.gone) s.recheck(core, r.ts, now);
          }
        }
      }
    }
    for (const t of this.#targets(r.sensor, r.metric)) {
      if (t.labels !== undefined && !labelsMatch(t.labels, r.labels)) continue;
      if (t.kind === "forward") {
        this.#forwarder.reading(core, t.rule, r, now);
        continue;
      }
      const rule = t.rule;
      let s = t.series;
      if (s === undefined || s.gone) {
        s = core.series.get(t.key);
        if (s === undefined) {
          if (!this.#limit.admit(core, now, r, rule)) continue;
          s = newSeries(rule, t.key, r.sensor, t.metric, now);
          core.series.set(t.key, s);
        }
        t.series = s;
      }
      if (!restamped && isLate(core, s, r, now)) continue;
      s.activeAt = now;
      s.reading(core, r, now, restamped);
    }
  }

  tick(): CommitBatch {
    const core = this.#begin();
    const now = core.now;
    for (const item of core.queue.takeDue(now)) {
      if (!item.gone) item.due(core, now);
    }
    return this.#finish();
  }

  /** The series of `when` rules whose condition is unknown now, with why (rules test). */
  *unknownConditions(): Iterable<{ rule: string; sensor: string; reason: string }> {
    for (const s of this.#core.series.values()) {
      if (s instanceof AlertSeries && s.rule.compound !== undefined && s.unknown !== undefined) {
        yield { rule: s.rule.name, sensor: s.sensor, reason: s.unknown };
      }
    }
  }

  /** Series with state in memory (for metrics). */
  get seriesCount(): number {
    return this.#core.series.size;
  }

  nextDueAt(): number | undefined {
    this.#start();
    const core = this.#core;
    // Work restore carried over, or rows it decided to rewrite (a changed rule adopted,
    // a future time forgotten).
    if (core.hasPending()) return core.clock.now();
    return core.queue.peek();
  }

  /** New rules (see reload.ts for what happens to their series) and, optionally, new limits. */
  reconfigure(
    rules: readonly RuleConfig[],
    limits: Pick<RuleEngineOptions, "maxFutureMs" | "maxSeries" | "derive"> = {},
  ): CommitBatch {
    const core = this.#begin();
    const now = core.now;
    if (limits.maxFutureMs !== undefined) core.maxFutureMs = limits.maxFutureMs;
    if (limits.maxSeries !== undefined) this.#limit.setMax(core, limits.maxSeries);
    if (limits.derive !== undefined) this.#deriver = new Deriver(limits.derive);
    const next = rules.map(compileRule);
    const nextByName = new Map(next.map((r) => [r.name, r]));
    reloadRules(core, this.#forwarder, nextByName, now);
    this.#rules = next;
    this.#byName = nextByName;
    core.latest.setRules(compoundRules(next));
    this.#clearCache();
    watchKnownSensors(core, next, now);
    rescheduleAll(core, this.#forwarder, now);
    return this.#finish();
  }

  // ------------------------------------------------------------------ call framing

  #start(): void {
    if (this.#started) return;
    this.#started = true;
    watchKnownSensors(this.#core, this.#rules, this.#core.clock.now());
  }

  #begin(): EngineCore {
    this.#start();
    this.#core.begin();
    return this.#core;
  }

  #finish(): CommitBatch {
    this.#forwarder.endCall();
    return this.#core.finish();
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
      if (rule.kind === "forward") {
        targets.push({ kind: "forward", rule, labels: rule.labels, key: "", metric, series: undefined });
        continue;
      }
      const seriesMetric =
        rule.kind === "absent" && rule.perSensor
          ? "*"
          : rule.kind === "alert" && rule.compound !== undefined
            ? rule.compound.seriesMetric
            : metric;
      const key = seriesKey(rule.name, sensor, seriesMetric);
      const series = this.#core.series.get(key);
      targets.push({ kind: "series", rule, labels: rule.labels, key, metric: seriesMetric, series });
    }
    if (this.#cacheSize >= MATCH_CACHE_LIMIT) {
      this.#clearCache();
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

  #clearCache(): void {
    this.#cache.clear();
    this.#cacheSize = 0;
  }
}

/** The `when` rules, as the store of latest values needs them. */
function compoundRules(rules: readonly CompiledRule[]): CompoundRuleRef[] {
  const out: CompoundRuleRef[] = [];
  for (const r of rules)
    if (r.kind === "alert" && r.compound !== undefined) out.push({ name: r.name, compound: r.compound });
  return out;
}
