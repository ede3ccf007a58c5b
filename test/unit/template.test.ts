import { describe, expect, it } from "vitest";
import { ConfigError, parseConfig } from "../../src/config/load.js";
import { type CompiledTemplate, compileTemplate } from "../../src/delivery/template.js";

const envelope = {
  type: "alert.firing",
  timestamp: "2026-01-01T12:00:05.123Z",
  data: {
    agent: "pi-cellar",
    rule: "boiler-hot",
    sensor: "boiler",
    metric: "temp",
    value: 81.456,
    threshold: 80,
    severity: "critical",
    labels: { room: "cellar" },
    since: "2026-01-01T11:58:00.000Z",
    site: { name: "Home" },
  },
};

function compile(node: unknown, contentType?: string): CompiledTemplate {
  const r = compileTemplate(node, ["destinations", "x", "template"], { contentType, extraDataFields: ["site"] });
  if (!r.ok) throw new Error(r.problems.map((p) => `${p.path.join(".")}: ${p.message}`).join("\n"));
  return r.template;
}

function problems(node: unknown, contentType?: string): string[] {
  const r = compileTemplate(node, ["destinations", "x", "template"], { contentType });
  return r.ok ? [] : r.problems.map((p) => `${p.path.join(".")}: ${p.message}`);
}

const renderWith = (node: unknown, env: unknown = envelope) => JSON.parse(compile(node).render(env).toString());

describe("template placeholders", () => {
  it("keeps the JSON type of a leaf that is exactly one placeholder", () => {
    const out = renderWith({
      v: "{{ data.value }}",
      t: "{{ data.threshold }}",
      labels: "{{ data.labels }}",
      missing: "{{ data.labels.nope }}",
      text: "value {{ data.value }}",
    });
    expect(out).toEqual({
      v: 81.456,
      t: 80,
      labels: { room: "cellar" },
      missing: null,
      text: "value 81.456",
    });
  });

  it("renders nested objects and lists with constants untouched", () => {
    const out = renderWith({
      a: [1, true, null, "{{ data.sensor | upper }}", { b: "{{ type }}" }],
      n: 2.5,
    });
    expect(out).toEqual({ a: [1, true, null, "BOILER", { b: "alert.firing" }], n: 2.5 });
  });

  it.each([
    ["{{ data.value | round(1) }}", 81.5],
    ["{{ data.value | round }}", 81],
    ["{{ data.value | fixed(2) }}", "81.46"],
    ["{{ data.value | fixed }}", "81.46"],
    ["{{ data.since | time }}", "2026-01-01 11:58 UTC"],
    ['{{ data.since | time("Europe/Berlin") }}', "2026-01-01 12:58 GMT+1"],
    ['{{ data.since | time("America/New_York") }}', "2026-01-01 06:58 EST"],
    ['{{ data.since | time("UTC") }}', "2026-01-01 11:58 UTC"],
    ["{{ timestamp | epoch }}", 1767268805],
    ["{{ timestamp | iso }}", "2026-01-01T12:00:05.123Z"],
    ["{{ data.severity | upper }}", "CRITICAL"],
    ["{{ data.agent | lower }}", "pi-cellar"],
    ['{{ data.labels.floor | default("ground") }}', "ground"],
    ["{{ data.labels.floor | default(0) }}", 0],
    ['{{ data.labels.room | default("ground") }}', "cellar"],
    ["{{ data.labels | json }}", '{"room":"cellar"}'],
    ["{{ data.site.name }}", "Home"],
    ["{{ data.sensor | truncate(4) }}", "boi…"],
    ["{{ data.duration_s | default(0) }}", 0],
    ['{{ data.aggregate.fn | default("none") }}', "none"],
  ])("%s → %j", (tpl, expected) => {
    expect(renderWith({ x: tpl }).x).toEqual(expected);
  });

  it("rounds decimal halves the way people expect (1.005 → 1.01)", () => {
    expect(renderWith({ x: "{{ data.value | round(2) }}" }, { data: { value: 1.005 } }).x).toBe(1.01);
    expect(renderWith({ x: "{{ data.value | fixed(1) }}" }, { data: { value: 0.05 } }).x).toBe("0.1");
  });

  it("time filters accept epoch seconds and milliseconds", () => {
    const t = { x: "{{ data.since | time }}", y: "{{ data.since | iso }}" };
    expect(renderWith(t, { data: { since: 1767268800 } })).toEqual({
      x: "2026-01-01 12:00 UTC",
      y: "2026-01-01T12:00:00.000Z",
    });
    expect(renderWith(t, { data: { since: 1767268800000 } }).x).toBe("2026-01-01 12:00 UTC");
  });

  it("filters leave values of the wrong kind alone instead of failing the delivery", () => {
    const out = renderWith(
      { a: "{{ data.value | round(1) }}", b: "{{ data.since | time }}", c: "{{ data.labels | upper }}" },
      { data: { value: "n/a", since: "not a time", labels: { a: "x" } } },
    );
    expect(out).toEqual({ a: "n/a", b: "not a time", c: { a: "x" } });
  });

  it("produces valid JSON for quotes, backslashes, newlines, control characters and unicode", () => {
    const nasty = 'he said "hi"\\ \n\ttab \u0001 ünïcödé 🌡️ </script>';
    const t = compile({ text: "Sensor: {{ data.sensor }}!", whole: "{{ data.sensor }}" });
    const bytes = t.render({ data: { sensor: nasty } });
    const parsed = JSON.parse(bytes.toString("utf8"));
    expect(parsed).toEqual({ text: `Sensor: ${nasty}!`, whole: nasty });
    expect(bytes.toString("utf8")).toContain("ünïcödé 🌡️");
  });

  it("is deterministic: same envelope, same bytes", () => {
    const t = compile({ text: "{{ data.sensor }} {{ data.value | round(1) }}", v: "{{ data.value }}" });
    expect(t.render(envelope).equals(t.render(structuredClone(envelope)))).toBe(true);
  });

  it("missing fields read as empty text or null, never 'undefined'", () => {
    expect(renderWith({ a: "x{{ data.threshold }}y", b: "{{ data.threshold }}" }, { data: {} })).toEqual({
      a: "xy",
      b: null,
    });
  });
});

describe("text templates", () => {
  it("escapes substituted values for XML, not the template's own markup", () => {
    const t = compile('<alert sensor="{{ data.sensor }}"><v>{{ data.value }}</v></alert>', "application/xml");
    const out = t.render({ data: { sensor: `a<b & "c" 'd'\u0007`, value: 3 } }).toString();
    expect(out).toBe('<alert sensor="a&lt;b &amp; &quot;c&quot; &apos;d&apos;\uFFFD"><v>3</v></alert>');
    expect(t.contentType).toBe("application/xml");
    expect(t.kind).toBe("text");
  });

  it("text/plain gets no escaping and a utf-8 charset", () => {
    const t = compile("{{ data.sensor }} <{{ data.value }}>", "text/plain");
    expect(t.render({ data: { sensor: "a&b", value: 1 } }).toString()).toBe("a&b <1>");
    expect(t.contentType).toBe("text/plain; charset=utf-8");
  });

  it("form bodies URL-encode each value", () => {
    const t = compile("sensor={{ data.sensor }}&msg={{ data.labels.m }}", "application/x-www-form-urlencoded");
    const out = t.render({ data: { sensor: "a b&c=d", labels: { m: "ü/?" } } }).toString();
    expect(out).toBe("sensor=a+b%26c%3Dd&msg=%C3%BC%2F%3F");
    expect(new URLSearchParams(out).get("sensor")).toBe("a b&c=d");
    expect(new URLSearchParams(out).get("msg")).toBe("ü/?");
  });

  it("a JSON text template escapes values as JSON string contents", () => {
    const t = compile('{"msg": "{{ data.sensor }}"}', "application/json");
    expect(JSON.parse(t.render({ data: { sensor: 'q"\n' } }).toString())).toEqual({ msg: 'q"\n' });
  });

  it("needs a content type it knows how to escape for", () => {
    expect(problems("hello")).toEqual([expect.stringMatching(/needs content_type/)]);
    expect(problems("hello", "application/pdf")).toEqual([expect.stringMatching(/cannot escape for content_type/)]);
    expect(problems({ a: 1 }, "application/xml")).toEqual([expect.stringMatching(/sent as JSON/)]);
  });
});

describe("template compile errors", () => {
  it.each([
    [{ text: "{{ data.sensr }}" }, "destinations.x.template.text: unknown placeholder {{ data.sensr }}"],
    [{ a: ["ok", "{{ dat.sensor }}"] }, "destinations.x.template.a.1: unknown placeholder {{ dat.sensor }}"],
    [{ text: "{{ data.value | rund(1) }}" }, "destinations.x.template.text: unknown filter 'rund'"],
    [{ text: "{{ data.value | round(x) }}" }, "destinations.x.template.text: arguments of round"],
    [{ text: "{{ data.value | round(1, 2) }}" }, "destinations.x.template.text: round takes one whole number"],
    [{ text: "{{ data.value | default }}" }, "destinations.x.template.text: default takes one value"],
    [
      { text: '{{ data.since | time("Mars/Olympus") }}' },
      "destinations.x.template.text: unknown time zone 'Mars/Olympus'",
    ],
    [{ text: "{{ data.since | time(1) }}" }, "destinations.x.template.text: time takes an optional time zone"],
    [{ text: "{{ }}" }, "destinations.x.template.text: empty placeholder"],
    [{ text: "{{ data.sensor" }, "destinations.x.template.text: a placeholder opened with {{ is not closed"],
    [{ text: "{{ data.value.x }}" }, "destinations.x.template.text: unknown placeholder"],
    [{ text: "{{ data.labels.a.b }}" }, "destinations.x.template.text: unknown placeholder"],
    [{ text: "{{ constructor }}" }, "destinations.x.template.text: unknown placeholder"],
    [{ text: "{{ data.value | constructor }}" }, "destinations.x.template.text: unknown filter 'constructor'"],
    [{ text: "{{ data['x'] }}" }, "destinations.x.template.text: not a field path"],
  ])("%j", (node, expected) => {
    const ps = problems(node);
    expect(ps).toHaveLength(1);
    expect(ps[0]).toContain(expected);
  });

  it("reports every bad placeholder, each at its own key", () => {
    expect(problems({ a: "{{ data.x }}", b: { c: "{{ y }}" } }).map((p) => p.split(":")[0])).toEqual([
      "destinations.x.template.a",
      "destinations.x.template.b.c",
    ]);
  });
});

describe("templates in the config file", () => {
  const yaml = (template: string, extra = "") => `version: 1
agent:
  id: pi-cellar
destinations:
  chat:
    url: https://chat.example/hook
    signature: none
${template}
rules:
  - name: boiler-hot
    match: { sensor: boiler }
    above: 80
    notify: [chat]
${extra}
`;

  it("an unknown placeholder stops loading with file:line:col and the key", () => {
    const text = yaml(`    template:
      text: "{{ data.sensor }} at {{ data.sensr }}"`);
    let err: unknown;
    try {
      parseConfig(text, "agent.yaml", { env: {} });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const p = (err as ConfigError).problems;
    expect(p).toHaveLength(1);
    expect(p[0]).toMatchObject({ file: "agent.yaml", line: 9, col: 13, key: "destinations.chat.template.text" });
    expect((err as Error).message).toMatch(
      /^agent\.yaml:9:13: destinations\.chat\.template\.text: unknown placeholder \{\{ data\.sensr \}\}/,
    );
  });

  it("an unknown filter is positioned too", () => {
    const text = yaml(`    template:
      blocks:
        - text: "{{ data.value | rond(1) }}"`);
    expect(() => parseConfig(text, "agent.yaml", { env: {} })).toThrow(
      /agent\.yaml:10:17: destinations\.chat\.template\.blocks\.0\.text: unknown filter 'rond'/,
    );
  });

  it("fields from the extra of rules that notify the destination are known", () => {
    const ok = yaml(
      `    template:
      text: "{{ data.site }}"`,
      "    extra: { site: cellar }",
    );
    expect(parseConfig(ok, "agent.yaml", { env: {} }).config.destinations.chat?.template).toEqual({
      text: "{{ data.site }}",
    });
    const notDeclared = yaml(`    template:
      text: "{{ data.site }}"`);
    expect(() => parseConfig(notDeclared, "agent.yaml", { env: {} })).toThrow(
      /unknown placeholder \{\{ data\.site \}\}/,
    );
  });

  it("a text template without content_type is a config error", () => {
    const text = yaml(`    template: "<a>{{ data.sensor }}</a>"`);
    expect(() => parseConfig(text, "agent.yaml", { env: {} })).toThrow(
      /agent\.yaml:8:15: destinations\.chat\.template: a text template needs content_type/,
    );
  });
});

it("a template without placeholders renders its constants", () => {
  expect(renderWith({ text: "hello", n: 1 }, {})).toEqual({ text: "hello", n: 1 });
});

it("an unquoted {{ placeholder }} in YAML is caught with a hint to quote it", () => {
  const text = `version: 1
agent: { id: a }
destinations:
  chat:
    url: https://chat.example/hook
    signature: none
    template:
      text: {{ data.sensor }}
`;
  expect(() => parseConfig(text, "agent.yaml", { env: {} })).toThrow(
    /agent\.yaml:8:13: destinations\.chat\.template\.text: quote a value that starts with \{\{ \(YAML reads it as a mapping\): write "\{\{ data\.sensor \}\}"/,
  );
});

it("suggests the nearest field or filter for a typo", () => {
  const r = compileTemplate({ a: "{{ data.sensr }}", b: "{{ data.value | rond }}", c: "{{ data.zzzzzz }}" }, ["t"]);
  expect(r.ok ? [] : r.problems.map((p) => p.message.split(" (")[0])).toEqual([
    "unknown placeholder {{ data.sensr }}; did you mean data.sensor?",
    "unknown filter 'rond'; did you mean round? in {{ data.value | rond }}",
    "unknown placeholder {{ data.zzzzzz }}",
  ]);
});
