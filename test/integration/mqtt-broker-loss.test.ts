/**
 * What the broker loses is seen: a real agent process and a real mosquitto that loses
 * its sessions (restarted without persistence) or drops messages for a subscriber that
 * acknowledges more slowly than a burst arrives (a small max_queued_messages). The
 * operator reads a warning in the journal and a metric.
 */
import mqtt from "mqtt";
import { afterEach, describe, expect, it } from "vitest";
import { AgentProcess, tempDir, writeConfig } from "../support/agent-process.js";
import { scrapeMetric } from "../support/metrics.js";
import { Mosquitto } from "../support/mosquitto.js";
import { freePort } from "../support/ports.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";
import { waitUntil } from "../support/wait.js";

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

async function agentConfig(broker: Mosquitto, clientId: string): Promise<{ file: string; httpPort: number }> {
  const httpPort = await freePort();
  const deadPort = await freePort();
  const file = writeConfig(
    tempDir(),
    `version: 1
agent: { id: ${clientId}, data_dir: ./data, shutdown_timeout: 1s, require_clock_sync: never }
mqtt:
  url: ${broker.url}
  client_id: ${clientId}
  reconnect_period: 50ms
  reconnect_max: 200ms
  subscriptions:
    - { topic: "t/+", sensor: "{1}", metric: level, format: number, qos: 1 }
destinations:
  ops: { url: "http://127.0.0.1:${deadPort}/hook", secret: ${WEBHOOK_SECRET} }
rules:
  - { name: all, match: { sensor: a }, forward: true, notify: [ops] }
http: { listen: "127.0.0.1:${httpPort}" }
`,
  );
  return { file, httpPort };
}

async function startAgent(file: string): Promise<AgentProcess> {
  const agent = new AgentProcess(file);
  await agent.start();
  cleanups.push(() => agent.stop());
  return agent;
}

async function publisher(broker: Mosquitto, clientId: string): Promise<mqtt.MqttClient> {
  const pub = await mqtt.connectAsync(broker.url, { clientId });
  cleanups.push(() => pub.endAsync(true));
  return pub;
}

/** Publishes probes until the agent has read one: its subscription is in place. */
async function untilSubscribed(pub: mqtt.MqttClient, httpPort: number): Promise<void> {
  await waitUntil(async () => {
    await pub.publishAsync("t/probe", "1", { qos: 1 });
    return (await scrapeMetric(httpPort, "edgehook_readings_total", { source: "mqtt" })) > 0;
  }, "the agent's subscription");
}

/** Deliveries waiting in the agent's outbox: one per reading of sensor `a` (rule `all`). */
async function stored(httpPort: number): Promise<number> {
  return scrapeMetric(httpPort, "edgehook_outbox_deliveries", { destination: "ops", state: "pending" });
}

describe("a broker that lost edgehook's session", () => {
  it("is a warning and edgehook_mqtt_sessions_lost_total, also after the agent restarted", async () => {
    const broker = new Mosquitto();
    await broker.start();
    cleanups.push(() => broker.stop());
    const { file, httpPort } = await agentConfig(broker, "session-pi");
    let agent = await startAgent(file);
    await agent.waitForLog((l) => l.msg === "connected to MQTT broker", "connected");

    // Restarted with persistence, mosquitto keeps the session: nothing to warn about.
    await broker.restart();
    await agent.waitForLog((l) => l.msg === "connected to MQTT broker" && l.sessionPresent === true, "session resumed");

    // Restarted without persistence, it has forgotten edgehook.
    broker.options.persistence = false;
    await broker.restart();
    const warning = await agent.waitForLog((l) => l.code === "EDGEHOOK_MQTT_SESSION_LOST", "the warning");
    expect(warning.level).toBe("warn");
    expect(warning.msg).toMatch(/readings published while edgehook was disconnected may be lost/);
    expect(await scrapeMetric(httpPort, "edgehook_mqtt_sessions_lost_total")).toBe(1);
    // Not on the first connect (a new session) nor after the restart with persistence.
    expect(agent.logs.filter((l) => l.code === "EDGEHOOK_MQTT_SESSION_LOST")).toHaveLength(1);
    expect(agent.logs.some((l) => l.msg === "the broker started a persistent session for edgehook")).toBe(true);

    // A reading published while the agent is down is held by the broker for its session ...
    await agent.stop();
    const pub = await publisher(broker, "session-pub");
    await pub.publishAsync("t/a", "1", { qos: 1 });
    // ... and lost when the broker restarts without persistence. The restarted agent remembers
    // (in its outbox) that it had a session, so it says so.
    await broker.restart();
    agent = await startAgent(file);
    await agent.waitForLog((l) => l.code === "EDGEHOOK_MQTT_SESSION_LOST", "the warning after a restart");
    expect(await scrapeMetric(httpPort, "edgehook_mqtt_sessions_lost_total")).toBe(1);
  }, 60_000);
});

describe("a broker that drops messages for edgehook", () => {
  const BURST = 2000;
  const WHILE_DOWN = 100;
  const QUEUED = 10;

  it("is a warning with the count and edgehook_mqtt_broker_dropped_total, while connected and after a restart", async () => {
    // mosquitto's defaults, with a queue small enough to overflow quickly and $SYS every second.
    const broker = new Mosquitto({ maxQueued: QUEUED, maxInflight: 20, sysInterval: 1 });
    await broker.start();
    cleanups.push(() => broker.stop());
    const { file, httpPort } = await agentConfig(broker, "drops-pi");
    let agent = await startAgent(file);
    const pub = await publisher(broker, "drops-pub");
    await untilSubscribed(pub, httpPort);

    // A burst faster than the agent acknowledges: the broker keeps 20 in flight and 10 queued.
    for (let i = 0; i < BURST; i += 500) {
      await Promise.all(Array.from({ length: 500 }, (_, k) => pub.publishAsync("t/a", String(i + k), { qos: 1 })));
    }
    const warning = await agent.waitForLog((l) => l.code === "EDGEHOOK_MQTT_BROKER_DROPPED", "the warning");
    expect(warning.level).toBe("warn");
    expect(warning.dropped).toBeGreaterThan(0);
    // Every reading of the burst either reached the outbox or is counted as dropped.
    const dropped = () => scrapeMetric(httpPort, "edgehook_mqtt_broker_dropped_total");
    await waitUntil(
      async () => (await stored(httpPort)) + (await dropped()) === BURST,
      "every reading stored or counted as dropped",
    );
    expect(await dropped()).toBeGreaterThanOrEqual(warning.dropped as number);

    // While the agent is down the broker queues 10 for its session and drops the rest:
    // the restarted agent compares the count with the one it remembered.
    const storedBefore = await stored(httpPort);
    await agent.stop();
    await Promise.all(Array.from({ length: WHILE_DOWN }, (_, k) => pub.publishAsync("t/a", String(k), { qos: 1 })));
    agent = await startAgent(file);
    const later = await agent.waitForLog(
      (l) => l.code === "EDGEHOOK_MQTT_BROKER_DROPPED",
      "the warning after a restart",
    );
    expect(later.dropped).toBe(WHILE_DOWN - QUEUED);
    await waitUntil(
      async () => (await dropped()) === WHILE_DOWN - QUEUED && (await stored(httpPort)) === storedBefore + QUEUED,
      "the queued readings stored, the others counted as dropped",
    );
  }, 60_000);
});
