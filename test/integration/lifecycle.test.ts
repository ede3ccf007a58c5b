/**
 * The real entry point under signals: SIGTERM under load, SIGHUP with a changed and
 * with a broken file, and /metrics agreeing with `edgehook queue stats`.
 */
import { writeFileSync } from "node:fs";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentProcess, edgehook, tempDir, writeConfig } from "../support/agent-process.js";
import { Mosquitto } from "../support/mosquitto.js";
import { freePort } from "../support/ports.js";
import { Receiver } from "../support/receiver.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

const config = (brokerUrl: string, receiverUrl: string, above: number | string, extra = "") => `version: 1
agent: { id: life-pi, data_dir: ./data, shutdown_timeout: 2s, require_clock_sync: never }
mqtt:
  url: ${brokerUrl}
  client_id: life-agent
  subscriptions:
    - { topic: "t/+", sensor: "{1}", metric: temperature, format: number }
destinations:
  ops: { url: "${receiverUrl}", secret: ${WEBHOOK_SECRET}, response_timeout: 30s }
rules:
  - { name: hot, match: { metric: temperature }, above: ${above}, clear_below: 0, notify: [ops] }
${extra}`;

describe("agent lifecycle", () => {
  const broker = new Mosquitto();
  beforeAll(() => broker.start());
  afterAll(() => broker.stop());

  it("SIGTERM under load exits 0 within shutdown_timeout and loses nothing", async () => {
    const receiver = new Receiver(WEBHOOK_SECRET);
    receiver.answer = () => ({ kind: "hang" });
    await receiver.start();
    const file = writeConfig(tempDir(), config(broker.url, receiver.url, 50, "http: { listen: false }\n"));
    let agent = new AgentProcess(file);
    await agent.start();
    const client = await mqtt.connectAsync(broker.url, { clientId: "life-pub", clean: false });
    const N = 400;
    let sent = 0;
    const publishing = (async () => {
      for (let k = 0; k < N; k++) {
        await client.publishAsync(`t/s${k % 4}`, String(k % 8 < 4 ? 100 + k : -k), { qos: 1 });
        sent++;
      }
    })();
    await receiver.waitFor(() => receiver.requests > 0, "deliveries in flight");
    while (sent < N / 2) await new Promise((r) => setTimeout(r, 10));
    const t0 = Date.now();
    agent.kill("SIGTERM");
    const exit = await agent.exited();
    const tookMs = Date.now() - t0;
    expect(exit.code).toBe(0);
    expect(tookMs).toBeLessThan(2_000 + 1_500);
    await publishing;
    await client.endAsync();

    // Start again with a receiver that accepts: every reading's event arrives.
    await receiver.stop();
    const ok = new Receiver(WEBHOOK_SECRET);
    await ok.start(receiver.port);
    agent = new AgentProcess(file);
    await agent.start();
    // Each sensor's readings alternate above 50 and below 0, so every reading is a crossing
    // and causes exactly one event; the value identifies the reading.
    const distinctValues = () =>
      new Set(ok.accepted.map((r) => (r.json as { data: { value: number } }).data.value)).size;
    await ok.waitFor(() => distinctValues() >= N, `${N} events`, 30_000);
    expect(distinctValues()).toBe(N);
    expect(ok.accepted.every((r) => r.verified)).toBe(true);
    await agent.stop();
    await ok.stop();
  }, 90_000);

  it("a second SIGTERM/SIGINT exits at once, and nothing committed is lost", async () => {
    const receiver = new Receiver(WEBHOOK_SECRET);
    receiver.answer = () => ({ kind: "hang" });
    await receiver.start();
    const dir = tempDir();
    const slow = config(broker.url, receiver.url, 30, "http: { listen: false }\n").replace(
      "shutdown_timeout: 2s",
      "shutdown_timeout: 60s",
    );
    const file = writeConfig(dir, slow);
    let agent = new AgentProcess(file);
    await agent.start();
    const client = await mqtt.connectAsync(broker.url, { clientId: "twice-pub" });
    await client.publishAsync("t/twice", "35", { qos: 1 });
    await client.endAsync();
    await receiver.waitFor(() => receiver.requests > 0 || receiver.received.length > 0, "a delivery in flight");
    agent.kill("SIGTERM");
    await agent.waitForLog((l) => l.msg === "stopping", "stopping");
    const t0 = Date.now();
    agent.kill("SIGINT");
    const exit = await agent.exited();
    expect(exit.code).toBe(0);
    expect(Date.now() - t0).toBeLessThan(2_000); // not the 60 s shutdown_timeout
    await receiver.stop();

    // The event that was in flight is still in the outbox and arrives after a restart.
    const ok = new Receiver(WEBHOOK_SECRET);
    await ok.start(receiver.port);
    agent = new AgentProcess(file);
    await agent.start();
    await ok.waitFor(() => ok.accepted.length >= 1, "the event after the restart");
    expect(ok.accepted[0]?.json).toMatchObject({ type: "alert.firing", data: { sensor: "twice", value: 35 } });
    expect(ok.accepted[0]?.verified).toBe(true);
    await agent.stop();
    await ok.stop();
  });

  it("keeps running with nothing to do (no sources, nothing pending) until SIGTERM", async () => {
    const file = writeConfig(
      tempDir(),
      `version: 1
agent: { id: idle-pi, data_dir: ./data }
destinations:
  ops: { url: "http://127.0.0.1:9/hooks", secret: ${WEBHOOK_SECRET} }
rules:
  - { name: hot, above: 30, notify: [ops] }
http: { listen: false }
`,
    );
    const agent = new AgentProcess(file);
    await agent.start();
    await new Promise((r) => setImmediate(r));
    // A process that ran out of work would already have exited (Node: exit code 13).
    expect((await agent.stop()).code).toBe(0);
  });

  it("SIGHUP applies a changed rule, and keeps the old config when the new file is broken", async () => {
    const receiver = new Receiver(WEBHOOK_SECRET);
    await receiver.start();
    const dir = tempDir();
    const file = writeConfig(dir, config(broker.url, receiver.url, 30, "http: { listen: false }\n"));
    const agent = new AgentProcess(file);
    await agent.start();
    const client = await mqtt.connectAsync(broker.url, { clientId: "hup-pub" });

    writeFileSync(file, config(broker.url, receiver.url, 40, "http: { listen: false }\n"));
    agent.kill("SIGHUP");
    await agent.waitForLog((l) => l.msg === "configuration reloaded", "reload");
    await client.publishAsync("t/x", "35", { qos: 1 }); // above the old 30, not the new 40
    await client.publishAsync("t/x", "45", { qos: 1 });
    await receiver.waitFor(() => receiver.accepted.length >= 1, "firing at the new threshold");
    expect(receiver.accepted[0]?.json).toMatchObject({ type: "alert.firing", data: { value: 45, threshold: 40 } });

    writeFileSync(file, config(broker.url, receiver.url, "forty", "http: { listen: false }\n"));
    agent.kill("SIGHUP");
    const refused = await agent.waitForLog((l) => /reload refused/.test(l.msg), "reload refused");
    expect(JSON.stringify(refused)).toContain("rules.0.above: must be a number");
    await client.publishAsync("t/y", "41", { qos: 1 });
    await receiver.waitFor(() => receiver.accepted.length >= 2, "firing under the old config");
    expect(receiver.accepted[1]?.json).toMatchObject({ data: { sensor: "y", threshold: 40 } });

    await client.endAsync();
    expect((await agent.stop()).code).toBe(0);
    await receiver.stop();
  }, 60_000);

  it("/metrics parses as Prometheus text and its outbox depth matches queue stats", async () => {
    const port = await freePort();
    const receiverPort = await freePort(); // nothing listens: deliveries stay pending
    const file = writeConfig(
      tempDir(),
      config(broker.url, `http://127.0.0.1:${receiverPort}/hooks`, 30, `http: { listen: "127.0.0.1:${port}" }\n`),
    );
    const agent = new AgentProcess(file);
    await agent.start();
    const client = await mqtt.connectAsync(broker.url, { clientId: "metrics-pub" });
    // Five crossings of one sensor: firing, resolved, firing, resolved, firing.
    for (const v of [35, -1, 36, -2, 37]) await client.publishAsync("t/m", String(v), { qos: 1 });
    await client.endAsync();

    const statsPending = () => {
      const r = edgehook(["queue", "stats", "--json", "--config", file]);
      return (JSON.parse(r.stdout) as { destination: string; pending: number }[]).find((s) => s.destination === "ops")
        ?.pending;
    };
    const deadline = Date.now() + 20_000;
    while (statsPending() !== 5) {
      if (Date.now() > deadline) throw new Error(`queue stats shows ${statsPending()} pending, not 5`);
      await new Promise((r) => setTimeout(r, 100));
    }

    const res = await fetch(`http://127.0.0.1:${port}/metrics`);
    expect(res.status).toBe(200);
    const text = await res.text();
    const samples = parsePrometheus(text);
    expect(samples.get('edgehook_outbox_deliveries{destination="ops",state="pending"}')).toBe(statsPending());
    expect(samples.get('edgehook_readings_total{source="mqtt"}')).toBe(5);

    const health = await fetch(`http://127.0.0.1:${port}/healthz`);
    // Offline is not failure: the receiver being unreachable degrades health but stays 200.
    expect(health.status).toBe(200);
    const report = (await health.json()) as {
      status: string;
      database: string;
      problems: string[];
      outbox: { pending: number };
    };
    expect(report).toMatchObject({ status: "degraded", database: "open", outbox: { pending: 5 } });
    expect(report.problems).toContain("destination ops is down");
    await agent.stop();
  }, 60_000);
});

/** A strict parser for the Prometheus text format: every line is a comment or a sample. */
function parsePrometheus(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("# HELP ") || line.startsWith("# TYPE ")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})?) (-?[0-9.e+-]+|NaN|[+-]Inf)( \d+)?$/.exec(line);
    if (!m) throw new Error(`not Prometheus text: ${line}`);
    out.set(m[1] as string, Number(m[3]));
  }
  return out;
}
