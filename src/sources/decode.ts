/**
 * Turns MQTT payloads and serial lines into Readings. Pure: no IO, no clock (the
 * arrival time is passed in), so every format is tested with raw bytes.
 *
 * A decoder returns readings or a typed reason; the source counts the reason in
 * `edgehook_decode_errors_total{source,reason}` and skips the input (invariant 7).
 */
import type { SerialPortConfig, SubscriptionConfig } from "../config/schema.js";
import { compileGlob, type Matcher } from "../rules/glob.js";
import {
  countLeaves,
  everyField,
  FieldSelect,
  type IgnoredField,
  leafNames,
  type Picked,
  type StateMap,
} from "./every-field.js";
import { parseKv } from "./kv.js";
import type { Reading, ReadingValue } from "./reading.js";
import { matchTopic } from "./topics.js";
import { localTimeZone, ZonedTime } from "./zoned-time.js";

export type { IgnoredField } from "./every-field.js";
export { parseKv } from "./kv.js";
export { matchTopic } from "./topics.js";

/** Why an input was skipped; the `reason` label of edgehook_decode_errors_total. */
export type DecodeErrorReason =
  /** format json, and the text does not parse as JSON. */
  | "not_json"
  /** Nothing at the configured path/key/column (or no numeric field at all). */
  | "no_value"
  /** A value that is neither a number, a boolean nor a configured state. */
  | "bad_number"
  /** format csv, and the line has a different number of columns than `columns`. */
  | "columns"
  /** format regex, and the pattern does not match the line. */
  | "no_match"
  /** A `{field}` in the sensor or metric template is missing from the input. */
  | "no_field"
  /** format text (or states given), and the text is none of the states. */
  | "unknown_state"
  /** Control characters (NUL, line noise) other than tab/CR/LF. */
  | "binary"
  /** A serial line longer than max_line_length (skipped up to the next delimiter). */
  | "too_long"
  /** An MQTT payload larger than max_payload. */
  | "too_large"
  /** Not valid in the configured encoding (invalid UTF-8, non-ASCII for ascii). */
  | "encoding"
  /** An empty MQTT payload (e.g. a retained message being cleared); blank serial lines are not counted. */
  | "empty";

/**
 * `ignored`: payload fields that gave no reading (not picked by `values`, or text, null or
 * a list under `values: "*"`), counted in edgehook_decode_ignored_fields_total;
 * `ignoredFields` names them when the decoder explains itself (`edgehook tap`).
 * `retained`: a retained message the subscription's `retained: ignore` skipped.
 */
export type DecodeResult =
  | { ok: true; readings: Reading[]; ignored?: number; ignoredFields?: IgnoredField[]; retained?: "ignored" }
  | { ok: false; reason: DecodeErrorReason };

const fail = (reason: DecodeErrorReason): DecodeResult => ({ ok: false, reason });

type Fields = (path: string) => unknown;

// ---------------------------------------------------------------- shared helpers

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Bytes → text, or why not. Control characters other than tab/CR/LF mean binary noise. */
export function bytesToText(
  bytes: Uint8Array,
  encoding: "utf8" | "latin1" | "ascii" = "utf8",
): { text: string } | { reason: DecodeErrorReason } {
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    if ((b < 0x20 && b !== 0x09 && b !== 0x0a && b !== 0x0d) || b === 0x7f) return { reason: "binary" };
    if (encoding === "ascii" && b > 0x7f) return { reason: "encoding" };
  }
  if (encoding === "utf8") {
    try {
      return { text: utf8.decode(bytes) };
    } catch {
      return { reason: "encoding" };
    }
  }
  return { text: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("latin1") };
}

/** `a.b.0.c` into a parsed JSON value. */
export function getPath(obj: unknown, path: string): unknown {
  let cur: unknown = obj;
  for (const part of path.split(".")) {
    if (cur === null || typeof cur !== "object") return undefined;
    if (Array.isArray(cur)) {
      const i = Number(part);
      if (!Number.isInteger(i)) return undefined;
      cur = cur[i];
    } else {
      if (!Object.hasOwn(cur, part)) return undefined;
      cur = (cur as Record<string, unknown>)[part];
    }
  }
  return cur;
}

const NUMBER_RE = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/** A number from a number or a numeric string; undefined otherwise. */
export function toNumber(v: unknown): number | undefined {
  if (typeof v === "number") return Number.isFinite(v) ? v : undefined;
  if (typeof v === "string") {
    const s = v.trim();
    if (!NUMBER_RE.test(s)) return undefined;
    const n = Number(s);
    return Number.isFinite(n) ? n : undefined;
  }
  return undefined;
}

function lowerStates(states: SubscriptionConfig["states"]): StateMap | undefined {
  if (!states) return undefined;
  const out: Record<string, ReadingValue> = {};
  for (const [k, v] of Object.entries(states)) out[k.toLowerCase()] = v;
  return out;
}

/**
 * A raw field value → a reading value: numbers stay numbers, booleans stay booleans,
 * numeric strings become numbers, other strings go through `states` (case-insensitive).
 */
function toValue(v: unknown, states: StateMap | undefined): { value: ReadingValue } | { reason: DecodeErrorReason } {
  if (v === undefined || v === null) return { reason: "no_value" };
  if (states) {
    const key = String(v).trim().toLowerCase();
    if (Object.hasOwn(states, key)) return { value: states[key]! };
  }
  if (typeof v === "boolean") return { value: v };
  const n = toNumber(v);
  if (n !== undefined) return { value: n };
  return { reason: typeof v === "string" && states ? "unknown_state" : "bad_number" };
}

/**
 * Epoch milliseconds from a numeric epoch time in seconds, milliseconds, microseconds or
 * nanoseconds, told apart by magnitude: each unit covers 1973 to 5138 on its own (1e11 s
 * is the year 5138, 1e11 ms is 1973), so below 1e11 is seconds (fractions allowed), below
 * 1e14 milliseconds, below 1e17 microseconds, below 1e20 nanoseconds. Zero, negative
 * and larger numbers are not times (undefined).
 */
export function epochMs(n: number): number | undefined {
  if (!(n > 0)) return undefined;
  if (n < 1e11) return Math.round(n * 1000);
  if (n < 1e14) return Math.round(n);
  if (n < 1e17) return Math.round(n / 1e3);
  if (n < 1e20) return Math.round(n / 1e6);
  return undefined;
}

/** A `Z` or a numeric offset at the end of an ISO 8601 time. */
const ZONE_DESIGNATOR = /(?:Z|[+-]\d{2}(?::?\d{2})?)$/i;
let processZone: ZonedTime | undefined;

/**
 * Epoch ms from an epoch number (`epochMs`), or an ISO 8601 date-time: with `Z` or an
 * offset as written, without one in `zone` (default: the agent's own time zone; DST as
 * in zoned-time.ts, `arrival` picks between the two readings of a repeated hour).
 * Undefined when none of those.
 */
export function parseTimestamp(v: unknown, zone?: ZonedTime, arrival?: number): number | undefined {
  const n = toNumber(v);
  if (n !== undefined) return epochMs(n);
  if (typeof v !== "string") return undefined;
  const text = v.trim();
  if (!/^\d{4}-\d{2}-\d{2}/.test(text)) return undefined;
  if (ZONE_DESIGNATOR.test(text.slice(10))) {
    const t = Date.parse(text);
    return Number.isNaN(t) ? undefined : t;
  }
  processZone ??= new ZonedTime(localTimeZone());
  return (zone ?? processZone).parse(text, arrival);
}

// ---------------------------------------------------------------- templates

type TemplatePart = { lit: string } | { wildcard: number } | { topic: number } | { field: string };

function parseTemplate(t: string): TemplatePart[] {
  const parts: TemplatePart[] = [];
  const re = /\{([^{}]+)\}/g;
  let last = 0;
  for (let m = re.exec(t); m; m = re.exec(t)) {
    if (m.index > last) parts.push({ lit: t.slice(last, m.index) });
    const name = m[1]!;
    if (/^\d+$/.test(name)) parts.push({ wildcard: Number(name) });
    else if (/^topic\.\d+$/.test(name)) parts.push({ topic: Number(name.slice(6)) });
    else parts.push({ field: name });
    last = m.index + m[0].length;
  }
  if (last < t.length) parts.push({ lit: t.slice(last) });
  return parts;
}

function templateFields(parts: TemplatePart[]): string[] {
  return parts.flatMap((p) => ("field" in p ? [p.field] : []));
}

/** Fills a template; undefined when a placeholder has nothing to give. */
function render(
  parts: TemplatePart[],
  wildcards: readonly string[],
  topicParts: readonly string[],
  fields: Fields,
): string | undefined {
  if (parts.length === 1 && "lit" in parts[0]!) return parts[0].lit;
  let s = "";
  for (const p of parts) {
    if ("lit" in p) s += p.lit;
    else if ("wildcard" in p) {
      const w = wildcards[p.wildcard - 1];
      if (w === undefined || w === "") return undefined;
      s += w;
    } else if ("topic" in p) {
      const w = topicParts[p.topic - 1];
      if (w === undefined || w === "") return undefined;
      s += w;
    } else {
      const v = fields(p.field);
      if (v === undefined || v === null || typeof v === "object" || v === "") return undefined;
      s += String(v);
    }
  }
  return s;
}

// ---------------------------------------------------------------- extraction shared by MQTT and serial

interface Extractor {
  sensor: TemplatePart[];
  metric: TemplatePart[] | undefined;
  value: string | undefined;
  values: [string, string][] | undefined;
  /** `values: "*"` given: the metric template prefixes field names. */
  star: boolean;
  timestamp: string | undefined;
  /** Zone of zoneless ISO times; undefined: the agent's own. */
  zone: ZonedTime | undefined;
  states: StateMap | undefined;
  labels: Readonly<Record<string, string>>;
  source: string;
  /** Fields never read as metrics when every field is taken (sensor, metric, time). */
  reserved: Set<string>;
  select: FieldSelect;
  /** Labels per group (group_label), built once per group name. */
  groupLabels: Map<string, Readonly<Record<string, string>>>;
  /** Name the ignored fields in results (`edgehook tap`). */
  explain: boolean;
}

/** What both MQTT subscriptions and serial ports say about naming and picking fields. */
interface ExtractorConfig {
  sensor: string;
  metric?: string | undefined;
  value?: string | undefined;
  values?: Record<string, string> | "*" | undefined;
  timestamp?: string | undefined;
  timezone?: string | undefined;
  states?: SubscriptionConfig["states"];
  labels: Record<string, string>;
  include?: readonly string[] | undefined;
  exclude?: readonly string[] | undefined;
  rename?: Readonly<Record<string, string>> | undefined;
  group_label?: string | undefined;
  metric_case?: "keep" | "snake" | undefined;
}

function extractor(cfg: ExtractorConfig, source: string, explain: boolean): Extractor {
  const sensor = parseTemplate(cfg.sensor);
  const metric = cfg.metric ? parseTemplate(cfg.metric) : undefined;
  const reserved = new Set([...templateFields(sensor), ...(metric ? templateFields(metric) : [])]);
  if (cfg.timestamp) reserved.add(cfg.timestamp);
  return {
    sensor,
    metric,
    value: cfg.value,
    values: cfg.values && cfg.values !== "*" ? Object.entries(cfg.values) : undefined,
    star: cfg.values === "*",
    timestamp: cfg.timestamp,
    zone: cfg.timezone === undefined ? undefined : new ZonedTime(cfg.timezone),
    states: lowerStates(cfg.states),
    labels: Object.freeze({ ...cfg.labels }),
    source,
    reserved,
    select: new FieldSelect(cfg),
    groupLabels: new Map(),
    explain,
  };
}

/** One reading whose value is the payload or line itself (no field to pick). */
function extractRaw(
  ex: Extractor,
  wildcards: readonly string[],
  topicParts: readonly string[],
  arrival: number,
  raw: unknown,
): DecodeResult {
  return extract(ex, undefined, () => undefined, wildcards, topicParts, arrival, { raw });
}

/**
 * Readings from a payload. `doc` is the parsed object (JSON, or the pairs of a kv/csv/
 * regex line as a flat object); `fields` reads a path of it. `single` is the value when
 * the input itself is the value (number/text payloads, bare JSON scalars).
 */
function extract(
  ex: Extractor,
  doc: object | undefined,
  fields: Fields,
  wildcards: readonly string[],
  topicParts: readonly string[],
  arrival: number,
  single?: { raw: unknown },
): DecodeResult {
  const sensor = render(ex.sensor, wildcards, topicParts, fields);
  if (sensor === undefined) return fail("no_field");
  let ts = arrival;
  if (ex.timestamp) ts = parseTimestamp(fields(ex.timestamp), ex.zone, arrival) ?? arrival;
  const make = (metric: string, value: ReadingValue): Reading => ({
    sensor,
    metric,
    value,
    ts,
    source: ex.source,
    labels: ex.labels,
  });

  if (single) {
    const metric = ex.metric ? render(ex.metric, wildcards, topicParts, fields) : "value";
    if (metric === undefined) return fail("no_field");
    const v = toValue(single.raw, ex.states);
    return "reason" in v ? fail(v.reason) : { ok: true, readings: [make(ex.select.renamed(metric), v.value)] };
  }
  if (ex.values) {
    const readings: Reading[] = [];
    let firstError: DecodeErrorReason | undefined;
    let used = 0;
    for (const [metric, path] of ex.values) {
      const raw = fields(path);
      if (raw === undefined) continue;
      used++;
      const v = toValue(raw, ex.states);
      if ("reason" in v) firstError ??= v.reason;
      else readings.push(make(ex.select.renamed(metric), v.value));
    }
    if (readings.length === 0) return fail(firstError ?? "no_value");
    return withIgnored(
      ex,
      { ok: true, readings },
      doc,
      fields,
      used,
      ex.values.map(([, p]) => p),
    );
  }
  if (ex.value) {
    const metric = ex.metric ? render(ex.metric, wildcards, topicParts, fields) : ex.value;
    if (metric === undefined) return fail("no_field");
    const v = toValue(fields(ex.value), ex.states);
    if ("reason" in v) return fail(v.reason);
    return withIgnored(ex, { ok: true, readings: [make(ex.select.renamed(metric), v.value)] }, doc, fields, 1, [
      ex.value,
    ]);
  }
  if (!doc) return fail("no_value");
  let prefix: string | undefined;
  if (ex.star && ex.metric) {
    prefix = render(ex.metric, wildcards, topicParts, fields);
    if (prefix === undefined) return fail("no_field");
  }
  const every = everyField(doc, ex.select, ex.states, ex.reserved, prefix, ex.explain);
  if (every.picked.length === 0 && every.ignored === 0) return fail("no_value");
  const readings = every.picked.map((p) => make(p.metric, p.value));
  if (ex.select.group !== undefined) groupReadings(ex, every.picked, readings, sensor);
  const res: DecodeResult = { ok: true, readings, ignored: every.ignored };
  if (every.ignoredFields) res.ignoredFields = every.ignoredFields;
  return res;
}

/** group_label: the group's name as a label; a metric two groups give apart by sensor. */
function groupReadings(ex: Extractor, picked: readonly Picked[], readings: Reading[], sensor: string): void {
  const label = ex.select.group as string;
  let seen: Set<string> | undefined;
  let twice: Set<string> | undefined;
  for (const p of picked) {
    if (p.group === undefined) continue;
    seen ??= new Set();
    if (seen.has(p.metric)) {
      twice ??= new Set();
      twice.add(p.metric);
    }
    seen.add(p.metric);
  }
  picked.forEach((p, i) => {
    if (p.group === undefined) return;
    const r = readings[i]!;
    let labels = ex.groupLabels.get(p.group);
    if (!labels) {
      labels = Object.freeze({ ...ex.labels, [label]: p.group });
      if (ex.groupLabels.size < 256) ex.groupLabels.set(p.group, labels);
    }
    r.labels = labels;
    if (twice?.has(p.metric)) r.sensor = `${sensor}/${p.group}`;
  });
}

/** Counts (and, explaining, names) the fields of `doc` that `values`/`value` did not take. */
function withIgnored(
  ex: Extractor,
  res: DecodeResult & { ok: true },
  doc: object | undefined,
  fields: Fields,
  used: number,
  paths: readonly string[],
): DecodeResult {
  if (!doc) return res;
  let reserved = 0;
  for (const f of ex.reserved) if (fields(f) !== undefined) reserved++;
  const ignored = Math.max(0, countLeaves(doc) - used - reserved);
  if (ignored > 0) res.ignored = ignored;
  if (ex.explain) {
    const taken = new Set([...paths, ...ex.reserved]);
    res.ignoredFields = leafNames(doc)
      .filter((n) => !taken.has(n) && ![...taken].some((t) => n.startsWith(`${t}.`)))
      .map((name) => ({ name, why: "not_picked" as const }));
  }
  return res;
}

function jsonFields(doc: unknown): Fields {
  return (path) => getPath(doc, path);
}

function parseJson(text: string): unknown | typeof NOT_JSON {
  try {
    return JSON.parse(text);
  } catch {
    return NOT_JSON;
  }
}
const NOT_JSON = Symbol("not_json");

/** A Map of pairs as a plain object (kv lines), for the every-field walk. */
function pairsObject(pairs: ReadonlyMap<string, string>): Record<string, string> {
  const o: Record<string, string> = {};
  for (const [k, v] of pairs) o[k] = v;
  return o;
}

// ---------------------------------------------------------------- MQTT

export interface MqttDecoder {
  /** Position of the subscription in the configuration. */
  readonly index: number;
  readonly filters: readonly string[];
  readonly qos: 0 | 1 | 2;
  readonly retained: "ignore" | "accept";
  /** The wildcard captures when the topic is this subscription's (a filter matches, no ignore_topics glob does). */
  match(topic: string): TopicMatch | undefined;
  /** Readings from one message, or why not; undefined when the topic is not this subscription's. */
  decode(topic: string, payload: Uint8Array, arrival: number, match?: TopicMatch): DecodeResult | undefined;
}

/** What matching a topic against a filter gave: wildcard captures and the topic's segments. */
export interface TopicMatch {
  wildcards: readonly string[];
  topicParts: readonly string[];
}

export interface DecoderOptions {
  /** Name ignored fields in results (`edgehook tap`); off in the agent (it only counts them). */
  explain?: boolean;
}

export function mqttDecoder(
  sub: SubscriptionConfig,
  source = "mqtt",
  index = 0,
  options: DecoderOptions = {},
): MqttDecoder {
  const ex = extractor(sub, source, options.explain ?? false);
  const format = sub.format;
  const filters = sub.topics;
  const ignore: Matcher[] = (sub.ignore_topics ?? []).map(compileGlob);
  const match = (topic: string): TopicMatch | undefined => {
    for (const f of filters) {
      const wildcards = matchTopic(f, topic);
      if (!wildcards) continue;
      if (ignore.some((m) => m(topic))) return undefined;
      return { wildcards, topicParts: topic.split("/") };
    }
    return undefined;
  };
  return {
    index,
    filters,
    qos: sub.qos,
    retained: sub.retained,
    match,
    decode(topic, payload, arrival, given) {
      const m = given ?? match(topic);
      if (!m) return undefined;
      const { wildcards, topicParts } = m;
      const decoded = bytesToText(payload);
      if ("reason" in decoded) return fail(decoded.reason);
      const text = decoded.text;
      switch (format) {
        case "json": {
          const doc = parseJson(text);
          if (doc === NOT_JSON) {
            // A bare state that is not JSON (Shelly's `open`) is still its own value.
            const t = text.trim();
            if (ex.states && Object.hasOwn(ex.states, t.toLowerCase()) && !sub.value && !ex.values) {
              return extractRaw(ex, wildcards, topicParts, arrival, t);
            }
            return fail(text.trim() ? "not_json" : "empty");
          }
          // A bare JSON number/string/bool payload with no path is its own value.
          const bare = doc === null || typeof doc !== "object";
          if (bare && !sub.value && !ex.values) {
            return extractRaw(ex, wildcards, topicParts, arrival, doc);
          }
          return extract(ex, bare ? undefined : (doc as object), jsonFields(doc), wildcards, topicParts, arrival);
        }
        case "number": {
          const t = text.trim();
          if (!t) return fail("empty");
          if (toNumber(t) === undefined) return fail("bad_number");
          return extractRaw(ex, wildcards, topicParts, arrival, t);
        }
        case "text": {
          const t = text.trim();
          if (!t) return fail("empty");
          return extractRaw(ex, wildcards, topicParts, arrival, t);
        }
        case "kv": {
          const kv = parseKv(text);
          if (kv.size === 0) return fail("no_value");
          return extract(ex, pairsObject(kv), (k) => kv.get(k), wildcards, topicParts, arrival);
        }
      }
    },
  };
}

/**
 * Routes messages to the first subscription (in config order) whose filters match and
 * whose ignore_topics do not, remembering the match per topic: sensors publish on a
 * small, stable set of topics. Later subscriptions never see a message an earlier one
 * took; `check` warns when that hides one (load.ts).
 */
export class MqttRouter {
  readonly #decoders: readonly MqttDecoder[];
  readonly #maxPayload: number;
  readonly #cache = new Map<string, { decoder: MqttDecoder; match: TopicMatch } | null>();

  constructor(decoders: readonly MqttDecoder[], maxPayload: number) {
    this.#decoders = decoders;
    this.#maxPayload = maxPayload;
  }

  /** The subscription a topic goes to, if any. */
  route(topic: string): { decoder: MqttDecoder; match: TopicMatch } | undefined {
    let hit = this.#cache.get(topic);
    if (hit === undefined) {
      hit = null;
      for (const decoder of this.#decoders) {
        const match = decoder.match(topic);
        if (match) {
          hit = { decoder, match };
          break;
        }
      }
      // Bounded: a publisher cycling through endless topics must not grow memory.
      if (this.#cache.size >= 4096) this.#cache.clear();
      this.#cache.set(topic, hit);
    }
    return hit ?? undefined;
  }

  /** `retain`: the message came from the broker's retained store (MQTT RETAIN flag on delivery). */
  decode(topic: string, payload: Uint8Array, arrival: number, retain = false): DecodeResult | undefined {
    const hit = this.route(topic);
    if (!hit) return undefined;
    if (retain && hit.decoder.retained === "ignore") return { ok: true, readings: [], retained: "ignored" };
    if (payload.length > this.#maxPayload) return fail("too_large");
    return hit.decoder.decode(topic, payload, arrival, hit.match);
  }
}

// ---------------------------------------------------------------- serial lines

export type LineDecoder = (line: Uint8Array, arrival: number) => DecodeResult;

/** What a line decoder reads from its config: a serial port's, or a polled file's (files.ts). */
export type LineDecoderConfig = Pick<
  SerialPortConfig,
  | "name"
  | "encoding"
  | "format"
  | "columns"
  | "pattern"
  | "sensor"
  | "metric"
  | "value"
  | "values"
  | "timestamp"
  | "states"
  | "labels"
> &
  Partial<Pick<SerialPortConfig, "include" | "exclude" | "rename" | "timezone">>;

export function serialDecoder(
  cfg: LineDecoderConfig,
  source = `serial:${cfg.name}`,
  options: DecoderOptions = {},
): LineDecoder {
  const ex = extractor({ ...cfg, sensor: cfg.sensor ?? cfg.name }, source, options.explain ?? false);
  const none: readonly string[] = [];
  const pattern = cfg.format === "regex" && cfg.pattern ? new RegExp(cfg.pattern) : undefined;
  const columns = cfg.columns ?? [];

  return (bytes, arrival) => {
    const decoded = bytesToText(bytes, cfg.encoding);
    if ("reason" in decoded) return fail(decoded.reason);
    const text = decoded.text.trim();
    if (!text) return fail("empty");
    switch (cfg.format) {
      case "json": {
        const doc = parseJson(text);
        if (doc === NOT_JSON) return fail("not_json");
        const bare = doc === null || typeof doc !== "object";
        if (bare && !cfg.value && !ex.values) {
          return extractRaw(ex, none, none, arrival, doc);
        }
        return extract(ex, bare ? undefined : (doc as object), jsonFields(doc), none, none, arrival);
      }
      case "number":
        if (toNumber(text) === undefined && !ex.states) return fail("bad_number");
        return extractRaw(ex, none, none, arrival, text);
      case "kv": {
        const kv = parseKv(text);
        if (kv.size === 0) return fail("no_value");
        return extract(ex, pairsObject(kv), (k) => kv.get(k), none, none, arrival);
      }
      case "csv": {
        const cells = text.split(",").map((c) => c.trim());
        if (cells.length !== columns.length) return fail("columns");
        const row: Record<string, string> = {};
        columns.forEach((c, i) => {
          row[c] = cells[i]!;
        });
        return extract(ex, row, (k) => (Object.hasOwn(row, k) ? row[k] : undefined), none, none, arrival);
      }
      case "regex": {
        const m = pattern?.exec(text);
        if (!m) return fail("no_match");
        const groups = m.groups ?? {};
        const get = (k: string) => groups[k];
        // Groups named sensor/metric/ts name the reading unless the config does.
        const regexEx: Extractor = {
          ...ex,
          sensor: groups.sensor !== undefined && !cfg.sensor ? parseTemplate("{sensor}") : ex.sensor,
          metric: groups.metric !== undefined && !cfg.metric ? parseTemplate("{metric}") : ex.metric,
          timestamp: ex.timestamp ?? (groups.ts !== undefined ? "ts" : undefined),
        };
        // A pattern with a `value` group and no other instruction gives one reading.
        if (!cfg.value && !ex.values && groups.value !== undefined) {
          return extract(regexEx, undefined, get, none, none, arrival, { raw: groups.value });
        }
        const rest: Record<string, string> = {};
        for (const [k, v] of Object.entries(groups)) {
          if (v !== undefined && !["sensor", "metric", "ts"].includes(k)) rest[k] = v;
        }
        return extract(regexEx, rest, get, none, none, arrival);
      }
    }
  };
}

// ---------------------------------------------------------------- bounded line splitter

export type SplitItem = { line: Buffer } | { error: "too_long" };

/**
 * Splits a byte stream into lines without ever holding more than `maxLength` bytes
 * of one line: a longer line is reported once as `too_long` and discarded up to the
 * next delimiter. (@serialport/parser-readline has no length bound: a device that
 * never sends a newline would grow its buffer without limit.) With the default `\n`
 * delimiter a trailing `\r` is dropped, so CRLF devices work unchanged.
 */
export class LineSplitter {
  readonly #delim: Buffer;
  readonly #max: number;
  readonly #stripCr: boolean;
  #buf: Buffer = Buffer.alloc(0);
  #discarding = false;

  constructor(delimiter: string, maxLength: number) {
    this.#delim = Buffer.from(delimiter, "utf8");
    this.#max = maxLength;
    this.#stripCr = delimiter === "\n";
  }

  push(chunk: Uint8Array): SplitItem[] {
    const out: SplitItem[] = [];
    const data = this.#buf.length ? Buffer.concat([this.#buf, chunk]) : Buffer.from(chunk);
    const dl = this.#delim.length;
    let start = 0;
    for (;;) {
      const i = data.indexOf(this.#delim, start);
      if (i < 0) break;
      if (this.#discarding) this.#discarding = false;
      else this.#emit(data.subarray(start, i), out);
      start = i + dl;
    }
    const rest = data.subarray(start);
    // Keep a possible partial delimiter (multi-byte) and a CR that may precede `\n`.
    const slack = dl - 1 + (this.#stripCr ? 1 : 0);
    if (this.#discarding) {
      this.#buf = Buffer.from(rest.subarray(Math.max(0, rest.length - (dl - 1))));
    } else if (rest.length > this.#max + slack) {
      out.push({ error: "too_long" });
      this.#discarding = true;
      this.#buf = Buffer.from(rest.subarray(Math.max(0, rest.length - (dl - 1))));
    } else {
      // Copy so a large chunk is not kept alive by a small remainder.
      this.#buf = Buffer.from(rest);
    }
    return out;
  }

  #emit(raw: Buffer, out: SplitItem[]): void {
    let line = raw;
    if (this.#stripCr && line.length > 0 && line[line.length - 1] === 0x0d) line = line.subarray(0, line.length - 1);
    if (line.length === 0) return;
    if (line.length > this.#max) out.push({ error: "too_long" });
    else out.push({ line: Buffer.from(line) });
  }
}
