/**
 * SIGHUP on a real agent with a changed threshold: a firing alert whose value is above
 * both the old and the new threshold is not resolved; it resolves under the new one.
 */
import { rmSync, writeFileSync } from "node:fs";
import mqtt from "mqtt";
import { afterAll, describe, expect, it } from "vitest";
import { AgentProcess, tempDir, writeConfig } from "../support/agent-process.js";
import { Mosquitto } from "../support/mosquitto.js";
import { Receiver } from "../support/receiver.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

describe("reload with a changed rule (real agent)", () => {
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

  it("lowering a threshold does not resolve a value above both; the alert resolves under the new one", async () => {
    await broker.start();
    await receiver.start();
    const config = (above: number) => `version: 1
agent: { id: reload-pi, data_dir: ./data, require_clock_sync: never }
mqtt:
  url: ${broker.url}
  subscriptions:
    - { topic: "t/+", sensor: "{1}", metric: temperature, format: number, retained: accept }
destinations:
  ops: { url: "${receiver.url}", secret: ${WEBHOOK_SECRET} }
rules:
  - { name: hot, match: { metric: temperature }, above: ${above}, notify: [ops] }
http: { listen: false }
`;
    const file = writeConfig(dir, config(30));
    agent = new AgentProcess(file);
    await agent.start();
    const client = await mqtt.connectAsync(broker.url, { clientId: "reload-pub" });
    // Retained (and taken: retained: accept): it reaches the agent whether or not its subscription is already in place.
    await client.publishAsync("t/gh1", "35", { qos: 1, retain: true });
    await receiver.waitFor(() => receiver.accepted.length === 1, "alert.firing");

    writeFileSync(file, config(20));
    agent.kill("SIGHUP");
    await agent.waitForLog((l) => l.msg === "configuration reloaded", "reload");
    await client.publishAsync("t/gh1", "25", { qos: 1 }); // above 20: still firing, nothing to send
    await client.publishAsync("t/gh1", "15", { qos: 1 });
    await receiver.waitFor(() => receiver.accepted.length >= 2, "alert.resolved");
    await client.endAsync();
    expect((await agent.stop()).code).toBe(0);
    agent = undefined;

    // A receiver deduplicating by webhook-id sees exactly: firing at 30, resolved at 20.
    const unique = receiver.accepted.filter((r, i, all) => all.findIndex((x) => x.id === r.id) === i);
    const seen = unique.map((r) => r.json as { type: string; data: Record<string, unknown> });
    expect(seen.map((e) => [e.type, e.data.threshold, e.data.value, e.data.reason ?? null])).toEqual([
      ["alert.firing", 30, 35, null],
      ["alert.resolved", 20, 15, "cleared"],
    ]);
  }, 60_000);
});
