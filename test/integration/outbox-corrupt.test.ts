/**
 * A damaged outbox file on a real agent. At start: 8 KiB of garbage in the middle of a
 * file holding 2,000 pending alerts costs only the rows on the damaged pages; the rest
 * (events with their deliveries, and the rule states) is salvaged and delivered, and the
 * log says how many were saved and lost. While running: damage is noticed when the
 * agent reads the damaged pages, /healthz fails (so the systemd watchdog restarts it),
 * nothing new is stored meanwhile, and the restart salvages. Never, before or after, is a
 * damaged body delivered: SQLite does not notice garbage inside a row (a large body's
 * overflow pages), the body's checksum does.
 */
import { randomBytes } from "node:crypto";
import { closeSync, existsSync, openSync, readFileSync, statSync, writeSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import mqtt, { type MqttClient } from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentProcess, type LogLine, tempDir, writeConfig } from "../support/agent-process.js";
import { Mosquitto } from "../support/mosquitto.js";
import { freePort } from "../support/ports.js";
import { type Received, Receiver } from "../support/receiver.js";
import { healthz, scrapeMetrics, sumOf } from "../support/scrape.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";
import { waitUntil } from "../support/wait.js";

interface Salvage {
  saved: { events: number; pending: number; states: number };
  lost: { pending: number; damagedBodies: number };
}

/**
 * Writes 8 KiB of random bytes in the middle of the file, from the first b-tree page (a
 * table's or an index's, 1 KiB pages) at or after the middle: damage SQLite's own checks
 * see. Bytes that land only on free pages or on the last page of an overflow chain (rule
 * states and large bodies have those) are not seen by SQLite: then nothing would be
 * salvaged at start. Bodies have a checksum for that (the last test).
 */
function damageMiddle(file: string): void {
  const db = new Database(file, { readonly: true });
  const pageSize = db.pragma("page_size", { simple: true }) as number;
  const middle = Math.floor(statSync(file).size / 2 / pageSize) + 1;
  // A run of leaf and overflow pages covering the 8 KB: a bad block there costs the rows it
  // holds. Where it lands on an interior page instead, a whole subtree goes with it, and how
  // much that is depends on how commits happened to lay out the file.
  const span = Math.ceil(8192 / pageSize);
  const types = new Map(
    (
      db.prepare("SELECT pageno, pagetype FROM dbstat WHERE pageno >= ?").all(middle) as {
        pageno: number;
        pagetype: string;
      }[]
    ).map((r) => [r.pageno, r.pagetype]),
  );
  db.close();
  const holdsRows = (p: number) => types.get(p) === "leaf" || types.get(p) === "overflow";
  const page = [...types.keys()]
    .sort((a, b) => a - b)
    .find((p) => types.get(p) === "leaf" && Array.from({ length: span }, (_, i) => p + i).every(holdsRows));
  if (page === undefined) throw new Error(`no run of ${span} leaf or overflow pages after page ${middle} of ${file}`);
  const fd = openSync(file, "r+");
  writeSync(fd, randomBytes(8192), 0, 8192, (page - 1) * pageSize);
  closeSync(fd);
}

interface Body {
  type: string;
  data: { sensor: string; rule: string; pad?: string };
}
/** The webhook's JSON body; undefined when it is not JSON (see damagedBodies). */
/**
 * Overwrites 64 bytes inside the one body holding a run of "Q" with "Z", as a bad sector
 * would: the body stays JSON and SQLite's pages stay well formed, so only its checksum
 * can tell.
 */
function damageInsideBody(file: string): void {
  const at = readFileSync(file).indexOf("Q".repeat(1000));
  if (at < 0) throw new Error(`no run of Q in ${file}`);
  const fd = openSync(file, "r+");
  writeSync(fd, Buffer.alloc(64, "Z"), 0, 64, at + 100);
  closeSync(fd);
}

const body = (r: Received) => r.json as Body | undefined;
/**
 * Accepted webhooks whose body is not what edgehook stored (not JSON, or `intact` says it
 * was altered), each as "id: first bytes": damaged data delivered with a valid signature.
 */
const damagedBodies = (rx: Receiver, intact: (b: Body) => boolean = () => true) =>
  rx.accepted
    .filter((r) => {
      const b = body(r);
      return b === undefined || !intact(b);
    })
    .map((r) => `${r.id}: ${JSON.stringify(r.body.slice(0, 60))}`);
const distinct = (rx: Receiver, pred: (r: Received) => boolean = () => true) =>
  new Set(rx.accepted.filter(pred).map((r) => r.id)).size;

describe("a damaged outbox file", () => {
  const broker = new Mosquitto();
  const agents: AgentProcess[] = [];
  const receivers: Receiver[] = [];
  const clients: MqttClient[] = [];
  beforeAll(() => broker.start());
  afterAll(async () => {
    for (const a of agents) await a.stop();
    for (const c of clients) await c.endAsync(true).catch(() => {});
    for (const r of receivers) await r.stop();
    await broker.stop();
  });

  async function receiver(): Promise<Receiver> {
    const rx = new Receiver(WEBHOOK_SECRET);
    rx.answer = () => ({ kind: "status", status: 503 }); // nothing accepted until the test says so
    await rx.start();
    receivers.push(rx);
    return rx;
  }

  async function agent(configFile: string): Promise<AgentProcess> {
    const a = new AgentProcess(configFile);
    agents.push(a);
    await a.start();
    return a;
  }

  /** A publisher, once the agent's subscription is in place (a probe on p/+ was decoded). */
  async function publisher(id: string, httpPort: number): Promise<MqttClient> {
    const c = await mqtt.connectAsync(broker.url, { clientId: id });
    clients.push(c);
    await waitUntil(async () => {
      await c.publishAsync("p/probe", "1", { qos: 1 });
      return sumOf(await scrapeMetrics(httpPort), "edgehook_readings_total") > 0;
    }, "the agent subscribed");
    return c;
  }

  const pending = async (httpPort: number) =>
    ((await healthz(httpPort)).body.outbox as { pending: number } | undefined)?.pending ?? -1;

  it("at start: salvages the readable pending alerts and rule states, delivers them, and counts what was lost", async () => {
    const dir = tempDir();
    const rx = await receiver();
    const httpPort = await freePort();
    const configFile = writeConfig(
      dir,
      `version: 1
agent: { id: salvage-pi, data_dir: ./data, require_clock_sync: never }
mqtt:
  url: ${broker.url}
  client_id: salvage-agent
  subscriptions:
    - { topic: "p/+", metric: probe, format: number, qos: 1 }
    - { topic: "t/+", sensor: "{1}", metric: temperature, format: number, qos: 1 }
destinations:
  ops: { url: "${rx.url}", secret: ${WEBHOOK_SECRET}, retry_schedule: [200ms], max_attempts: 100000 }
rules:
  - { name: hot, match: { metric: temperature }, above: 30, notify: [ops] }
http: { listen: "127.0.0.1:${httpPort}" }
`,
    );
    const total = 2000;
    let a = await agent(configFile);
    let pub = await publisher("salvage-publisher", httpPort);
    for (let i = 0; i < total; i += 100) {
      await Promise.all(Array.from({ length: 100 }, (_, j) => pub.publishAsync(`t/s${i + j}`, "35", { qos: 1 })));
    }
    await waitUntil(async () => (await pending(httpPort)) === total, `${total} alerts pending`, 30_000);
    expect((await a.stop()).code).toBe(0);

    damageMiddle(join(dir, "data", "outbox.db"));
    rx.answer = () => ({ kind: "accept" });
    a = await agent(configFile);
    const line = (await a.waitForLog((l) => l.code === "EDGEHOOK_DB_CORRUPT", "the salvage")) as LogLine & Salvage;
    expect(line.level).toBe("error");
    expect(line.saved.pending + line.lost.pending).toBe(total);
    expect(line.saved.pending).toBeGreaterThan(total * 0.9);
    expect(line.msg).toMatch(/salvaged \d+ pending events .* into a fresh outbox; lost \d+ pending deliveries/);

    // Every salvaged alert is delivered, verified, once.
    await rx.waitFor(() => distinct(rx) === line.saved.pending, "every salvaged alert", 60_000);
    expect(damagedBodies(rx), "webhooks delivered with a damaged body").toEqual([]);
    expect(rx.accepted.every((r) => r.verified && body(r)?.type === "alert.firing")).toBe(true);

    // The salvaged rule states are in force: sensors still hot do not fire again; only
    // the series whose state was on a damaged page start fresh (and fire once more).
    pub = await publisher("salvage-publisher-2", httpPort);
    for (let i = 0; i < total; i += 100) {
      await Promise.all(Array.from({ length: 100 }, (_, j) => pub.publishAsync(`t/s${i + j}`, "36", { qos: 1 })));
    }
    await pub.publishAsync("t/marker", "35", { qos: 1 });
    await rx.waitFor(() => rx.accepted.some((r) => body(r)?.data.sensor === "marker"), "the marker alert", 30_000);
    await waitUntil(async () => (await pending(httpPort)) === 0, "nothing pending");
    const refired = distinct(rx) - line.saved.pending - 1;
    expect(refired).toBe(total - line.saved.states);
    expect(line.saved.states).toBeGreaterThan(total * 0.9);
  }, 180_000);

  it("while running: notices the damage when it reads it, fails /healthz, stores nothing new, and a restart salvages", async () => {
    const dir = tempDir();
    const rx = await receiver();
    const httpPort = await freePort();
    // ~5 KB per event: 6,000 events make a file well beyond SQLite's 8 MiB page cache, so
    // the damaged pages are read from the file (as on a device with a long backlog).
    const pad = "x".repeat(5000);
    const configFile = writeConfig(
      dir,
      `version: 1
agent: { id: damaged-pi, data_dir: ./data, require_clock_sync: never }
mqtt:
  url: ${broker.url}
  client_id: damaged-agent
  subscriptions:
    - { topic: "p/+", metric: probe, format: number, qos: 1 }
    - { topic: "f/+", sensor: "{1}", metric: level, format: number, qos: 1 }
destinations:
  ops: { url: "${rx.url}", secret: ${WEBHOOK_SECRET}, retry_schedule: [200ms], max_attempts: 100000 }
rules:
  - { name: levels, match: { metric: level }, forward: true, notify: [ops], extra: { pad: "${pad}" } }
http: { listen: "127.0.0.1:${httpPort}" }
`,
    );
    const total = 6000;
    let a = await agent(configFile);
    const pub = await publisher("damaged-publisher", httpPort);
    for (let i = 0; i < total; i += 200) {
      await Promise.all(
        Array.from({ length: 200 }, (_, j) => pub.publishAsync(`f/s${(i + j) % 10}`, String(i + j), { qos: 1 })),
      );
    }
    await waitUntil(async () => (await pending(httpPort)) === total, `${total} events pending`, 60_000);
    expect((await healthz(httpPort)).http).toBe(200);

    damageMiddle(join(dir, "data", "outbox.db"));
    rx.answer = () => ({ kind: "accept" }); // draining reads the backlog, damaged pages included
    await waitUntil(async () => (await healthz(httpPort)).http === 503, "/healthz failing", 60_000);
    const report = (await healthz(httpPort)).body;
    expect(report).toMatchObject({ status: "failing", database: "corrupt" });
    expect((report.problems as string[]).join()).toMatch(
      /database is corrupt: SQLITE_CORRUPT.*restart edgehook to salvage/,
    );
    // The log line may come a moment after /healthz answers.
    await a.waitForLog((l) => l.level === "fatal", "the fatal log line");
    const fatal = a.logs.filter((l) => l.level === "fatal");
    expect(fatal).toHaveLength(1);
    expect(fatal[0]).toMatchObject({ code: "EDGEHOOK_DB_CORRUPT" });
    expect(fatal[0]?.sqliteCode).toMatch(/^SQLITE_CORRUPT/);

    // Nothing new goes into the damaged file: the reading waits at the broker.
    await pub.publishAsync("f/late", "1", { qos: 1 });
    await waitUntil(
      async () => ((await healthz(httpPort)).body.sources as { held?: number }[]).some((s) => (s.held ?? 0) > 0),
      "the new reading held",
    );

    // What systemd does when the watchdog is not fed: kill and start again.
    a.kill("SIGKILL");
    await a.exited();
    a = await agent(configFile);
    const line = (await a.waitForLog((l) => l.code === "EDGEHOOK_DB_CORRUPT", "the salvage")) as LogLine & Salvage;
    await waitUntil(async () => (await pending(httpPort)) === 0, "the salvaged backlog delivered", 90_000);
    // Delivered before the damage was met, salvaged and delivered after, or counted as
    // lost: every one of the 6,000, plus the reading that waited at the broker.
    expect(distinct(rx) + line.lost.pending).toBe(total + 1);
    // 8 KiB of random bytes over ~5 KB bodies often lands inside a body, where only its
    // checksum notices: such a body is counted lost, never sent.
    expect(
      damagedBodies(rx, (b) => b.data.pad === pad),
      "webhooks delivered with a damaged body",
    ).toEqual([]);
    expect(rx.accepted.some((r) => body(r)?.data.sensor === "late")).toBe(true);
    expect((await healthz(httpPort)).body).toMatchObject({ status: "ok", database: "open" });
  }, 240_000);

  it("a body damaged inside its bytes, which SQLite does not notice, is never sent: /healthz fails, and the restart salvages without it", async () => {
    const dir = tempDir();
    const rx = await receiver();
    const httpPort = await freePort();
    const xs = "x".repeat(5000);
    const qs = "Q".repeat(5000);
    const configFile = writeConfig(
      dir,
      `version: 1
agent: { id: body-pi, data_dir: ./data, require_clock_sync: never }
mqtt:
  url: ${broker.url}
  client_id: body-agent
  subscriptions:
    - { topic: "p/+", metric: probe, format: number, qos: 1 }
    - { topic: "f/+", sensor: "{1}", metric: level, format: number, qos: 1 }
    - { topic: "g/+", sensor: "{1}", metric: gauge, format: number, qos: 1 }
destinations:
  ops: { url: "${rx.url}", secret: ${WEBHOOK_SECRET}, retry_schedule: [200ms], max_attempts: 100000 }
rules:
  - { name: levels, match: { metric: level }, forward: true, notify: [ops], extra: { pad: "${xs}" } }
  - { name: gauges, match: { metric: gauge }, forward: true, notify: [ops], extra: { pad: "${qs}" } }
http: { listen: "127.0.0.1:${httpPort}" }
`,
    );
    let a = await agent(configFile);
    const pub = await publisher("body-publisher", httpPort);
    for (let i = 0; i < 10; i++) await pub.publishAsync(`f/s${i}`, String(i), { qos: 1 });
    await pub.publishAsync("g/marked", "1", { qos: 1 });
    for (let i = 10; i < 20; i++) await pub.publishAsync(`f/s${i}`, String(i), { qos: 1 });
    await waitUntil(async () => (await pending(httpPort)) === 21, "21 events pending");
    expect((await a.stop()).code).toBe(0);
    const file = join(dir, "data", "outbox.db");
    damageInsideBody(file);

    // quick_check finds nothing: the agent starts; draining reads the damaged body.
    rx.answer = () => ({ kind: "accept" });
    a = await agent(configFile);
    await waitUntil(async () => (await healthz(httpPort)).http === 503, "/healthz failing");
    expect((await healthz(httpPort)).body).toMatchObject({ status: "failing", database: "corrupt" });
    // The log line may come a moment after /healthz answers.
    await a.waitForLog((l) => l.level === "fatal", "the fatal log line");
    const fatal = a.logs.filter((l) => l.level === "fatal");
    expect(fatal).toHaveLength(1);
    expect(fatal[0]).toMatchObject({ code: "EDGEHOOK_DB_CORRUPT", sqliteCode: "SQLITE_CORRUPT" });
    expect(fatal[0]?.msg).toMatch(/body of event msg_\w+ does not match its checksum/);
    expect(existsSync(`${file}-damaged`)).toBe(true);

    a.kill("SIGKILL");
    await a.exited();
    a = await agent(configFile);
    const line = (await a.waitForLog((l) => l.code === "EDGEHOOK_DB_CORRUPT", "the salvage")) as LogLine & Salvage;
    expect(line.msg).toMatch(
      /found while running.*lost 1 pending deliveries and 1 unreadable rows \(1 event body failed its checksum\)/,
    );
    expect(line.lost).toMatchObject({ pending: 1, damagedBodies: 1 });
    await waitUntil(async () => (await pending(httpPort)) === 0, "the salvaged backlog delivered");
    expect(distinct(rx)).toBe(20);
    expect(
      damagedBodies(rx, (b) => b.data.pad === xs),
      "webhooks delivered with a damaged body",
    ).toEqual([]);
    expect(rx.accepted.some((r) => body(r)?.data.sensor === "marked")).toBe(false);
    expect(existsSync(`${file}-damaged`)).toBe(false);
    expect((await healthz(httpPort)).body).toMatchObject({ status: "ok", database: "open" });
  }, 120_000);
});
