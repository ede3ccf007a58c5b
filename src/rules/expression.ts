/**
 * Expressions of compound rules (`when`, `clear_when`) and derived metrics (`derive`), in
 * CEL (the Common Expression Language of Kubernetes and Envoy) through @marcbachmann/cel-js:
 * a parser and evaluator that never runs JavaScript from the expression.
 *
 * What edgehook adds to plain CEL:
 * - Names are metrics. `temperature` is the latest value of the sensor's own metric
 *   `temperature`; `sensor("outside").temperature` is the latest value of another sensor's.
 *   Both are found in the expression when it is compiled (its inputs), so the engine knows
 *   which readings concern it and which values are missing.
 * - Numbers are doubles. CEL keeps `30` (int) and `30.5` (double) apart: `30.5 == 30` and
 *   `temperature + 1` are type errors there. Readings are doubles, so every integer literal
 *   is read as a double (`30` as `30.0`) before the expression is checked; `temperature > 30`
 *   is then true for 30.5, and arithmetic mixes freely.
 * - Missing is unknown. An input with no value (never seen, or older than `stale_after`)
 *   makes the result unknown without evaluating; so does an evaluation error (a text value
 *   where a number was needed, a division by zero). Unknown neither fires nor resolves.
 * - A few functions for sensors: dew_point, heat_index, abs, min, max, clamp.
 */
import { createRequire } from "node:module";
import type { Environment } from "@marcbachmann/cel-js";
import type { ReadingValue } from "../sources/reading.js";

/** One value an expression reads: a metric of the rule's own sensor, or of a named one. */
export interface ExpressionInput {
  /** undefined: the sensor the rule is judging. */
  readonly sensor: string | undefined;
  readonly metric: string;
  /** How the expression writes it: `temperature` or `sensor("outside").temperature`. */
  readonly label: string;
}

/** A problem with an expression, at a 1-based column of its text. */
export class ExpressionError extends Error {
  readonly column: number;
  constructor(column: number, message: string) {
    super(message);
    this.name = "ExpressionError";
    this.column = column;
  }
}

export type Outcome =
  | { readonly known: true; readonly value: boolean | number }
  | { readonly known: false; readonly reason: string };

/** Looks up the latest fresh value of an input; undefined when missing or stale. */
export type Lookup = (input: ExpressionInput) => ReadingValue | undefined;

export interface CompiledExpression {
  readonly source: string;
  readonly inputs: readonly ExpressionInput[];
  /** Evaluates with the latest values; `values` receives what it read (by label). */
  evaluate(lookup: Lookup, values?: Record<string, ReadingValue>): Outcome;
}

/** The functions edgehook adds, for docs and `check` messages. */
export const FUNCTIONS = [
  "dew_point(temperature_c, humidity_pct)",
  "heat_index(temperature_c, humidity_pct)",
  "abs(x)",
  "min(a, b)",
  "max(a, b)",
  "clamp(x, low, high)",
] as const;

/** Dew point in °C (Magnus formula, Sonntag 1990 constants; ±0.35 °C from -45 to 60 °C). */
export function dewPoint(tempC: number, humidityPct: number): number {
  if (!(humidityPct > 0)) return Number.NaN;
  const a = 17.62;
  const b = 243.12;
  const g = Math.log(humidityPct / 100) + (a * tempC) / (b + tempC);
  return (b * g) / (a - g);
}

/**
 * Heat index ("feels like") in °C, by the US National Weather Service's method: Steadman's
 * simple formula, and the Rothfusz regression with its two adjustments where that gives 80 °F
 * or more. https://www.wpc.ncep.noaa.gov/html/heatindex_equation.shtml
 */
export function heatIndex(tempC: number, humidityPct: number): number {
  const t = (tempC * 9) / 5 + 32;
  const rh = humidityPct;
  let hi = 0.5 * (t + 61 + (t - 68) * 1.2 + rh * 0.094);
  if ((hi + t) / 2 >= 80) {
    hi =
      -42.379 +
      2.04901523 * t +
      10.14333127 * rh -
      0.22475541 * t * rh -
      0.00683783 * t * t -
      0.05481717 * rh * rh +
      0.00122874 * t * t * rh +
      0.00085282 * t * rh * rh -
      0.00000199 * t * t * rh * rh;
    if (rh < 13 && t >= 80 && t <= 112) hi -= ((13 - rh) / 4) * Math.sqrt((17 - Math.abs(t - 95)) / 17);
    else if (rh > 85 && t >= 80 && t <= 87) hi += ((rh - 85) / 10) * ((87 - t) / 5);
  }
  return ((hi - 32) * 5) / 9;
}

export function clamp(x: number, lo: number, hi: number): number {
  return Math.max(lo, Math.min(hi, x));
}

let sharedEnv: Environment | undefined;
let knownFunctions: ReadonlySet<string> | undefined;

/**
 * One environment for all expressions: building one is expensive, parsing with it is not.
 * The CEL library is loaded here, on the first expression, not with this module: an agent
 * whose rules have no when/clear_when/derive never loads it (issue 15). require() of this
 * ES module package is synchronous in Node.js >= 20.19 (package.json "engines").
 */
function env(): Environment {
  if (sharedEnv) return sharedEnv;
  const cel = createRequire(import.meta.url)("@marcbachmann/cel-js") as typeof import("@marcbachmann/cel-js");
  sharedEnv = new cel.Environment({ unlistedVariablesAreDyn: true })
    .registerFunction("dew_point(double, double): double", dewPoint)
    .registerFunction("heat_index(double, double): double", heatIndex)
    .registerFunction("abs(double): double", Math.abs)
    .registerFunction("min(double, double): double", Math.min)
    .registerFunction("max(double, double): double", Math.max)
    .registerFunction("clamp(double, double, double): double", clamp);
  knownFunctions ??= new Set(sharedEnv.getDefinitions().functions.map((f) => f.name));
  return sharedEnv;
}

/** The part of the library's AST edgehook walks: every node has an op, args and a span. */
interface AstNode {
  op: string;
  args: unknown;
  start: number;
  end: number;
}

function isNode(x: unknown): x is AstNode {
  return typeof x === "object" && x !== null && "op" in x && typeof x.op === "string";
}

interface Edit {
  start: number;
  end: number;
  text: string;
}

/** What the expression must give: true/false for conditions, a number for derived metrics. */
export type ExpressionResult = "bool" | "number";

/** Compiles and type-checks; throws ExpressionError with the column of the problem. */
export function compileExpression(source: string, want: ExpressionResult): CompiledExpression {
  if (source.trim() === "") throw new ExpressionError(1, "is empty");
  const e = env();
  let ast: unknown;
  try {
    ast = e.parse(source).ast;
  } catch (err) {
    throw fromCel(err, source, (p) => p);
  }
  const inputs: ExpressionInput[] = [];
  const byLabel = new Map<string, string>();
  const edits: Edit[] = [];
  const variable = (input: Omit<ExpressionInput, "label">, label: string): string => {
    let v = byLabel.get(label);
    if (v === undefined) {
      // Own metrics keep their name (CEL identifiers); another sensor's gets a hidden one.
      v = input.sensor === undefined ? input.metric : `__sensor_${inputs.length}`;
      byLabel.set(label, v);
      inputs.push({ ...input, label });
    }
    return v;
  };
  const walk = (x: unknown): void => {
    if (Array.isArray(x)) {
      for (const y of x) walk(y);
      return;
    }
    if (!isNode(x)) return;
    if (x.op === "id" && typeof x.args === "string") {
      variable({ sensor: undefined, metric: x.args }, x.args);
      return;
    }
    if (x.op === "value" && typeof x.args === "bigint") {
      const text = source.slice(x.start, x.end);
      // Unsigned literals (1u) stay as written; every other integer is read as a double.
      if (!/[uU]$/.test(text)) edits.push({ start: x.start, end: x.end, text: `${x.args.toString()}.0` });
      return;
    }
    if (x.op === "call" && Array.isArray(x.args) && x.args[0] === "sensor") {
      throw new ExpressionError(
        x.start + 1,
        'sensor() names another sensor and is followed by a metric: sensor("outside").temperature',
      );
    }
    if (x.op === "." && Array.isArray(x.args)) {
      const target: unknown = x.args[0];
      const field: unknown = x.args[1];
      if (isNode(target) && target.op === "call" && Array.isArray(target.args) && target.args[0] === "sensor") {
        const params = target.args[1];
        const arg = Array.isArray(params) && params.length === 1 ? params[0] : undefined;
        if (!isNode(arg) || arg.op !== "value" || typeof arg.args !== "string" || arg.args === "") {
          throw new ExpressionError(target.start + 1, 'sensor() takes one sensor name in quotes: sensor("outside")');
        }
        if (typeof field !== "string")
          throw new ExpressionError(x.start + 1, "sensor(...) must be followed by .metric");
        const label = `sensor(${JSON.stringify(arg.args)}).${field}`;
        const v = variable({ sensor: arg.args, metric: field }, label);
        edits.push({ start: x.start, end: x.end, text: v });
        return;
      }
    }
    walk(x.args);
  };
  walk(ast);
  if (inputs.length === 0) throw new ExpressionError(1, "reads no metric; name at least one, e.g. temperature > 30");

  edits.sort((a, b) => a.start - b.start);
  let text = "";
  let at = 0;
  for (const ed of edits) {
    text += source.slice(at, ed.start) + ed.text;
    at = ed.end;
  }
  text += source.slice(at);
  // Map a position in the rewritten text back to the source, for messages.
  const back = (p: number): number => {
    let shift = 0;
    for (const ed of edits) {
      const newStart = ed.start + shift;
      if (p < newStart) break;
      if (p < newStart + ed.text.length) return ed.start;
      shift += ed.text.length - (ed.end - ed.start);
    }
    return p - shift;
  };

  let fn: ReturnType<Environment["parse"]>;
  try {
    fn = e.parse(text);
  } catch (err) {
    throw fromCel(err, source, back);
  }
  const checked = fn.check();
  if (!checked.valid) throw fromCel(checked.error, source, back);
  const type = checked.type;
  if (want === "bool" && type !== "bool" && type !== "dyn") {
    throw new ExpressionError(1, `must give true or false, not a ${type}; compare it, e.g. ... > 30`);
  }
  if (want === "number" && type !== "double" && type !== "int" && type !== "dyn") {
    throw new ExpressionError(1, `must give a number, not a ${type}`);
  }

  const slots = inputs.map((input) => ({ input, variable: byLabel.get(input.label) ?? input.metric }));
  return {
    source,
    inputs,
    evaluate(lookup, values) {
      const ctx: Record<string, ReadingValue> = {};
      let missing: string[] | undefined;
      for (const { input, variable } of slots) {
        const v = lookup(input);
        if (v === undefined) {
          missing ??= [];
          missing.push(input.label);
        } else {
          ctx[variable] = v;
          if (values) values[input.label] = v;
        }
      }
      if (missing) return { known: false, reason: `no recent value of ${missing.join(", ")}` };
      let out: unknown;
      try {
        out = fn(ctx);
      } catch (err) {
        return { known: false, reason: summary(err) };
      }
      if (want === "bool") {
        return typeof out === "boolean"
          ? { known: true, value: out }
          : { known: false, reason: `gave ${String(out)}, not true or false` };
      }
      const n = typeof out === "bigint" ? Number(out) : out;
      return typeof n === "number" && Number.isFinite(n)
        ? { known: true, value: n }
        : { known: false, reason: `gave ${String(out)}, not a number` };
    },
  };
}

/** The one-line message of a library error (its `summary`), or of anything thrown. */
function summary(err: unknown): string {
  if (err instanceof Error) {
    const sum: unknown = "summary" in err ? err.summary : undefined;
    return typeof sum === "string" ? sum : (err.message.split("\n")[0] ?? "");
  }
  return String(err);
}

/** Where a library error points (0-based offset in the text it parsed), if it says. */
function errorStart(err: unknown): number | undefined {
  if (!(err instanceof Error) || !("range" in err)) return undefined;
  const range: unknown = err.range;
  if (typeof range !== "object" || range === null || !("start" in range)) return undefined;
  return typeof range.start === "number" ? range.start : undefined;
}

function fromCel(err: unknown, source: string, back: (p: number) => number): ExpressionError {
  const at = errorStart(err);
  const start = at === undefined ? 0 : back(at);
  let message = summary(err);
  const fn = /found no matching overload for '([A-Za-z_][\w]*)\(/.exec(message);
  if (fn?.[1] !== undefined && !knownFunctions?.has(fn[1])) {
    message = `unknown function ${fn[1]}() (edgehook adds ${FUNCTIONS.join(", ")})`;
  }
  return new ExpressionError(Math.min(start, source.length) + 1, message);
}
