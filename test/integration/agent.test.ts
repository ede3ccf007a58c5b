/**
 * The composition root built in-process: what the agent wires between its parts.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import mqtt from "mqtt";
import { afterEach, describe, expect, it } from "vitest";
import { Agent } from "../../src/agent.js";
import { loadConfig } from "../../src/config/load.js";
import { silentLogger } from "../../src/ops/logger.js";
import { tempDir, writeConfig } from "../support/agent-process.js";
import { freePort } from "../support/ports.js";

const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

const stops: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const s of stops.splice(0).reverse()) await s().catch(() => {});
});

async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("agent", () => {
  it("commits the keys of the MQTT messages with what they caused (redelivery ledger)", async () => {
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
  ops: { url: "http://127.0.0.1:${deadPort}/hook", secret: ${SECRET} }
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
    await until(() => agent.health().outbox.pending === 1, "the firing event committed");
    await client.endAsync();
    await agent.stop();

    const db = new Database(join(dir, "data", "outbox.db"), { readonly: true });
    try {
      const keys = db.prepare("SELECT key FROM source_messages").pluck().all() as string[];
      expect(keys).toHaveLength(1);
      expect(keys[0]).toMatch(/^mqtt:\d+:t\/s1:/);
    } finally {
      db.close();
    }
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
});
