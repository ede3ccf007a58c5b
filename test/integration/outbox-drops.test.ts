/**
 * Every drop is seen (design invariant 7): a real agent whose outbox overflows under a
 * burst of MQTT readings (max_bytes, receiver unreachable) counts each dropped delivery
 * in /metrics and in its log summaries ("dropped N since the last report"), and the two
 * agree with what is missing from the outbox. No rate limit swallows a count.
 */
import { join } from "node:path";
import Database from "better-sqlite3";
import mqtt from "mqtt";
import { afterAll, describe, expect, it } from "vitest";
import { AgentProcess, tempDir, writeConfig } from "../support/agent-process.js";
import { Mosquitto } from "../support/mosquitto.js";
import { freePort } from "../support/ports.js";
import { scrapeMetrics, sumOf } from "../support/scrape.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";
import { waitUntil } from "../support/wait.js";

const READINGS = 3000;

describe("a full outbox under drop_oldest", () => {
  const broker = new Mosquitto();
  let agent: AgentProcess | undefined;
  afterAll(async () => {
    await agent?.stop();
    await broker.stop();
  });

  it("counts and reports every dropped delivery, in the metric and in the log", async () => {
    await broker.start();
    const dir = tempDir();
    const httpPort = await freePort();
    const deadPort = await freePort();
    const configFile = writeConfig(
      dir,
      `version: 1
agent: { id: drops-pi, data_dir: ./data, require_clock_sync: never }
mqtt:
  url: ${broker.url}
  client_id: drops-agent
  subscriptions:
    - { topic: "t/+", sensor: "{1}", metric: level, format: number, qos: 1 }
destinations:
  ops: { url: "http://127.0.0.1:${deadPort}/hooks", secret: ${WEBHOOK_SECRET} }
rules:
  - { name: telemetry, match: { metric: level }, forward: true, notify: [ops] }
http: { listen: "127.0.0.1:${httpPort}" }
outbox: { max_bytes: 200KB }
`,
    );
    agent = new AgentProcess(configFile);
    await agent.start();

    const publisher = await mqtt.connectAsync(broker.url, { clientId: "drops-publisher" });
    for (let i = 0; i < READINGS; i += 100) {
      await Promise.all(
        Array.from({ length: 100 }, (_, j) => publisher.publishAsync(`t/s${(i + j) % 7}`, String(i + j), { qos: 1 })),
      );
    }
    await publisher.endAsync();
    await waitUntil(
      async () => sumOf(await scrapeMetrics(httpPort), "edgehook_rule_events_total") >= READINGS,
      "an event per reading",
      30_000,
    );
    const dropMetrics = (await scrapeMetrics(httpPort)).filter((m) => m.name === "edgehook_outbox_dropped_total");
    expect((await agent.stop()).code).toBe(0);

    const db = new Database(join(dir, "data", "outbox.db"), { readonly: true });
    const stored = db.prepare("SELECT COUNT(*) FROM deliveries").pluck().get() as number;
    db.close();
    expect(stored).toBeGreaterThan(100); // the limit keeps a few hundred
    const dropped = READINGS - stored;
    expect(dropped).toBeGreaterThan(2000);

    // The log: the first drop at once, the rest in summaries (here: at stop). Together
    // they name every dropped delivery, by reason and destination.
    const reports = agent.logs.filter((l) => typeof l.dropped === "number");
    expect(reports.length).toBeGreaterThanOrEqual(2);
    expect(reports.reduce((n, l) => n + (l.dropped as number), 0)).toBe(dropped);
    expect(sumOf(dropMetrics, "edgehook_outbox_dropped_total")).toBe(dropped);
    expect(sumOf(dropMetrics, "edgehook_outbox_dropped_total", { reason: "max_bytes", destination: "ops" })).toBe(
      dropped,
    );
    expect(reports.every((l) => /dropped \d+ deliveries since the last report/.test(l.msg))).toBe(true);
    const byDestination = reports.reduce(
      (n, l) => n + ((l.destinations as Record<string, Record<string, number>>).ops?.max_bytes ?? 0),
      0,
    );
    expect(byDestination).toBe(dropped);
  }, 90_000);
});
