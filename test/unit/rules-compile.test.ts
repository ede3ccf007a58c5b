/**
 * The seams of the rule engine's parts: compileRule gives one CompiledRule member per
 * kind of rule, with that kind's fields; the due queue hands items back in time order.
 */
import { describe, expect, it } from "vitest";
import { compileRule } from "../../src/rules/compile.js";
import { DueQueue, type Schedulable } from "../../src/rules/due-queue.js";
import { seededRandom } from "../support/random.js";
import { rules } from "./rules-support.js";

/** One rule as an operator writes it, compiled. */
function compile(def: Record<string, unknown>) {
  const [cfg] = rules(def);
  if (cfg === undefined) throw new Error("no rule");
  return compileRule(cfg);
}

describe("compileRule: one member per kind of rule", () => {
  it("a threshold rule is an alert rule with its condition and timings", () => {
    const r = compile({ match: { metric: "temp" }, above: 30, clear_below: 28, for: "10s" });
    if (r.kind !== "alert") throw new Error(`kind is ${r.kind}`);
    expect(r.condition.name).toBe("above");
    expect(r.condition.threshold).toBe(30);
    expect([r.condition.active(30.5), r.condition.active(30), r.condition.clear(29), r.condition.clear(27)]).toEqual([
      true,
      false,
      false,
      true,
    ]);
    expect(r.forMs).toBe(10_000);
    expect(r.aggregate).toBeUndefined();
    expect(r.rate).toBeUndefined();
  });

  it("a rate rule is an alert rule with a rate window and no aggregate", () => {
    const r = compile({ match: { metric: "level" }, rate_above: 2, rate_per: "m", rate_window: "5m" });
    if (r.kind !== "alert") throw new Error(`kind is ${r.kind}`);
    expect(r.condition.name).toBe("rate_above");
    expect(r.rate).toEqual({ windowMs: 300_000, factor: 60 });
    expect(r.aggregate).toBeUndefined();
  });

  it("absent_for is an absent rule that knows the literal names it can watch from the start", () => {
    const perMetric = compile({ match: { sensor: "pump", metric: "flow" }, absent_for: "5m" });
    const perSensor = compile({ match: { sensor: "pump", metric: "*" }, absent_for: "5m" });
    const wildcard = compile({ match: { sensor: "pump-*", metric: "flow" }, absent_for: "5m" });
    if (perMetric.kind !== "absent" || perSensor.kind !== "absent" || wildcard.kind !== "absent") {
      throw new Error("not absent rules");
    }
    expect([perMetric.absentMs, perMetric.perSensor, perMetric.knownSensor, perMetric.knownMetric]).toEqual([
      300_000,
      false,
      "pump",
      "flow",
    ]);
    expect([perSensor.perSensor, perSensor.knownSensor, perSensor.knownMetric]).toEqual([true, "pump", undefined]);
    expect(wildcard.knownSensor).toBeUndefined();
  });

  it("forward is a forward rule, batched or not", () => {
    const each = compile({ match: { metric: "temp" }, forward: true });
    const batched = compile({ match: { metric: "temp" }, forward: { batch_every: "30s" } });
    expect(each.kind === "forward" && each.batchMs).toBeUndefined();
    expect(batched.kind === "forward" && batched.batchMs).toBe(30_000);
  });
});

describe("DueQueue", () => {
  interface Item extends Schedulable {
    id: number;
  }
  const item = (id: number): Item => ({ id, dueAt: undefined, dueToken: 0, gone: false });

  it("hands back due items earliest first, once, keeping only each item's earliest entry", () => {
    const rand = seededRandom(16);
    const q = new DueQueue<Item>();
    const items = Array.from({ length: 200 }, (_, i) => item(i));
    const earliest = new Map<Item, number>();
    for (let n = 0; n < 1000; n++) {
      const it = items[rand(items.length)];
      if (it === undefined) throw new Error("no item");
      const at = rand(10_000);
      q.schedule(it, at);
      earliest.set(it, Math.min(at, earliest.get(it) ?? Number.POSITIVE_INFINITY));
    }
    for (const it of items.filter((_, i) => i % 7 === 0)) it.gone = true;
    const want = [...earliest].filter(([it]) => !it.gone).sort((a, b) => a[1] - b[1] || a[0].id - b[0].id);

    const got: [Item, number][] = [];
    for (let now = 0; now <= 10_000; now += 500) {
      for (const it of q.takeDue(now)) got.push([it, earliest.get(it) ?? Number.NaN]);
    }
    expect(got.map(([, at]) => at)).toEqual(want.map(([, at]) => at));
    expect(new Set(got.map(([it]) => it.id))).toEqual(new Set(want.map(([it]) => it.id)));
    expect(q.peek()).toBeUndefined();
  });
});
