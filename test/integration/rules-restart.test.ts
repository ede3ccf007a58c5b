/**
 * Rule state survives kill -9: a series that is firing does not fire again after a
 * restart and resolves normally; a series halfway through its `for` fires when the
 * original `for` completes, counted from the reading, not from the restart.
 */
import mqtt from "mqtt";
import { afterAll, describe, expect, it } from "vitest";
import { AgentProcess, tempDir, writeConfig } from "../support/agent-process.js";
import { Mosquitto } from "../support/mosquitto.js";
import { Receiver } from "../support/receiver.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

describe("rules across kill -9", () => {
  const broker = new Mosquitto();
  const receiver = new Receiver(WEBHOOK_SECRET);
  let agent: AgentProcess | undefined;

  afterAll(async () => {
    await agent?.stop();
    await receiver.stop();
    await broker.stop();
  });

  it("sends exactly the events the rules promise", async () => {
    await broker.start();
    await receiver.start();
    const configFile = writeConfig(
      tempDir(),
      `version: 1
agent: { id: rules-pi, data_dir: ./data, require_clock_sync: never }
mqtt:
  url: ${broker.url}
  subscriptions:
    - { topic: "t/+", sensor: "{1}", metric: temperature, format: number }
destinations:
  ops: { url: "${receiver.url}", secret: ${WEBHOOK_SECRET} }
rules:
  - { name: hot, match: { metric: temperature }, above: 30, clear_below: 28, notify: [ops] }
  - { name: hot-for-4s, match: { metric: temperature }, above: 30, clear_below: 28, for: 4s, notify: [ops] }
http: { listen: false }
`,
    );
    agent = new AgentProcess(configFile);
    await agent.start();
    const client = await mqtt.connectAsync(broker.url, { clientId: "rules-publisher" });

    const sentAt = Date.now();
    await client.publishAsync("t/gh1", "35", { qos: 1 });
    await receiver.waitFor(() => receiver.accepted.length === 1, "hot firing");
    // gh1 is firing for `hot` and pending for `hot-for-4s`. Kill the agent now.
    agent.kill("SIGKILL");
    await agent.exited();
    agent = new AgentProcess(configFile);
    await agent.start();

    // A delivery in flight at the kill may arrive twice with the same webhook-id, as a
    // receiver deduplicating by id would see: count distinct ids in order of arrival.
    const unique = () => receiver.accepted.filter((r, i, all) => all.findIndex((x) => x.id === r.id) === i);
    await receiver.waitFor(() => unique().length === 2, "hot-for-4s firing after the restart");
    const firedAfterMs = (unique()[1]?.receivedAt ?? 0) - sentAt;
    expect(firedAfterMs).toBeGreaterThanOrEqual(4_000);
    expect(firedAfterMs).toBeLessThan(8_000);

    await client.publishAsync("t/gh1", "25", { qos: 1 });
    await receiver.waitFor(() => unique().length === 4, "both resolved");
    await client.endAsync();

    const seen = unique().map((r) => {
      const j = r.json as { type: string; data: { rule: string } };
      return `${j.data.rule} ${j.type}`;
    });
    expect(seen.slice(0, 2)).toEqual(["hot alert.firing", "hot-for-4s alert.firing"]);
    expect(seen.slice(2).sort()).toEqual(["hot alert.resolved", "hot-for-4s alert.resolved"]);
    // And nothing more arrives: stop the agent (its outbox is drained) and count again.
    await agent.stop();
    expect(unique().length).toBe(4);
  }, 60_000);
});
