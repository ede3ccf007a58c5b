/**
 * No loss across broker outages and agent restarts: a publisher keeps sending QoS 1
 * readings while mosquitto is stopped and restarted, and while the agent is restarted.
 * Every reading's event arrives at the receiver.
 */
import mqtt from "mqtt";
import { afterAll, describe, expect, it } from "vitest";
import { AgentProcess, tempDir, writeConfig } from "../support/agent-process.js";
import { Mosquitto } from "../support/mosquitto.js";
import { Receiver } from "../support/receiver.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

const N = 600;

describe("broker restart and agent restart under a steady QoS 1 stream", () => {
  const broker = new Mosquitto();
  const receiver = new Receiver(WEBHOOK_SECRET);
  let agent: AgentProcess | undefined;

  afterAll(async () => {
    await agent?.stop();
    await receiver.stop();
    await broker.stop();
  });

  it("delivers an event for every reading", async () => {
    await broker.start();
    await receiver.start();
    const file = writeConfig(
      tempDir(),
      `version: 1
agent: { id: outage-pi, data_dir: ./data, require_clock_sync: never }
mqtt:
  url: ${broker.url}
  client_id: outage-agent
  reconnect_period: 100ms
  reconnect_max: 500ms
  subscriptions:
    - { topic: "r/+", sensor: "{1}", metric: level, format: json, value: v }
destinations:
  ops: { url: "${receiver.url}", secret: ${WEBHOOK_SECRET} }
rules:
  # Each reading alternates above 50 and below 0 per sensor: every reading is a crossing.
  - { name: crossing, match: { metric: level }, above: 50, clear_below: 0, notify: [ops] }
http: { listen: false }
`,
    );
    agent = new AgentProcess(file);
    await agent.start();

    const publisher = mqtt.connect(broker.url, { clientId: "outage-publisher", clean: false, reconnectPeriod: 100 });
    await new Promise<void>((r) => publisher.once("connect", () => r()));
    // MQTT.js keeps unacknowledged QoS 1 publishes and sends them again after reconnecting.
    const acked: Promise<unknown>[] = [];
    const publishing = (async () => {
      for (let k = 0; k < N; k++) {
        const v = Math.floor(k / 2) % 2 === 0 ? 100 + k : -k;
        acked.push(publisher.publishAsync(`r/s${k % 2}`, JSON.stringify({ v }), { qos: 1 }));
        await new Promise((r) => setTimeout(r, 4));
      }
    })();

    await receiver.waitFor(() => receiver.accepted.length >= 50, "first events");
    await broker.restart();
    await receiver.waitFor(() => receiver.accepted.length >= 250, "events after the broker restart", 30_000);
    const restarted = agent;
    await restarted.stop();
    agent = new AgentProcess(file);
    await agent.start();
    await publishing;
    await Promise.all(acked);
    await publisher.endAsync();

    const values = () => new Set(receiver.accepted.map((r) => (r.json as { data: { value: number } }).data.value));
    await receiver.waitFor(() => values().size >= N, `${N} distinct events`, 60_000);
    expect(values().size).toBe(N);
    expect(receiver.accepted.every((r) => r.verified)).toBe(true);
  }, 120_000);
});
