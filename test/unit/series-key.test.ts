import { describe, expect, it } from "vitest";
import { parseSeriesKey, seriesKey, seriesLabel } from "../../src/series-key.js";

describe("series keys", () => {
  it("keep the stored format: rule, sensor and metric joined by U+001F", () => {
    expect(seriesKey("hot", "boiler", "temp")).toBe("hot\u001fboiler\u001ftemp");
  });

  it.each([
    ["plain names", "hot", "boiler", "temp"],
    ["empty names", "", "", ""],
    ["slashes, globs and spaces", "r/1", "green house/2", "*"],
    ["a buffered forward reading", "fwd", "\u0000batch", "42"],
    ["unicode", "température", "capteur-é", "°C"],
  ])("round-trip: %s", (_what, rule, sensor, metric) => {
    expect(parseSeriesKey(seriesKey(rule, sensor, metric))).toEqual({ rule, sensor, metric });
  });

  it.each([
    ["no separator", "hot"],
    ["two parts", "hot\u001fboiler"],
    ["a name holding the separator", seriesKey("hot", "boil\u001fer", "temp")],
  ])("are not read back from %s", (_what, key) => {
    expect(parseSeriesKey(key)).toBeUndefined();
  });

  it("are shown with slashes on the command line", () => {
    expect(seriesLabel(seriesKey("hot", "boiler", "temp"))).toBe("hot/boiler/temp");
    expect(seriesLabel("only-one")).toBe("only-one");
  });
});
