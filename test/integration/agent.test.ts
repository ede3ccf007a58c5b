/**
 * The composition root built in-process: what the agent wires between its parts.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import mqtt from "mqtt";
import { afterEach, describe, expect, it } from "vitest";
import { Agent } from "../../src/agent.js";
import { systemClock } from "../../src/clock.js";
import { loadConfig } from "../../src/config/load.js";
import { newEventId } from "../../src/events.js";
import { createLogger, silentLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import { MAINTAIN_MAX_ROWS, Outbox } from "../../src/store/outbox.js";
import { tempDir, writeConfig } from "../support/agent-process.js";
import { FakeClock } from "../support/fake-clock.js";
import { freePort } from "../support/ports.js";
import { Receiver } from "../support/receiver.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";
import { waitUntil } from "../support/wait.js";

const stops: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const s of stops.splice(0).reverse()) await s().catch(() => {});
});

describe("agent", () => {
  it("keeps the key of an MQTT message only until the broker has its acknowledgement (redelivery ledger)", async () => {
    const dir = tempDir();
    const deadPort = await freePort();
    const file = writeConfig(
      dir,
      `version: 1
agent: { id: ledger-pi, data_dir: ./data, shutdown_timeout: 1s, require_clock_sync: never }
mqtt:
  url: embedded
  embedded: { host: 127.0.0.1, port: 0 }
  subscriptions:
    - { topic: "t/+", sensor: "{1}", metric: temperature, format: number, qos: 1 }
destinations:
  ops: { url: "http://127.0.0.1:${deadPort}/hook", secret: ${WEBHOOK_SECRET} }
rules:
  - { name: hot, match: { metric: temperature }, above: 30, notify: [ops] }
http: { listen: false }
`,
    );
    const agent = new Agent({ loaded: loadConfig(file, { env: {} }), logger: silentLogger() });
    await agent.start();
    stops.push(() => agent.stop());
    const client = await mqtt.connectAsync(agent.mqttUrl as string, { clientId: "ledger-pub" });
    stops.push(() => client.endAsync(true));
    await client.publishAsync("t/s1", "35", { qos: 1 });
    // The key was committed with the event, in one transaction ...
    await waitUntil(() => agent.health().outbox.pending === 1, "the firing event committed");
    const db = new Database(join(dir, "data", "outbox.db"), { readonly: true });
    stops.push(async () => db.close());
    const keys = () => db.prepare("SELECT count(*) FROM source_messages").pluck().get() as number;
    // ... and deleted once the broker processed the PUBACK: it could only make a later
    // message with the same packet id, topic and payload look like a redelivery.
    await waitUntil(() => keys() === 0, "the key deleted while the agent runs", 15_000);
    await client.endAsync();
    await agent.stop();
    expect(keys()).toBe(0);
  });

  it("reads mqtt.tls files relative to the configuration file", async () => {
    const dir = tempDir();
    writeFileSync(join(dir, "broker-ca.pem"), "not checked before connecting\n");
    const port = await freePort();
    const file = writeConfig(
      dir,
      `version: 1
agent: { id: tls-pi, data_dir: ./data, shutdown_timeout: 1s, require_clock_sync: never }
mqtt:
  url: mqtts://127.0.0.1:${port}
  tls: { ca_file: broker-ca.pem }
  subscriptions:
    - { topic: "t/+", sensor: "{1}", metric: temperature, format: number }
http: { listen: false }
`,
    );
    const agent = new Agent({ loaded: loadConfig(file, { env: {} }), logger: silentLogger() });
    stops.push(() => agent.stop());
    await expect(agent.start()).resolves.toBeUndefined();
  });

  it("a stop() during start() waits for it, then stops everything it started", async () => {
    const dir = tempDir();
    const file = writeConfig(
      dir,
      `version: 1
agent: { id: early-stop-pi, data_dir: ./data, shutdown_timeout: 1s, require_clock_sync: never }
mqtt:
  url: embedded
  embedded: { host: 127.0.0.1, port: 0 }
  subscriptions:
    - { topic: "t/+", sensor: "{1}", metric: temperature, format: number }
http: { listen: "127.0.0.1:0" }
`,
    );
    const agent = new Agent({ loaded: loadConfig(file, { env: {} }), logger: silentLogger() });
    const started = agent.start();
    const stopped = agent.stop();
    await Promise.allSettled([started, stopped]);
    stops.push(() => agent.stop());
    expect(agent.health().database).toBe("closed");
    // Nothing is left running: the embedded broker no longer accepts connections.
    await expect(
      mqtt.connectAsync(agent.mqttUrl as string, { reconnectPeriod: 0, connectTimeout: 2_000 }),
    ).rejects.toThrow();
  });

  it("runs reloads one at a time and refuses one after stop()", async () => {
    const dir = tempDir();
    const ports = [await freePort(), await freePort(), await freePort()];
    const yaml = (port: number) => `version: 1
agent: { id: reload-pi, data_dir: ./data, shutdown_timeout: 1s, require_clock_sync: never }
mqtt:
  url: mqtt://127.0.0.1:${port}
  subscriptions:
    - { topic: "t/+", sensor: "{1}", metric: temperature, format: number }
http: { listen: false }
`;
    const file = writeConfig(dir, yaml(ports[0] as number));
    const agent = new Agent({ loaded: loadConfig(file, { env: {} }), logger: silentLogger() });
    await agent.start();
    stops.push(() => agent.stop());
    writeConfig(dir, yaml(ports[1] as number));
    const b = loadConfig(file, { env: {} });
    writeConfig(dir, yaml(ports[2] as number));
    const c = loadConfig(file, { env: {} });
    // Two SIGHUPs in quick succession.
    await Promise.all([agent.reload(b), agent.reload(c)]);
    expect(agent.health().sources).toHaveLength(1);
    expect(agent.mqttUrl).toBe(`mqtt://127.0.0.1:${ports[2]}`);

    await agent.stop();
    await expect(agent.reload(b)).rejects.toThrow(/stopping/);
    expect(agent.health().sources).toHaveLength(0);
  });

  it("a rule tick whose commit failed is tried again, so time-driven events still come", async () => {
    const dir = tempDir();
    const deadPort = await freePort();
    const file = writeConfig(
      dir,
      `version: 1
agent: { id: retry-pi, data_dir: ./data, shutdown_timeout: 1s, require_clock_sync: never }
destinations:
  ops: { url: "http://127.0.0.1:${deadPort}/hook", secret: ${WEBHOOK_SECRET} }
rules:
  - { name: quiet, match: { sensor: s1, metric: temperature }, absent_for: 10s, notify: [ops] }
outbox: { commit_delay: 0s }
http: { listen: false }
`,
    );
    const clock = new FakeClock(Date.now());
    const logs: string[] = [];
    const logger = createLogger("error", { write: (line: string) => void logs.push(line) });
    const agent = new Agent({ loaded: loadConfig(file, { env: {} }), logger, clock });
    await agent.start();
    stops.push(() => agent.stop());

    // Another process holds the write lock when the silence is due: that commit fails
    // (after SQLite's busy timeout).
    const lock = new Database(join(dir, "data", "outbox.db"));
    lock.exec("BEGIN IMMEDIATE");
    clock.advance(10_000);
    await waitUntil(() => logs.some((l) => l.includes("rule tick failed")), "the failed tick", 15_000);
    lock.exec("ROLLBACK");
    lock.close();
    expect(agent.health().outbox.pending).toBe(0);

    for (let i = 0; i < 30 && agent.health().outbox.pending === 0; i++) {
      clock.advance(1_000);
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(agent.health().outbox.pending).toBe(1);
  }, 30_000);

  it("a reload naming an unreadable mqtt.tls file changes nothing", async () => {
    const dir = tempDir();
    const port = await freePort();
    const deadPort = await freePort();
    const yaml = (above: number, tls: string) => `version: 1
agent: { id: tls-reload-pi, data_dir: ./data, shutdown_timeout: 1s, require_clock_sync: never }
destinations:
  ops: { url: "http://127.0.0.1:${deadPort}/hook", secret: ${WEBHOOK_SECRET} }
mqtt:
  url: mqtt://127.0.0.1:${port}
${tls}  subscriptions:
    - { topic: "t/+", sensor: "{1}", metric: temperature, format: number }
rules:
  - { name: hot, match: { metric: temperature }, above: ${above}, notify: [ops] }
http: { listen: false }
`;
    const file = writeConfig(dir, yaml(30, ""));
    const agent = new Agent({ loaded: loadConfig(file, { env: {} }), logger: silentLogger() });
    await agent.start();
    stops.push(() => agent.stop());
    writeConfig(dir, yaml(40, "  tls: { ca_file: missing-ca.pem }\n"));
    await expect(agent.reload(loadConfig(file, { env: {} }))).rejects.toMatchObject({
      code: "EDGEHOOK_CONFIG_UNREADABLE",
    });
    expect(agent.config.rules[0]).toMatchObject({ above: 30 });
    expect(agent.config.mqtt?.tls).toBeUndefined();
    expect(agent.health().sources).toHaveLength(1);
  });

  it("expires a backlog larger than one maintenance pass without waiting 30 s per pass", async () => {
    const dir = tempDir();
    const deadPort = await freePort();
    const file = writeConfig(
      dir,
      `version: 1
agent: { id: expire-pi, data_dir: ./data, shutdown_timeout: 1s, require_clock_sync: never }
destinations:
  ops: { url: "http://127.0.0.1:${deadPort}/hook", secret: ${WEBHOOK_SECRET} }
outbox: { max_age: 1h }
http: { listen: false }
`,
    );
    const loaded = loadConfig(file, { env: {} });
    const t0 = Date.parse("2026-01-01T00:00:00Z");
    const clock = new FakeClock(t0);
    // A backlog left by an outage, more than one pass may expire.
    const n = MAINTAIN_MAX_ROWS + 500;
    const old = new Outbox({
      file: join(loaded.dataDir, "outbox.db"),
      limits: loaded.config.outbox,
      clock,
      logger: silentLogger(),
      metrics: new Metrics(),
    });
    old.open();
    for (let i = 0; i < n; i += 5000) {
      const events = Array.from({ length: Math.min(5000, n - i) }, (_, k) => ({
        id: newEventId(t0),
        type: "reading" as const,
        rule: "fwd",
        series: `fwd\u001fs${(i + k) % 50}\u001ft`,
        severity: "info" as const,
        priority: 0,
        destinations: ["ops"],
        createdAt: t0,
        body: { type: "reading" as const, timestamp: new Date(t0).toISOString(), data: {} },
      }));
      const committed = old.commit({ events, states: [], removedStates: [] });
      old.flush();
      await committed;
    }
    old.close();

    clock.advance(2 * 3_600_000);
    const agent = new Agent({ loaded, logger: silentLogger(), clock });
    await agent.start();
    stops.push(() => agent.stop());
    expect(agent.health().outbox.pending).toBe(500);
    clock.advance(1_000);
    expect(agent.health().outbox.pending).toBe(0);
  }, 30_000);

  it("a reload says which changed agent settings wait for a restart", async () => {
    const dir = tempDir();
    const yaml = (level: string) => `version: 1
agent: { id: level-pi, data_dir: ./data, log_level: ${level}, require_clock_sync: never }
http: { listen: false }
`;
    const file = writeConfig(dir, yaml("info"));
    const logs: string[] = [];
    const logger = createLogger("warn", { write: (line: string) => void logs.push(line) });
    const agent = new Agent({ loaded: loadConfig(file, { env: {} }), logger });
    await agent.start();
    stops.push(() => agent.stop());
    writeConfig(dir, yaml("debug"));
    await agent.reload(loadConfig(file, { env: {} }));
    expect(logs.join("")).toContain("agent.log_level changed: takes effect after a restart");
  });

  it("delivers what `edgehook queue replay` put back to pending while the agent was idle", async () => {
    const receiver = new Receiver(WEBHOOK_SECRET);
    receiver.answer = () => ({ kind: "status", status: 400 });
    await receiver.start();
    stops.push(() => receiver.stop());
    const dir = tempDir();
    const file = writeConfig(
      dir,
      `version: 1
agent: { id: replay-pi, data_dir: ./data, shutdown_timeout: 1s, require_clock_sync: never }
mqtt:
  url: embedded
  embedded: { host: 127.0.0.1, port: 0 }
  subscriptions:
    - { topic: "t/+", sensor: "{1}", metric: temperature, format: number, qos: 1 }
destinations:
  ops: { url: "${receiver.url}", secret: ${WEBHOOK_SECRET} }
rules:
  - { name: hot, match: { metric: temperature }, above: 30, notify: [ops] }
http: { listen: false }
`,
    );
    const loaded = loadConfig(file, { env: {} });
    const agent = new Agent({ loaded, logger: silentLogger() });
    await agent.start();
    stops.push(() => agent.stop());
    const client = await mqtt.connectAsync(agent.mqttUrl as string, { clientId: "replay-pub" });
    stops.push(() => client.endAsync(true));
    await client.publishAsync("t/s1", "35", { qos: 1 });
    await waitUntil(() => agent.health().outbox.dead === 1, "the event dead after a 400");
    // Let the dispatcher finish its pass and go idle (nothing outside it to await).
    await new Promise((r) => setTimeout(r, 200));

    // The receiver is fixed; the operator replays from another process.
    receiver.answer = () => ({ kind: "accept" });
    const cli = new Outbox({
      file: join(loaded.dataDir, "outbox.db"),
      limits: loaded.config.outbox,
      clock: systemClock,
      logger: silentLogger(),
      metrics: new Metrics(),
      check: false,
    });
    cli.open();
    expect(cli.replay({ destination: "ops", state: "dead" })).toBe(1);
    cli.close();
    await waitUntil(() => receiver.accepted.length === 1, "the replayed event delivered", 15_000);
  }, 30_000);
});
