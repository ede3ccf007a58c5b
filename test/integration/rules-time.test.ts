/**
 * Reading times through the whole agent (real mosquitto, real agent process, real
 * receiver): a reading stamped in the year 2100 no longer silences its series, and a
 * zoneless Tasmota `Time` is read in the subscription's `timezone`.
 */
import { rmSync } from "node:fs";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentProcess, tempDir, writeConfig } from "../support/agent-process.js";
import { Mosquitto } from "../support/mosquitto.js";
import { freePort } from "../support/ports.js";
import { Receiver } from "../support/receiver.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

describe("reading times (real agent)", () => {
  const broker = new Mosquitto();
  const receiver = new Receiver(WEBHOOK_SECRET);
  const dirs: string[] = [];
  let agent: AgentProcess | undefined;
  let client: mqtt.MqttClient | undefined;

  beforeAll(async () => {
    await broker.start();
    await receiver.start();
  });
  afterAll(async () => {
    await client?.endAsync();
    await agent?.stop();
    await receiver.stop();
    await broker.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  const startAgent = async (subscriptions: string, httpPort: number) => {
    const dir = tempDir();
    dirs.push(dir);
    const file = writeConfig(
      dir,
      `version: 1
agent: { id: time-pi, data_dir: ./data, require_clock_sync: never }
mqtt:
  url: ${broker.url}
  subscriptions:
${subscriptions}
destinations:
  ops: { url: "${receiver.url}", secret: ${WEBHOOK_SECRET} }
rules:
  - { name: hot, match: { metric: power }, above: 2000, notify: [ops] }
http: { listen: "127.0.0.1:${httpPort}" }
`,
    );
    // The agent's own zone is UTC here, so a zoneless time would be read as UTC by default.
    agent = new AgentProcess(file, { TZ: "UTC" });
    await agent.start();
    client = await mqtt.connectAsync(broker.url, { clientId: "time-pub" });
  };
  const events = () =>
    receiver.accepted.map((r) => r.json as { type: string; timestamp: string; data: Record<string, unknown> });

  it("a reading stamped in 2100 does not silence its series: the next readings still fire and resolve", async () => {
    const httpPort = await freePort();
    await startAgent(
      `    - { topic: "plug/+", sensor: "{1}", metric: power, format: json, value: p, timestamp: ts, retained: accept }`,
      httpPort,
    );
    const before = receiver.accepted.length;
    // Retained (and taken: retained: accept): it reaches the agent whether or not its subscription is already in place.
    const y2100 = JSON.stringify({ p: 100, ts: Date.parse("2100-01-01T00:00:00Z") });
    await client!.publishAsync("plug/a", y2100, { qos: 1, retain: true });
    const warned = await agent!.waitForLog((l) => /stamped ahead/.test(l.msg), "the re-stamp warning");
    expect(warned).toMatchObject({ level: "warn", component: "rules", sensor: "a", ts: "2100-01-01T00:00:00.000Z" });
    expect(warned.ahead_s as number).toBeGreaterThan(2e9);

    const t1 = Date.now();
    await client!.publishAsync("plug/a", JSON.stringify({ p: 3000, ts: t1 }), { qos: 1 });
    await receiver.waitFor(() => receiver.accepted.length === before + 1, "alert.firing after the 2100 reading");
    // Microseconds, as some gateways send them, are read as microseconds.
    const t2 = Date.now() + 1;
    await client!.publishAsync("plug/a", JSON.stringify({ p: 5, ts: t2 * 1000 }), { qos: 1 });
    await receiver.waitFor(() => receiver.accepted.length === before + 2, "alert.resolved");
    const got = events().slice(before);
    expect(got.map((e) => e.type)).toEqual(["alert.firing", "alert.resolved"]);
    expect(got[0]!.timestamp).toBe(new Date(t1).toISOString());
    expect(got[1]!.timestamp).toBe(new Date(t2).toISOString());

    const metrics = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
    expect(metrics).toMatch(/^edgehook_rule_readings_restamped_total 1$/m);
    expect(metrics).not.toMatch(/edgehook_rule_readings_skipped_total\{reason="late"\}/);
    await client!.endAsync();
    client = undefined;
    expect((await agent!.stop()).code).toBe(0);
    agent = undefined;
  }, 60_000);

  it("a zoneless Tasmota Time is read in the subscription's timezone", async () => {
    await startAgent(
      `    - { topic: "tele/+/SENSOR", sensor: "{1}", metric: power, format: json, value: ENERGY.Power, timestamp: Time, timezone: Asia/Kolkata, retained: accept }`,
      await freePort(),
    );
    const before = receiver.accepted.length;
    // Tasmota stamps its local time without a zone; this plug's zone is +05:30.
    const at = Math.floor(Date.now() / 1000) * 1000;
    const local = new Date(at + 5.5 * 3_600_000).toISOString().slice(0, 19);
    await client!.publishAsync("tele/plug-in/SENSOR", JSON.stringify({ Time: local, ENERGY: { Power: 2500 } }), {
      qos: 1,
      retain: true, // taken (retained: accept): reaches the agent whether or not its subscription is already in place
    });
    await receiver.waitFor(() => receiver.accepted.length === before + 1, "alert.firing");
    const [e] = events().slice(before);
    expect(e).toMatchObject({ type: "alert.firing", timestamp: new Date(at).toISOString() });
    expect(agent!.logs.filter((l) => /stamped ahead|late reading/.test(l.msg))).toEqual([]);
  }, 60_000);
});
