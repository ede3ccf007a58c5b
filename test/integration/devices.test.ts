/**
 * Firmware presets end to end: a real agent whose configuration is the broker URL, one
 * `preset:` line and one rule receives the payloads each product's documentation shows,
 * through a real mosquitto, and a real receiver verifies the webhooks (standardwebhooks).
 * Payload sources are cited in docs/devices.md.
 */
import { rmSync } from "node:fs";
import mqtt, { type MqttClient } from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentProcess, tempDir, writeConfig } from "../support/agent-process.js";
import { Mosquitto } from "../support/mosquitto.js";
import { Receiver } from "../support/receiver.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

interface ReadingBody {
  type: string;
  data: { sensor: string; metric: string; value: unknown; labels: Record<string, string> };
}

describe("firmware presets (real agent, real mosquitto, verified webhooks)", () => {
  const broker = new Mosquitto();
  const receiver = new Receiver(WEBHOOK_SECRET);
  const dir = tempDir();
  let agent: AgentProcess | undefined;
  let client: MqttClient | undefined;

  beforeAll(async () => {
    await broker.start();
    await receiver.start();
    client = await mqtt.connectAsync(broker.url, { clientId: "devices-pub" });
  });
  afterAll(async () => {
    await client?.endAsync();
    await agent?.stop();
    await receiver.stop();
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Starts an agent with this subscription line, publishes, and returns the readings it forwarded. */
  async function run(name: string, subscription: string, messages: [string, string][], expected: number) {
    const file = writeConfig(
      dir,
      `version: 1
agent: { id: ${name}-pi, data_dir: ./data-${name}, require_clock_sync: never }
mqtt:
  url: ${broker.url}
  subscriptions: [${subscription}]
destinations:
  ops: { url: "${receiver.url}", secret: ${WEBHOOK_SECRET} }
rules:
  - { name: everything, forward: true, notify: [ops] }
http: { listen: false }
`,
    );
    const before = receiver.accepted.length;
    agent = new AgentProcess(file);
    await agent.start();
    await agent.waitForLog((l) => l.msg === "subscribed to MQTT topics", "the subscription");
    for (const [topic, payload] of messages) await client!.publishAsync(topic, payload, { qos: 1 });
    await receiver.waitFor(() => receiver.accepted.length >= before + expected, `${expected} readings`);
    expect((await agent.stop()).code).toBe(0);
    agent = undefined;
    const got = receiver.accepted.slice(before);
    expect(got.every((r) => r.verified)).toBe(true);
    // Different series are delivered concurrently: compare them as a set.
    return got
      .map((r) => {
        const { type, data } = r.json as ReadingBody;
        const labels = Object.entries(data.labels)
          .map(([k, v]) => ` ${k}=${v}`)
          .join("");
        return `${type} ${data.sensor} ${data.metric}=${JSON.stringify(data.value)}${labels}`;
      })
      .sort();
  }

  it("zigbee2mqtt", async () => {
    const got = await run(
      "z2m",
      "{ preset: zigbee2mqtt }",
      [
        ["zigbee2mqtt/bridge/state", '{"state":"online"}'],
        ["zigbee2mqtt/kitchen/sensor", '{"temperature":27.34,"humidity":44.72}'],
        ["zigbee2mqtt/kitchen/sensor/set", '{"temperature":1}'],
        ["zigbee2mqtt/hall/motion", '{"occupancy":true}'],
        ["zigbee2mqtt/kitchen/floor_light", '{"state":"ON","brightness":215,"color_temp":325}'],
      ],
      6,
    );
    expect(got).toEqual(
      [
        "reading kitchen/sensor temperature=27.34",
        "reading kitchen/sensor humidity=44.72",
        "reading hall/motion occupancy=true",
        "reading kitchen/floor_light state=true",
        "reading kitchen/floor_light brightness=215",
        "reading kitchen/floor_light color_temp=325",
      ].sort(),
    );
  }, 60_000);

  it("tasmota", async () => {
    const got = await run(
      "tasmota",
      "{ preset: tasmota, timezone: UTC }",
      [
        ["tele/tasmota_1/LWT", "Online"],
        [
          "tele/tasmota_1/SENSOR",
          '{"Time":"2019-01-01T00:00:00","AM2301":{"Temperature":24.6,"Humidity":58.2},"TempUnit":"C"}',
        ],
      ],
      2,
    );
    expect(got).toEqual(
      ["reading tasmota_1 temperature=24.6 model=AM2301", "reading tasmota_1 humidity=58.2 model=AM2301"].sort(),
    );
  }, 60_000);

  it("esphome", async () => {
    const got = await run(
      "esphome",
      "{ preset: esphome }",
      [
        ["livingroom/status", "online"],
        ["livingroom/sensor/temperature/state", "22.5"],
        ["livingroom/binary_sensor/window/state", "ON"],
      ],
      2,
    );
    expect(got).toEqual(["reading livingroom temperature=22.5", "reading livingroom window=true"].sort());
  }, 60_000);

  it("shelly (Gen1 and Gen2)", async () => {
    const got = await run(
      "shelly",
      "{ preset: shelly }",
      [
        ["shellies/shellyht-6FFF41/sensor/temperature", "22.5"],
        ["shellies/shellyht-6FFF41/sensor/humidity", "45.5"],
        ["shellyplusht-b8d61a8b17cc/status/temperature:0", '{"id":0,"tC":19.8,"tF":67.6}'],
        ["shellyplusht-b8d61a8b17cc/status/humidity:0", '{"id":0,"rh":42.2}'],
      ],
      4,
    );
    expect(got).toEqual(
      [
        "reading shellyht-6FFF41 temperature=22.5",
        "reading shellyht-6FFF41 humidity=45.5",
        "reading shellyplusht-b8d61a8b17cc temperature=19.8",
        "reading shellyplusht-b8d61a8b17cc humidity=42.2",
      ].sort(),
    );
  }, 60_000);
});
