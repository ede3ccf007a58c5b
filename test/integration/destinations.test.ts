/**
 * Destination formats end to end on real parts: a real mosquitto, the real agent process,
 * real HTTP receivers on 127.0.0.1 (verifying with the `standardwebhooks` package), and
 * `edgehook send-test` spawned as a user would run it.
 */
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentProcess, edgehook, edgehookAsync, tempDir, writeConfig } from "../support/agent-process.js";
import { Mosquitto } from "../support/mosquitto.js";
import { Receiver } from "../support/receiver.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";
import { waitUntil } from "../support/wait.js";

const broker = new Mosquitto();
beforeAll(async () => {
  await broker.start();
});
afterAll(async () => {
  await broker.stop();
});

function agentConfig(destinations: string, rules: string, subscription = ""): string {
  return `version: 1
agent:
  id: cellar-pi
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
${subscription}destinations:
${destinations}rules:
${rules}http:
  listen: false
`;
}

describe("presets and templates from a real MQTT reading", () => {
  const slack = new Receiver();
  const mapping = new Receiver();
  const text = new Receiver();
  let agent: AgentProcess;
  let client: mqtt.MqttClient;

  beforeAll(async () => {
    await Promise.all([slack.start(), mapping.start(), text.start()]);
    const dir = tempDir();
    const file = writeConfig(
      dir,
      agentConfig(
        `  slack:
    url: ${slack.url}
    preset: slack
  mapping:
    url: ${mapping.url}
    signature: none
    template:
      title: "{{ data.severity | upper }}: {{ data.sensor }}"
      sensor: "{{ data.sensor }}"
      note: "{{ data.note }}"
      value: "{{ data.value }}"
      labels: "{{ data.labels }}"
  text:
    url: ${text.url}
    signature: none
    content_type: application/json
    template: '{"msg": "{{ data.sensor }} is {{ data.value }}", "note": "{{ data.note }}"}'
`,
        `  - name: hot
    match: { metric: temperature }
    above: 30
    severity: warning
    notify: [slack]
  - name: named
    match: { metric: heat }
    above: 30
    severity: critical
    extra:
      note: "say \\"hi\\"\\nsecond line \\\\ back\\tslash ☃ 😀"
    notify: [mapping, text]
`,
        `    - topic: named/heat
      sensor: "{name}"
      metric: heat
      format: json
      value: value
`,
      ),
    );
    agent = new AgentProcess(file);
    await agent.start();
    client = await mqtt.connectAsync(broker.url, { clientId: "dest-test-presets" });
  });

  afterAll(async () => {
    await client?.endAsync();
    await agent?.stop();
    await Promise.all([slack.stop(), mapping.stop(), text.stop()]);
  });

  it("a Slack-shaped endpoint receives text with severity, sensor, value and threshold", async () => {
    await client.publishAsync("sensors/boiler/temperature", JSON.stringify({ value: 35.5 }), { qos: 1 });
    await slack.waitFor(() => slack.accepted.length >= 1, "the Slack message");
    const msg = slack.accepted[0];
    expect(msg?.headers["content-type"]).toBe("application/json");
    // A preset without a secret goes unsigned (Slack never checks signatures).
    expect(msg?.headers["webhook-signature"]).toBeUndefined();
    const body = msg?.json as { text: string; blocks: unknown[] };
    expect(typeof body.text).toBe("string");
    expect(body.text).toMatch(/WARNING/);
    expect(body.text).toContain("boiler/temperature");
    expect(body.text).toMatch(/\b35\.5\b/);
    expect(body.text).toMatch(/threshold 30\b/);
    expect(Array.isArray(body.blocks)).toBe(true);
    // Only Slack-shaped: no envelope fields leak into the body.
    expect(body).not.toHaveProperty("type");
  });

  it("template values with quotes, newlines, backslashes and unicode arrive as valid JSON", async () => {
    const name = 'boiler "north"\nline2 \\ ☃ 😀 \u2028end';
    const note = 'say "hi"\nsecond line \\ back\tslash ☃ 😀';
    await client.publishAsync("named/heat", JSON.stringify({ name, value: 99 }), { qos: 1 });
    await mapping.waitFor(() => mapping.accepted.length >= 1, "the mapping template");
    await text.waitFor(() => text.accepted.length >= 1, "the text JSON template");

    const m = mapping.accepted[0];
    expect(m?.headers["content-type"]).toBe("application/json");
    expect(() => JSON.parse(m?.body ?? "")).not.toThrow();
    expect(JSON.parse(m?.body ?? "")).toEqual({
      title: `CRITICAL: ${name}`,
      sensor: name,
      note,
      value: 99,
      labels: {},
    });

    const t = text.accepted[0];
    expect(t?.headers["content-type"]).toMatch(/^application\/json/);
    expect(JSON.parse(t?.body ?? "")).toEqual({ msg: `${name} is 99`, note });
  });
});

describe("a batched destination after a receiver outage", () => {
  const receiver = new Receiver(WEBHOOK_SECRET);
  let agent: AgentProcess;
  let client: mqtt.MqttClient;
  let file: string;

  beforeAll(async () => {
    await receiver.start();
    await receiver.stop(); // down from the start: the port is known, nothing listens
    const dir = tempDir();
    file = writeConfig(
      dir,
      agentConfig(
        `  batched:
    url: ${receiver.url}
    secret: ${WEBHOOK_SECRET}
    batch: { max_events: 4, max_wait: 1s }
`,
        `  - name: hot
    match: { metric: temperature }
    above: 30
    clear_below: 28
    severity: warning
    notify: [batched]
`,
      ),
    );
    agent = new AgentProcess(file);
    await agent.start();
    client = await mqtt.connectAsync(broker.url, { clientId: "dest-test-batch" });
  });

  afterAll(async () => {
    await client?.endAsync();
    await agent?.stop();
    await receiver.stop();
  });

  it("delivers every event exactly once in verified batches, in order per series", async () => {
    const sensors = Array.from({ length: 9 }, (_, i) => `room${i}`);
    for (const s of sensors) {
      await client.publishAsync(`sensors/${s}/temperature`, JSON.stringify({ value: 35 }), { qos: 1 });
      await client.publishAsync(`sensors/${s}/temperature`, JSON.stringify({ value: 20 }), { qos: 1 });
    }
    await waitUntil(() => pending(file) === 18, "18 events waiting in the outbox", 20_000, 200);
    await agent.waitForLog((l) => /unreachable/.test(l.msg), "the destination marked unreachable");
    expect(receiver.requests).toBe(0);

    await receiver.start();
    const ids = () => receiver.arrivals.flatMap((a) => (a.json as Batch).data.events.map((e) => e.id));
    await receiver.waitFor(() => new Set(ids()).size === 18, "all 18 events", 30_000);
    await waitUntil(() => pending(file) === 0, "nothing pending", 20_000, 200);

    // Each id exactly once across every request that arrived (nothing deduplicated here).
    const all = ids();
    expect(all).toHaveLength(18);
    expect(new Set(all).size).toBe(18);
    for (const a of receiver.arrivals) {
      expect(a.verified).toBe(true);
      const b = a.json as Batch;
      expect(b.type).toBe("batch");
      expect(b.data.events.length).toBeGreaterThanOrEqual(1);
      expect(b.data.events.length).toBeLessThanOrEqual(4);
      // One head per series per batch.
      const series = b.data.events.map((e) => e.data.sensor);
      expect(new Set(series).size).toBe(series.length);
    }
    expect(receiver.arrivals.length).toBeGreaterThanOrEqual(Math.ceil(18 / 4));
    // The backlog really went out batched, not one event per request.
    expect(receiver.arrivals.length).toBeLessThan(18);
    expect(Math.max(...receiver.arrivals.map((a) => (a.json as Batch).data.events.length))).toBe(4);
    // Per sensor: firing arrives before resolved.
    const order = receiver.arrivals.flatMap((a) => (a.json as Batch).data.events);
    for (const s of sensors) {
      expect(order.filter((e) => e.data.sensor === s).map((e) => e.type)).toEqual(["alert.firing", "alert.resolved"]);
    }
  });
});

interface Batch {
  type: string;
  data: { events: { id: string; type: string; data: { sensor: string } }[] };
}

describe("edgehook send-test", () => {
  const receiver = new Receiver(WEBHOOK_SECRET);

  beforeAll(async () => {
    await receiver.start();
    receiver.answer = (r) =>
      r.headers.authorization === "Bearer tok-8f2k"
        ? { kind: "accept" }
        : {
            kind: "status",
            status: 401,
            headers: { "content-type": "text/plain", "www-authenticate": "Bearer" },
            body: "missing or wrong bearer token",
          };
  });
  afterAll(async () => {
    await receiver.stop();
  });

  function config(extra: string): string {
    return writeConfig(
      tempDir(),
      `version: 1
agent:
  id: cellar-pi
  data_dir: ./data
destinations:
  ops:
    url: ${receiver.url}
    secret: ${WEBHOOK_SECRET}
${extra}`,
    );
  }

  it("reports a 401 from a receiver that wants a bearer token, and exits non-zero", async () => {
    const r = await edgehookAsync(["send-test", "ops", "--config", config("")]);
    expect(r.code).not.toBe(0);
    expect(r.stdout).toContain("HTTP 401");
    expect(r.stdout).toContain("missing or wrong bearer token");
    expect(r.stderr).toMatch(/did not accept.*401/);
    expect(receiver.arrivals.at(-1)?.headers.authorization).toBeUndefined();
  });

  it("exits 0 once the token is configured, and the webhook verifies", async () => {
    const before = receiver.accepted.length;
    const r = await edgehookAsync(["send-test", "ops", "--config", config("    token: tok-8f2k\n")]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("HTTP 200");
    expect(r.stdout).toContain("accepted by ops");
    expect(receiver.accepted.length).toBe(before + 1);
    expect(receiver.accepted.at(-1)?.verified).toBe(true);
    expect(receiver.accepted.at(-1)?.json).toMatchObject({ type: "test", data: { agent: "cellar-pi" } });
  });
});

function pending(file: string): number {
  const r = edgehook(["queue", "stats", "--json", "--config", file]);
  if (r.code !== 0) throw new Error(`queue stats failed: ${r.stderr}`);
  const stats = JSON.parse(r.stdout) as { pending: number }[];
  return stats.reduce((a, s) => a + s.pending, 0);
}
