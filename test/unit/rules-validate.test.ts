/** Rule validation: what an operator sees for a rule that cannot mean anything. */
import { describe, expect, it } from "vitest";
import { ConfigError, parseConfig } from "../../src/config/load.js";

function problems(ruleYaml: string): string[] {
  const text = `version: 1
agent:
  id: pi-1
destinations:
  ops:
    url: http://127.0.0.1:9/hook
    signature: none
rules:
  - name: r
    notify: [ops]
${ruleYaml
  .trim()
  .split("\n")
  .map((l) => `    ${l}`)
  .join("\n")}
`;
  try {
    parseConfig(text, "agent.yaml");
    return [];
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return err.problems.map((p) => `${p.line}:${p.col}: ${p.key}: ${p.message}`);
  }
}

describe("rule validation", () => {
  const valid: [string, string][] = [
    ["above with hysteresis", "above: 30\nclear_below: 28\nfor: 1m\nclear_for: 2m"],
    ["below with hysteresis", "below: 5\nclear_above: 7"],
    ["outside with clear band", "outside: [10, 20]\nclear_above: 12\nclear_below: 18"],
    ["equals a text state", "equals: OPEN\nfor: 30s"],
    ["aggregate with above", "above: 30\naggregate: { fn: avg, over: 5m }"],
    ["rate", "rate_above: 2\nrate_per: m\nrate_window: 10m"],
    ["absent_for", "absent_for: 10m\nmatch: { sensor: boiler }"],
    ["forward", "forward: true"],
    ["forward batched", "forward: { batch_every: 1m }"],
    ["clear_below equal to above (no hysteresis)", "above: 30\nclear_below: 30"],
  ];
  for (const [name, yaml] of valid) {
    it(`accepts ${name}`, () => expect(problems(yaml)).toEqual([]));
  }

  const invalid: [string, string, string][] = [
    ["no condition", "severity: info", "9:5: rules.0: needs a condition: above, below"],
    ["forward: false alone", "forward: false", "9:5: rules.0: forward: false is no condition"],
    [
      "two kinds of condition",
      "above: 30\nabsent_for: 5m",
      "9:5: rules.0: give one kind of condition per rule, not a threshold (above, below, between, outside, equals) and absent_for",
    ],
    [
      "above and below together",
      "above: 30\nbelow: 5",
      "12:12: rules.0.below: give one of above, below, not several; for 'above or below' write outside: [low, high]",
    ],
    [
      "rate_above and rate_below",
      "rate_above: 1\nrate_below: -1",
      "12:17: rules.0.rate_below: give either rate_above or rate_below",
    ],
    [
      "clear_below above the threshold",
      "above: 30\nclear_below: 31",
      "12:18: rules.0.clear_below: must be at or below the threshold above: 30 (is '31')",
    ],
    [
      "clear_above below the threshold",
      "below: 5\nclear_above: 4",
      "12:18: rules.0.clear_above: must be at or above the threshold below: 5 (is '4')",
    ],
    [
      "clear_below with below",
      "below: 5\nclear_below: 4",
      "12:18: rules.0.clear_below: only works with above or outside",
    ],
    [
      "clear_above with equals",
      "equals: OPEN\nclear_above: 4",
      "12:18: rules.0.clear_above: only works with below or outside",
    ],
    [
      "crossed clear band",
      "outside: [10, 20]\nclear_above: 15\nclear_below: 14",
      "12:18: rules.0.clear_above: must be below clear_below (14)",
    ],
    ["range backwards", "between: [20, 10]", "11:14: rules.0.between: must be [low, high] with low < high"],
    [
      "aggregate with equals",
      "equals: OPEN\naggregate: { fn: count, over: 5m }",
      "12:16: rules.0.aggregate: only works with above, below, between or outside",
    ],
    [
      "aggregate with rate",
      "rate_above: 1\naggregate: { fn: avg, over: 5m }",
      "12:16: rules.0.aggregate: only works with above",
    ],
    [
      "rate_window without a rate",
      "above: 1\nrate_window: 5m",
      "12:18: rules.0.rate_window: only works with rate_above or rate_below (is '5m')",
    ],
    [
      "for with absent_for",
      "absent_for: 5m\nfor: 1m",
      "12:10: rules.0.for: does not apply to absent_for rules (absent_for is itself the duration) (is '1m')",
    ],
    [
      "repeat_every with forward",
      "forward: true\nrepeat_every: 1h",
      "12:19: rules.0.repeat_every: does not apply to forward rules (is '1h')",
    ],
    ["absent_for of zero", "absent_for: 0s", "11:17: rules.0.absent_for: must be longer than 0s (is '0s')"],
    [
      "extra overriding a body field",
      "above: 1\nextra: { value: 3 }",
      "12:21: rules.0.extra.value: is a field edgehook sets in the body",
    ],
  ];
  for (const [name, yaml, message] of invalid) {
    it(`rejects ${name}`, () => {
      const got = problems(yaml);
      expect(got.length).toBeGreaterThan(0);
      expect(
        got.some((p) => p.startsWith(message)),
        `${got.join("\n")}\nshould include\n${message}`,
      ).toBe(true);
    });
  }
});

describe("when, clear_when and derive in check", () => {
  const cases: [string, string, string[]][] = [
    ["a valid when rule", 'when: "temperature > -10 && door_open"\nfor: 5m\nclear_when: temperature < -15', []],
    [
      "a syntax error, at its column in the file",
      'when: "temperature > -10 &&"',
      ["11:32: rules.0.when: Unexpected token: EOF (column 21 of the expression)"],
    ],
    [
      "an unknown function, at its column in a plain scalar",
      "when: temperature > avg(humidity)",
      [
        "11:25: rules.0.when: unknown function avg() (edgehook adds dew_point(temperature_c, humidity_pct), heat_index(temperature_c, humidity_pct), abs(x), min(a, b), max(a, b), clamp(x, low, high)) (column 15 of the expression)",
      ],
    ],
    [
      "a type error",
      "clear_when: 'temperature + \"C\" > 1'\nwhen: temperature > 1",
      ["11:18: rules.0.clear_when: no such overload: string > double (column 1 of the expression)"],
    ],
    [
      "clear_when without when",
      "clear_when: temperature < 1\nabove: 3",
      ["11:17: rules.0.clear_when: only works with when (is 'temperature < 1')"],
    ],
    [
      "when with a threshold",
      "when: temperature > 1\nabove: 3",
      [
        "9:5: rules.0: give one kind of condition per rule, not a threshold (above, below, between, outside, equals) and when; write one rule for each",
      ],
    ],
    [
      "match.metric with when",
      "when: temperature > 1\nmatch: { metric: temperature }",
      [
        "12:22: rules.0.match.metric: does not apply to when rules (the expression names the metrics) (is 'temperature')",
      ],
    ],
  ];
  it.each(cases)("%s", (_name, yaml, want) => {
    expect(problems(yaml)).toEqual(want);
  });
});

describe("metric names no source produces", () => {
  const config = (sub: string) => `version: 1
agent: { id: pi-1 }
mqtt:
  url: mqtt://127.0.0.1:1883
  subscriptions:
${sub}
destinations:
  ops: { url: "http://127.0.0.1:9/hook", signature: none }
derive:
  - metric: dew_point
    value: dew_point(temperature, humidity)
rules:
  - name: damp
    when: humidity > 85 && temprature - dew_point < 2
    notify: [ops]
`;
  it("warns, with the name it probably means, when every source names its metrics", () => {
    const { warnings } = parseConfig(
      config("    - topic: gh/+\n      format: json\n      values: { temperature: t, humidity: h }"),
      "agent.yaml",
    );
    expect(warnings).toEqual([
      "agent.yaml:16:11: rules.0.when: no source produces a metric named temprature (did you mean 'temperature'?)",
    ]);
  });
  it("says nothing when a source can produce any name (every field of a payload)", () => {
    const { warnings } = parseConfig(config("    - topic: gh/+\n      format: json\n      values: '*'"), "agent.yaml");
    expect(warnings).toEqual([]);
  });
});
