/**
 * The newest-value tables behind `when` rules and `derive` stay bounded: a value older than
 * the longest `stale_after` can never be read again, so a stream of sensors that each speak
 * once does not grow them without end (bounded memory), while fresh values stay readable.
 */
import { describe, expect, it } from "vitest";
import { compileCompound, HOLDS, LatestValues, UNKNOWN } from "../../src/rules/compound.js";
import { Deriver } from "../../src/rules/derive.js";
import { derived, reading, rules } from "./rules-support.js";

const MIN = 60_000;

describe("newest values kept for when rules and derive", () => {
  it("when: sensors heard from only long ago are dropped; the table stays near the live set", () => {
    const [rule] = rules({ when: "temperature > 30", stale_after: "10m" });
    const compound = rule ? compileCompound(rule) : undefined;
    if (rule === undefined || compound === undefined) throw new Error("no compound rule");
    const latest = new LatestValues();
    latest.setRules([{ name: rule.name, compound }]);
    // 100,000 sensors, one reading each, 100 per minute: about 1,000 are within 10 minutes.
    let now = 0;
    let most = 0;
    for (let i = 0; i < 100_000; i++) {
      now = i * (MIN / 100);
      latest.record(reading(`s${i}`, "temperature", 31, now), now, now);
      most = Math.max(most, latest.sensors);
    }
    expect(most).toBeLessThanOrEqual(2 * 1_001 + 1_024);
    // A fresh value is still judged; one from before the window is not (and was dropped).
    expect(latest.judge(compound, "s99999", now).verdict).toBe(HOLDS);
    expect(latest.judge(compound, "s0", now).verdict).toBe(UNKNOWN);
  });

  it("derive: the same bound, and a derived value still comes from fresh inputs", () => {
    const deriver = new Deriver(derived([{ metric: "double", value: "temperature * 2.0", stale_after: "10m" }]));
    let now = 0;
    let most = 0;
    for (let i = 0; i < 50_000; i++) {
      now = i * (MIN / 100);
      deriver.derive(reading(`s${i}`, "temperature", 21, now), now);
      most = Math.max(most, deriver.sensors);
    }
    expect(most).toBeLessThanOrEqual(2 * 1_001 + 1_024);
    const out = deriver.derive(reading("s7", "temperature", 20, now), now);
    expect(out.map((r) => [r.metric, r.value])).toEqual([["double", 40]]);
  });
});
