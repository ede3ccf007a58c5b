/**
 * agent.max_series on a real agent (real mosquitto, real receiver): a new sensor at the
 * limit is turned away with a log line naming it, and gets its series (and its alert) as
 * soon as an old one can be evicted.
 */
import { rmSync } from "node:fs";
import mqtt from "mqtt";
import { afterAll, describe, expect, it } from "vitest";
import { AgentProcess, tempDir, writeConfig } from "../support/agent-process.js";
import { Mosquitto } from "../support/mosquitto.js";
import { freePort } from "../support/ports.js";
import { Receiver } from "../support/receiver.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

describe("series limit (real agent)", () => {
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

  it("turns a new sensor away with a log line, and admits it once an old series can go", async () => {
    await broker.start();
    await receiver.start();
    const httpPort = await freePort();
    const file = writeConfig(
      dir,
      `version: 1
agent: { id: limit-pi, data_dir: ./data, require_clock_sync: never, max_series: 2 }
mqtt:
  url: ${broker.url}
  subscriptions:
    - { topic: "t/+", sensor: "{1}", metric: temperature, format: number, retained: accept }
destinations:
  ops: { url: "${receiver.url}", secret: ${WEBHOOK_SECRET} }
rules:
  - { name: hot, match: { metric: temperature }, above: 30, notify: [ops] }
http: { listen: "127.0.0.1:${httpPort}" }
`,
    );
    agent = new AgentProcess(file);
    await agent.start();
    const client = await mqtt.connectAsync(broker.url, { clientId: "limit-pub" });
    // Retained (and taken: retained: accept): it reaches the agent whether or not its subscription is already in place.
    await client.publishAsync("t/a", "31", { qos: 1, retain: true });
    await receiver.waitFor(() => receiver.accepted.length === 1, "a firing");
    await client.publishAsync("t/b", "32", { qos: 1 });
    await receiver.waitFor(() => receiver.accepted.length === 2, "b firing");

    await client.publishAsync("t/c", "33", { qos: 1 });
    const full = await agent.waitForLog((l) => /series limit reached/.test(l.msg), "the series limit log line");
    expect(full).toMatchObject({ level: "warn", component: "rules", sensor: "c", max_series: 2, rule: "hot" });

    // b resolves: its series has nothing left to keep, so c gets room at its next reading.
    await client.publishAsync("t/b", "20", { qos: 1 });
    await receiver.waitFor(() => receiver.accepted.length === 3, "b resolved");
    await client.publishAsync("t/c", "34", { qos: 1 });
    await receiver.waitFor(() => receiver.accepted.length === 4, "c firing");
    await agent.waitForLog((l) => /room for new series again/.test(l.msg), "the room-again log line");
    await client.endAsync();

    const metrics = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
    expect(metrics).toMatch(/^edgehook_rule_readings_skipped_total\{reason="series_limit"\} 1$/m);
    expect(metrics).toMatch(/^edgehook_rule_series_evicted_total\{kind="at_rest"\} 1$/m);
    expect(metrics).toMatch(/^edgehook_rule_series 2$/m);
    expect((await agent.stop()).code).toBe(0);
    agent = undefined;

    const seen = receiver.accepted.map((r) => {
      const j = r.json as { type: string; data: { sensor: string; value: number } };
      return `${j.type} ${j.data.sensor} ${j.data.value}`;
    });
    expect(seen).toEqual(["alert.firing a 31", "alert.firing b 32", "alert.resolved b 20", "alert.firing c 34"]);
  }, 60_000);
});
