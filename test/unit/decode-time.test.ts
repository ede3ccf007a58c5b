/**
 * Timestamps in payloads and lines: epoch numbers in every unit sensors use, ISO 8601
 * with and without a zone, the per-source `timezone`, and DST changes.
 */
import { describe, expect, it } from "vitest";
import { configSchema, type SerialPortConfig, type SubscriptionConfig } from "../../src/config/schema.js";
import { mqttDecoder, parseTimestamp, serialDecoder } from "../../src/sources/decode.js";
import { ZonedTime } from "../../src/sources/zoned-time.js";

const ARRIVAL = Date.parse("2026-11-22T12:00:30Z");
const utc = (s: string) => Date.parse(`${s}Z`);

function sub(s: Record<string, unknown>): SubscriptionConfig {
  return configSchema.parse({ version: 1, agent: { id: "a" }, mqtt: { url: "mqtt://x", subscriptions: [s] } }).mqtt!
    .subscriptions[0]!;
}
function port(s: Record<string, unknown>): SerialPortConfig {
  return configSchema.parse({ version: 1, agent: { id: "a" }, serial: [{ name: "dev", path: "/dev/x", ...s }] })
    .serial[0]!;
}
const mqttTs = (cfg: Record<string, unknown>, payload: string, arrival = ARRIVAL) => {
  const r = mqttDecoder(sub({ topic: "tele/+/SENSOR", metric: "t", value: "v", timestamp: "Time", ...cfg })).decode(
    "tele/plug/SENSOR",
    Buffer.from(payload),
    arrival,
  );
  return r?.ok ? r.readings[0]!.ts : r;
};

describe("epoch numbers", () => {
  const S = 1_763_812_800; // 2025-11-22T12:00:00Z
  it.each([
    ["seconds", S, S * 1000],
    ["fractional seconds (text)", "1763812800.25", S * 1000 + 250],
    ["milliseconds", S * 1000 + 7, S * 1000 + 7],
    ["microseconds", S * 1_000_000 + 7_000, S * 1000 + 7],
    ["microseconds (text)", `${S}000123`, S * 1000],
    ["nanoseconds", S * 1e9, S * 1000],
    ["nanoseconds (text, beyond 2^53)", "1763812800123456789", S * 1000 + 123],
    ["zero", 0, undefined],
    ["negative", -5, undefined],
    ["too large for any unit", 1e21, undefined],
  ] as const)("%s", (_, v, expected) => {
    expect(parseTimestamp(v)).toBe(expected);
  });
});

describe("ISO 8601", () => {
  const berlin = new ZonedTime("Europe/Berlin");
  it.each([
    ["Z is UTC whatever the zone", "2026-11-22T13:00:00Z", berlin, utc("2026-11-22T13:00:00")],
    [
      "an offset wins over the zone",
      "2026-11-22T13:00:00+01:00",
      new ZonedTime("America/New_York"),
      utc("2026-11-22T12:00:00"),
    ],
    ["zoneless in Europe/Berlin (winter, +01:00)", "2026-11-22T13:00:00", berlin, utc("2026-11-22T12:00:00")],
    ["zoneless in Europe/Berlin (summer, +02:00)", "2026-07-01T13:00:00", berlin, utc("2026-07-01T11:00:00")],
    ["zoneless in UTC", "2026-11-22T13:00:00", new ZonedTime("UTC"), utc("2026-11-22T13:00:00")],
    [
      "zoneless in Etc/GMT-3 (a fixed +03:00)",
      "2026-11-22T13:00:00",
      new ZonedTime("Etc/GMT-3"),
      utc("2026-11-22T10:00:00"),
    ],
    [
      "zoneless in America/New_York",
      "2026-11-22T13:00:00",
      new ZonedTime("America/New_York"),
      utc("2026-11-22T18:00:00"),
    ],
    ["with a space and fractions", "2026-11-22 13:00:00.25", berlin, utc("2026-11-22T12:00:00.250")],
    ["without seconds", "2026-11-22T13:00", berlin, utc("2026-11-22T12:00:00")],
    ["a date alone is local midnight", "2026-11-22", berlin, utc("2026-11-21T23:00:00")],
    ["30 February is not a date", "2026-02-30T10:00:00", berlin, undefined],
    ["hour 25 is not a time", "2026-11-22T25:00:00", berlin, undefined],
  ] as const)("%s", (_, text, zone, expected) => {
    expect(parseTimestamp(text, zone, ARRIVAL)).toBe(expected);
  });

  it("zoneless times default to the agent's own zone (TZ)", () => {
    // vitest runs with the machine's TZ; whatever it is, the default is that zone.
    const local = new Date(2026, 10, 22, 13, 0, 0).getTime();
    expect(parseTimestamp("2026-11-22T13:00:00")).toBe(local);
  });
});

describe("DST changes (Europe/Berlin)", () => {
  const zone = new ZonedTime("Europe/Berlin");
  it.each([
    // 25 Oct 2026: 03:00 CEST becomes 02:00 CET at 01:00Z, so 02:00-02:59 happens twice.
    [
      "first 02:30 (CEST), arriving then",
      "2026-10-25T02:30:00",
      utc("2026-10-25T00:30:05"),
      utc("2026-10-25T00:30:00"),
    ],
    [
      "second 02:30 (CET), arriving then",
      "2026-10-25T02:30:00",
      utc("2026-10-25T01:30:05"),
      utc("2026-10-25T01:30:00"),
    ],
    ["repeated hour without an arrival: the earlier", "2026-10-25T02:30:00", undefined, utc("2026-10-25T00:30:00")],
    // 29 Mar 2026: 02:00 CET becomes 03:00 CEST at 01:00Z, so 02:30 never happens.
    [
      "skipped 02:30 reads as 03:30 CEST",
      "2026-03-29T02:30:00",
      utc("2026-03-29T01:30:00"),
      utc("2026-03-29T01:30:00"),
    ],
    ["01:59 before the gap", "2026-03-29T01:59:00", undefined, utc("2026-03-29T00:59:00")],
    ["03:00 after the gap", "2026-03-29T03:00:00", undefined, utc("2026-03-29T01:00:00")],
  ] as const)("%s", (_, text, arrival, expected) => {
    expect(zone.parse(text, arrival)).toBe(expected);
  });

  it("a device on local time stays in order through the autumn change (no late readings)", () => {
    const decoder = mqttDecoder(
      sub({ topic: "tele/+/SENSOR", metric: "t", value: "v", timestamp: "Time", timezone: "Europe/Berlin" }),
    );
    const times: number[] = [];
    // Every 10 minutes from 00:00Z to 02:00Z, stamped on the device's local clock.
    for (let at = utc("2026-10-25T00:00:00"); at <= utc("2026-10-25T02:00:00"); at += 600_000) {
      const local = new Date(at + (at < utc("2026-10-25T01:00:00") ? 7_200_000 : 3_600_000)).toISOString().slice(0, 19);
      const r = decoder.decode("tele/plug/SENSOR", Buffer.from(JSON.stringify({ Time: local, v: 1 })), at + 2_000);
      times.push(r?.ok ? r.readings[0]!.ts - at : Number.NaN);
    }
    expect(times).toEqual(times.map(() => 0));
  });
});

describe("per-source timezone", () => {
  const tasmota = '{"Time":"2026-11-22T13:00:00","v":21.5}';

  it("MQTT: Tasmota's zoneless Time read in the configured zone", () => {
    expect(mqttTs({ timezone: "Europe/Berlin" }, tasmota)).toBe(utc("2026-11-22T12:00:00"));
    expect(mqttTs({ timezone: "Asia/Kolkata" }, tasmota)).toBe(utc("2026-11-22T07:30:00"));
  });

  it("serial: a regex ts group read in the configured zone", () => {
    const decode = serialDecoder(
      port({ format: "regex", pattern: "^(?<ts>\\S+ \\S+) T=(?<value>[-0-9.]+)$", timezone: "America/Chicago" }),
    );
    const r = decode(Buffer.from("2026-11-22 13:00:00 T=4.5"), ARRIVAL);
    expect(r.ok && r.readings[0]!.ts).toBe(utc("2026-11-22T19:00:00"));
  });

  it.each([
    ["mqtt", { mqtt: { url: "mqtt://x", subscriptions: [{ topic: "t", timezone: "Mars/Olympus" }] } }],
    ["serial", { serial: [{ name: "dev", path: "/dev/x", timezone: "CEST+2" }] }],
  ])("an unknown zone is a config error (%s)", (_, part) => {
    const r = configSchema.safeParse({ version: 1, agent: { id: "a" }, ...part });
    expect(r.success).toBe(false);
    expect(r.error!.issues[0]!.message).toBe("must be an IANA time zone name like Europe/Berlin or UTC");
  });
});
