/**
 * Retained messages across a restart (MQTT 3.1.1): the broker replays a sensor's retained
 * state each time edgehook subscribes. Taken as a fresh reading, a dead sensor would look
 * alive: `sensor.returned` right after the restart, and its `absent_for` alert hidden.
 * With the default `retained: ignore` the replay is skipped and counted.
 */
import { rmSync } from "node:fs";
import mqtt from "mqtt";
import { afterAll, describe, expect, it } from "vitest";
import { AgentProcess, tempDir, writeConfig } from "../support/agent-process.js";
import { scrapeMetric } from "../support/metrics.js";
import { Mosquitto } from "../support/mosquitto.js";
import { freePort } from "../support/ports.js";
import { Receiver } from "../support/receiver.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";
import { waitUntil } from "../support/wait.js";

describe("retained messages and absent_for across a restart (real agent, real mosquitto)", () => {
  const broker = new Mosquitto();
  const receiver = new Receiver(WEBHOOK_SECRET);
  const dir = tempDir();
  let agent: AgentProcess | undefined;

  afterAll(async () => {
    await agent?.stop();
    await receiver.stop();
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("a silent sensor whose retained state the broker replays stays silent after the restart", async () => {
    await broker.start();
    await receiver.start();
    const httpPort = await freePort();
    const file = writeConfig(
      dir,
      `version: 1
agent: { id: retained-pi, data_dir: ./data, require_clock_sync: never }
mqtt:
  url: ${broker.url}
  protocol_version: 4
  subscriptions:
    - { topic: "home/+/temperature", format: number, metric: temperature }
destinations:
  ops: { url: "${receiver.url}", secret: ${WEBHOOK_SECRET} }
rules:
  - { name: probe-silent, match: { sensor: probe }, absent_for: 2s, notify: [ops] }
http: { listen: "127.0.0.1:${httpPort}" }
`,
    );
    // By webhook-id, as a receiver deduplicates: a delivery the SIGKILL caught is sent again.
    const types = () => [...new Map(receiver.accepted.map((r) => [r.id, (r.json as { type: string }).type])).values()];
    agent = new AgentProcess(file);
    await agent.start();
    await agent.waitForLog((l) => l.msg === "subscribed to MQTT topics", "the subscription");
    const client = await mqtt.connectAsync(broker.url, { clientId: "probe", protocolVersion: 4 });
    // The probe publishes retained, as ESPHome does by default; then it dies.
    await client.publishAsync("home/probe/temperature", "21.5", { qos: 1, retain: true });
    await client.endAsync();
    await receiver.waitFor(() => types().includes("sensor.silent"), "sensor.silent");

    agent.kill("SIGKILL");
    await agent.exited();
    agent = new AgentProcess(file);
    await agent.start();
    // The broker replays the retained 21.5 on the new subscription: skipped and counted.
    await waitUntil(
      async () => (await scrapeMetric(httpPort, "edgehook_mqtt_retained_ignored_total")) === 1,
      "the replayed retained message counted as ignored",
    );
    // Longer than absent_for: no sensor.returned, and no second sensor.silent (it stays silent).
    await new Promise((r) => setTimeout(r, 3_000));
    expect(types()).toEqual(["sensor.silent"]);

    // A live reading still ends the silence.
    const again = await mqtt.connectAsync(broker.url, { clientId: "probe", protocolVersion: 4 });
    await again.publishAsync("home/probe/temperature", "21.7", { qos: 1 });
    await again.endAsync();
    await receiver.waitFor(() => types().includes("sensor.returned"), "sensor.returned");
    expect(types()).toEqual(["sensor.silent", "sensor.returned"]);
    expect((await agent.stop()).code).toBe(0);
    agent = undefined;
  }, 60_000);
});
