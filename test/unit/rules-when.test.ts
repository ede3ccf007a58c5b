/**
 * `when` rules (compound conditions over several metrics) and `derive` metrics, on a fake
 * clock: each case is a script of readings and clock moves with the events expected.
 */
import { describe, expect, it } from "vitest";
import type { NewEvent } from "../../src/events.js";
import type { ReadingValue } from "../../src/sources/reading.js";
import { Harness, rules, sec } from "./rules-support.js";

/** [at (s), sensor, metric, value, event types expected from this step] or [at (s), "tick", events]. */
type Step = [number, string, string, ReadingValue, string[]] | [number, "tick", string[]];

function run(h: Harness, steps: Step[]): NewEvent[] {
  const all: NewEvent[] = [];
  steps.forEach((step, i) => {
    let got: NewEvent[];
    let want: string[];
    if (step.length === 3) {
      got = h.advanceTo(sec(step[0]));
      want = step[2];
    } else {
      got = h.feed(step[1], step[2], step[3], sec(step[0]));
      want = step[4];
    }
    expect(h.types(got), `step ${i} at ${step[0]}s`).toEqual(want);
    all.push(...got);
  });
  return all;
}

const freezer = { when: "temperature > -10 && door_open", for: "5m", severity: "critical" };

describe("when rules", () => {
  const cases: [string, Record<string, unknown>, Step[]][] = [
    [
      "a compound condition with for: fires after 5m of both, resolves when either ends",
      freezer,
      [
        [0, "freezer", "temperature", -18, []],
        [1, "freezer", "door_open", true, []],
        [10, "freezer", "temperature", -9.5, []], // both hold from here: pending
        [200, "freezer", "door_open", false, []], // interrupted before 5m
        [210, "freezer", "door_open", true, []], // pending again from 210 s
        [509, "tick", []],
        [510, "tick", ["alert.firing"]],
        [600, "freezer", "temperature", -12, ["alert.resolved"]],
      ],
    ],
    [
      "a repeated value evaluates nothing and changes nothing",
      { when: "temperature > 30 && humidity > 80" },
      [
        [0, "gh", "temperature", 31, []],
        [1, "gh", "humidity", 85, ["alert.firing"]],
        [2, "gh", "humidity", 85, []],
        [3, "gh", "temperature", 31, []],
        [4, "gh", "temperature", 29, ["alert.resolved"]],
      ],
    ],
    [
      "a stale input makes the condition unknown: no firing, and a firing alert does not resolve",
      { when: "temperature > 30 && humidity > 80", stale_after: "1m" },
      [
        [0, "gh", "humidity", 85, []],
        [61, "gh", "temperature", 31, []], // humidity is 61 s old: unknown
        [62, "gh", "humidity", 90, ["alert.firing"]],
        [200, "gh", "temperature", 20, []], // humidity stale again: unknown, stays firing
        [201, "gh", "humidity", 90, ["alert.resolved"]], // known again: temperature 20 is not > 30
      ],
    ],
    [
      "a stale input stops a pending for from firing",
      { when: "temperature > 30 && humidity > 80", stale_after: "90s", for: "2m" },
      [
        [0, "gh", "humidity", 85, []],
        [1, "gh", "temperature", 31, []], // pending, due at 121 s
        [50, "gh", "temperature", 32, []],
        [121, "tick", []], // humidity (0 s) is stale since 90 s: unknown, back to ok
        [130, "gh", "humidity", 86, []], // pending again from 130 s
        [131, "gh", "temperature", 32.5, []],
        [200, "gh", "humidity", 87, []],
        [210, "gh", "temperature", 33, []],
        [249, "tick", []],
        [250, "tick", ["alert.firing"]],
      ],
    ],
    [
      "clear_when: hysteresis, a firing alert resolves only once clear_when holds",
      { when: "humidity > 85 && temperature < dew_point + 1", clear_when: "humidity < 75" },
      [
        [0, "gh", "dew_point", 18, []],
        [1, "gh", "temperature", 18.5, []],
        [2, "gh", "humidity", 90, ["alert.firing"]],
        [3, "gh", "humidity", 80, []], // when is false, clear_when not yet true: stays firing
        [4, "gh", "humidity", 86, []],
        [5, "gh", "humidity", 74, ["alert.resolved"]],
        [6, "gh", "humidity", 86, ["alert.firing"]],
      ],
    ],
    [
      "a cross-sensor rule: inside 15 °C warmer than outside, judged again when either changes",
      { when: 'temperature - sensor("outside").temperature > 15', match: { sensor: "room*" } },
      [
        [0, "room1", "temperature", 21, []], // outside unknown
        [1, "outside", "temperature", 10, []],
        [2, "outside", "temperature", 5, ["alert.firing"]], // 21 - 5 > 15, from outside's reading
        [3, "room2", "temperature", 19, []],
        [4, "outside", "temperature", 3, ["alert.firing"]], // room2: 19 - 3 > 15
        [5, "room1", "temperature", 17, ["alert.resolved"]],
      ],
    ],
  ];
  it.each(cases)("%s", (_name, rule, steps) => {
    const h = new Harness(rules(rule));
    run(h, steps);
  });

  it("the event carries the expression, the values it used, and the series names the metrics", () => {
    const h = new Harness(rules({ ...freezer, for: undefined, clear_when: "temperature < -15" }));
    h.feed("freezer", "temperature", -9, sec(0), { labels: { room: "cellar" } });
    const [firing] = h.feed("freezer", "door_open", true, sec(1));
    expect(firing?.body.data).toMatchObject({
      rule: "r0",
      sensor: "freezer",
      metric: "temperature,door_open",
      value: true,
      condition: "when",
      threshold: "temperature > -10 && door_open",
      expression: "temperature > -10 && door_open",
      clear_when: "temperature < -15",
      values: { temperature: -9, door_open: true },
      severity: "critical",
    });
    const [resolved] = h.feed("freezer", "temperature", -16, sec(2));
    expect(resolved?.type).toBe("alert.resolved");
    expect(resolved?.body.data).toMatchObject({ values: { temperature: -16, door_open: true }, value: false });
  });

  it("repeat_every and cooldown work as for any alert", () => {
    const h = new Harness(rules({ when: "a > 1 && b > 1", repeat_every: "1m", cooldown: "5m" }));
    run(h, [
      [0, "s", "a", 2, []],
      [1, "s", "b", 2, ["alert.firing"]],
      [61, "tick", ["alert.repeat"]],
      [62, "s", "a", 0, ["alert.resolved"]],
      [63, "s", "a", 2, []], // cooldown: pending until 362 s
      [362, "tick", ["alert.firing"]],
    ]);
  });

  it("persistence: a firing compound alert does not fire again after a restart, and resolves", () => {
    const h = new Harness(rules(freezer));
    run(h, [
      [0, "freezer", "temperature", -5, []],
      [1, "freezer", "door_open", true, []],
      [301, "tick", ["alert.firing"]],
    ]);
    h.restart();
    run(h, [
      [400, "freezer", "temperature", -4, []], // door_open unknown after the restart: no change
      [401, "freezer", "door_open", true, []], // still holds: already firing, nothing new
      [402, "freezer", "door_open", false, ["alert.resolved"]],
    ]);
    expect(h.types()).toEqual(["alert.firing", "alert.resolved"]);
  });
});

describe("derive", () => {
  function harness(derive: Record<string, unknown>[], ...ruleDefs: Record<string, unknown>[]) {
    return new Harness(rules(...ruleDefs), undefined, undefined, {}, derive);
  }

  it("a derived metric feeds a threshold rule and a when rule", () => {
    const h = harness(
      [{ metric: "dew_point", value: "dew_point(temperature, humidity)" }],
      { match: { metric: "dew_point" }, above: 20 },
      { when: "temperature - dew_point < 2" },
    );
    run(h, [
      [0, "gh", "temperature", 25, []],
      [1, "gh", "humidity", 50, []], // dew point 13.9: neither
      [2, "gh", "humidity", 90, ["alert.firing", "alert.firing"]], // dew point 23.2: above 20, and within 2 °C
      [3, "gh", "humidity", 60, ["alert.resolved", "alert.resolved"]],
    ]);
    expect(h.events[0]?.body.data).toMatchObject({ metric: "dew_point", sensor: "gh" });
    expect(h.events[0]?.body.data.value).toBeCloseTo(23.24, 1);
  });

  it("a derived metric is a reading forward rules send, only for the sensors it names", () => {
    const h = harness([{ metric: "power", sensor: "pump*", value: "voltage * current" }], {
      match: { metric: "power" },
      forward: true,
    });
    h.feed("pump1", "voltage", 230, sec(0));
    const sent = h.feed("pump1", "current", 2, sec(1));
    expect(sent.map((e) => [e.type, e.body.data.metric, e.body.data.value])).toEqual([["reading", "power", 460]]);
    h.feed("fan1", "voltage", 230, sec(2));
    expect(h.feed("fan1", "current", 2, sec(3))).toEqual([]);
  });
});
