/**
 * Rule engine beyond thresholds: rate, aggregate windows, absent_for, repeat, cooldown,
 * late readings, reload, forwarding, matching, many series. FakeClock throughout.
 */
import { describe, expect, it } from "vitest";
import { MAX_BATCH } from "../../src/rules/engine.js";
import { type AggregateFn, AggregateWindow } from "../../src/rules/windows.js";
import { Harness, reading, rules, sec } from "./rules-support.js";

const M = { sensor: "tank", metric: "level" };

describe("rate_above / rate_below", () => {
  it("compares change per rate_per over the window", () => {
    const h = new Harness(rules({ match: M, rate_above: 6, rate_per: "m", rate_window: "5m" }));
    h.feed("tank", "level", 100, sec(0));
    expect(h.feed("tank", "level", 105, sec(60))).toEqual([]); // 5 per minute
    const evts = h.feed("tank", "level", 120, sec(120)); // (120-100)/2 min = 10 per minute
    expect(h.types(evts)).toEqual(["alert.firing"]);
    expect(evts[0]!.body.data).toMatchObject({
      value: 10,
      threshold: 6,
      condition: "rate_above",
      rate_per: "m",
      rate_window_s: 300,
      reading_value: 120,
    });
  });

  it("over an uneven window uses the real time between the oldest and newest sample", () => {
    const h = new Harness(rules({ match: M, rate_below: -1, rate_window: "60s" }));
    h.feed("tank", "level", 50, sec(0));
    h.feed("tank", "level", 49, sec(7));
    h.feed("tank", "level", 48, sec(19));
    // oldest in window is t=0 → (20 - 50) / 50 s = -0.6/s: not yet below -1
    expect(h.feed("tank", "level", 20, sec(50))).toEqual([]);
    // t=0 left the window at 61 s: oldest is t=7 → (10 - 49) / 54 s ≈ -0.72/s
    expect(h.feed("tank", "level", 10, sec(61))).toEqual([]);
    // t=7 left at 70 s: oldest is t=19 → (0 - 48) / 51 s ≈ -0.94/s
    expect(h.feed("tank", "level", 0, sec(70))).toEqual([]);
    // (-10 - 48) / 56 s ≈ -1.04/s. Divided by the nominal 60 s window it would be -0.97.
    const evts = h.feed("tank", "level", -10, sec(75));
    expect(h.types(evts)).toEqual(["alert.firing"]);
    expect(evts[0]!.body.data.value as number).toBeCloseTo(-58 / 56, 6);
  });

  it("needs two samples in the window; a single one after a gap decides nothing", () => {
    const h = new Harness(rules({ match: M, rate_above: 1, rate_window: "10s" }));
    h.feed("tank", "level", 0, sec(0));
    expect(h.feed("tank", "level", 1000, sec(100))).toEqual([]);
    expect(h.types(h.feed("tank", "level", 1020, sec(105)))).toEqual(["alert.firing"]);
    expect(h.types(h.feed("tank", "level", 1021, sec(106)))).toEqual([]); // 21/6s still above 1
    expect(h.types(h.feed("tank", "level", 1021, sec(130)))).toEqual([]); // alone: no decision
    expect(h.types(h.feed("tank", "level", 1021, sec(131)))).toEqual(["alert.resolved"]);
  });

  it("divides by the readings' own times, so a backlog burst is not a spike", () => {
    const h = new Harness(rules({ match: M, rate_above: 1, rate_per: "m", rate_window: "5m" }));
    // An hour of buffered readings arrives at once (same agent time), 5 units over 60 min.
    const burst = Array.from({ length: 6 }, (_, i) => reading("tank", "level", i, sec(-3600 + i * 720)));
    expect(h.commit(h.engine.process(burst))).toEqual([]);
  });
});

describe("aggregate", () => {
  it("avg over a window compares the mean instead of the raw value", () => {
    const h2 = new Harness(rules({ match: M, above: 30, aggregate: { fn: "avg", over: "5m" } }));
    expect(h2.types(h2.feed("tank", "level", 20, sec(0)))).toEqual([]);
    expect(h2.types(h2.feed("tank", "level", 35, sec(60)))).toEqual([]); // avg 27.5
    const evts = h2.feed("tank", "level", 40, sec(120)); // avg 31.67
    expect(h2.types(evts)).toEqual(["alert.firing"]);
    expect(evts[0]!.body.data).toMatchObject({ aggregate: { fn: "avg", over_s: 300 }, reading_value: 40 });
    expect(evts[0]!.body.data.value as number).toBeCloseTo(95 / 3, 6);
  });

  it("with a gap longer than the window only counts the new samples", () => {
    const h = new Harness(rules({ match: M, below: 10, aggregate: { fn: "max", over: "1m" } }));
    h.feed("tank", "level", 50, sec(0));
    h.feed("tank", "level", 5, sec(30)); // max 50
    expect(h.events).toEqual([]);
    // 10 minutes of nothing, then a low value: the old 50 has left the window.
    expect(h.types(h.feed("tank", "level", 6, sec(630)))).toEqual(["alert.firing"]);
    expect(h.events[0]!.body.data.value).toBe(6);
  });

  it("min, max, count and avg follow samples leaving the window", () => {
    const table: { fn: AggregateFn; values: [number, number][]; at: number; want: number | undefined }[] = [
      // window 60 s: at 70 s the sample from 0 s has left (and one from exactly 10 s would too)
      {
        fn: "min",
        values: [
          [0, 5],
          [20, 9],
          [40, 7],
          [70, 8],
        ],
        at: 70,
        want: 7,
      },
      {
        fn: "max",
        values: [
          [0, 9],
          [20, 1],
          [40, 3],
          [70, 2],
        ],
        at: 70,
        want: 3,
      },
      {
        fn: "count",
        values: [
          [0, 1],
          [10, 1],
          [40, 1],
          [70, 1],
        ],
        at: 70,
        want: 2,
      },
      {
        fn: "avg",
        values: [
          [0, 100],
          [20, 2],
          [40, 4],
          [70, 6],
        ],
        at: 70,
        want: 4,
      },
      {
        fn: "min",
        values: [
          [0, 1],
          [20, 2],
          [30, 0],
        ],
        at: 90,
        want: undefined,
      },
      { fn: "count", values: [[0, 1]], at: 60, want: 0 },
      {
        fn: "max",
        values: [
          [0, 5],
          [1, 4],
          [2, 3],
          [3, 6],
          [4, 1],
        ],
        at: 63.5,
        want: 1,
      },
    ];
    for (const row of table) {
      const w = new AggregateWindow(row.fn, 60_000);
      for (const [t, v] of row.values) {
        w.evict(t * 1000);
        w.add(t * 1000, v);
      }
      w.evict(row.at * 1000);
      expect(w.value(), `${row.fn} ${JSON.stringify(row.values)} at ${row.at}`).toBe(row.want);
    }
  });

  it("count above: too many events in a window", () => {
    const h = new Harness(
      rules({ match: { sensor: "door", metric: "open" }, above: 3, aggregate: { fn: "count", over: "1m" } }),
    );
    for (const t of [0, 10, 20]) h.feed("door", "open", 1, sec(t));
    expect(h.events).toEqual([]);
    expect(h.types(h.feed("door", "open", 1, sec(30)))).toEqual(["alert.firing"]);
    expect(h.types(h.feed("door", "open", 1, sec(100)))).toEqual(["alert.resolved"]); // the first four have left the 1 min window: count 1
  });
});

describe("absent_for", () => {
  const rule = rules({ match: { sensor: "boiler" }, absent_for: "5m", severity: "critical" });

  it("reports a sensor that goes silent and its return", () => {
    const h = new Harness(rule);
    h.feed("boiler", "temp", 60, sec(0), { labels: { site: "home" } });
    h.feed("boiler", "pressure", 1.2, sec(100));
    expect(h.advanceTo(sec(399))).toEqual([]);
    const [silent] = h.advanceTo(sec(400));
    expect(silent).toMatchObject({ type: "sensor.silent", severity: "critical" });
    expect(silent!.body).toEqual({
      type: "sensor.silent",
      timestamp: new Date(sec(400)).toISOString(),
      data: {
        agent: "pi-1",
        rule: "r0",
        sensor: "boiler",
        metric: "*",
        value: 1.2,
        threshold: 300,
        condition: "absent_for",
        severity: "critical",
        labels: {},
        since: new Date(sec(100)).toISOString(),
        last_seen: new Date(sec(100)).toISOString(),
        absent_for_s: 300,
      },
    });
    expect(h.advanceTo(sec(4000))).toEqual([]); // once, not again and again
    const [back] = h.feed("boiler", "temp", 58, sec(4000));
    expect(back!.type).toBe("sensor.returned");
    expect(back!.body.data).toMatchObject({ value: 58, duration_s: 3900, since: new Date(sec(100)).toISOString() });
    expect(back!.series).toBe(silent!.series);
  });

  it("a literal sensor that never reports is reported too", () => {
    const h = new Harness(rule);
    const [silent] = h.advanceTo(sec(300));
    expect(silent!.type).toBe("sensor.silent");
    expect(silent!.body.data.last_seen).toBeNull();
  });

  it("with a metric glob, each (sensor, metric) is its own series", () => {
    const h = new Harness(rules({ match: { sensor: "*", metric: "temp*" }, absent_for: "1m" }));
    h.feed("a", "temp", 1, sec(0));
    h.feed("a", "temp2", 1, sec(0));
    h.feed("b", "humidity", 1, sec(0)); // not matched
    h.feed("a", "temp", 1, sec(50));
    const evts = h.advanceTo(sec(61));
    expect(evts.map((e) => `${e.type} ${e.body.data.sensor}/${e.body.data.metric}`)).toEqual(["sensor.silent a/temp2"]);
  });

  it("across a restart: the silence timer restarts at restore time; downtime is not silence", () => {
    const h = new Harness(rule);
    h.feed("boiler", "temp", 60, sec(0));
    h.clock.advance(3600_000); // the agent was down for an hour
    h.restart();
    expect(h.advanceTo(sec(3600 + 299))).toEqual([]);
    const evts = h.advanceTo(sec(3600 + 300));
    expect(h.types(evts)).toEqual(["sensor.silent"]);
    expect(evts[0]!.body.data.last_seen).toBe(new Date(sec(0)).toISOString());
  });

  it("across a restart: a silent sensor stays silent and returns once", () => {
    const h = new Harness(rule);
    h.feed("boiler", "temp", 60, sec(0));
    h.advanceTo(sec(300));
    h.restart();
    expect(h.advanceTo(sec(5000))).toEqual([]);
    expect(h.types(h.feed("boiler", "temp", 61, sec(5001)))).toEqual(["sensor.returned"]);
    expect(h.types()).toEqual(["sensor.silent", "sensor.returned"]);
  });

  it("writes a row when a sensor is first seen, not for every reading", () => {
    const h = new Harness(rule);
    h.feed("boiler", "temp", 60, sec(0));
    const n = h.batches.length;
    for (let i = 1; i < 50; i++) h.feed("boiler", "temp", 60, sec(i));
    expect(h.batches.slice(n).every((b) => b.states.length === 0)).toBe(true);
  });
});

describe("repeat_every and cooldown", () => {
  it("repeats while firing, with the latest value, and stops when resolved", () => {
    const h = new Harness(rules({ match: M, above: 10, repeat_every: "1h" }));
    h.feed("tank", "level", 11, sec(0));
    h.feed("tank", "level", 12, sec(1800));
    const rep = h.advanceTo(sec(3600));
    expect(h.types(rep)).toEqual(["alert.repeat"]);
    expect(rep[0]!.body.data).toMatchObject({ value: 12, repeat: 1, firing_for_s: 3600 });
    expect(h.types(h.advanceTo(sec(7200)))).toEqual(["alert.repeat"]);
    h.feed("tank", "level", 5, sec(7300));
    expect(h.advanceTo(sec(20000))).toEqual([]);
    expect(h.types()).toEqual(["alert.firing", "alert.repeat", "alert.repeat", "alert.resolved"]);
  });

  it("repeats continue their schedule after a restart", () => {
    const h = new Harness(rules({ match: M, above: 10, repeat_every: "1h" }));
    h.feed("tank", "level", 11, sec(0));
    h.advanceTo(sec(1000));
    h.restart();
    const rep = h.advanceTo(sec(3600));
    expect(h.types(rep)).toEqual(["alert.repeat"]);
    expect(rep[0]!.body.data.value).toBe(11);
  });

  it("cooldown: no new firing within the cooldown after a resolve; fires after if still true", () => {
    const h = new Harness(rules({ match: M, above: 10, cooldown: "10m" }));
    h.feed("tank", "level", 11, sec(0));
    h.feed("tank", "level", 9, sec(60)); // resolved at 60 s; cooldown until 660 s
    h.feed("tank", "level", 11, sec(120));
    h.feed("tank", "level", 9, sec(180));
    h.feed("tank", "level", 12, sec(240));
    expect(h.types()).toEqual(["alert.firing", "alert.resolved"]);
    const evts = h.advanceTo(sec(660));
    expect(h.types(evts)).toEqual(["alert.firing"]);
    expect(evts[0]!.body.data.since).toBe(new Date(sec(240)).toISOString());
  });

  it("cooldown survives a restart", () => {
    const h = new Harness(rules({ match: M, above: 10, cooldown: "10m" }));
    h.feed("tank", "level", 11, sec(0));
    h.feed("tank", "level", 9, sec(60));
    h.restart();
    expect(h.feed("tank", "level", 11, sec(120))).toEqual([]);
    expect(h.types(h.advanceTo(sec(660)))).toEqual(["alert.firing"]);
  });
});

describe("late and out-of-order readings", () => {
  it("a late reading cannot resolve a firing alert, and is counted", () => {
    const h = new Harness(rules({ match: M, above: 10 }));
    h.feed("tank", "level", 11, sec(10));
    expect(h.feed("tank", "level", 5, sec(20), { ts: sec(5) })).toEqual([]);
    expect(h.engine.stats.late).toBe(1);
    expect(h.types(h.feed("tank", "level", 5, sec(30)))).toEqual(["alert.resolved"]);
  });

  it("shuffled readings do not make a rule flap", () => {
    const h = new Harness(rules({ match: M, above: 10 }));
    const ts = [1, 2, 3, 4, 5, 6, 7, 8];
    const values = [5, 5, 12, 12, 12, 5, 5, 5];
    // Arrival order: mostly ascending with stragglers from the past.
    const order = [0, 2, 1, 3, 5, 4, 6, 7];
    order.forEach((i, n) => {
      h.feed("tank", "level", values[i] as number, sec(100 + n), { ts: sec(ts[i] as number) });
    });
    expect(h.types()).toEqual(["alert.firing", "alert.resolved"]);
    expect(h.engine.stats.late).toBe(2);
  });

  it("a late reading does not end a silence and enters no window", () => {
    const h = new Harness(rules({ match: { sensor: "boiler" }, absent_for: "1m" }));
    h.feed("boiler", "t", 1, sec(10));
    h.advanceTo(sec(70));
    expect(h.feed("boiler", "t", 1, sec(80), { ts: sec(5) })).toEqual([]);
    expect(h.types()).toEqual(["sensor.silent"]);
  });

  it("a reading without a usable time is counted and skipped, not thrown", () => {
    const h = new Harness(rules({ match: M, above: 10 }, { name: "fw", match: M, forward: true }));
    // (Times after the Date range are from the future: rules-time.test.ts.)
    for (const ts of [Number.NaN, Number.NEGATIVE_INFINITY, -9e15]) {
      expect(h.commit(h.engine.process([reading("tank", "level", 11, ts)]))).toEqual([]);
    }
    expect(h.engine.stats.badTime).toBe(3);
    expect(h.types(h.feed("tank", "level", 11, sec(1)))).toEqual(["alert.firing", "reading"]);
  });

  it("equal timestamps (a redelivered duplicate) are processed normally", () => {
    const h = new Harness(rules({ match: M, above: 10 }));
    h.feed("tank", "level", 11, sec(10));
    h.feed("tank", "level", 11, sec(10));
    expect(h.engine.stats.late).toBe(0);
    expect(h.types()).toEqual(["alert.firing"]);
  });
});

describe("reconfigure", () => {
  const base = { name: "hot", match: M, above: 10 };

  it("an unchanged rule keeps its state and takes new presentation fields", () => {
    const h = new Harness(rules(base));
    h.feed("tank", "level", 11, sec(0));
    const out = h.reconfigure(rules({ ...base, severity: "critical", extra: { note: "x" } }));
    expect(out).toEqual([]);
    expect(h.batches.at(-1)!.removedStates).toEqual([]);
    const [r] = h.feed("tank", "level", 5, sec(10));
    expect(r).toMatchObject({ type: "alert.resolved", severity: "critical" });
    expect(r!.body.data.note).toBe("x");
  });

  it("a changed rule resolves its firing series with reason 'rule changed' and starts fresh", () => {
    const h = new Harness(rules(base));
    h.feed("tank", "level", 11, sec(0));
    const out = h.reconfigure(rules({ ...base, above: 20 }));
    expect(h.types(out)).toEqual(["alert.resolved"]);
    expect(out[0]!.body.data.reason).toBe("rule changed");
    expect(h.store.size).toBe(0);
    expect(h.feed("tank", "level", 15, sec(10))).toEqual([]);
    expect(h.types(h.feed("tank", "level", 25, sec(20)))).toEqual(["alert.firing"]);
  });

  it("a removed rule resolves its firing series with reason 'rule removed' and removes their states", () => {
    const h = new Harness(rules(base, { name: "pending", match: M, above: 5, for: "1h" }));
    h.feed("tank", "level", 11, sec(0));
    expect(h.store.size).toBe(2);
    const out = h.reconfigure(rules({ name: "other", match: M, below: 0 }));
    expect(out.map((e) => `${e.type} ${e.rule} ${e.body.data.reason}`)).toEqual(["alert.resolved hot rule removed"]);
    expect(h.store.size).toBe(0);
    expect(h.advanceTo(sec(7200))).toEqual([]); // the pending one never fires
  });

  it("a removed absent_for rule closes its silence", () => {
    const h = new Harness(rules({ name: "quiet", match: { sensor: "boiler" }, absent_for: "1m" }));
    h.advanceTo(sec(60));
    const out = h.reconfigure(rules({ name: "other", match: M, below: 0 }));
    expect(out.map((e) => `${e.type} ${e.body.data.reason}`)).toEqual(["sensor.returned rule removed"]);
  });
});

describe("forward", () => {
  it("sends every matching reading as a `reading` event and keeps no state", () => {
    const h = new Harness(rules({ match: { sensor: "meter*" }, forward: true, severity: "info", labels: { k: "v" } }));
    h.feed("meter1", "kwh", 1.5, sec(1), { labels: { room: "r" } });
    h.feed("meter2", "kwh", 2.5, sec(2));
    h.feed("other", "kwh", 3, sec(3));
    expect(h.events.map((e) => e.body)).toEqual([
      {
        type: "reading",
        timestamp: new Date(sec(1)).toISOString(),
        data: {
          agent: "pi-1",
          rule: "r0",
          sensor: "meter1",
          metric: "kwh",
          value: 1.5,
          labels: { room: "r", k: "v" },
          source: "test",
        },
      },
      {
        type: "reading",
        timestamp: new Date(sec(2)).toISOString(),
        data: {
          agent: "pi-1",
          rule: "r0",
          sensor: "meter2",
          metric: "kwh",
          value: 2.5,
          labels: { k: "v" },
          source: "test",
        },
      },
    ]);
    expect(h.batches.every((b) => b.states.length === 0)).toBe(true);
    expect(h.engine.nextDueAt()).toBeUndefined();
  });

  it("forwards late readings too (telemetry wants every point; the body has its time)", () => {
    const h = new Harness(rules({ match: { sensor: "meter" }, forward: true }));
    h.feed("meter", "kwh", 2, sec(10));
    h.feed("meter", "kwh", 1, sec(11), { ts: sec(5) });
    expect(h.events.map((e) => e.body.timestamp)).toEqual([sec(10), sec(5)].map((t) => new Date(t).toISOString()));
  });

  it("batch_every gathers readings into one `readings` event per interval", () => {
    const h = new Harness(rules({ match: { sensor: "meter" }, forward: { batch_every: "1m" } }));
    h.feed("meter", "kwh", 1, sec(0));
    h.feed("meter", "kwh", 2, sec(20));
    h.feed("meter", "w", 300, sec(40));
    expect(h.events).toEqual([]);
    expect(h.store.size).toBe(3); // each buffered reading is committed with its reading
    const evts = h.advanceTo(sec(60));
    expect(h.types(evts)).toEqual(["readings"]);
    expect(evts[0]!.body.timestamp).toBe(new Date(sec(40)).toISOString());
    expect(evts[0]!.body.data).toEqual({
      agent: "pi-1",
      rule: "r0",
      count: 3,
      readings: [
        { sensor: "meter", metric: "kwh", value: 1, ts: new Date(sec(0)).toISOString(), labels: {} },
        { sensor: "meter", metric: "kwh", value: 2, ts: new Date(sec(20)).toISOString(), labels: {} },
        { sensor: "meter", metric: "w", value: 300, ts: new Date(sec(40)).toISOString(), labels: {} },
      ],
    });
    expect(h.store.size).toBe(0);
    expect(h.engine.nextDueAt()).toBeUndefined(); // nothing buffered: no timer
    h.feed("meter", "kwh", 3, sec(100));
    expect(h.engine.nextDueAt()).toBe(sec(160));
  });

  it("a full batch goes out before the interval", () => {
    const h = new Harness(rules({ match: { sensor: "meter" }, forward: { batch_every: "1h" } }));
    const many = Array.from({ length: MAX_BATCH + 5 }, (_, i) => reading("meter", "kwh", i, sec(i)));
    h.commit(h.engine.process(many));
    expect(h.types()).toEqual(["readings"]);
    expect(h.events[0]!.body.data.count).toBe(MAX_BATCH);
    expect(h.store.size).toBe(5);
  });

  it("buffered readings survive a restart and go out in order", () => {
    const h = new Harness(rules({ match: { sensor: "meter" }, forward: { batch_every: "1m" } }));
    h.feed("meter", "kwh", 1, sec(0));
    h.feed("meter", "kwh", 2, sec(10));
    h.restart();
    h.feed("meter", "kwh", 3, sec(20));
    const evts = h.advanceTo(sec(200));
    expect(evts).toHaveLength(1);
    expect((evts[0]!.body.data.readings as { value: number }[]).map((r) => r.value)).toEqual([1, 2, 3]);
    expect(h.store.size).toBe(0);
  });

  it("a batched rule changed during downtime still sends what was buffered, without key clashes", () => {
    const h = new Harness(rules({ name: "fw", match: { sensor: "meter" }, forward: { batch_every: "1m" } }));
    h.feed("meter", "kwh", 1, sec(0));
    h.feed("meter", "kwh", 2, sec(10));
    h.restart(rules({ name: "fw", match: { sensor: "meter" }, forward: { batch_every: "2m" } }));
    h.feed("meter", "kwh", 3, sec(20));
    expect(h.store.size).toBe(3); // the new reading did not overwrite a stored one
    const evts = h.advanceTo(sec(200));
    expect((evts[0]!.body.data.readings as { value: number }[]).map((r) => r.value)).toEqual([1, 2, 3]);
    expect(h.store.size).toBe(0);
  });

  it("a batched rule removed during downtime drops its buffer and counts it", () => {
    const h = new Harness(rules({ name: "fw", match: { sensor: "meter" }, forward: { batch_every: "1m" } }));
    h.feed("meter", "kwh", 1, sec(0));
    h.restart(rules({ name: "other", match: { sensor: "meter" }, above: 100 }));
    expect(h.advanceTo(sec(200))).toEqual([]);
    expect(h.engine.stats.droppedBatched).toBe(1);
    expect(h.store.size).toBe(0);
  });

  it("a reload that changes a batched rule sends what it buffered", () => {
    const h = new Harness(rules({ name: "fw", match: { sensor: "meter" }, forward: { batch_every: "1m" } }));
    h.feed("meter", "kwh", 1, sec(0));
    const out = h.reconfigure(rules({ name: "fw", match: { sensor: "meter" }, forward: { batch_every: "5m" } }));
    expect(h.types(out)).toEqual(["readings"]);
    expect(h.store.size).toBe(0);
  });
});

describe("matching", () => {
  const table: {
    match: Record<string, unknown>;
    sensor: string;
    metric: string;
    labels?: Record<string, string>;
    hit: boolean;
  }[] = [
    { match: { sensor: "green*" }, sensor: "greenhouse", metric: "t", hit: true },
    { match: { sensor: "green*" }, sensor: "agreenhouse", metric: "t", hit: false },
    { match: { sensor: "room-?" }, sensor: "room-1", metric: "t", hit: true },
    { match: { sensor: "room-?" }, sensor: "room-12", metric: "t", hit: false },
    { match: { sensor: "a.b" }, sensor: "aXb", metric: "t", hit: false }, // '.' is literal
    { match: { sensor: "*", metric: "temp" }, sensor: "x", metric: "temp", hit: true },
    { match: { sensor: "*", metric: "temp" }, sensor: "x", metric: "temperature", hit: false },
    { match: { sensor: "*/kitchen/*" }, sensor: "home/kitchen/1", metric: "t", hit: true },
    { match: { sensor: "pump(1)+[a]" }, sensor: "pump(1)+[a]", metric: "t", hit: true }, // regex characters are literal
    { match: { sensor: "pump(1)+[a]" }, sensor: "pump11a", metric: "t", hit: false },
    { match: { sensor: "^x$|y" }, sensor: "y", metric: "t", hit: false },
    { match: { sensor: "thermo-*", metric: "t?mp" }, sensor: "thermo-é", metric: "tèmp", hit: true }, // ? is one character
    { match: { labels: { site: "barn" } }, sensor: "s", metric: "t", labels: { site: "barn", x: "y" }, hit: true },
    { match: { labels: { site: "barn" } }, sensor: "s", metric: "t", labels: { site: "house" }, hit: false },
    { match: { labels: { site: "barn" } }, sensor: "s", metric: "t", hit: false },
  ];
  for (const c of table) {
    it(`${JSON.stringify(c.match)} ${c.hit ? "matches" : "does not match"} ${c.sensor}/${c.metric} ${JSON.stringify(c.labels ?? {})}`, () => {
      const h = new Harness(rules({ match: c.match, above: 0 }));
      h.feed(c.sensor, c.metric, 1, sec(0), { labels: c.labels ?? {} });
      expect(h.events.length).toBe(c.hit ? 1 : 0);
    });
  }

  it("label matching is decided per reading, not cached per sensor", () => {
    const h = new Harness(rules({ match: { labels: { site: "barn" } }, above: 0 }));
    h.feed("s", "t", 1, sec(0), { labels: { site: "house" } });
    h.feed("s", "t", 1, sec(1), { labels: { site: "barn" } });
    expect(h.types()).toEqual(["alert.firing"]);
  });
});

describe("many series per rule", () => {
  it("keeps state per (sensor, metric) independently", () => {
    const h = new Harness(rules({ match: { sensor: "probe-*" }, above: 30, for: "1m" }));
    for (let i = 0; i < 200; i++) h.feed(`probe-${i}`, i % 2 ? "temp" : "hum", i % 3 === 0 ? 31 : 20, sec(0));
    const evts = h.advanceTo(sec(60));
    const hot = Array.from({ length: 200 }, (_, i) => i).filter((i) => i % 3 === 0);
    expect(evts.map((e) => e.body.data.sensor).sort()).toEqual(hot.map((i) => `probe-${i}`).sort());
    expect(new Set(evts.map((e) => e.series)).size).toBe(hot.length);
    // One of them cools down: only that one resolves.
    const out = h.feed("probe-3", "temp", 10, sec(70));
    expect(out.map((e) => `${e.type} ${e.body.data.sensor}`)).toEqual(["alert.resolved probe-3"]);
  });

  it("one reading can feed several rules", () => {
    const h = new Harness(
      rules(
        { name: "warm", match: M, above: 10 },
        { name: "hot", match: M, above: 20 },
        { name: "log", match: M, forward: true },
      ),
    );
    const out = h.feed("tank", "level", 25, sec(0));
    expect(out.map((e) => `${e.rule}:${e.type}`)).toEqual(["warm:alert.firing", "hot:alert.firing", "log:reading"]);
  });
});

describe("aggregate windows that empty without readings", () => {
  it("a firing count alert resolves on tick once the samples leave the window", () => {
    const h = new Harness(
      rules({ match: { sensor: "door", metric: "open" }, above: 2, aggregate: { fn: "count", over: "1m" } }),
    );
    for (const t of [0, 10, 20]) h.feed("door", "open", 1, sec(t));
    expect(h.types()).toEqual(["alert.firing"]);
    // No more readings. At 60 s the first sample leaves: count 2, no longer above 2.
    expect(h.advanceTo(sec(59.999))).toEqual([]);
    const evts = h.advanceTo(sec(60));
    expect(h.types(evts)).toEqual(["alert.resolved"]);
    expect(evts[0]!.body.data.value).toBe(2);
    expect(h.engine.nextDueAt()).toBeUndefined(); // at rest: no timer left
  });

  it("an avg alert keeps its state when the window empties (no data is not a value)", () => {
    const h = new Harness(rules({ match: M, above: 30, aggregate: { fn: "avg", over: "1m" } }));
    expect(h.types(h.feed("tank", "level", 40, sec(0)))).toEqual(["alert.firing"]);
    expect(h.advanceTo(sec(3600))).toEqual([]);
    expect(h.types(h.feed("tank", "level", 20, sec(3601)))).toEqual(["alert.resolved"]);
  });
});

describe("bounded memory (maxSeries)", () => {
  it("drops series at rest to make room for new ones", () => {
    const h = new Harness(rules({ match: { sensor: "*" }, above: 30 }), undefined, 10);
    for (let i = 0; i < 10; i++) h.feed(`s${i}`, "t", 20, sec(i));
    expect(h.engine.seriesCount).toBe(10);
    expect(h.types(h.feed("s10", "t", 31, sec(10)))).toEqual(["alert.firing"]);
    expect(h.engine.stats.seriesEvicted).toBe(10);
    expect(h.engine.seriesCount).toBe(1);
  });

  it("never drops a firing series; new series are counted and skipped instead", () => {
    const h = new Harness(rules({ match: { sensor: "*" }, above: 30 }), undefined, 10);
    for (let i = 0; i < 10; i++) h.feed(`s${i}`, "t", 31, sec(i));
    expect(h.feed("s10", "t", 31, sec(10))).toEqual([]);
    expect(h.engine.stats.seriesLimit).toBe(1);
    // The firing ones still resolve.
    expect(h.types(h.feed("s3", "t", 20, sec(11)))).toEqual(["alert.resolved"]);
  });

  it("keeps series whose window still holds samples", () => {
    const h = new Harness(rules({ match: { sensor: "*" }, rate_above: 1, rate_window: "1m" }), undefined, 2);
    h.feed("a", "t", 1, sec(0));
    h.feed("b", "t", 1, sec(0));
    h.feed("c", "t", 1, sec(1));
    expect(h.engine.stats.seriesLimit).toBe(1);
    // A minute later both windows are empty: room again.
    h.feed("c", "t", 1, sec(120));
    expect(h.engine.stats.seriesEvicted).toBe(2);
    expect(h.engine.seriesCount).toBe(1);
  });
});
