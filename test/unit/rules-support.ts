/** Shared helpers for the rule engine tests: rules written as in YAML, readings, a harness. */
import type { DeriveConfig, RuleConfig } from "../../src/config/schema.js";
import { configSchema } from "../../src/config/schema.js";
import type { CommitBatch, NewEvent, SeriesStateRow } from "../../src/events.js";
import { createLogger } from "../../src/ops/logger.js";
import { RuleEngine, type RuleEngineOptions } from "../../src/rules/engine.js";
import type { Reading, ReadingValue } from "../../src/sources/reading.js";
import { FakeClock } from "../support/fake-clock.js";

export const T0 = Date.parse("2026-01-01T00:00:00Z");

/** Rules as an operator writes them (durations as text), parsed by the real schema. */
export function rules(...defs: Record<string, unknown>[]): RuleConfig[] {
  return configSchema.parse({
    version: 1,
    agent: { id: "pi-1" },
    destinations: { ops: { url: "http://127.0.0.1:9/hook", signature: "none" } },
    rules: defs.map((d, i) => ({ name: `r${i}`, notify: ["ops"], ...d })),
  }).rules;
}

/** derive: entries as an operator writes them, parsed by the real schema. */
export function derived(defs: Record<string, unknown>[]): DeriveConfig[] {
  return configSchema.parse({ version: 1, agent: { id: "pi-1" }, derive: defs }).derive;
}

export function reading(
  sensor: string,
  metric: string,
  value: ReadingValue,
  ts: number,
  labels: Record<string, string> = {},
): Reading {
  return { sensor, metric, value, ts, source: "test", labels };
}

/**
 * An engine plus a store of its committed state, the way the agent uses it: every
 * batch's states are upserted and removals deleted, so a test can "restart" by building
 * a new engine from the stored rows.
 */
export class Harness {
  readonly clock: FakeClock;
  engine: RuleEngine;
  readonly events: NewEvent[] = [];
  readonly store = new Map<string, SeriesStateRow>();
  readonly batches: CommitBatch[] = [];
  /** What the engine logged (info and above), parsed. */
  readonly logs: { level: string; msg: string; [k: string]: unknown }[] = [];
  #rules: RuleConfig[];
  readonly #opts: Pick<RuleEngineOptions, "maxSeries" | "maxFutureMs" | "derive">;

  constructor(
    ruleConfigs: RuleConfig[],
    clock = new FakeClock(T0),
    maxSeries?: number,
    opts: Pick<RuleEngineOptions, "maxFutureMs"> = {},
    derive: Record<string, unknown>[] = [],
  ) {
    this.clock = clock;
    this.#rules = ruleConfigs;
    this.#opts = { maxSeries, ...opts, derive: derived(derive) };
    this.engine = this.#build(ruleConfigs);
  }

  #build(ruleConfigs: RuleConfig[]): RuleEngine {
    const logger = createLogger("info", { write: (line: string) => void this.logs.push(JSON.parse(line)) });
    return new RuleEngine({ agentId: "pi-1", rules: ruleConfigs, clock: this.clock, logger, ...this.#opts });
  }

  /** Log lines whose message contains `text`. */
  logged(text: string) {
    return this.logs.filter((l) => l.msg.includes(text));
  }

  commit(b: CommitBatch): NewEvent[] {
    // The agent may apply states and removals in any order: no series may be in both.
    const written = new Set(b.states.map((s) => `${s.rule}|${s.series}`));
    for (const r of b.removedStates) {
      if (written.has(`${r.rule}|${r.series}`)) throw new Error(`series in both states and removedStates: ${r.series}`);
    }
    this.batches.push(b);
    for (const s of b.states) this.store.set(`${s.rule}|${s.series}`, JSON.parse(JSON.stringify(s)));
    for (const r of b.removedStates) this.store.delete(`${r.rule}|${r.series}`);
    this.events.push(...b.events);
    return b.events;
  }

  /** Moves the clock to `at` (absolute ms), calling tick() whenever the engine says work is due. */
  advanceTo(at: number): NewEvent[] {
    const out: NewEvent[] = [];
    for (;;) {
      const due = this.engine.nextDueAt();
      if (due === undefined || due > at) break;
      if (due > this.clock.now()) this.clock.advance(due - this.clock.now());
      out.push(...this.commit(this.engine.tick()));
    }
    if (at > this.clock.now()) this.clock.advance(at - this.clock.now());
    return out;
  }

  /** Advances to `at`, then processes one reading taken at `at` (unless ts is given). */
  feed(
    sensor: string,
    metric: string,
    value: ReadingValue,
    at: number,
    opts: { ts?: number; labels?: Record<string, string> } = {},
  ): NewEvent[] {
    const out = this.advanceTo(at);
    out.push(...this.commit(this.engine.process([reading(sensor, metric, value, opts.ts ?? at, opts.labels)])));
    return out;
  }

  /** A new engine (same or new rules) restored from the stored rows: a restart. */
  restart(ruleConfigs: RuleConfig[] = this.#rules): void {
    this.#rules = ruleConfigs;
    this.engine = this.#build(ruleConfigs);
    this.engine.restore([...this.store.values()]);
  }

  reconfigure(ruleConfigs: RuleConfig[]): NewEvent[] {
    this.#rules = ruleConfigs;
    return this.commit(this.engine.reconfigure(ruleConfigs));
  }

  types(evts: NewEvent[] = this.events): string[] {
    return evts.map((e) => e.type);
  }
}

export const sec = (n: number) => T0 + n * 1000;
