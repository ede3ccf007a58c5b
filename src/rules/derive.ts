/**
 * `derive:` metrics: a new metric computed from others of the same sensor (dew point from
 * temperature and humidity, power from voltage and current) whenever one of its inputs
 * arrives. The result is a Reading like any other, with the time, source and labels of
 * the reading that completed it, so rules, forward, `tap` and `rules test` see it.
 *
 * An input older than the entry's `stale_after` (agent clock, default 10m) is missing, and
 * nothing is computed while one is missing. A derived metric may read another derived
 * metric listed before it.
 */
import type { DeriveConfig } from "../config/schema.js";
import type { Reading, ReadingValue } from "../sources/reading.js";
import { DEFAULT_STALE_AFTER_MS, StaleSweep } from "./compound.js";
import { type CompiledExpression, compileExpression } from "./expression.js";
import { compileGlob, type Matcher } from "./glob.js";

interface Entry {
  readonly metric: string;
  readonly sensor: Matcher;
  readonly expr: CompiledExpression;
  readonly staleMs: number;
}

const NONE: readonly Reading[] = [];

interface Latest {
  value: ReadingValue;
  ts: number;
  at: number;
}

export class Deriver {
  readonly #entries: Entry[];
  /** Metric → the entries that read it. */
  readonly #byInput = new Map<string, Entry[]>();
  readonly #values = new Map<string, Map<string, Latest>>();
  /** The longest `stale_after` of the entries: older values are never read. */
  readonly #staleMs: number;
  readonly #sweep = new StaleSweep();

  constructor(configs: readonly DeriveConfig[]) {
    this.#entries = configs.map((d) => ({
      metric: d.metric,
      sensor: compileGlob(d.sensor),
      expr: compileExpression(d.value, "number"),
      staleMs: d.stale_after ?? DEFAULT_STALE_AFTER_MS,
    }));
    this.#staleMs = this.#entries.reduce((m, e) => Math.max(m, e.staleMs), 0);
    for (const e of this.#entries) {
      for (const i of e.expr.inputs) {
        const list = this.#byInput.get(i.metric);
        if (list) {
          if (!list.includes(e)) list.push(e);
        } else this.#byInput.set(i.metric, [e]);
      }
    }
  }

  /** Sensors with a value kept (bounded by the sweep). */
  get sensors(): number {
    return this.#values.size;
  }

  get empty(): boolean {
    return this.#entries.length === 0;
  }

  /** The readings derived from `r` (and from those), in order; none when no entry reads it. */
  derive(r: Reading, now: number): readonly Reading[] {
    if (!this.#byInput.has(r.metric)) return NONE;
    const out: Reading[] = [];
    const queue: Reading[] = [r];
    // A derived reading may complete another entry; the bound stops an entry that reads itself.
    for (let q = 0; q < queue.length && q <= this.#entries.length; q++) {
      const cur = queue[q];
      const entries = cur === undefined ? undefined : this.#byInput.get(cur.metric);
      if (cur === undefined || entries === undefined) continue;
      this.#record(cur, now);
      const bySensor = this.#values.get(cur.sensor);
      for (const e of entries) {
        if (!e.sensor(cur.sensor)) continue;
        const o = e.expr.evaluate((input) => {
          if (input.sensor !== undefined) return undefined;
          const v = bySensor?.get(input.metric);
          return v === undefined || now - v.at > e.staleMs ? undefined : v.value;
        });
        if (!o.known || typeof o.value !== "number") continue;
        const d: Reading = {
          sensor: cur.sensor,
          metric: e.metric,
          value: o.value,
          ts: cur.ts,
          source: cur.source,
          labels: cur.labels,
        };
        out.push(d);
        queue.push(d);
      }
    }
    return out;
  }

  #record(r: Reading, now: number): void {
    let bySensor = this.#values.get(r.sensor);
    if (bySensor === undefined) {
      this.#sweep.beforeAdd(this.#values, now, this.#staleMs);
      bySensor = new Map();
      this.#values.set(r.sensor, bySensor);
    }
    const prev = bySensor.get(r.metric);
    if (prev === undefined) bySensor.set(r.metric, { value: r.value, ts: r.ts, at: now });
    else if (r.ts >= prev.ts) {
      prev.value = r.value;
      prev.ts = r.ts;
      prev.at = now;
    }
  }
}
