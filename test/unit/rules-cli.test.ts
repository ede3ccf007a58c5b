/** `edgehook rules test`: replaying JSONL readings through the rules on simulated time. */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { rulesTestCommand } from "../../src/cli/rules-test.js";
import { loadConfig, parseConfig } from "../../src/config/load.js";

const dir = mkdtempSync(join(tmpdir(), "edgehook-rules-test-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const config = parseConfig(
  `version: 1
agent: { id: pi-1 }
destinations:
  ops: { url: "http://127.0.0.1:9/hook", signature: none }
rules:
  - name: hot
    match: { sensor: greenhouse, metric: temp }
    above: 30
    for: 2m
    notify: [ops]
`,
  "agent.yaml",
);

async function run(lines: string[], loaded = config) {
  const file = join(dir, `r${Math.random().toString(36).slice(2)}.jsonl`);
  writeFileSync(file, lines.join("\n"));
  const out: string[] = [];
  const err: string[] = [];
  const code = await rulesTestCommand(
    loaded,
    file,
    (l) => out.push(l),
    (l) => err.push(l),
  );
  return {
    code,
    out: out.map((l) => JSON.parse(l) as { type: string; timestamp: string; data: Record<string, unknown> }),
    err,
    file,
  };
}

const r = (value: unknown, ts: unknown, extra: Record<string, unknown> = {}) =>
  JSON.stringify({ sensor: "greenhouse", metric: "temp", value, ts, ...extra });

describe("rules test", () => {
  it("fires `for` on simulated time between readings, and prints bodies only", async () => {
    const res = await run([
      r(31, "2026-01-01T00:00:00Z"),
      r(32, "2026-01-01T00:01:00Z"),
      r(29, "2026-01-01T00:05:00Z"), // the 2 min elapsed at 00:02 while no reading came
    ]);
    expect(res.code).toBe(0);
    expect(res.out.map((e) => `${e.type} ${e.timestamp}`)).toEqual([
      "alert.firing 2026-01-01T00:02:00.000Z",
      "alert.resolved 2026-01-01T00:05:00.000Z",
    ]);
    expect(res.out[0]!.data).toMatchObject({
      agent: "pi-1",
      rule: "hot",
      value: 32,
      since: "2026-01-01T00:00:00.000Z",
    });
    expect(res.err).toEqual(["rules test: 3 readings, 2 events up to 2026-01-01T00:05:00.000Z"]);
  });

  it("flushes nothing beyond the last reading's time", async () => {
    const res = await run([r(31, Date.parse("2026-01-01T00:00:00Z")), r(31, Date.parse("2026-01-01T00:01:59Z"))]);
    expect(res.out).toEqual([]);
  });

  it("accepts epoch ms, epoch s and ISO times, and labels", async () => {
    const res = await run([
      r(31, 1767225600000, { labels: { room: "a" } }),
      r(31, 1767225660),
      r(31, "2026-01-01T00:02:00.000Z"),
    ]);
    expect(res.out.map((e) => e.type)).toEqual(["alert.firing"]);
    expect(res.out[0]!.data.labels).toEqual({});
  });

  it("reports bad lines with their numbers on err, keeps going, and exits 1", async () => {
    const res = await run([
      r(31, "2026-01-01T00:00:00Z"),
      "{not json",
      "",
      JSON.stringify({ sensor: "greenhouse", value: 1, ts: 0 }),
      r(31, "yesterday"),
      r(null, "2026-01-01T00:00:30Z"),
      r(31, "2026-01-01T00:00:40Z", { labels: { a: 1 } }),
      r(31, "2026-01-01T00:03:00Z"),
    ]);
    expect(res.code).toBe(1);
    expect(res.err.slice(0, -1)).toEqual([
      `${res.file}:2: not JSON: ${errorOf("{not json")}`,
      `${res.file}:4: metric: must be a non-empty string`,
      `${res.file}:5: ts: must be epoch milliseconds or an ISO 8601 time`,
      `${res.file}:6: value: must be a number, a string or true/false`,
      `${res.file}:7: labels.a: must be a string`,
    ]);
    expect(res.err.at(-1)).toContain("5 bad lines");
    expect(res.out.map((e) => e.type)).toEqual(["alert.firing"]);
  });

  it("treats a reading older than the clock as late", async () => {
    const res = await run([
      r(31, "2026-01-01T00:00:00Z"),
      r(10, "2025-12-31T23:59:00Z"),
      r(31, "2026-01-01T00:02:00Z"),
    ]);
    expect(res.out.map((e) => e.type)).toEqual(["alert.firing"]);
    expect(res.err.at(-1)).toContain("1 late reading ignored");
  });

  it("an unreadable file is an error", async () => {
    const out: string[] = [];
    const err: string[] = [];
    expect(
      await rulesTestCommand(
        config,
        join(dir, "missing.jsonl"),
        (l) => out.push(l),
        (l) => err.push(l),
      ),
    ).toBe(1);
    expect(err[0]).toMatch(/missing\.jsonl: cannot read the readings file \(ENOENT\)/);
  });

  it("replays the shipped sample as documented", async () => {
    const loaded = loadConfig(join(import.meta.dirname, "../../config/sample-rules.yaml"));
    const lines = readFileSync(join(import.meta.dirname, "../../config/sample-readings.jsonl"), "utf8")
      .trim()
      .split("\n");
    const res = await run(lines, loaded);
    expect(res.code).toBe(0);
    expect(res.out.map((e) => `${e.timestamp.slice(11, 16)} ${e.type} ${e.data.rule}`)).toEqual([
      "12:03 alert.firing greenhouse-hot",
      "12:03 alert.firing tank-draining",
      "12:05 sensor.silent boiler-silent",
      "12:06 alert.resolved greenhouse-hot",
      "12:07 alert.firing door-left-open",
      "12:09 alert.resolved tank-draining",
      "12:10 alert.resolved door-left-open",
      "12:12 sensor.returned boiler-silent",
    ]);
  });
});

function errorOf(text: string): string {
  try {
    JSON.parse(text);
  } catch (e) {
    return (e as Error).message;
  }
  return "";
}

describe("rules test with when rules and derive", () => {
  const compound = parseConfig(
    `version: 1
agent: { id: pi-1 }
destinations:
  ops: { url: "http://127.0.0.1:9/hook", signature: none }
derive:
  - { metric: dew_point, value: "dew_point(temperature, humidity)" }
rules:
  - name: damp
    when: "humidity > 85 && temperature - dew_point < 2"
    stale_after: 1m
    notify: [ops]
`,
    "agent.yaml",
  );
  it("replays multi-metric lines through derive and the compound rule, and says when it is unknown", async () => {
    const line = (ts: string, values: Record<string, number>) => JSON.stringify({ sensor: "gh", values, ts });
    const res = await run(
      [
        line("2026-01-01T00:00:00Z", { temperature: 21.5 }),
        line("2026-01-01T00:00:10Z", { humidity: 92, temperature: 21.5 }),
        line("2026-01-01T00:05:00Z", { humidity: 60 }),
        line("2026-01-01T00:05:10Z", { temperature: 21 }),
      ],
      compound,
    );
    expect(res.code).toBe(0);
    expect(res.out.map((e) => [e.type, e.data.metric, e.data.values])).toEqual([
      [
        "alert.firing",
        "humidity,temperature,dew_point",
        { humidity: 92, temperature: 21.5, dew_point: expect.any(Number) },
      ],
      [
        "alert.resolved",
        "humidity,temperature,dew_point",
        { humidity: 60, temperature: 21, dew_point: expect.any(Number) },
      ],
    ]);
    expect(res.err.slice(0, -1)).toEqual([
      "rules test: 2026-01-01T00:00:00.000Z damp gh: when is unknown (no recent value of humidity, dew_point)",
      "rules test: 2026-01-01T00:00:10.000Z damp gh: when is known again",
      // 00:05:00: temperature (00:00:10) is older than stale_after; dew_point was derived just now.
      "rules test: 2026-01-01T00:05:00.000Z damp gh: when is unknown (no recent value of temperature)",
      "rules test: 2026-01-01T00:05:10.000Z damp gh: when is known again",
    ]);
  });
});
