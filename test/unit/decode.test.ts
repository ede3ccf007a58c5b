/** Decoders fed raw bytes: every MQTT payload format, every serial line format, the bounded splitter. */
import { describe, expect, it } from "vitest";
import { configSchema, type SerialPortConfig, type SubscriptionConfig } from "../../src/config/schema.js";
import {
  LineSplitter,
  MqttRouter,
  matchTopic,
  mqttDecoder,
  parseTimestamp,
  type SplitItem,
  serialDecoder,
} from "../../src/sources/decode.js";

const ARRIVAL = Date.parse("2026-01-01T00:00:00Z");

function sub(s: Record<string, unknown>): SubscriptionConfig {
  return configSchema.parse({ version: 1, agent: { id: "a" }, mqtt: { url: "mqtt://x", subscriptions: [s] } }).mqtt!
    .subscriptions[0]!;
}
function port(s: Record<string, unknown>): SerialPortConfig {
  return configSchema.parse({ version: 1, agent: { id: "a" }, serial: [{ name: "dev", path: "/dev/x", ...s }] })
    .serial[0]!;
}
const bytes = (s: string | number[]) => (typeof s === "string" ? Buffer.from(s, "utf8") : Buffer.from(s));
type Row = [string, number | string | boolean, number?];
const summary = (r: ReturnType<ReturnType<typeof mqttDecoder>["decode"]>) =>
  r === undefined
    ? "no match"
    : r.ok
      ? r.readings.map((x): Row => [`${x.sensor}/${x.metric}`, x.value, x.ts])
      : r.reason;

describe("mqtt payloads", () => {
  const cases: [string, Record<string, unknown>, string, string | number[], ReturnType<typeof summary>][] = [
    [
      "json path",
      { topic: "s/+/t", metric: "temp", value: "a.b" },
      "s/k/t",
      '{"a":{"b":21.5}}',
      [["k/temp", 21.5, ARRIVAL]],
    ],
    ["json array index", { topic: "s/+", metric: "m", value: "v.1" }, "s/k", '{"v":[1,2]}', [["k/m", 2, ARRIVAL]]],
    ["json numeric string", { topic: "s/+", metric: "m", value: "v" }, "s/k", '{"v":" 7 "}', [["k/m", 7, ARRIVAL]]],
    ["json boolean", { topic: "s/+", metric: "m", value: "v" }, "s/k", '{"v":true}', [["k/m", true, ARRIVAL]]],
    ["json bare number", { topic: "s/+", metric: "m" }, "s/k", "3.5", [["k/m", 3.5, ARRIVAL]]],
    ["json not json", { topic: "s/+", metric: "m", value: "v" }, "s/k", "{nope", "not_json"],
    ["json missing path", { topic: "s/+", metric: "m", value: "v" }, "s/k", '{"w":1}', "no_value"],
    ["json null", { topic: "s/+", metric: "m", value: "v" }, "s/k", '{"v":null}', "no_value"],
    ["json word", { topic: "s/+", metric: "m", value: "v" }, "s/k", '{"v":"hot"}', "bad_number"],
    ["json object at path", { topic: "s/+", metric: "m", value: "v" }, "s/k", '{"v":{"x":1}}', "bad_number"],
    ["binary", { topic: "s/+", metric: "m", value: "v" }, "s/k", [0x00, 0x01, 0xfe], "binary"],
    ["invalid utf-8", { topic: "s/+", metric: "m", value: "v" }, "s/k", [0x7b, 0xc3, 0x28, 0x7d], "encoding"],
    [
      "json values",
      { topic: "s/+", values: { t: "env.t", h: "env.h", p: "env.p" } },
      "s/k",
      '{"env":{"t":1,"h":2}}',
      [
        ["k/t", 1, ARRIVAL],
        ["k/h", 2, ARRIVAL],
      ],
    ],
    ["json values none", { topic: "s/+", values: { t: "x" } }, "s/k", '{"y":1}', "no_value"],
    [
      "templates: topic segment and payload field",
      { topic: "site/+/+", sensor: "{topic.1}-{id}", metric: "{2}", value: "v" },
      "site/north/temp",
      '{"id":"n7","v":1}',
      [["site-n7/temp", 1, ARRIVAL]],
    ],
    ["template field missing", { topic: "s/+", sensor: "{id}", metric: "m", value: "v" }, "s/k", '{"v":1}', "no_field"],
    ["multi-level wildcard", { topic: "s/#", metric: "m", value: "v" }, "s/a/b", '{"v":1}', [["a/b/m", 1, ARRIVAL]]],
    [
      "timestamp epoch s",
      { topic: "s/+", metric: "m", value: "v", timestamp: "ts" },
      "s/k",
      '{"v":1,"ts":1700000000}',
      [["k/m", 1, 1_700_000_000_000]],
    ],
    [
      "timestamp epoch ms",
      { topic: "s/+", metric: "m", value: "v", timestamp: "ts" },
      "s/k",
      '{"v":1,"ts":1700000000123}',
      [["k/m", 1, 1_700_000_000_123]],
    ],
    [
      "timestamp ISO",
      { topic: "s/+", metric: "m", value: "v", timestamp: "ts" },
      "s/k",
      '{"v":1,"ts":"2025-06-01T12:00:00Z"}',
      [["k/m", 1, Date.parse("2025-06-01T12:00:00Z")]],
    ],
    [
      "timestamp unparsable falls back to arrival",
      { topic: "s/+", metric: "m", value: "v", timestamp: "ts" },
      "s/k",
      '{"v":1,"ts":"soon"}',
      [["k/m", 1, ARRIVAL]],
    ],
    ["number", { topic: "s/+", format: "number", metric: "m" }, "s/k", " -4.25e1\r\n", [["k/m", -42.5, ARRIVAL]]],
    ["number bad", { topic: "s/+", format: "number", metric: "m" }, "s/k", "12abc", "bad_number"],
    ["number empty", { topic: "s/+", format: "number", metric: "m" }, "s/k", "  ", "empty"],
    [
      "kv all keys",
      { topic: "s/+", format: "kv" },
      "s/k",
      "t=21.5 h=40 name=x",
      [
        ["k/t", 21.5, ARRIVAL],
        ["k/h", 40, ARRIVAL],
      ],
    ],
    [
      "kv values with colon and comma",
      { topic: "s/+", format: "kv", values: { temp: "t" } },
      "s/k",
      "t:19,h:3",
      [["k/temp", 19, ARRIVAL]],
    ],
    [
      "kv value key",
      { topic: "s/+", format: "kv", metric: "hum", value: "h" },
      "s/k",
      "t=1;h=2",
      [["k/hum", 2, ARRIVAL]],
    ],
    ["kv nothing", { topic: "s/+", format: "kv" }, "s/k", "hello world", "no_value"],
    [
      "text ON (case-insensitive)",
      { topic: "s/+", format: "text", metric: "p", states: { ON: 1, OFF: 0 } },
      "s/k",
      "on",
      [["k/p", 1, ARRIVAL]],
    ],
    [
      "text open → string",
      { topic: "s/+", format: "text", metric: "door", states: { open: "open", closed: "closed" } },
      "s/k",
      "CLOSED\n",
      [["k/door", "closed", ARRIVAL]],
    ],
    [
      "text true → boolean",
      { topic: "s/+", format: "text", metric: "b", states: { true: true, false: false } },
      "s/k",
      "False",
      [["k/b", false, ARRIVAL]],
    ],
    [
      "text unknown state",
      { topic: "s/+", format: "text", metric: "p", states: { ON: 1, OFF: 0 } },
      "s/k",
      "maybe",
      "unknown_state",
    ],
    ["topic not matched", { topic: "s/+", metric: "m", value: "v" }, "other/k", '{"v":1}', "no match"],
  ];
  it.each(cases)("%s", (_name, cfg, topic, payload, expected) => {
    const d = mqttDecoder(sub(cfg));
    expect(summary(d.decode(topic, bytes(payload), ARRIVAL))).toEqual(expected);
  });

  it("carries labels and source", () => {
    const d = mqttDecoder(sub({ topic: "s/+", metric: "m", value: "v", labels: { room: "a" } }));
    const r = d.decode("s/k", bytes('{"v":1}'), ARRIVAL);
    expect(r).toEqual({
      ok: true,
      readings: [{ sensor: "k", metric: "m", value: 1, ts: ARRIVAL, source: "mqtt", labels: { room: "a" } }],
    });
  });

  it("the first matching subscription decides; oversize payloads are refused before decoding", () => {
    const ds = [
      mqttDecoder(sub({ topic: "a/b", sensor: "{topic.2}", metric: "first", format: "number" })),
      mqttDecoder(sub({ topic: "a/+", metric: "second", format: "number" })),
    ];
    const router = new MqttRouter(ds, 100);
    for (let i = 0; i < 2; i++) {
      // Twice: the second answer comes from the per-topic cache.
      expect(summary(router.decode("a/b", bytes("1"), ARRIVAL))).toEqual([["b/first", 1, ARRIVAL]]);
      expect(summary(router.decode("a/c", bytes("2"), ARRIVAL))).toEqual([["c/second", 2, ARRIVAL]]);
      expect(summary(router.decode("a/c", bytes("1".repeat(101)), ARRIVAL))).toBe("too_large");
      expect(router.decode("z", bytes("1"), ARRIVAL)).toBeUndefined();
    }
  });

  it.each([
    ["a/+/c", "a/b/c", ["b"]],
    ["a/#", "a", [""]],
    ["a/#", "a/b/c", ["b/c"]],
    ["#", "$SYS/x", undefined],
    ["+/b", "a/b", ["a"]],
    ["a/b", "a/b/c", undefined],
  ] as const)("matchTopic(%s, %s)", (filter, topic, expected) => {
    expect(matchTopic(filter, topic)).toEqual(expected);
  });

  it.each([
    [1_700_000_000, 1_700_000_000_000],
    ["1700000000.5", 1_700_000_000_500],
    [1_700_000_000_123, 1_700_000_000_123],
    ["2026-01-01T00:00:00+01:00", Date.parse("2025-12-31T23:00:00Z")],
    ["yesterday", undefined],
    [-5, undefined],
  ] as const)("parseTimestamp(%s)", (v, expected) => {
    expect(parseTimestamp(v)).toBe(expected);
  });
});

describe("serial lines", () => {
  const line = (cfg: Record<string, unknown>, l: string | number[]) => {
    const r = serialDecoder(port(cfg))(bytes(l), ARRIVAL);
    return r.ok ? r.readings.map((x) => [`${x.sensor}/${x.metric}`, x.value]) : r.reason;
  };
  const cases: [string, Record<string, unknown>, string | number[], unknown][] = [
    [
      "kv default sensor is the port name",
      {},
      "t=21.5 h=40",
      [
        ["dev/t", 21.5],
        ["dev/h", 40],
      ],
    ],
    ["kv sensor from a field", { sensor: "{id}" }, "id=n3 t=1", [["n3/t", 1]]],
    [
      "csv",
      { format: "csv", columns: ["id", "t", "h"], sensor: "{id}" },
      "n1, 20.5,55",
      [
        ["n1/t", 20.5],
        ["n1/h", 55],
      ],
    ],
    ["csv wrong column count", { format: "csv", columns: ["id", "t", "h"] }, "n1,20", "columns"],
    ["csv value column", { format: "csv", columns: ["a", "b"], value: "b", metric: "x" }, "1,2", [["dev/x", 2]]],
    [
      "json all numeric",
      { format: "json" },
      '{"t":1,"name":"x","ok":true}',
      [
        ["dev/t", 1],
        ["dev/ok", true],
      ],
    ],
    ["json path", { format: "json", value: "d.t", metric: "temp" }, '{"d":{"t":3}}', [["dev/temp", 3]]],
    ["json not json", { format: "json" }, "t=1", "not_json"],
    [
      "regex named groups",
      { format: "regex", pattern: "^(?<sensor>\\w+) (?<metric>\\w+)=(?<value>[-\\d.]+)$" },
      "boiler temp=71.5",
      [["boiler/temp", 71.5]],
    ],
    [
      "regex values",
      { format: "regex", pattern: "T(?<t>[\\d.]+)H(?<h>\\d+)", values: { temp: "t", hum: "h" } },
      "T20.5H40",
      [
        ["dev/temp", 20.5],
        ["dev/hum", 40],
      ],
    ],
    ["regex no match", { format: "regex", pattern: "^T(?<value>\\d+)$" }, "garbage", "no_match"],
    ["number", { format: "number", metric: "level" }, "12.5", [["dev/level", 12.5]]],
    ["number bad", { format: "number" }, "12,5", "bad_number"],
    ["NUL byte", {}, [0x74, 0x3d, 0x00, 0x31], "binary"],
    ["invalid utf-8", {}, [0x74, 0x3d, 0xff, 0x31], "encoding"],
    ["latin1 accepts high bytes", { encoding: "latin1", format: "kv" }, [0x74, 0xb0, 0x3d, 0x31], [["dev/t°", 1]]],
    ["ascii refuses high bytes", { encoding: "ascii" }, [0x74, 0x3d, 0xb0], "encoding"],
  ];
  it.each(cases)("%s", (_n, cfg, l, expected) => {
    expect(line(cfg, l)).toEqual(expected);
  });
  it("names the source serial:<name>", () => {
    const r = serialDecoder(port({}))(bytes("t=1"), ARRIVAL);
    expect(r.ok && r.readings[0]!.source).toBe("serial:dev");
  });
});

describe("LineSplitter", () => {
  const run = (chunks: (string | Buffer)[], max = 64, delim = "\n") => {
    const s = new LineSplitter(delim, max);
    const out: SplitItem[] = [];
    for (const c of chunks) out.push(...s.push(typeof c === "string" ? Buffer.from(c) : c));
    return out.map((i) => ("line" in i ? i.line.toString("latin1") : `!${i.error}`));
  };
  const cases: [string, (string | Buffer)[], string[], number?, string?][] = [
    ["a line split across two chunks", ["t=2", "1.5\n"], ["t=21.5"]],
    ["two lines in one chunk", ["a=1\nb=2\n"], ["a=1", "b=2"]],
    ["CRLF", ["a=1\r\nb=2\r", "\n"], ["a=1", "b=2"]],
    ["empty lines are skipped", ["\n\r\n\na=1\n"], ["a=1"]],
    ["a partial line waits for its end", ["a=1\nb="], ["a=1"]],
    ["byte at a time", [..."x=1\ny=2\n"], ["x=1", "y=2"]],
    ["too long in one chunk, then good", [`${"x".repeat(100)}\nok=1\n`], ["!too_long", "ok=1"]],
    [
      "too long across chunks is reported once and skipped to the delimiter",
      ["y".repeat(50), "y".repeat(50), "y".repeat(50), "\nok=2\n"],
      ["!too_long", "ok=2"],
    ],
    ["exactly max is fine", [`${"z".repeat(64)}\r\n`], ["z".repeat(64)]],
    ["multi-byte delimiter split across chunks", ["a=1\r", "\nb=2\r\n"], ["a=1", "b=2"], 64, "\r\n"],
    ["custom delimiter", ["a=1;b=2;"], ["a=1", "b=2"], 64, ";"],
  ];
  it.each(cases)("%s", (_n, chunks, expected, max, delim) => {
    expect(run(chunks, max, delim)).toEqual(expected);
  });

  it("a 1 MB line costs one too_long and bounded memory; the lines around it arrive", () => {
    const s = new LineSplitter("\n", 4096);
    const out: SplitItem[] = [...s.push(Buffer.from("before=1\n"))];
    const chunk = Buffer.alloc(64 * 1024, 0x41);
    for (let i = 0; i < 16; i++) out.push(...s.push(chunk));
    out.push(...s.push(Buffer.from("\nafter=2\n")));
    expect(out.map((i) => ("line" in i ? i.line.toString() : i.error))).toEqual(["before=1", "too_long", "after=2"]);
  });

  it("binary garbage between lines reaches the decoder as its own line and is refused there", () => {
    const s = new LineSplitter("\n", 4096);
    const dec = serialDecoder(port({}));
    const items = s.push(
      Buffer.concat([Buffer.from("a=1\n"), Buffer.from([0, 1, 2, 0xff, 0x0a]), Buffer.from("b=2\n")]),
    );
    const results = items.map((i) => ("line" in i ? dec(i.line, ARRIVAL) : i));
    expect(results.map((r) => ("ok" in r ? (r.ok ? r.readings[0]!.value : r.reason) : r.error))).toEqual([
      1,
      "binary",
      2,
    ]);
  });
});
