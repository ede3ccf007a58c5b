/**
 * Rule engine: threshold conditions, hysteresis, `for`/`clear_for` and the alert
 * lifecycle, driven by a FakeClock. Each table row is what an operator writes and what
 * they should see at the receiver.
 */
import { describe, expect, it } from "vitest";
import { Harness, reading, rules, sec } from "./rules-support.js";

const M = { sensor: "greenhouse", metric: "temp" };

describe("threshold boundaries (strictly above / strictly below)", () => {
  const cases: {
    name: string;
    rule: Record<string, unknown>;
    values: (number | string | boolean)[];
    fires: boolean[];
  }[] = [
    { name: "above: 30 does not fire at 30", rule: { above: 30 }, values: [30], fires: [false] },
    { name: "above: 30 fires at 30.01", rule: { above: 30 }, values: [30.01], fires: [true] },
    { name: "below: 5 does not fire at 5", rule: { below: 5 }, values: [5], fires: [false] },
    { name: "below: 5 fires at 4.9", rule: { below: 5 }, values: [4.9], fires: [true] },
    { name: "between is inclusive (low edge)", rule: { between: [10, 20] }, values: [10], fires: [true] },
    { name: "between is inclusive (high edge)", rule: { between: [10, 20] }, values: [20], fires: [true] },
    { name: "between: outside the range", rule: { between: [10, 20] }, values: [20.5], fires: [false] },
    { name: "outside is strict (edge is inside)", rule: { outside: [10, 20] }, values: [10], fires: [false] },
    { name: "outside: below low", rule: { outside: [10, 20] }, values: [9.9], fires: [true] },
    { name: "outside: above high", rule: { outside: [10, 20] }, values: [20.1], fires: [true] },
    { name: "equals a text state", rule: { equals: "OPEN" }, values: ["OPEN"], fires: [true] },
    { name: "equals is case-sensitive", rule: { equals: "OPEN" }, values: ["open"], fires: [false] },
    { name: "equals true matches a boolean reading", rule: { equals: true }, values: [true], fires: [true] },
    { name: "numeric text is read as a number", rule: { above: 30 }, values: ["31.5"], fires: [true] },
    { name: "booleans are 1/0 for numbers", rule: { above: 0.5 }, values: [true], fires: [true] },
    { name: "non-numeric text is skipped", rule: { above: 30 }, values: ["hot"], fires: [false] },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const h = new Harness(rules({ match: M, ...c.rule }));
      c.values.forEach((v, i) => {
        const evts = h.feed("greenhouse", "temp", v, sec(i));
        expect(evts.some((e) => e.type === "alert.firing")).toBe(c.fires[i]);
      });
    });
  }

  it("counts non-numeric values instead of failing", () => {
    const h = new Harness(rules({ match: M, above: 30 }));
    h.feed("greenhouse", "temp", "hot", sec(0));
    h.feed("greenhouse", "temp", Number.NaN, sec(1));
    expect(h.engine.stats.nonNumeric).toBe(2);
    expect(h.events).toEqual([]);
  });
});

describe("firing and resolving", () => {
  it("sends the body receivers parse", () => {
    const h = new Harness(
      rules({
        name: "greenhouse-hot",
        match: M,
        above: 30,
        severity: "critical",
        labels: { team: "grow" },
        extra: { runbook: "https://example.org/hot" },
      }),
    );
    const [firing] = h.feed("greenhouse", "temp", 31.5, sec(10), { labels: { room: "a" } });
    expect(firing).toMatchObject({
      type: "alert.firing",
      rule: "greenhouse-hot",
      severity: "critical",
      priority: 20,
      destinations: ["ops"],
      createdAt: sec(10),
    });
    expect(firing!.id).toMatch(/^msg_[0-9A-Z]{26}$/);
    expect(firing!.body).toEqual({
      type: "alert.firing",
      timestamp: "2026-01-01T00:00:10.000Z",
      data: {
        agent: "pi-1",
        rule: "greenhouse-hot",
        sensor: "greenhouse",
        metric: "temp",
        value: 31.5,
        threshold: 30,
        condition: "above",
        severity: "critical",
        labels: { room: "a", team: "grow" },
        since: "2026-01-01T00:00:10.000Z",
        runbook: "https://example.org/hot",
      },
    });
    const [resolved] = h.feed("greenhouse", "temp", 29, sec(70));
    expect(resolved!.body).toEqual({
      type: "alert.resolved",
      timestamp: "2026-01-01T00:01:10.000Z",
      data: expect.objectContaining({
        value: 29,
        since: "2026-01-01T00:00:10.000Z",
        duration_s: 60,
        reason: "cleared",
        runbook: "https://example.org/hot",
      }),
    });
    expect(resolved!.series).toBe(firing!.series);
  });

  it("uses the reading's time in the body, not the agent's", () => {
    const h = new Harness(rules({ match: M, above: 30 }));
    const [e] = h.feed("greenhouse", "temp", 31, sec(100), { ts: sec(95) });
    expect(e!.body.timestamp).toBe(new Date(sec(95)).toISOString());
    expect(e!.createdAt).toBe(sec(100));
  });

  it("fires once while the condition holds, and writes no state for the readings after", () => {
    const h = new Harness(rules({ match: M, above: 30 }));
    for (let i = 0; i < 10; i++) h.feed("greenhouse", "temp", 31 + i, sec(i));
    expect(h.types()).toEqual(["alert.firing"]);
    expect(h.batches.map((b) => b.states.length + b.removedStates.length)).toEqual([1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  });

  it("a reading below the threshold writes nothing at all", () => {
    const h = new Harness(rules({ match: M, above: 30 }));
    for (let i = 0; i < 5; i++) h.feed("greenhouse", "temp", 20, sec(i));
    expect(h.batches.every((b) => b.events.length + b.states.length + b.removedStates.length === 0)).toBe(true);
    expect(h.engine.nextDueAt()).toBeUndefined();
  });

  it("priority overrides the severity's default", () => {
    const h = new Harness(rules({ match: M, above: 30, severity: "info", priority: 99 }));
    expect(h.feed("greenhouse", "temp", 31, sec(0))[0]!.priority).toBe(99);
  });
});

describe("hysteresis", () => {
  const steps: { name: string; rule: Record<string, unknown>; values: number[]; expect: string[] }[] = [
    {
      name: "above with clear_below stays firing in the band",
      rule: { above: 30, clear_below: 28 },
      values: [31, 29.5, 30.5, 28, 27.9],
      expect: ["alert.firing", "alert.resolved"],
    },
    {
      name: "above without clear_below clears at the threshold",
      rule: { above: 30 },
      values: [31, 30],
      expect: ["alert.firing", "alert.resolved"],
    },
    {
      name: "below with clear_above",
      rule: { below: 5, clear_above: 7 },
      values: [4, 6, 4.5, 7, 7.1],
      expect: ["alert.firing", "alert.resolved"],
    },
    {
      name: "outside with clear band on both sides",
      rule: { outside: [10, 20], clear_above: 12, clear_below: 18 },
      values: [9, 11, 12.5, 21, 19, 17],
      expect: ["alert.firing", "alert.resolved", "alert.firing", "alert.resolved"],
    },
    {
      name: "flapping around the threshold without hysteresis",
      rule: { above: 30 },
      values: [31, 29, 31, 29],
      expect: ["alert.firing", "alert.resolved", "alert.firing", "alert.resolved"],
    },
    {
      name: "flapping inside the hysteresis band sends nothing more",
      rule: { above: 30, clear_below: 25 },
      values: [31, 29, 31, 29, 31, 26],
      expect: ["alert.firing"],
    },
  ];
  for (const s of steps) {
    it(s.name, () => {
      const h = new Harness(rules({ match: M, ...s.rule }));
      for (const [i, v] of s.values.entries()) h.feed("greenhouse", "temp", v, sec(i * 10));
      expect(h.types()).toEqual(s.expect);
    });
  }

  it("the resolved body carries the value that cleared it", () => {
    const h = new Harness(rules({ match: M, above: 30, clear_below: 28 }));
    h.feed("greenhouse", "temp", 31, sec(0));
    h.feed("greenhouse", "temp", 29, sec(10));
    const [r] = h.feed("greenhouse", "temp", 27.5, sec(20));
    expect(r!.body.data.value).toBe(27.5);
  });
});

describe("for (pending → firing)", () => {
  const rule = rules({ match: M, above: 30, for: "1m" });

  it("fires on tick when the condition held for the whole duration, without a new reading", () => {
    const h = new Harness(rule);
    h.feed("greenhouse", "temp", 31, sec(0));
    expect(h.engine.nextDueAt()).toBe(sec(60));
    expect(h.advanceTo(sec(59.999))).toEqual([]);
    const evts = h.advanceTo(sec(60));
    expect(h.types(evts)).toEqual(["alert.firing"]);
    // Fired by time: the body carries the agent's time; since is the first reading's time.
    expect(evts[0]!.body.timestamp).toBe(new Date(sec(60)).toISOString());
    expect(evts[0]!.body.data.since).toBe(new Date(sec(0)).toISOString());
    expect(evts[0]!.body.data.value).toBe(31);
  });

  it("fires on a reading that arrives after the duration", () => {
    const h = new Harness(rule);
    h.feed("greenhouse", "temp", 31, sec(0));
    // Agent never got to tick (busy): the reading at 61 s completes it.
    const evts = h.engine.process([
      { sensor: "greenhouse", metric: "temp", value: 33, ts: sec(61), source: "t", labels: {} },
    ]);
    expect(evts.events).toEqual([]); // the clock has not moved: still pending
    h.clock.advance(61_000);
    const out = h.commit(
      h.engine.process([{ sensor: "greenhouse", metric: "temp", value: 33, ts: sec(61), source: "t", labels: {} }]),
    );
    expect(h.types(out)).toEqual(["alert.firing"]);
    expect(out[0]!.body.data.value).toBe(33);
  });

  it("is interrupted by a value that no longer holds just before it completes", () => {
    const h = new Harness(rule);
    h.feed("greenhouse", "temp", 31, sec(0));
    h.feed("greenhouse", "temp", 30, sec(59.999));
    h.feed("greenhouse", "temp", 31, sec(60));
    expect(h.advanceTo(sec(119))).toEqual([]);
    // The second pending period started at 60 s, so it completes at 120 s.
    expect(h.types(h.advanceTo(sec(120)))).toEqual(["alert.firing"]);
    expect(h.events[0]!.body.data.since).toBe(new Date(sec(60)).toISOString());
  });

  it("a value in the hysteresis band interrupts pending (it is not above)", () => {
    const h = new Harness(rules({ match: M, above: 30, clear_below: 25, for: "1m" }));
    h.feed("greenhouse", "temp", 31, sec(0));
    h.feed("greenhouse", "temp", 28, sec(30));
    expect(h.advanceTo(sec(300))).toEqual([]);
  });

  it("writes a state row when pending starts and removes it when pending ends, nothing in between", () => {
    const h = new Harness(rule);
    h.feed("greenhouse", "temp", 31, sec(0));
    expect([...h.store.values()].map((r) => (r.state as { phase: string }).phase)).toEqual(["pending"]);
    const before = h.batches.length;
    h.feed("greenhouse", "temp", 32, sec(10));
    h.feed("greenhouse", "temp", 33, sec(20));
    expect(h.batches.slice(before).every((b) => b.states.length === 0 && b.removedStates.length === 0)).toBe(true);
    h.feed("greenhouse", "temp", 20, sec(30));
    expect(h.store.size).toBe(0);
  });
});

describe("clear_for (firing → resolved only after the value stayed clear)", () => {
  const rule = rules({ match: M, above: 30, clear_below: 28, clear_for: "2m" });

  it("resolves on tick after clear_for", () => {
    const h = new Harness(rule);
    h.feed("greenhouse", "temp", 31, sec(0));
    h.feed("greenhouse", "temp", 27, sec(10));
    expect(h.advanceTo(sec(129))).toEqual([]);
    const evts = h.advanceTo(sec(130));
    expect(h.types(evts)).toEqual(["alert.resolved"]);
    expect(evts[0]!.body.data.value).toBe(27);
  });

  it("a value back above the clear threshold keeps it firing", () => {
    const h = new Harness(rule);
    h.feed("greenhouse", "temp", 31, sec(0));
    h.feed("greenhouse", "temp", 27, sec(10));
    h.feed("greenhouse", "temp", 29, sec(129)); // in the band: not clear
    h.feed("greenhouse", "temp", 27, sec(130));
    expect(h.advanceTo(sec(249))).toEqual([]);
    expect(h.types(h.advanceTo(sec(250)))).toEqual(["alert.resolved"]);
  });
});

describe("restart (restore)", () => {
  it("a firing series does not fire again and resolves normally", () => {
    const h = new Harness(rules({ match: M, above: 30 }));
    h.feed("greenhouse", "temp", 31, sec(0));
    h.restart();
    h.feed("greenhouse", "temp", 35, sec(60));
    expect(h.types()).toEqual(["alert.firing"]);
    const [r] = h.feed("greenhouse", "temp", 20, sec(120));
    expect(r!.type).toBe("alert.resolved");
    expect(r!.body.data.since).toBe(new Date(sec(0)).toISOString());
    expect(r!.body.data.duration_s).toBe(120);
    expect(r!.series).toBe(h.events[0]!.series);
    expect(h.store.size).toBe(0);
  });

  it("a series halfway through its `for` continues from where it was", () => {
    const h = new Harness(rules({ match: M, above: 30, for: "10m" }));
    h.feed("greenhouse", "temp", 31, sec(0));
    h.advanceTo(sec(300));
    h.restart();
    expect([...h.store.values()][0]!.state).toMatchObject({ phase: "pending", pending_at: sec(0), since: sec(0) });
    h.feed("greenhouse", "temp", 32, sec(310));
    expect(h.advanceTo(sec(599))).toEqual([]);
    const evts = h.advanceTo(sec(600));
    expect(h.types(evts)).toEqual(["alert.firing"]);
    expect(evts[0]!.body.data.since).toBe(new Date(sec(0)).toISOString());
    expect(evts[0]!.body.data.value).toBe(32);
  });

  it("a restored pending series completes on time without a new reading, like a running agent", () => {
    const h = new Harness(rules({ match: M, above: 30, for: "10m" }));
    h.feed("greenhouse", "temp", 31, sec(0));
    h.advanceTo(sec(120));
    h.restart();
    expect(h.advanceTo(sec(599))).toEqual([]);
    const evts = h.advanceTo(sec(600));
    expect(h.types(evts)).toEqual(["alert.firing"]);
    expect(evts[0]!.body.data.value).toBe(31); // the value stored when pending began
  });

  it("a pending series whose time ran out during the downtime fires at the first tick", () => {
    const h = new Harness(rules({ match: M, above: 30, for: "10m" }));
    h.feed("greenhouse", "temp", 31, sec(0));
    h.clock.advance(3600_000);
    h.restart();
    expect(h.engine.nextDueAt()).toBe(sec(3600));
    expect(h.types(h.advanceTo(sec(3600)))).toEqual(["alert.firing"]);
  });

  it("a restored pending series is interrupted by a fresh value below", () => {
    const h = new Harness(rules({ match: M, above: 30, for: "10m" }));
    h.feed("greenhouse", "temp", 31, sec(0));
    h.restart();
    h.feed("greenhouse", "temp", 25, sec(700));
    expect(h.advanceTo(sec(3600))).toEqual([]);
    expect(h.store.size).toBe(0);
  });

  it("rows are JSON and carry the rule version", () => {
    const h = new Harness(rules({ match: M, above: 30 }));
    h.feed("greenhouse", "temp", 31, sec(0));
    const [row] = [...h.store.values()];
    expect(row!.version).toMatch(/^[0-9a-f]{16}$/);
    expect(row!.series).toBe("r0\u001fgreenhouse\u001ftemp");
    expect(row!.state).toMatchObject({ phase: "firing", since: sec(0), fired_at: sec(0) });
  });

  it("a changed rule during downtime closes the firing alert and starts fresh", () => {
    const h = new Harness(rules({ match: M, above: 30 }));
    h.feed("greenhouse", "temp", 31, sec(0));
    h.restart(rules({ match: M, above: 35 }));
    expect(h.engine.nextDueAt()).toBe(h.clock.now());
    const evts = h.advanceTo(sec(10));
    expect(h.types(evts)).toEqual(["alert.resolved"]);
    expect(evts[0]!.body.data.reason).toBe("rule changed");
    expect(h.store.size).toBe(0);
    expect(h.feed("greenhouse", "temp", 33, sec(20))).toEqual([]);
    expect(h.types(h.feed("greenhouse", "temp", 36, sec(30)))).toEqual(["alert.firing"]);
  });

  it("a changed rule's first state after a restart is not undone by the removal of its old row", () => {
    const h = new Harness(rules({ match: M, above: 30 }));
    h.feed("greenhouse", "temp", 31, sec(0));
    h.restart(rules({ match: M, above: 35 }));
    // No tick in between: the old row's removal and the new firing row share one batch.
    const evts = h.commit(h.engine.process([reading("greenhouse", "temp", 36, sec(5))]));
    expect(h.types(evts)).toEqual(["alert.resolved", "alert.firing"]);
    expect([...h.store.values()].map((r) => (r.state as { phase: string }).phase)).toEqual(["firing"]);
  });

  it("a rule removed during downtime resolves its firing series with the stored destinations", () => {
    const h = new Harness(rules({ match: M, above: 30, severity: "critical" }));
    h.feed("greenhouse", "temp", 31, sec(0));
    h.clock.advance(90_000);
    h.restart(rules({ name: "other", match: M, below: 0 }));
    const evts = h.advanceTo(sec(91));
    expect(evts).toHaveLength(1);
    expect(evts[0]).toMatchObject({ type: "alert.resolved", rule: "r0", destinations: ["ops"], severity: "critical" });
    expect(evts[0]!.body.data).toMatchObject({
      reason: "rule removed",
      sensor: "greenhouse",
      metric: "temp",
      value: 31,
      since: new Date(sec(0)).toISOString(),
      duration_s: 90,
    });
    expect(h.store.size).toBe(0);
  });
});

describe("restart at any point", () => {
  // With conditions that need no window, the stored rows are the whole state: a run that
  // restarts after every few readings must send exactly what a run without restarts sends.
  const ruleSet = rules(
    {
      name: "hot",
      match: { sensor: "probe-*", metric: "temp" },
      above: 30,
      clear_below: 27,
      repeat_every: "5m",
      cooldown: "2m",
    },
    {
      name: "cold",
      match: { sensor: "probe-*", metric: "temp" },
      below: 5,
      clear_above: 8,
      for: "30s",
      clear_for: "20s",
    },
    { name: "band", match: { sensor: "probe-*", metric: "temp" }, outside: [0, 35], clear_above: 2, clear_below: 33 },
    { name: "door", match: { sensor: "probe-*", metric: "door" }, equals: "OPEN", repeat_every: "10m" },
  );
  function script(seed: number) {
    let x = seed;
    const rnd = () => {
      x = (x * 1103515245 + 12345) % 2147483648;
      return x / 2147483648;
    };
    const steps: { sensor: string; metric: string; value: number | string; at: number }[] = [];
    const temp = [20, 20, 20];
    for (let i = 0; i < 600; i++) {
      const p = Math.floor(rnd() * 3);
      const at = sec(i * 7);
      if (rnd() < 0.2) steps.push({ sensor: `probe-${p}`, metric: "door", value: rnd() < 0.5 ? "OPEN" : "CLOSED", at });
      else {
        temp[p] = Math.max(-5, Math.min(40, (temp[p] as number) + (rnd() - 0.5) * 8));
        steps.push({ sensor: `probe-${p}`, metric: "temp", value: Math.round((temp[p] as number) * 10) / 10, at });
      }
    }
    return steps;
  }
  // One documented difference: the latest value is not written per reading, so an event
  // caused by time alone (tick) after a restart carries the value stored at the series'
  // last state change. Readings here arrive 1 ms after they were taken, so a body whose
  // timestamp equals the agent's creation time came from a tick: those are compared
  // without their value, everything else exactly.
  const summary = (h: Harness) =>
    h.events.map((e) => {
      const byTick = Date.parse(e.body.timestamp) === e.createdAt;
      return `${e.body.timestamp} ${e.type} ${e.rule} ${e.body.data.sensor} ${byTick ? "(tick)" : e.body.data.value}`;
    });

  for (const seed of [1, 7, 42]) {
    it(`seed ${seed}: restarting every 3 readings changes nothing the receiver sees`, () => {
      const steps = script(seed);
      const straight = new Harness(ruleSet);
      const restarted = new Harness(ruleSet);
      steps.forEach((s, i) => {
        straight.feed(s.sensor, s.metric, s.value, s.at, { ts: s.at - 1 });
        restarted.feed(s.sensor, s.metric, s.value, s.at, { ts: s.at - 1 });
        if (i % 3 === 2) restarted.restart();
      });
      straight.advanceTo(sec(600 * 7 + 3600));
      restarted.advanceTo(sec(600 * 7 + 3600));
      expect(summary(straight).length).toBeGreaterThan(10);
      expect(new Set(straight.types())).toEqual(new Set(["alert.firing", "alert.resolved", "alert.repeat"]));
      expect(summary(restarted)).toEqual(summary(straight));
    });
  }
});
