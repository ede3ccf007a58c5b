/**
 * MQTT packet ids are 16 bits: the broker hands out 1..65,535 and starts again. A
 * reading the broker had to send again after a reconnect (DUP flag) is new if it was
 * never committed, even when an older message with the same packet id, topic and
 * payload was committed long before. A sensor repeating `35` is the normal case.
 *
 * Real mosquitto, a real agent (in-process) with its SQLite outbox, and a TCP relay
 * between them that holds the broker's messages and then drops the connection, so the
 * broker redelivers them with DUP after the reconnect.
 */
import mqtt from "mqtt";
import { afterAll, describe, expect, it } from "vitest";
import { Agent } from "../../src/agent.js";
import { loadConfig } from "../../src/config/load.js";
import { silentLogger } from "../../src/ops/logger.js";
import { tempDir, writeConfig } from "../support/agent-process.js";
import { metricValue } from "../support/metrics.js";
import { Mosquitto } from "../support/mosquitto.js";
import { freePort } from "../support/ports.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";
import { TcpProxy } from "../support/tcp-proxy.js";
import { waitUntil } from "../support/wait.js";

/** More than one round of packet ids. */
const FIRST = 65_535 + 200;
/** Published while the relay holds the broker's messages, then redelivered with DUP. */
const HELD = 50;
/** One PUBLISH of `35` on t/a at QoS 1, as the broker sends it: 2 + 2 + 3 + 2 + 2 bytes. */
const PUBLISH_BYTES = 11;

describe("packet ids wrap around", () => {
  const broker = new Mosquitto();
  let proxy: TcpProxy | undefined;
  let agent: Agent | undefined;
  let pub: mqtt.MqttClient | undefined;

  afterAll(async () => {
    await pub?.endAsync(true);
    await agent?.stop();
    await proxy?.stop();
    await broker.stop();
  });

  it("a new reading redelivered with DUP is processed, though an old one had its packet id and payload", async () => {
    await broker.start();
    proxy = new TcpProxy(broker.port);
    await proxy.start();
    const deadPort = await freePort();
    const file = writeConfig(
      tempDir(),
      `version: 1
agent: { id: wrap-pi, data_dir: ./data, shutdown_timeout: 1s, require_clock_sync: never }
mqtt:
  url: ${proxy.url}
  client_id: wrap-agent
  reconnect_period: 50ms
  reconnect_max: 200ms
  subscriptions:
    - { topic: "t/+", sensor: "{1}", metric: level, format: number, qos: 1 }
destinations:
  ops: { url: "http://127.0.0.1:${deadPort}/hook", secret: ${WEBHOOK_SECRET} }
rules:
  - { name: all, match: { sensor: a }, forward: true, notify: [ops] }
http: { listen: false }
`,
    );
    agent = new Agent({ loaded: loadConfig(file, { env: {} }), logger: silentLogger() });
    await agent.start();
    const a = agent;
    const readings = () => metricValue(a.metrics, "edgehook_readings_total", { source: "mqtt" });
    const skipped = () => metricValue(a.metrics, "edgehook_redeliveries_skipped_total", { source: "mqtt" });

    pub = await mqtt.connectAsync(broker.url, { clientId: "wrap-pub" });
    const p = pub;
    // Publish only once the agent's subscription is in place: probe until one arrives.
    await waitUntil(async () => {
      await p.publishAsync("t/probe", "1", { qos: 1 });
      return (await readings()) > 0;
    }, "the agent's subscription");

    // Every packet id is used at least once, each message committed with its key.
    const WINDOW = 500;
    for (let i = 0; i < FIRST; i += WINDOW) {
      const n = Math.min(WINDOW, FIRST - i);
      await Promise.all(Array.from({ length: n }, () => p.publishAsync("t/a", "35", { qos: 1 })));
    }
    const stored = () => a.health().outbox.pending;
    await waitUntil(() => stored() === FIRST, "the first round committed", 120_000, 100);

    // The next messages reach the relay but not the agent; then the connection drops.
    proxy.hold("down");
    await Promise.all(Array.from({ length: HELD }, () => p.publishAsync("t/a", "35", { qos: 1 })));
    const relay = proxy;
    await waitUntil(() => relay.heldBytes("down") >= HELD * PUBLISH_BYTES, "the broker sent them");
    proxy.cut();

    // The broker sends them again, with DUP, after the agent reconnected.
    await waitUntil(
      async () => stored() + (await skipped()) >= FIRST + HELD,
      "the redelivered messages handled",
      30_000,
    );
    expect(await skipped()).toBe(0);
    expect(stored()).toBe(FIRST + HELD);
  }, 240_000);
});
