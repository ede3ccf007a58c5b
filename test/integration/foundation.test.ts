/**
 * The whole path on real parts: a real mosquitto, the agent as a real process, a real
 * HTTP receiver verifying signatures with the `standardwebhooks` package.
 */
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentProcess, edgehook, tempDir, writeConfig } from "../support/agent-process.js";
import { Mosquitto } from "../support/mosquitto.js";
import { Receiver } from "../support/receiver.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";
import { waitUntil } from "../support/wait.js";

describe("foundation: MQTT reading → rule → outbox → signed webhook", () => {
  const broker = new Mosquitto();
  const receiver = new Receiver(WEBHOOK_SECRET);
  let agent: AgentProcess;
  let client: mqtt.MqttClient;
  let configFile: string;

  beforeAll(async () => {
    await broker.start();
    await receiver.start();
    const dir = tempDir();
    configFile = writeConfig(
      dir,
      `version: 1
agent:
  id: greenhouse-pi-01
  data_dir: ./data
  require_clock_sync: never
mqtt:
  url: ${broker.url}
  subscriptions:
    - topic: sensors/+/temperature
      sensor: "{1}"
      metric: temperature
      format: json
      value: value
      timestamp: ts
destinations:
  ops:
    url: ${receiver.url}
    secret: \${OPS_WEBHOOK_SECRET}
    retry_schedule: [1s]
rules:
  - name: too-hot
    match: { metric: temperature }
    above: 30
    clear_below: 28
    severity: warning
    notify: [ops]
http:
  listen: false
`,
    );
    agent = new AgentProcess(configFile, { OPS_WEBHOOK_SECRET: WEBHOOK_SECRET });
    await agent.start();
    client = await mqtt.connectAsync(broker.url, { clientId: "test-publisher" });
  });

  afterAll(async () => {
    await client?.endAsync();
    await agent?.stop();
    await receiver.stop();
    await broker.stop();
  });

  it("publishing 35 then 25 delivers a verified alert.firing then alert.resolved", async () => {
    const t0 = Date.parse("2026-11-22T10:00:00Z");
    await client.publishAsync("sensors/gh1/temperature", JSON.stringify({ value: 35, ts: t0 }), { qos: 1 });
    await client.publishAsync("sensors/gh1/temperature", JSON.stringify({ value: 25, ts: t0 + 60_000 }), { qos: 1 });
    await receiver.waitFor(() => receiver.accepted.length >= 2, "firing and resolved");

    const [firing, resolved] = receiver.accepted;
    expect(firing?.verified).toBe(true);
    expect(resolved?.verified).toBe(true);
    expect(firing?.id).toMatch(/^msg_/);
    expect(firing?.json).toMatchObject({
      type: "alert.firing",
      timestamp: new Date(t0).toISOString(),
      data: {
        agent: "greenhouse-pi-01",
        rule: "too-hot",
        sensor: "gh1",
        metric: "temperature",
        value: 35,
        threshold: 30,
        severity: "warning",
      },
    });
    expect(resolved?.json).toMatchObject({
      type: "alert.resolved",
      timestamp: new Date(t0 + 60_000).toISOString(),
      data: { sensor: "gh1", value: 25 },
    });
    // The timestamp header is the time of sending, not the event time.
    expect(Math.abs((firing?.timestamp ?? 0) - Date.now() / 1000)).toBeLessThan(60);
  });

  it("keeps events in the outbox while the receiver is down and delivers them when it returns", async () => {
    const before = receiver.accepted.length;
    await receiver.stop();
    await client.publishAsync("sensors/gh2/temperature", JSON.stringify({ value: 40 }), { qos: 1 });
    await client.publishAsync("sensors/gh2/temperature", JSON.stringify({ value: 20 }), { qos: 1 });

    // The operator sees them waiting.
    await waitUntil(() => pendingFor("ops") === 2, "2 pending in queue stats", 20_000, 200);

    await receiver.start();
    await receiver.waitFor(() => receiver.accepted.length >= before + 2, "the waiting events", 30_000);
    const late = receiver.accepted.slice(before);
    expect(late.map((r) => (r.json as { type: string }).type)).toEqual(["alert.firing", "alert.resolved"]);
    expect(late.every((r) => r.verified)).toBe(true);
    await waitUntil(() => pendingFor("ops") === 0, "0 pending after delivery", 20_000, 200);
  });

  it("counts and logs a payload that is not JSON or has no number, and keeps running", async () => {
    const before = receiver.accepted.length;
    await client.publishAsync("sensors/gh3/temperature", "not json at all", { qos: 1 });
    await client.publishAsync("sensors/gh3/temperature", JSON.stringify({ value: "hot" }), { qos: 1 });
    await client.publishAsync("sensors/gh3/temperature", Buffer.from([0, 159, 146, 150, 255]), { qos: 1 });
    await agent.waitForLog((l) => /decode|payload/i.test(l.msg) && l.level === "warn", "a decode warning");
    await client.publishAsync("sensors/gh3/temperature", JSON.stringify({ value: 31 }), { qos: 1 });
    await receiver.waitFor(() => receiver.accepted.length > before, "an event after bad payloads");
    expect(receiver.accepted.at(-1)?.json).toMatchObject({ data: { sensor: "gh3", value: 31 } });
  });

  function pendingFor(dest: string): number {
    const r = edgehook(["queue", "stats", "--json", "--config", configFile], { OPS_WEBHOOK_SECRET: WEBHOOK_SECRET });
    if (r.code !== 0) throw new Error(`queue stats failed: ${r.stderr}`);
    const stats = JSON.parse(r.stdout) as { destination: string; pending: number }[];
    return stats.find((s) => s.destination === dest)?.pending ?? 0;
  }
});

describe("edgehook check", () => {
  it("exits 0 on a valid file and 78 with file:line:col on an invalid one", () => {
    const dir = tempDir();
    const ok = edgehook(["check", "--config", "config/agent.example.yaml"], { OPS_WEBHOOK_SECRET: WEBHOOK_SECRET });
    expect(ok.stderr).toBe("");
    expect(ok.code).toBe(0);

    const bad = writeConfig(dir, "version: 1\nagent:\n  id: pi\n  shutdown_timeout: ten\n  colour: blue\n");
    const r = edgehook(["check", "--config", bad]);
    expect(r.code).toBe(78);
    expect(r.stderr.trim().split("\n")).toEqual([
      `${bad}:4:21: agent.shutdown_timeout: must be a duration like 30s, 5m or 2h (is 'ten')`,
      `${bad}:5:3: agent.colour: unknown key`,
    ]);
    expect(r.stderr).not.toMatch(/at .*\.js/); // no stack trace

    const broken = writeConfig(dir, "version: 1\nagent: [\n");
    const b = edgehook(["check", "--config", broken]);
    expect(b.code).toBe(78);
    expect(b.stderr).toMatch(new RegExp(`^${broken}:\\d+:\\d+: YAML syntax`));
  });

  it("refuses to run with an invalid file, exit 78", () => {
    const dir = tempDir();
    const bad = writeConfig(
      dir,
      "version: 1\nagent:\n  id: pi\nrules:\n  - name: r\n    above: 1\n    notify: [nowhere]\n",
    );
    const r = edgehook(["run", "--config", bad]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain(`${bad}:7:14: rules.0.notify.0: no destination of this name`);
  });
});
