/**
 * A rule changed by a reload (or while the agent was down) judges its series again on
 * their last known value instead of resolving every firing alert. FakeClock throughout.
 */
import { describe, expect, it } from "vitest";
import type { NewEvent } from "../../src/events.js";
import { Harness, rules, sec } from "./rules-support.js";

const M = { sensor: "tank", metric: "level" };
const show = (evts: NewEvent[]) =>
  evts.map((e) => [e.type, e.body.data.threshold, e.body.data.reason].filter((x) => x !== undefined).join(" "));

describe("reload with a changed rule: firing series", () => {
  it.each([
    // name, old rule, new rule, value before the reload, events at the reload
    ["threshold lowered, value above both", { above: 30 }, { above: 20 }, 35, []],
    ["threshold raised, value still above", { above: 30 }, { above: 32 }, 35, []],
    ["threshold raised above the value", { above: 30 }, { above: 40 }, 35, ["alert.resolved 30 rule changed"]],
    ["hysteresis keeps it firing", { above: 30 }, { above: 40, clear_below: 28 }, 35, []],
    [
      "hysteresis added, value under it",
      { above: 30 },
      { above: 40, clear_below: 32 },
      31,
      ["alert.resolved 30 rule changed"],
    ],
    ["below lowered, value below both", { below: 10 }, { below: 5 }, 2, []],
    ["above → outside, value outside", { above: 30 }, { outside: [0, 25] }, 35, []],
    ["above → between, value between", { above: 30 }, { between: [30, 40] }, 35, []],
    ["above → equals, same text", { above: 30 }, { equals: "35" }, 35, []],
    ["for added: the alert is already firing", { above: 30 }, { above: 20, for: "10m" }, 35, []],
    [
      "match narrowed to other sensors",
      { above: 30 },
      { above: 20, match: { sensor: "pump*" } },
      35,
      ["alert.resolved 30 rule changed"],
    ],
    [
      "metric renamed",
      { above: 30 },
      { above: 20, match: { sensor: "tank", metric: "lvl" } },
      35,
      ["alert.resolved 30 rule changed"],
    ],
    ["alert → forward", { above: 30 }, { forward: true }, 35, ["alert.resolved 30 rule changed"]],
  ] as const)("%s", (_, before, after, value, atReload) => {
    const h = new Harness(rules({ name: "hot", match: M, ...before }));
    expect(h.types(h.feed("tank", "level", value, sec(0)))).toEqual(["alert.firing"]);
    h.clock.advance(10_000);
    expect(show(h.reconfigure(rules({ name: "hot", match: M, ...after })))).toEqual(atReload);
    if (atReload.length === 0) {
      // Still firing under the new rule: its stored row carries the new version.
      const [row] = [...h.store.values()];
      expect(row!.state).toMatchObject({ phase: "firing", since: sec(0), fired_at: sec(0) });
      expect(h.engine.stats.staleStates).toBe(0);
    } else expect(h.store.size).toBe(0);
  });

  it("a lowered threshold: no resolve for a value above both, and the alert resolves under the new one", () => {
    const h = new Harness(rules({ name: "hot", match: M, above: 30 }));
    h.feed("tank", "level", 35, sec(0));
    expect(h.reconfigure(rules({ name: "hot", match: M, above: 20 }))).toEqual([]);
    expect(h.feed("tank", "level", 25, sec(10))).toEqual([]); // above 20: still firing, no second firing
    const [resolved] = h.feed("tank", "level", 15, sec(20));
    expect(resolved).toMatchObject({ type: "alert.resolved" });
    expect(resolved!.body.data).toMatchObject({
      threshold: 20,
      since: new Date(sec(0)).toISOString(),
      reason: "cleared",
    });
  });

  it("a clearing series the new rule would keep firing goes back to firing", () => {
    const h = new Harness(rules({ name: "hot", match: M, above: 30, clear_for: "5m" }));
    h.feed("tank", "level", 35, sec(0));
    h.feed("tank", "level", 25, sec(10)); // clearing under above: 30
    expect(h.reconfigure(rules({ name: "hot", match: M, above: 20, clear_for: "5m" }))).toEqual([]);
    expect(h.advanceTo(sec(3600))).toEqual([]);
    expect(h.types(h.feed("tank", "level", 15, sec(3601)))).toEqual([]);
    expect(h.types(h.advanceTo(sec(3601 + 300)))).toEqual(["alert.resolved"]);
  });

  it("repeats continue their schedule", () => {
    const h = new Harness(rules({ name: "hot", match: M, above: 30, repeat_every: "10m" }));
    h.feed("tank", "level", 35, sec(0));
    h.clock.advance(60_000);
    h.reconfigure(rules({ name: "hot", match: M, above: 20, repeat_every: "10m" }));
    const out = h.advanceTo(sec(600));
    expect(h.types(out)).toEqual(["alert.repeat"]);
    expect(out[0]!.body.data).toMatchObject({ repeat: 1, threshold: 20 });
  });

  it("an aggregate over the same window keeps its samples; a different window ends the series", () => {
    const avg = { fn: "avg", over: "5m" };
    const h = new Harness(rules({ name: "hot", match: M, above: 30, aggregate: avg }));
    h.feed("tank", "level", 40, sec(0));
    h.feed("tank", "level", 30, sec(10)); // avg 35
    expect(h.reconfigure(rules({ name: "hot", match: M, above: 32, aggregate: avg }))).toEqual([]);
    expect(h.feed("tank", "level", 30, sec(20))).toEqual([]); // avg 33.3: still above 32
    const out = h.reconfigure(rules({ name: "hot", match: M, above: 32, aggregate: { fn: "avg", over: "10m" } }));
    expect(show(out)).toEqual(["alert.resolved 32 rule changed"]);
  });
});

describe("reload with a changed rule: pending, ok and silent series", () => {
  it("a pending series whose value meets the new condition fires when its original `for` ends", () => {
    const h = new Harness(rules({ name: "hot", match: M, above: 30, for: "10m" }));
    h.feed("tank", "level", 35, sec(0));
    h.clock.advance(300_000);
    expect(h.reconfigure(rules({ name: "hot", match: M, above: 20, for: "10m" }))).toEqual([]);
    const out = h.advanceTo(sec(600));
    expect(h.types(out)).toEqual(["alert.firing"]);
    expect(out[0]!.createdAt).toBe(sec(600));
  });

  it("a pending series whose value no longer meets it is ok again, quietly", () => {
    const h = new Harness(rules({ name: "hot", match: M, above: 30, for: "10m" }));
    h.feed("tank", "level", 35, sec(0));
    expect(h.reconfigure(rules({ name: "hot", match: M, above: 40, for: "10m" }))).toEqual([]);
    expect(h.store.size).toBe(0);
    expect(h.advanceTo(sec(3600))).toEqual([]);
  });

  it("an ok series does not fire on a stale value: it waits for the next reading", () => {
    const h = new Harness(rules({ name: "hot", match: M, above: 30 }));
    h.feed("tank", "level", 25, sec(0));
    expect(h.reconfigure(rules({ name: "hot", match: M, above: 20 }))).toEqual([]);
    expect(h.types(h.feed("tank", "level", 25, sec(10)))).toEqual(["alert.firing"]);
  });

  it("a silent absent_for series stays silent when absent_for changes", () => {
    const h = new Harness(rules({ name: "quiet", match: { sensor: "boiler" }, absent_for: "1m" }));
    h.feed("boiler", "t", 1, sec(0));
    h.advanceTo(sec(60));
    expect(h.types()).toEqual(["sensor.silent"]);
    expect(h.reconfigure(rules({ name: "quiet", match: { sensor: "boiler" }, absent_for: "2m" }))).toEqual([]);
    expect(h.advanceTo(sec(600))).toEqual([]);
    expect(h.types(h.feed("boiler", "t", 1, sec(610)))).toEqual(["sensor.returned"]);
  });

  it("a seen absent_for series goes silent on the new time, counted from its last reading", () => {
    const h = new Harness(rules({ name: "quiet", match: { sensor: "boiler" }, absent_for: "10m" }));
    h.feed("boiler", "t", 1, sec(0));
    h.clock.advance(60_000);
    h.reconfigure(rules({ name: "quiet", match: { sensor: "boiler" }, absent_for: "2m" }));
    const out = h.advanceTo(sec(600));
    expect(h.types(out)).toEqual(["sensor.silent"]);
    expect(out[0]!.createdAt).toBe(sec(120));
  });
});

describe("a rule changed while the agent was down", () => {
  it("a firing series the new rule would keep firing is restored firing (no resolve, no second firing)", () => {
    const h = new Harness(rules({ name: "hot", match: M, above: 30 }));
    h.feed("tank", "level", 35, sec(0));
    h.restart(rules({ name: "hot", match: M, above: 20 }));
    expect(h.advanceTo(sec(10))).toEqual([]);
    // The row was rewritten under the new version, so the next restart restores it as is.
    const version = h.batches.at(-1)!.states[0]!.version;
    expect([...h.store.values()][0]!.version).toBe(version);
    h.restart();
    expect(h.feed("tank", "level", 25, sec(20))).toEqual([]);
    expect(show(h.feed("tank", "level", 15, sec(30)))).toEqual(["alert.resolved 20 cleared"]);
  });

  it("a row written before values recorded their basis is resolved with 'rule changed', as before", () => {
    const h = new Harness(rules({ name: "hot", match: M, above: 30 }));
    h.feed("tank", "level", 35, sec(0));
    for (const [k, row] of h.store) {
      const { basis: _, ...state } = row.state as Record<string, unknown>;
      h.store.set(k, { ...row, state });
    }
    h.restart(rules({ name: "hot", match: M, above: 20 }));
    expect(show(h.advanceTo(sec(10)))).toEqual(["alert.resolved rule changed"]);
  });
});
