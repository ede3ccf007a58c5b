/**
 * Store-and-forward under kill -9: the agent is a real process, the receiver is down,
 * readings are published continuously over MQTT (QoS 1) while the agent is killed with
 * SIGKILL at random moments and restarted. Then the receiver comes up: every event
 * arrives, verified, in order per series.
 */
import mqtt from "mqtt";
import { afterAll, describe, expect, it } from "vitest";
import { AgentProcess, tempDir, writeConfig } from "../support/agent-process.js";
import { Mosquitto } from "../support/mosquitto.js";
import { Receiver } from "../support/receiver.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

const SENSORS = ["a", "b", "c", "d"];
const PER_SENSOR = 300;
const KILLS = 4;

/** Reading k of a sensor alternates above 50 and below 0, so each one is a crossing; the value identifies k. */
const readingValue = (k: number) => (k % 2 === 0 ? 100 + k : -k);
const kOf = (value: number) => (value >= 100 ? value - 100 : -value);

describe("kill -9 while readings arrive and the receiver is down", () => {
  const broker = new Mosquitto();
  const receiver = new Receiver(WEBHOOK_SECRET);
  let agent: AgentProcess | undefined;

  afterAll(async () => {
    await agent?.stop();
    await receiver.stop();
    await broker.stop();
  });

  it("delivers every event afterwards, verified and in order per series", async () => {
    await broker.start();
    await receiver.start();
    const receiverPort = receiver.port;
    await receiver.stop(); // down until the end; the port is kept for later

    const configFile = writeConfig(
      tempDir(),
      `version: 1
agent: { id: crash-pi, data_dir: ./data, require_clock_sync: never }
mqtt:
  url: ${broker.url}
  client_id: crash-agent
  subscriptions:
    - { topic: "s/+/v", sensor: "{1}", metric: level, format: json, value: v, qos: 1 }
destinations:
  ops: { url: "http://127.0.0.1:${receiverPort}/hooks", secret: ${WEBHOOK_SECRET}, concurrency: 8 }
rules:
  - { name: crossing, match: { metric: level }, above: 50, clear_below: 0, notify: [ops] }
http: { listen: false }
`,
    );
    agent = new AgentProcess(configFile);
    await agent.start();

    const publisher = await mqtt.connectAsync(broker.url, { clientId: "crash-publisher", clean: false });
    let published = 0;
    const publishing = (async () => {
      for (let k = 0; k < PER_SENSOR; k++) {
        await Promise.all(
          SENSORS.map((s) => publisher.publishAsync(`s/${s}/v`, JSON.stringify({ v: readingValue(k) }), { qos: 1 })),
        );
        published += SENSORS.length;
        await new Promise((r) => setTimeout(r, 15)); // spread publishing over the kills (~5 s)
      }
    })();

    for (let i = 0; i < KILLS; i++) {
      await new Promise((r) => setTimeout(r, 150 + Math.random() * 600));
      agent.kill("SIGKILL");
      await agent.exited();
      agent = new AgentProcess(configFile);
      await agent.start();
    }
    await publishing;
    await publisher.endAsync();
    expect(published).toBe(SENSORS.length * PER_SENSOR);

    await receiver.start(receiverPort);
    const readingsOf = (sensor: string) =>
      new Set(
        receiver.accepted
          .map((r) => (r.json as { data: { sensor: string; value: number } }).data)
          .filter((d) => d.sensor === sensor)
          .map((d) => kOf(d.value)),
      );
    await receiver.waitFor(
      () => SENSORS.every((s) => readingsOf(s).size >= PER_SENSOR),
      "an event for every reading",
      60_000,
    );

    // Set equality on the readings that caused the events.
    const got = new Map<string, number[]>();
    for (const r of receiver.accepted) {
      const data = (r.json as { data: { sensor: string; value: number } }).data;
      const list = got.get(data.sensor) ?? [];
      list.push(kOf(data.value));
      got.set(data.sensor, list);
    }
    for (const s of SENSORS) {
      const ks = got.get(s) ?? [];
      expect(new Set(ks).size, `distinct readings of sensor ${s}`).toBe(PER_SENSOR);
      // Order per series: first arrivals are in publishing order.
      const firsts = ks.filter((k, i) => ks.indexOf(k) === i);
      expect(firsts).toEqual([...firsts].sort((x, y) => x - y));
    }
    // One event per reading: a message redelivered after a kill between its commit and
    // its PUBACK is recognised, not turned into a second event with another id. (With
    // the receiver down, no delivery was in flight at a kill, so no id repeats either.)
    const distinct = new Set(receiver.accepted.map((r) => r.id)).size;
    expect(distinct).toBe(SENSORS.length * PER_SENSOR);
    expect(receiver.accepted.every((r) => r.verified)).toBe(true);
    // Signed at sending time, not at event time.
    const now = Date.now() / 1000;
    expect(receiver.accepted.every((r) => Math.abs(r.timestamp - now) < 120)).toBe(true);
  }, 180_000);
});
