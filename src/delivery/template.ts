/**
 * Body templates for destinations that do not speak Standard Webhooks JSON
 * (chat webhooks, form endpoints, XML gateways).
 *
 * A template is a YAML value whose string leaves may hold placeholders:
 *
 *   text: "{{ data.sensor }} is {{ data.value | round(1) }} since {{ data.since | time }}"
 *
 * Placeholders name fields of the event envelope (`type`, `timestamp`, `data.*`)
 * and may pass through filters. There is no expression language and no code
 * execution: a placeholder is a path plus a fixed list of filters, checked when
 * the configuration loads, so a typo is a config error with a position instead of
 * an empty field in a chat message at 3 a.m.
 *
 * Rendering is pure and deterministic: the same stored body gives the same bytes
 * on every attempt (the signature is computed over them per attempt).
 *
 * The `data` fields a placeholder may name are those of the rule events (DATA_FIELDS in
 * src/event-data.ts, kept to the event types by the compiler), plus the `extra` keys of
 * the rules that notify the destination.
 */
import { DATA_FIELD_NAMES, DATA_FIELDS, isDataField } from "../event-data.js";

/** A path into the config tree, as the loader positions it (`destinations.x.template.text`). */
export type ConfigPath = (string | number)[];

export interface TemplateProblem {
  path: ConfigPath;
  message: string;
}

export interface CompileOptions {
  /**
   * `content_type` of the destination. Required for a text (string) template, where
   * it decides the escaping; an object/array template is always JSON.
   */
  contentType?: string | undefined;
  /** More `data` fields placeholders may name, e.g. the `extra` keys of the rules that notify here. */
  extraDataFields?: Iterable<string>;
  /** Accept any `data.*` path (rendering a template the config loader already checked). */
  anyDataField?: boolean;
}

export interface CompiledTemplate {
  readonly kind: "json" | "text";
  /** The content-type header to send. */
  readonly contentType: string;
  /** Renders the envelope (the parsed stored body) to the bytes to send. */
  render(envelope: unknown): Buffer;
  /** Renders to a JS value before serialisation (json kind only); presets post-process this. */
  renderValue(envelope: unknown): unknown;
}

export type CompileResult = { ok: true; template: CompiledTemplate } | { ok: false; problems: TemplateProblem[] };

// ---------------------------------------------------------------- expressions

type Literal = string | number;

interface Filter {
  name: string;
  args: Literal[];
}

interface Expr {
  path: string[];
  filters: Filter[];
}

/** A string leaf: literal text and placeholders. `whole` when the leaf is exactly one placeholder. */
interface StringPart {
  parts: (string | Expr)[];
  whole: boolean;
}

type Compiled =
  | { t: "const"; v: unknown }
  | { t: "str"; s: StringPart }
  | { t: "arr"; items: Compiled[] }
  | { t: "obj"; entries: [string, Compiled][] };

interface FilterSpec {
  /** Checks the literal arguments; returns a message when they are wrong. */
  check(args: Literal[]): string | undefined;
  apply(value: unknown, args: Literal[]): unknown;
}

const digits = (what: string, required: boolean) => (args: Literal[]) => {
  if (args.length === 0 && !required) return undefined;
  const n = args[0];
  if (args.length !== 1 || typeof n !== "number" || !Number.isInteger(n) || n < 0 || n > 10) {
    return `${what} takes one whole number from 0 to 10, e.g. ${what}(1)`;
  }
  return undefined;
};
const noArgs = (what: string) => (args: Literal[]) => (args.length ? `${what} takes no arguments` : undefined);

const FILTERS: Record<string, FilterSpec> = {
  round: {
    check: digits("round", false),
    apply: (v, [n = 0]) => {
      const x = toNumber(v);
      return x === undefined ? v : roundTo(x, n as number);
    },
  },
  fixed: {
    check: digits("fixed", false),
    apply: (v, [n = 2]) => {
      const x = toNumber(v);
      return x === undefined ? v : roundTo(x, n as number).toFixed(n as number);
    },
  },
  time: {
    check: (args) => {
      if (args.length === 0) return undefined;
      const tz = args[0];
      if (args.length !== 1 || typeof tz !== "string")
        return 'time takes an optional time zone, e.g. time("Europe/Berlin")';
      return zoneFormat(tz) ? undefined : `unknown time zone '${tz}' (use an IANA name like Europe/Berlin)`;
    },
    apply: (v, [tz]) => {
      const d = toDate(v);
      if (!d) return v;
      if (tz === undefined) {
        const iso = d.toISOString();
        return `${iso.slice(0, 10)} ${iso.slice(11, 16)} UTC`;
      }
      const parts: Record<string, string> = {};
      for (const p of (zoneFormat(tz as string) as Intl.DateTimeFormat).formatToParts(d)) parts[p.type] = p.value;
      return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute} ${parts.timeZoneName}`;
    },
  },
  iso: {
    check: noArgs("iso"),
    apply: (v) => toDate(v)?.toISOString() ?? v,
  },
  epoch: {
    check: noArgs("epoch"),
    apply: (v) => {
      const d = toDate(v);
      return d ? Math.floor(d.getTime() / 1000) : v;
    },
  },
  upper: { check: noArgs("upper"), apply: (v) => (typeof v === "string" ? v.toUpperCase() : v) },
  lower: { check: noArgs("lower"), apply: (v) => (typeof v === "string" ? v.toLowerCase() : v) },
  default: {
    check: (args) => (args.length === 1 ? undefined : 'default takes one value, e.g. default("n/a")'),
    apply: (v, [d]) => (v === undefined || v === null || v === "" ? d : v),
  },
  json: { check: noArgs("json"), apply: (v) => JSON.stringify(v ?? null) },
  /** Slack mrkdwn: `&`, `<` and `>` must be escaped or they start links and mentions (Slack "Formatting text"). */
  mrkdwn: {
    check: noArgs("mrkdwn"),
    apply: (v) => toText(v).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"),
  },
  truncate: {
    check: (args) => {
      const n = args[0];
      return args.length === 1 && typeof n === "number" && Number.isInteger(n) && n >= 1
        ? undefined
        : "truncate takes a length, e.g. truncate(200)";
    },
    apply: (v, [n]) => truncate(toText(v), n as number),
  },
};

export const FILTER_NAMES: readonly string[] = Object.keys(FILTERS);

const zoneFormats = new Map<string, Intl.DateTimeFormat | undefined>();

/** A formatter for `time("Zone/Name")`, or undefined when the zone is unknown. Cached: built once per zone. */
function zoneFormat(tz: string): Intl.DateTimeFormat | undefined {
  if (zoneFormats.has(tz)) return zoneFormats.get(tz);
  let f: Intl.DateTimeFormat | undefined;
  try {
    f = new Intl.DateTimeFormat("en-US", {
      timeZone: tz,
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
      hour: "2-digit",
      minute: "2-digit",
      hourCycle: "h23",
      timeZoneName: "short",
    });
  } catch {
    f = undefined;
  }
  if (zoneFormats.size < 64) zoneFormats.set(tz, f);
  return f;
}

function roundTo(x: number, n: number): number {
  // Scale through the decimal string so 1.005 rounds to 1.01 rather than 1.00 (binary FP).
  const r = Number(`${Math.round(Number(`${x}e${n}`))}e-${n}`);
  return Number.isFinite(r) ? r : x;
}

function toNumber(v: unknown): number | undefined {
  if (typeof v === "number" && Number.isFinite(v)) return v;
  if (typeof v === "string" && v.trim() !== "") {
    const n = Number(v);
    if (Number.isFinite(n)) return n;
  }
  return undefined;
}

function toDate(v: unknown): Date | undefined {
  let ms: number | undefined;
  if (typeof v === "number" && Number.isFinite(v)) ms = Math.abs(v) >= 1e11 ? v : v * 1000;
  else if (typeof v === "string" && v !== "") {
    const n = Number(v);
    ms = Number.isFinite(n) ? (Math.abs(n) >= 1e11 ? n : n * 1000) : Date.parse(v);
  }
  if (ms === undefined || !Number.isFinite(ms)) return undefined;
  const d = new Date(ms);
  return Number.isNaN(d.getTime()) ? undefined : d;
}

/** Cuts to at most `n` UTF-16 units, never in the middle of a surrogate pair, marking the cut with "…". */
export function truncate(s: string, n: number): string {
  if (s.length <= n) return s;
  let cut = Math.max(0, n - 1);
  const c = s.charCodeAt(cut - 1);
  if (c >= 0xd800 && c <= 0xdbff) cut--;
  return `${s.slice(0, cut)}…`;
}

/** How a value reads inside text: strings as they are, missing as empty, objects as JSON. */
export function toText(v: unknown): string {
  if (v === undefined || v === null) return "";
  if (typeof v === "string") return v;
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  return JSON.stringify(v);
}

// ---------------------------------------------------------------- parsing

const PLACEHOLDER = /\{\{([\s\S]*?)\}\}/g;
const SEGMENT = /^[A-Za-z_][A-Za-z0-9_-]*$/;

function parseExpr(src: string): Expr | string {
  const pieces = splitPipes(src);
  if (typeof pieces === "string") return pieces;
  const head = (pieces[0] ?? "").trim();
  if (head === "") return `empty placeholder {{${src}}}`;
  const path = head.split(".");
  if (!path.every((p) => SEGMENT.test(p))) return `not a field path: {{${src}}} (write e.g. {{ data.sensor }})`;
  const filters: Filter[] = [];
  for (const raw of pieces.slice(1)) {
    const f = parseFilter(raw.trim());
    if (typeof f === "string") {
      // Name the placeholder before the (long) list of filters.
      const [problem, list] = f.split(" (filters: ");
      return `${problem} in {{${src}}}${list === undefined ? "" : ` (filters: ${list}`}`;
    }
    filters.push(f);
  }
  return { path, filters };
}

/** Splits on `|` outside quotes; a string is an error message. */
function splitPipes(src: string): string[] | string {
  const out: string[] = [];
  let cur = "";
  let quote: string | undefined;
  for (let i = 0; i < src.length; i++) {
    const ch = src[i] as string;
    if (quote) {
      cur += ch;
      if (ch === "\\" && i + 1 < src.length) cur += src[++i];
      else if (ch === quote) quote = undefined;
    } else if (ch === '"' || ch === "'") {
      quote = ch;
      cur += ch;
    } else if (ch === "|") {
      out.push(cur);
      cur = "";
    } else cur += ch;
  }
  if (quote) return `unclosed quote in {{${src}}}`;
  out.push(cur);
  return out;
}

function parseFilter(src: string): Filter | string {
  const m = /^([A-Za-z_][A-Za-z0-9_]*)\s*(?:\(([\s\S]*)\))?$/.exec(src);
  if (!m) return `not a filter: '${src}'`;
  const name = m[1] as string;
  const args: Literal[] = [];
  const argSrc = m[2]?.trim();
  if (argSrc) {
    const re = /\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|-?\d+(?:\.\d+)?)\s*(,|$)/y;
    let pos = 0;
    while (pos < argSrc.length) {
      re.lastIndex = pos;
      const a = re.exec(argSrc);
      if (!a) return `arguments of ${name} must be numbers or quoted text`;
      const tok = a[1] as string;
      if (tok.startsWith('"')) args.push(JSON.parse(tok) as string);
      else if (tok.startsWith("'")) args.push(tok.slice(1, -1).replace(/\\(.)/g, "$1"));
      else args.push(Number(tok));
      pos = re.lastIndex;
      if (a[2] === "") break;
    }
  }
  if (!Object.hasOwn(FILTERS, name)) {
    return `unknown filter '${name}'${didYouMean(name, FILTER_NAMES)} (filters: ${FILTER_NAMES.join(", ")})`;
  }
  const problem = (FILTERS[name] as FilterSpec).check(args);
  if (problem) return problem;
  return { name, args };
}

function fieldNames(known: ReadonlySet<string> | "any"): string[] {
  const extra = known === "any" ? [] : [...known];
  const fields = [...DATA_FIELD_NAMES, ...extra];
  return ["type", "timestamp", ...fields.map((f) => `data.${f}`)];
}

/** Levenshtein distance, for "did you mean" on typos. */
function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(
        (prev[j] as number) + 1,
        (cur[j - 1] as number) + 1,
        (prev[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    }
    prev = cur;
  }
  return prev[b.length] as number;
}

function didYouMean(name: string, candidates: readonly string[]): string {
  let best: string | undefined;
  let bestD = 3;
  for (const c of candidates) {
    const d = distance(name, c);
    if (d < bestD) {
      bestD = d;
      best = c;
    }
  }
  return best === undefined ? "" : `; did you mean ${best}?`;
}

function checkPath(path: string[], known: ReadonlySet<string> | "any"): boolean {
  const [root, field, ...rest] = path;
  if (root === "type" || root === "timestamp") return path.length === 1;
  if (root !== "data") return false;
  if (field === undefined || known === "any") return true;
  if (isDataField(field)) {
    const shape = DATA_FIELDS[field];
    return shape === "open" || rest.length <= (shape === "labels" ? 1 : 0);
  }
  // Rule `extra` values may be objects; their inner shape is the author's business.
  return known.has(field);
}

function compileString(
  s: string,
  path: ConfigPath,
  known: ReadonlySet<string> | "any",
  problems: TemplateProblem[],
): StringPart | undefined {
  const parts: (string | Expr)[] = [];
  let last = 0;
  let bad = false;
  for (const m of s.matchAll(PLACEHOLDER)) {
    const start = m.index as number;
    if (start > last) parts.push(s.slice(last, start));
    last = start + m[0].length;
    const e = parseExpr(m[1] as string);
    if (typeof e === "string") {
      problems.push({ path, message: e });
      bad = true;
      continue;
    }
    if (!checkPath(e.path, known)) {
      problems.push({
        path,
        message: `unknown placeholder ${m[0]}${didYouMean(e.path.join("."), fieldNames(known))} (fields: ${fieldNames(known).join(", ")}, data.labels.<name>)`,
      });
      bad = true;
      continue;
    }
    parts.push(e);
  }
  if (last < s.length) parts.push(s.slice(last));
  const tail = s.slice(last);
  if (tail.includes("{{")) {
    problems.push({ path, message: "a placeholder opened with {{ is not closed with }}" });
    bad = true;
  }
  if (bad) return undefined;
  return { parts, whole: parts.length === 1 && typeof parts[0] !== "string" };
}

function compileNode(
  node: unknown,
  path: ConfigPath,
  known: ReadonlySet<string> | "any",
  problems: TemplateProblem[],
): Compiled {
  if (typeof node === "string") {
    const s = compileString(node, path, known, problems);
    return s ? { t: "str", s } : { t: "const", v: node };
  }
  if (Array.isArray(node))
    return { t: "arr", items: node.map((n, i) => compileNode(n, [...path, i], known, problems)) };
  if (node !== null && typeof node === "object") {
    if (node instanceof Date) return { t: "const", v: node.toISOString() };
    const keys = Object.keys(node);
    // `text: {{ data.sensor }}` unquoted is a YAML flow mapping whose only key is the
    // stringified `{ data.sensor }`: catch it, or the receiver gets `{"{ data.sensor }": null}`.
    if (
      keys.length === 1 &&
      /^\{.*\}$/s.test(keys[0] as string) &&
      (node as Record<string, unknown>)[keys[0] as string] === null
    ) {
      problems.push({
        path,
        message: `quote a value that starts with {{ (YAML reads it as a mapping): write "{${keys[0]}}"`,
      });
      return { t: "const", v: null };
    }
    return {
      t: "obj",
      entries: Object.entries(node).map(([k, v]) => [k, compileNode(v, [...path, k], known, problems)]),
    };
  }
  if (node === undefined) return { t: "const", v: null };
  return { t: "const", v: node };
}

// ---------------------------------------------------------------- evaluation

function lookup(envelope: unknown, path: string[]): unknown {
  let cur: unknown = envelope;
  for (const p of path) {
    if (cur === null || typeof cur !== "object" || !Object.hasOwn(cur, p)) return undefined;
    cur = (cur as Record<string, unknown>)[p];
  }
  return cur;
}

function evalExpr(e: Expr, envelope: unknown): unknown {
  let v = lookup(envelope, e.path);
  for (const f of e.filters) v = (FILTERS[f.name] as FilterSpec).apply(v, f.args);
  return v;
}

function evalString(s: StringPart, envelope: unknown, esc: (t: string) => string): unknown {
  if (s.whole) {
    const v = evalExpr(s.parts[0] as Expr, envelope);
    return v === undefined ? null : v;
  }
  let out = "";
  for (const p of s.parts) out += typeof p === "string" ? p : esc(toText(evalExpr(p, envelope)));
  return out;
}

function evalNode(c: Compiled, envelope: unknown): unknown {
  switch (c.t) {
    case "const":
      return c.v;
    case "str":
      return evalString(c.s, envelope, (t) => t);
    case "arr":
      return c.items.map((i) => evalNode(i, envelope));
    case "obj": {
      const o: Record<string, unknown> = {};
      for (const [k, v] of c.entries) o[k] = evalNode(v, envelope);
      return o;
    }
  }
}

// ---------------------------------------------------------------- escaping

type Escaper = (s: string) => string;

export function escapeXml(s: string): string {
  return (
    s
      .replace(/&/g, "&amp;")
      .replace(/</g, "&lt;")
      .replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;")
      .replace(/'/g, "&apos;")
      // Characters XML 1.0 forbids even as references: replace rather than emit an invalid document.
      // biome-ignore lint/suspicious/noControlCharactersInRegex: these are exactly the characters to remove
      .replace(/[\u0000-\u0008\u000B\u000C\u000E-\u001F\uFFFE\uFFFF]/g, "\uFFFD")
  );
}

/** application/x-www-form-urlencoded value encoding (WHATWG URL "urlencoded serializer": space → +). */
export function escapeForm(s: string): string {
  return encodeURIComponent(s)
    .replace(/%20/g, "+")
    .replace(/[!'()~]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function escapeJsonString(s: string): string {
  return JSON.stringify(s).slice(1, -1);
}

/** The escaping a text template gets for its content type, or undefined when edgehook cannot escape for it. */
export function escaperFor(contentType: string): Escaper | undefined {
  const mime = (contentType.split(";")[0] ?? "").trim().toLowerCase();
  if (mime === "text/plain") return (s) => s;
  if (mime === "application/x-www-form-urlencoded") return escapeForm;
  if (mime === "application/xml" || mime === "text/xml" || mime === "text/html" || mime.endsWith("+xml")) {
    return escapeXml;
  }
  if (mime === "application/json" || mime.endsWith("+json")) return escapeJsonString;
  return undefined;
}

export const TEXT_CONTENT_TYPES =
  "text/plain, application/xml, text/xml, text/html, application/x-www-form-urlencoded, application/json";

function isJsonType(contentType: string): boolean {
  const mime = (contentType.split(";")[0] ?? "").trim().toLowerCase();
  return mime === "application/json" || mime.endsWith("+json");
}

function withCharset(contentType: string): string {
  return /^text\//i.test(contentType) && !/charset=/i.test(contentType) ? `${contentType}; charset=utf-8` : contentType;
}

// ---------------------------------------------------------------- compile

/**
 * Compiles a template given as the parsed YAML value `node`, found at config `path`.
 * Problems carry config paths the loader turns into `file:line:col`.
 */
export function compileTemplate(node: unknown, path: ConfigPath, options: CompileOptions = {}): CompileResult {
  const known = options.anyDataField ? "any" : new Set(options.extraDataFields ?? []);
  const problems: TemplateProblem[] = [];
  if (typeof node === "string") {
    const ct = options.contentType;
    if (!ct) {
      return {
        ok: false,
        problems: [
          { path, message: `a text template needs content_type (one of ${TEXT_CONTENT_TYPES}) to know how to escape` },
        ],
      };
    }
    const esc = escaperFor(ct);
    if (!esc) {
      return {
        ok: false,
        problems: [{ path, message: `cannot escape for content_type ${ct} (use one of ${TEXT_CONTENT_TYPES})` }],
      };
    }
    const s = compileString(node, path, known, problems);
    if (!s || problems.length) return { ok: false, problems };
    const contentType = withCharset(ct);
    const renderText = (envelope: unknown) =>
      s.whole ? esc(toText(evalExpr(s.parts[0] as Expr, envelope))) : (evalString(s, envelope, esc) as string);
    return {
      ok: true,
      template: {
        kind: "text",
        contentType,
        render: (envelope) => Buffer.from(renderText(envelope), "utf8"),
        renderValue: renderText,
      },
    };
  }
  if (node === null || typeof node !== "object") {
    return { ok: false, problems: [{ path, message: "must be a mapping or list (sent as JSON) or text" }] };
  }
  const ct = options.contentType ?? "application/json";
  if (!isJsonType(ct)) {
    return {
      ok: false,
      problems: [{ path, message: `a mapping or list template is sent as JSON; content_type ${ct} does not fit` }],
    };
  }
  const compiled = compileNode(node, path, known, problems);
  if (problems.length) return { ok: false, problems };
  return {
    ok: true,
    template: {
      kind: "json",
      contentType: ct,
      render: (envelope) => Buffer.from(JSON.stringify(evalNode(compiled, envelope)), "utf8"),
      renderValue: (envelope) => evalNode(compiled, envelope),
    },
  };
}
