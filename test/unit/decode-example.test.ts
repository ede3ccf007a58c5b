/** The documented example config decodes what its comments promise (docs and decoders in step). */
import { describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config/load.js";
import { MqttRouter, mqttDecoder, serialDecoder } from "../../src/sources/decode.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

const config = loadConfig("config/agent.example.yaml", {
  env: { OPS_WEBHOOK_SECRET: WEBHOOK_SECRET },
}).config;
const T = Date.parse("2026-03-01T00:00:00Z");

describe("config/agent.example.yaml", () => {
  const router = new MqttRouter(
    (config.mqtt?.subscriptions ?? []).map((s) => mqttDecoder(s)),
    config.mqtt?.max_payload ?? 65_536,
  );
  const decode = (topic: string, payload: string) => {
    const r = router.decode(topic, Buffer.from(payload), T);
    return r?.ok ? r.readings.map((x) => [x.sensor, x.metric, x.value, x.ts]) : r?.reason;
  };

  it.each([
    [
      "sensors/+/temperature (json value, timestamp)",
      "sensors/bed3/temperature",
      '{"value": 24.5, "ts": 1772323200}',
      [["bed3", "temperature", 24.5, 1_772_323_200_000]],
    ],
    [
      "zigbee2mqtt/+ (json values)",
      "zigbee2mqtt/porch",
      '{"temperature": 11.2, "humidity": 80, "linkquality": 120}',
      [
        ["porch", "temperature", 11.2, T],
        ["porch", "humidity", 80, T],
      ],
    ],
    ["shellies relay (text states)", "shellies/pump/relay/0", "on", [["pump", "relay", 1, T]]],
  ])("%s", (_n, topic, payload, expected) => {
    expect(decode(topic, payload)).toEqual(expected);
  });

  it("serial ports decode their documented format", () => {
    for (const port of config.serial) {
      const dec = serialDecoder(port);
      const line = port.format === "kv" ? "moisture=41 temp=18.5" : "";
      const r = dec(Buffer.from(line), T);
      expect(r.ok, `${port.name}: ${r.ok ? "" : r.reason}`).toBe(true);
    }
  });
});
