/** Expressions of compound rules and derived metrics: compile errors with columns, evaluation, functions. */
import { describe, expect, it } from "vitest";
import {
  clamp,
  compileExpression,
  dewPoint,
  ExpressionError,
  type ExpressionInput,
  heatIndex,
} from "../../src/rules/expression.js";
import type { ReadingValue } from "../../src/sources/reading.js";

function lookupFrom(own: Record<string, ReadingValue>, others: Record<string, Record<string, ReadingValue>> = {}) {
  return (i: ExpressionInput) => (i.sensor === undefined ? own[i.metric] : others[i.sensor]?.[i.metric]);
}

describe("compile errors carry the column inside the expression", () => {
  const cases: [string, string, number, RegExp][] = [
    ["syntax", "temperature > humidity +", 25, /Unexpected token/],
    ["unknown function", "temperature > foo(humidity)", 15, /unknown function foo\(\)/],
    [
      "wrong argument type",
      'dew_point(temperature, "x") > 1',
      1,
      /no matching overload for 'dew_point\(dyn, string\)'/,
    ],
    ["type error on literals", 'temperature > 1 + "a"', 15, /no such overload/],
    ["not a condition", "temperature + 1", 1, /must give true or false, not a double/],
    ["no metric", "1 > 2", 1, /reads no metric/],
    ["sensor() without a metric", 'sensor("outside") > 1', 1, /followed by a metric/],
    ["sensor() with a name that is not text", "sensor(outside).temperature > 1", 1, /sensor name in quotes/],
    ["empty", "  ", 1, /is empty/],
    ["column after a rewritten integer", "temperature > 30 && humidity >", 31, /Unexpected token/],
  ];
  it.each(cases)("%s", (_name, src, column, message) => {
    let err: unknown;
    try {
      compileExpression(src, "bool");
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ExpressionError);
    expect((err as ExpressionError).message).toMatch(message);
    expect((err as ExpressionError).column).toBe(column);
  });

  it("a derived metric must be a number", () => {
    expect(() => compileExpression("temperature > 3", "number")).toThrow(/must give a number, not a bool/);
  });
});

describe("evaluation", () => {
  const cases: [string, string, Record<string, ReadingValue>, boolean | number | string][] = [
    ["an integer literal compares with a fractional reading", "temperature > 30", { temperature: 30.5 }, true],
    ["30 is not above 30", "temperature > 30", { temperature: 30 }, false],
    ["integer arithmetic mixes with readings", "temperature + 1 == 31", { temperature: 30 }, true],
    ["a boolean metric", "temperature > -10 && door_open", { temperature: -5, door_open: true }, true],
    ["a text state", 'state == "OPEN" && flow < 0.1', { state: "OPEN", flow: 0 }, true],
    ["missing input is unknown", "temperature > 30 && door_open", { temperature: 40 }, "no recent value of door_open"],
    [
      "a value of the wrong type is unknown",
      "temperature > -10 && door_open",
      { temperature: 0, door_open: 1 },
      "Logical operator requires bool operands, got 'double'",
    ],
  ];
  it.each(cases)("%s", (_name, src, values, want) => {
    const out = compileExpression(src, "bool").evaluate(lookupFrom(values));
    if (typeof want === "string") expect(out).toEqual({ known: false, reason: want });
    else expect(out).toEqual({ known: true, value: want });
  });

  it("another sensor's metric is an input of its own, and the values used are reported by name", () => {
    const e = compileExpression('temperature - sensor("outside").temperature > 15', "bool");
    expect(e.inputs).toEqual([
      { sensor: undefined, metric: "temperature", label: "temperature" },
      { sensor: "outside", metric: "temperature", label: 'sensor("outside").temperature' },
    ]);
    const used: Record<string, ReadingValue> = {};
    expect(e.evaluate(lookupFrom({ temperature: 21 }, { outside: { temperature: 5.5 } }), used)).toEqual({
      known: true,
      value: true,
    });
    expect(used).toEqual({ temperature: 21, 'sensor("outside").temperature': 5.5 });
    expect(e.evaluate(lookupFrom({ temperature: 21 }))).toEqual({
      known: false,
      reason: 'no recent value of sensor("outside").temperature',
    });
  });

  it("derived values are numbers", () => {
    const e = compileExpression("clamp(max(a, b) - min(a, b), 0, 5) + abs(c)", "number");
    expect(e.evaluate(lookupFrom({ a: 2, b: 9.5, c: -1 }))).toEqual({ known: true, value: 6 });
    expect(compileExpression("a / b", "number").evaluate(lookupFrom({ a: 1, b: 0 }))).toMatchObject({ known: false });
  });
});

describe("functions", () => {
  const cases: [string, number, number][] = [
    // Reference values: the Magnus formula tables (Sonntag constants) and the NWS heat index chart.
    ["dew_point(20, 50)", dewPoint(20, 50), 9.26],
    ["dew_point(30, 85)", dewPoint(30, 85), 27.2],
    ["dew_point(0, 100)", dewPoint(0, 100), 0],
    ["heat_index(20, 50) (below 80 °F: about the air temperature)", heatIndex(20, 50), 19.4],
    ["heat_index(32.2, 70) (90 °F at 70 %: 106 °F)", heatIndex(32.2, 70), 41.1],
    ["clamp(12, 0, 10)", clamp(12, 0, 10), 10],
  ];
  it.each(cases)("%s", (_name, got, want) => {
    expect(got).toBeCloseTo(want, 0);
  });
});
