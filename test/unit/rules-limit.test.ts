/**
 * The series limit (agent.max_series): which series make room for a new sensor, and what
 * the operator reads when a new sensor is turned away. FakeClock throughout.
 */
import { describe, expect, it } from "vitest";
import { Harness, rules, sec } from "./rules-support.js";

const HOT = { name: "hot", match: { metric: "t" }, above: 30 };
/** The documented idle times (QUIET_IDLE_MS, OPEN_IDLE_MS in engine.ts), in seconds. */
const MIN = 60;
const HOUR = 3600;

describe("eviction policy at the series limit", () => {
  it.each([
    {
      name: "firing series idle for an hour make room; the open alert is closed with reason 'series limit'",
      rules: [HOT],
      old: [31, 31, 31],
      newAt: HOUR + 10,
      newcomer: ["alert.resolved hot s0 series limit", "alert.firing hot new"],
    },
    {
      name: "firing series still reporting are never evicted: the new sensor is turned away",
      rules: [HOT],
      old: [31, 31, 31],
      refreshAt: HOUR, // every old sensor reports again just before the newcomer
      newAt: HOUR + 10,
      newcomer: [],
    },
    {
      name: "firing series idle less than an hour are kept",
      rules: [HOT],
      old: [31, 31, 31],
      newAt: HOUR - 10,
      newcomer: [],
    },
    {
      name: "ok series with a cooldown, idle a minute, go before any firing one",
      rules: [{ ...HOT, cooldown: "1h" }],
      old: [31, 31, 31],
      resolveFirst: true, // s2 resolves: ok, with a cooldown row
      newAt: MIN + 20,
      newcomer: ["alert.firing hot new"],
    },
    {
      name: "pending series idle an hour go before firing ones, quietly",
      rules: [
        { ...HOT, for: "1d" },
        { name: "hot-now", match: { metric: "u" }, above: 30 },
      ],
      old: [31, 31, 31],
      oldMetric: ["t", "u", "u"],
      newAt: HOUR + 10,
      newcomer: ["alert.firing hot-now new"],
      newMetric: "u",
    },
    {
      name: "a silent sensor idle an hour is closed with sensor.returned, reason 'series limit'",
      rules: [
        { name: "quiet", match: { sensor: "s*" }, absent_for: "1m" },
        { ...HOT, match: { sensor: "new" } },
      ],
      old: [1, 1, 1],
      newAt: HOUR + 10,
      newcomer: ["sensor.returned quiet s0 series limit", "alert.firing hot new"],
    },
  ])("$name", (c) => {
    const h = new Harness(rules(...(c.rules as Record<string, unknown>[])), undefined, 3);
    c.old.forEach((v, i) => {
      h.feed(`s${i}`, c.oldMetric?.[i] ?? "t", v, sec(i));
    });
    if (c.resolveFirst) h.feed("s2", "t", 20, sec(10));
    for (let i = 0; c.refreshAt !== undefined && i < c.old.length; i++) {
      h.feed(`s${i}`, "t", c.old[i]!, sec(c.refreshAt + i));
    }
    h.advanceTo(sec(c.newAt - 1));
    const out = h.feed("new", c.newMetric ?? "t", 31, sec(c.newAt));
    const show = out.map((e) =>
      [e.type, e.rule, e.body.data.sensor, e.body.data.reason].filter((x) => x !== undefined).join(" "),
    );
    expect(show).toEqual(c.newcomer);
    expect(h.engine.stats.seriesLimit).toBe(c.newcomer.length === 0 ? 1 : 0);
  });

  it("an evicted series' row is removed, so a restart does not bring it back", () => {
    const h = new Harness(rules(HOT), undefined, 2);
    h.feed("a", "t", 31, sec(0));
    h.feed("b", "t", 31, sec(1));
    expect(h.store.size).toBe(2);
    h.feed("c", "t", 31, sec(HOUR + 5));
    expect([...h.store.keys()].map((k) => k.split("\u001f")[1]).sort()).toEqual(["b", "c"]);
    h.restart();
    expect(h.engine.seriesCount).toBe(2);
  });

  it("series restored after a restart count as active from the restore, then age like any other", () => {
    const h = new Harness(rules(HOT), undefined, 2);
    h.feed("a", "t", 31, sec(0));
    h.feed("b", "t", 31, sec(1));
    h.advanceTo(sec(2 * HOUR));
    h.restart();
    expect(h.feed("c", "t", 31, sec(2 * HOUR + 10))).toEqual([]);
    expect(h.types(h.feed("c", "t", 31, sec(3 * HOUR + 10)))).toEqual(["alert.resolved", "alert.firing"]);
  });

  it("closes only as many idle open series as new series are waiting", () => {
    const h = new Harness(rules(HOT), undefined, 200);
    for (let i = 0; i < 200; i++) h.feed(`s${i}`, "t", 31, sec(0));
    const out = h.feed("new", "t", 31, sec(HOUR + 1));
    expect(h.types(out)).toEqual(["alert.resolved", "alert.firing"]);
    expect(h.engine.stats.seriesEvictedOpen).toBe(1);
    expect(h.engine.seriesCount).toBe(200);
  });

  it("never evicts the silence watch of a sensor an absent_for rule names", () => {
    const h = new Harness(rules({ name: "boiler", match: { sensor: "boiler" }, absent_for: "1m" }, HOT), undefined, 2);
    h.feed("a", "t", 31, sec(0));
    h.advanceTo(sec(2 * HOUR));
    expect(h.types(h.feed("new", "t", 31, sec(2 * HOUR + 1)))).toEqual(["alert.resolved", "alert.firing"]);
    expect(h.events.filter((e) => e.rule === "boiler").map((e) => e.type)).toEqual(["sensor.silent"]);
  });
});

describe("what the operator reads at the series limit", () => {
  it("the first new sensor turned away is logged, then once a minute with counts, then when there is room", () => {
    const h = new Harness(rules(HOT), undefined, 2);
    h.feed("a", "t", 31, sec(0));
    h.feed("b", "t", 31, sec(1));
    h.feed("c", "t", 31, sec(2));
    const [first] = h.logged("series limit reached");
    expect(first).toMatchObject({
      level: "warn",
      rule: "hot",
      sensor: "c",
      metric: "t",
      series: 2,
      max_series: 2,
      turned_away: 1,
    });
    for (let i = 0; i < 5; i++) h.feed(`d${i}`, "t", 31, sec(3 + i));
    expect(h.logs.filter((l) => /series limit/.test(l.msg))).toHaveLength(1);
    h.feed("e", "t", 31, sec(70));
    expect(h.logged("still skipped")).toEqual([
      expect.objectContaining({ sensor: "e", turned_away: 6, series_limit_total: 7 }),
    ]);
    // b resolves: there is room again for the next new sensor.
    h.feed("b", "t", 20, sec(80));
    expect(h.types(h.feed("f", "t", 31, sec(81)))).toEqual(["alert.firing"]);
    expect(h.logged("room for new series again")).toEqual([
      expect.objectContaining({ level: "info", series: 1, max_series: 2, turned_away: 0, evicted_total: 1 }),
    ]);
  });

  it("evicting idle series is logged with counts and the oldest one", () => {
    const h = new Harness(rules(HOT), undefined, 2);
    h.feed("a", "t", 31, sec(0));
    h.feed("b", "t", 31, sec(1));
    h.feed("c", "t", 31, sec(HOUR + 5));
    expect(h.logged("evicted idle series")).toEqual([
      expect.objectContaining({
        level: "warn",
        evicted_open: 1,
        oldest: { rule: "hot", sensor: "a", metric: "t" },
        idle_s: HOUR + 5,
      }),
    ]);
  });
});
