/**
 * Reading times the rule engine cannot trust: stamps from the future (a sensor clock in
 * 2100, microseconds read as milliseconds), late readings, and times a restart or a clock
 * set back would otherwise keep. FakeClock throughout.
 */
import { describe, expect, it } from "vitest";
import { DEFAULT_MAX_FUTURE_MS } from "../../src/rules/engine.js";
import { FakeClock } from "../support/fake-clock.js";
import { Harness, reading, rules, sec, T0 } from "./rules-support.js";

const M = { sensor: "tank", metric: "level" };
const Y2100 = Date.parse("2100-01-01T00:00:00Z");

describe("readings stamped ahead of the agent's clock", () => {
  it.each([
    ["the year 2100", () => Y2100],
    ["microseconds read as milliseconds", (at: number) => at * 1000],
    ["beyond what a Date can hold", () => 9e15],
    ["+Infinity", () => Number.POSITIVE_INFINITY],
    ["just over the bound", (at: number) => at + DEFAULT_MAX_FUTURE_MS + 1],
  ])("one reading from %s does not silence its series: later readings still fire and resolve", (_, stamp) => {
    const h = new Harness(rules({ match: M, above: 10 }));
    h.feed("tank", "level", 5, sec(10));
    expect(h.feed("tank", "level", 6, sec(20), { ts: stamp(sec(20)) })).toEqual([]);
    expect(h.engine.stats.future).toBe(1);
    expect(h.types(h.feed("tank", "level", 11, sec(30)))).toEqual(["alert.firing"]);
    expect(h.types(h.feed("tank", "level", 5, sec(40)))).toEqual(["alert.resolved"]);
    expect(h.engine.stats.late).toBe(0);
  });

  it("its value is judged at its arrival time: an alert fires, stamped with the agent's time", () => {
    const h = new Harness(rules({ match: M, above: 10 }, { name: "fw", match: M, forward: true }));
    const out = h.feed("tank", "level", 11, sec(10), { ts: Y2100 });
    expect(h.types(out)).toEqual(["alert.firing", "reading"]);
    expect(out.map((e) => e.body.timestamp)).toEqual([
      new Date(sec(10)).toISOString(),
      new Date(sec(10)).toISOString(),
    ]);
    expect(out[0]!.body.data.since).toBe(new Date(sec(10)).toISOString());
  });

  it("a reading within the bound keeps its own time", () => {
    const h = new Harness(rules({ match: M, above: 10 }));
    const ahead = sec(10) + DEFAULT_MAX_FUTURE_MS;
    const [e] = h.feed("tank", "level", 11, sec(10), { ts: ahead });
    expect(e!.body.timestamp).toBe(new Date(ahead).toISOString());
    expect(h.engine.stats.future).toBe(0);
  });

  it.each([
    ["1 minute", 60_000, sec(10) + 60_001, 1],
    ["1 hour", 3_600_000, sec(10) + 60_001, 0],
  ])("the bound is a setting (max %s)", (_, maxFutureMs, ts, future) => {
    const h = new Harness(rules({ match: M, above: 10 }), undefined, undefined, { maxFutureMs });
    h.feed("tank", "level", 11, sec(10), { ts });
    expect(h.engine.stats.future).toBe(future);
  });

  it("is logged with sensor and skew, at most once a minute, with the count in between", () => {
    const h = new Harness(rules({ match: M, above: 10 }));
    for (let i = 0; i < 5; i++) h.feed("tank", "level", 5, sec(10 + i), { ts: Y2100 });
    const first = h.logged("stamped ahead");
    expect(first).toHaveLength(1);
    expect(first[0]).toMatchObject({
      level: "warn",
      sensor: "tank",
      metric: "level",
      source: "test",
      ts: "2100-01-01T00:00:00.000Z",
      ahead_s: Math.round((Y2100 - sec(10)) / 1000),
      max_future_skew_s: 300,
    });
    h.feed("tank", "level", 5, sec(80), { ts: Y2100 });
    expect(h.logged("stamped ahead").at(-1)).toMatchObject({ suppressed: 4, future_total: 6 });
  });

  it("does not move the late guard: a sensor clock a little behind ours is not late after it", () => {
    const h = new Harness(rules({ match: M, above: 10 }));
    h.feed("tank", "level", 5, sec(100), { ts: Y2100 });
    // The sensor's next reading, stamped 30 s behind the agent's clock.
    expect(h.types(h.feed("tank", "level", 11, sec(110), { ts: sec(80) }))).toEqual(["alert.firing"]);
    expect(h.engine.stats.late).toBe(0);
  });

  it("does not end in a silence that no later reading can end (absent_for)", () => {
    const h = new Harness(rules({ name: "quiet", match: { sensor: "boiler" }, absent_for: "1m" }));
    h.feed("boiler", "t", 1, sec(0), { ts: Y2100 });
    h.advanceTo(sec(120));
    expect(h.types()).toEqual(["sensor.silent"]);
    expect(h.types(h.feed("boiler", "t", 1, sec(130)))).toEqual(["sensor.returned"]);
  });

  it("NaN is still a reading without a time: counted, logged and skipped", () => {
    const h = new Harness(rules({ match: M, above: 10 }));
    expect(h.commit(h.engine.process([reading("tank", "level", 11, Number.NaN)]))).toEqual([]);
    expect(h.engine.stats.badTime).toBe(1);
    expect(h.logged("without a usable time")[0]).toMatchObject({ sensor: "tank", ts: "NaN" });
  });
});

describe("late readings", () => {
  it("are logged with sensor and how far behind, at most once a minute, with counts", () => {
    const h = new Harness(rules({ match: M, above: 10 }));
    h.feed("tank", "level", 11, sec(10));
    h.feed("tank", "level", 5, sec(20), { ts: sec(5) });
    h.feed("tank", "level", 5, sec(21), { ts: sec(6) });
    expect(h.engine.stats.late).toBe(2);
    const lines = h.logged("late reading");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      level: "warn",
      rule: "r0",
      sensor: "tank",
      metric: "level",
      ts: new Date(sec(5)).toISOString(),
      newest_ts: new Date(sec(10)).toISOString(),
      behind_s: 5,
      late_total: 1,
      suppressed: 0,
    });
    h.feed("tank", "level", 5, sec(90), { ts: sec(7) });
    expect(h.logged("late reading").at(-1)).toMatchObject({ late_total: 3, suppressed: 1, behind_s: 3 });
  });
});

describe("no time from the future outlives a restart or a clock set back", () => {
  it("a stored absent_for row with a last time in the future is forgotten on restore (and rewritten)", () => {
    const h = new Harness(rules({ name: "quiet", match: { sensor: "boiler" }, absent_for: "1m" }));
    h.feed("boiler", "t", 1, sec(0));
    h.advanceTo(sec(60));
    expect(h.types()).toEqual(["sensor.silent"]);
    // As an older version wrote it: the silent sensor's last reading time from 2100.
    const [key, row] = [...h.store.entries()][0]!;
    h.store.set(key, { ...row, state: { ...(row.state as object), last_ts: Y2100 } });
    h.restart();
    expect(h.engine.stats.futureState).toBe(1);
    expect(h.logged("ahead of the agent's clock")[0]).toMatchObject({
      sensor: "boiler",
      newest_ts: "2100-01-01T00:00:00.000Z",
    });
    expect(h.types(h.feed("boiler", "t", 1, sec(70)))).toEqual(["sensor.returned"]);
    expect((h.store.get(key)!.state as { last_ts: number }).last_ts).toBe(sec(70));
  });

  it("after the agent's clock is set back, its series are not late until the old time comes round", () => {
    const clock = new FakeClock(T0 + 3_600_000);
    const h = new Harness(rules({ match: M, above: 10 }), clock);
    h.feed("tank", "level", 11, T0 + 3_600_000);
    clock.jumpWall(T0); // NTP steps a clock that ran an hour ahead
    expect(h.types(h.feed("tank", "level", 5, T0 + 10_000))).toEqual(["alert.resolved"]);
    expect(h.engine.stats.late).toBe(0);
    expect(h.engine.stats.futureState).toBe(1);
  });
});
