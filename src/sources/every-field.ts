/**
 * `values: "*"`: every numeric and boolean field of a payload becomes a reading. The rule
 * for names, stated once (README "Every field", docs/devices.md):
 *
 * - A nested field is named by its path, segments joined by `.`: `{"env":{"t":1}}` → `env.t`.
 *   With a `metric` template as well, the name is `<metric>.<path>` (Shelly Gen2:
 *   `temperature:0.tC`), and a bare payload (`22.5`) is named by the template alone.
 * - `include`/`exclude` globs match that name; `group_label` moves a top-level object's
 *   name into a label (`AM2301.Temperature` → `Temperature`, model=AM2301); `metric_case:
 *   snake` writes it in snake_case; `rename` maps the result last.
 * - Numbers and booleans are values; text is a value when it is numeric or one of
 *   `states`; other text, nulls and lists (not descended) are ignored fields, counted.
 * - When two groups of one payload give the same metric (two DS18B20 probes), their
 *   readings are told apart by sensor: `<sensor>/<group>`.
 *
 * Names are computed once per field path and cached, so a payload costs one walk.
 */
import { compileGlob, type Matcher } from "../rules/glob.js";
import type { ReadingValue } from "./reading.js";

export type StateMap = Readonly<Record<string, ReadingValue>>;

/** Why a field gave no reading (shown by `edgehook tap`). */
export type IgnoredWhy = "text" | "null" | "list" | "not_picked";

export interface IgnoredField {
  name: string;
  why: IgnoredWhy;
}

export interface FieldSelectConfig {
  include?: readonly string[] | undefined;
  exclude?: readonly string[] | undefined;
  rename?: Readonly<Record<string, string>> | undefined;
  group_label?: string | undefined;
  metric_case?: "keep" | "snake" | undefined;
}

/** One field taken as a reading. */
export interface Picked {
  metric: string;
  value: ReadingValue;
  /** The top-level object it came from, with group_label. */
  group?: string;
}

const NAME_CACHE_MAX = 2048;

export class FieldSelect {
  readonly #include: Matcher[] | undefined;
  readonly #exclude: Matcher[];
  readonly #rename: ReadonlyMap<string, string>;
  readonly group: string | undefined;
  readonly #snake: boolean;
  /** Field path → metric name, or null when excluded. */
  readonly #names = new Map<string, string | null>();

  constructor(cfg: FieldSelectConfig) {
    this.#include = cfg.include?.length ? cfg.include.map(compileGlob) : undefined;
    this.#exclude = (cfg.exclude ?? []).map(compileGlob);
    this.#rename = new Map(Object.entries(cfg.rename ?? {}));
    this.group = cfg.group_label;
    this.#snake = cfg.metric_case === "snake";
  }

  /** A metric name through `rename` (for names that come from templates or `values`). */
  renamed(metric: string): string {
    return this.#rename.get(metric) ?? metric;
  }

  /** The metric of a field path, or null when include/exclude leave it out. */
  metricOf(path: string, grouped: boolean): string | null {
    let name = this.#names.get(path);
    if (name !== undefined) return name;
    if ((this.#include && !this.#include.some((m) => m(path))) || this.#exclude.some((m) => m(path))) name = null;
    else {
      let base = path;
      if (grouped) base = path.slice(path.indexOf(".") + 1);
      if (this.#snake) base = snakeCase(base);
      name = this.renamed(base);
    }
    if (this.#names.size >= NAME_CACHE_MAX) this.#names.clear();
    this.#names.set(path, name);
    return name;
  }
}

/** DewPoint → dew_point, RSSI → rssi, ApparentPower → apparent_power, CO2 → co2. */
export function snakeCase(s: string): string {
  return s
    .replace(/([a-z0-9])([A-Z])/g, "$1_$2")
    .replace(/([A-Z]+)([A-Z][a-z])/g, "$1_$2")
    .toLowerCase();
}

/** A raw field → a reading value, or why not. */
export function fieldValue(v: unknown, states: StateMap | undefined): ReadingValue | IgnoredWhy {
  if (v === null || v === undefined) return "null";
  if (Array.isArray(v)) return "list";
  if (states && typeof v !== "object") {
    const key = String(v).trim().toLowerCase();
    if (Object.hasOwn(states, key)) return states[key]!;
  }
  if (typeof v === "boolean") return v;
  if (typeof v === "number") return Number.isFinite(v) ? v : "text";
  if (typeof v === "string") {
    const s = v.trim();
    if (NUMBER_RE.test(s)) {
      const n = Number(s);
      if (Number.isFinite(n)) return n;
    }
  }
  return "text";
}
const NUMBER_RE = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

export interface EveryFieldResult {
  picked: Picked[];
  /** Fields that gave no reading (text, null, list), not counting excluded or reserved ones. */
  ignored: number;
  ignoredFields?: IgnoredField[];
}

/**
 * Every leaf of a parsed JSON object (or the pairs of a kv line, given as a flat object).
 * `prefix`: the rendered metric template, or undefined. `reserved`: fields used for the
 * sensor, metric or time, never readings.
 */
export function everyField(
  doc: object,
  select: FieldSelect,
  states: StateMap | undefined,
  reserved: ReadonlySet<string>,
  prefix: string | undefined,
  explain: boolean,
): EveryFieldResult {
  const res: EveryFieldResult = { picked: [], ignored: 0 };
  if (explain) res.ignoredFields = [];
  const grouping = select.group !== undefined;
  const visit = (obj: object, path: string | undefined, group: string | undefined, depth: number) => {
    for (const key of Object.keys(obj)) {
      const v = (obj as Record<string, unknown>)[key];
      const full = path === undefined ? key : `${path}.${key}`;
      if (reserved.has(full)) continue;
      if (v !== null && typeof v === "object" && !Array.isArray(v)) {
        // Deeper than any device nests: a hostile payload must not recurse without bound.
        if (depth < 16) visit(v, full, depth === 0 && grouping ? key : group, depth + 1);
        continue;
      }
      const name = prefix === undefined ? full : `${prefix}.${full}`;
      const value = fieldValue(v, states);
      if (typeof value === "string" && (value === "text" || value === "null" || value === "list")) {
        if (select.metricOf(name, group !== undefined) === null) continue;
        res.ignored++;
        res.ignoredFields?.push({ name, why: value });
        continue;
      }
      const metric = select.metricOf(name, group !== undefined);
      if (metric === null) continue;
      res.picked.push(group === undefined ? { metric, value } : { metric, value, group });
    }
  };
  visit(doc, undefined, undefined, 0);
  return res;
}

/** Leaves of a JSON value (objects descended, lists and nulls one leaf each): for counting what `values` left out. */
export function countLeaves(doc: unknown, depth = 0): number {
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) return 1;
  let n = 0;
  for (const key in doc) {
    if (!Object.hasOwn(doc, key)) continue;
    const v = (doc as Record<string, unknown>)[key];
    n += v !== null && typeof v === "object" && !Array.isArray(v) && depth < 16 ? countLeaves(v, depth + 1) : 1;
  }
  return n;
}

/** Names of the leaves, for `tap` (what `values` left out). */
export function leafNames(doc: unknown, path?: string, out: string[] = [], depth = 0): string[] {
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) {
    if (path !== undefined) out.push(path);
    return out;
  }
  for (const key of Object.keys(doc)) {
    const v = (doc as Record<string, unknown>)[key];
    const full = path === undefined ? key : `${path}.${key}`;
    if (v !== null && typeof v === "object" && !Array.isArray(v) && depth < 16) leafNames(v, full, out, depth + 1);
    else out.push(full);
  }
  return out;
}
