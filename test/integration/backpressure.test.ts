/**
 * Alerts that always get through (design invariant 7): when the outbox cannot store
 * events (free disk under min_free_disk on a real, small tmpfs; a full outbox under
 * `when_full: block`) nothing is half done and nothing is dropped. The rule state does
 * not advance without its event, MQTT messages stay unacknowledged at the broker, due
 * time-driven events wait, serial readings are held, and all of it is committed and
 * delivered once there is room again, without a restart.
 */
import { rmSync } from "node:fs";
import { join } from "node:path";
import mqtt, { type MqttClient } from "mqtt";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { AgentProcess, tempDir, writeConfig } from "../support/agent-process.js";
import { Mosquitto } from "../support/mosquitto.js";
import { freePort } from "../support/ports.js";
import { type Received, Receiver } from "../support/receiver.js";
import { healthz, scrapeMetrics, sumOf } from "../support/scrape.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";
import { SocatPty } from "../support/socat.js";
import { Tmpfs } from "../support/tmpfs.js";
import { waitUntil } from "../support/wait.js";

const MiB = 1024 * 1024;

interface Body {
  type: string;
  data: { rule: string; sensor: string; value: number | string };
}
const body = (r: Received) => r.json as Body;
const ofType = (rx: Receiver, type: string, rule?: string) =>
  rx.accepted.filter((r) => body(r).type === type && (rule === undefined || body(r).data.rule === rule));

describe("backpressure", () => {
  const disk = new Tmpfs(24 * MiB);
  const broker = new Mosquitto();
  const receiver = new Receiver(WEBHOOK_SECRET);
  const agents: AgentProcess[] = [];
  const clients: MqttClient[] = [];
  const ptys: SocatPty[] = [];
  const fillers: string[] = [];
  afterEach(() => {
    for (const f of fillers.splice(0)) rmSync(f, { force: true });
  });

  beforeAll(async () => {
    disk.mount();
    await broker.start();
    await receiver.start();
  });
  afterAll(async () => {
    for (const a of agents) await a.stop();
    for (const c of clients) await c.endAsync(true).catch(() => {});
    for (const p of ptys) await p.stop();
    await receiver.stop();
    await broker.stop();
    disk.unmount();
  });

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

  it("at the disk floor: a firing alert is neither lost nor half done, due events wait, held readings are all stored", async () => {
    const dataDir = join(disk.dir, "mqtt-data");
    const httpPort = await freePort();
    const configFile = writeConfig(
      tempDir(),
      `version: 1
agent: { id: floor-pi, data_dir: ${dataDir}, require_clock_sync: never }
mqtt:
  url: ${broker.url}
  client_id: floor-agent
  keepalive: 2s
  subscriptions:
    - { topic: "p/+", metric: probe, format: number, qos: 1 }
    - { topic: "t/+", sensor: "{1}", metric: temperature, format: number, qos: 1 }
    - { topic: "h/+", sensor: "{1}", metric: humidity, format: number, qos: 1 }
destinations:
  ops: { url: "${receiver.url}", secret: ${WEBHOOK_SECRET} }
rules:
  - { name: hot, match: { metric: temperature }, above: 30, notify: [ops] }
  - { name: damp, match: { metric: humidity }, above: 80, for: 6s, notify: [ops] }
  - { name: telemetry, match: { metric: temperature }, forward: true, notify: [ops] }
http: { listen: "127.0.0.1:${httpPort}" }
outbox: { min_free_disk: 6MB }
`,
    );
    const agent = new AgentProcess(configFile);
    agents.push(agent);
    await agent.start();
    const pub = await publisher("floor-publisher", httpPort);

    await pub.publishAsync("t/s1", "20", { qos: 1 });
    await receiver.waitFor(() => ofType(receiver, "reading").length === 1, "the first telemetry event");
    // damp starts pending on s3; its `for: 6s` comes due while the disk is full. (The disk
    // must be full before then: on a loaded machine, seeing the reading counted in /metrics
    // has taken 2 s, and with `for: 2s` damp fired, rightly, before the disk was filled.)
    const readings = async () => sumOf(await scrapeMetrics(httpPort), "edgehook_readings_total");
    const seen = await readings();
    await pub.publishAsync("h/s3", "90", { qos: 1 });
    await waitUntil(async () => (await readings()) > seen, "the humidity reading processed");
    const dampDue = Date.now() + 6_000;

    const filler = disk.fill(2 * MiB);
    fillers.push(filler);
    // Free space is read at most once a second: from then on the floor holds.
    const filledAt = Date.now();
    await waitUntil(() => Date.now() > filledAt + 1_100, "the free-space reading to be renewed");
    // Sensor s1 gets hot, s2 sends 50 hot readings: all while nothing can be stored.
    await pub.publishAsync("t/s1", "35", { qos: 1 });
    for (let v = 31; v <= 80; v++) await pub.publishAsync("t/s2", String(v), { qos: 1 });
    await agent.waitForLog((l) => l.code === "EDGEHOOK_DISK_FLOOR", "the disk floor noticed");
    await waitUntil(() => Date.now() > dampDue + 1_500, "damp's for: 6s to pass while the disk is full", 15_000);

    // Nothing was half done: no event went out, and none was dropped.
    expect(receiver.accepted).toHaveLength(1);
    const during = await healthz(httpPort);
    expect(during.http).toBe(200);
    expect(during.body).toMatchObject({ status: "degraded", outbox: { refusing: "disk_floor" } });
    expect(String((during.body.problems as string[]).join())).toMatch(/outbox refuses new events \(disk_floor\)/);
    const mqttState = (during.body.sources as { name: string; held?: number }[]).find((s) => s.name === "mqtt");
    expect(mqttState?.held).toBeGreaterThan(0);
    expect(sumOf(await scrapeMetrics(httpPort), "edgehook_outbox_refusing", { reason: "disk_floor" })).toBe(1);

    rmSync(filler); // space returns: no restart, no operator action
    const expectedTelemetry = ["20", "35", ...Array.from({ length: 50 }, (_, i) => String(31 + i))];
    await receiver.waitFor(
      () =>
        ofType(receiver, "alert.firing").length === 3 &&
        ofType(receiver, "reading").length === expectedTelemetry.length,
      "the firing alerts and every held reading",
      30_000,
    );
    await pub.publishAsync("t/s1", "20", { qos: 1 });
    await receiver.waitFor(() => ofType(receiver, "alert.resolved").length === 1, "s1 resolved", 15_000);

    const firing = ofType(receiver, "alert.firing").map((r) => `${body(r).data.rule}/${body(r).data.sensor}`);
    expect(firing.sort()).toEqual(["damp/s3", "hot/s1", "hot/s2"]);
    // s1: firing, then its resolved (not an orphan resolved).
    const s1 = receiver.accepted
      .filter((r) => body(r).data.rule === "hot" && body(r).data.sensor === "s1")
      .map((r) => body(r).type);
    expect(s1).toEqual(["alert.firing", "alert.resolved"]);
    // Every reading the broker held was stored: 52 before the resolve, plus the resolving one.
    await receiver.waitFor(() => ofType(receiver, "reading").length === 53, "the last telemetry event");
    expect(
      ofType(receiver, "reading")
        .map((r) => String(body(r).data.value))
        .sort(),
    ).toEqual([...expectedTelemetry, "20"].sort());

    const after = await healthz(httpPort);
    expect(after.body).toMatchObject({ status: "ok", outbox: { refusing: null } });
    expect(sumOf(await scrapeMetrics(httpPort), "edgehook_outbox_dropped_total")).toBe(0);
    // Held past 1.5 × keepalive without losing the connection (no reconnect loop).
    expect(agent.logs.filter((l) => l.msg === "MQTT connection lost; reconnecting")).toEqual([]);
    expect(agent.logs.some((l) => /outbox accepts new events again \(disk_floor is over/.test(l.msg))).toBe(true);
    expect((await agent.stop()).code).toBe(0);
  }, 120_000);

  it("at the disk floor: serial readings are held and stored once space returns", async () => {
    const pty = new SocatPty();
    ptys.push(pty);
    await pty.start();
    const dataDir = join(disk.dir, "serial-data");
    const httpPort = await freePort();
    const configFile = writeConfig(
      tempDir(),
      `version: 1
agent: { id: floor-serial, data_dir: ${dataDir}, require_clock_sync: never }
serial:
  - { name: meter, path: ${pty.devPath}, format: kv, sensor: meter }
destinations:
  ops: { url: "${receiver.url}", secret: ${WEBHOOK_SECRET} }
rules:
  - { name: meter-telemetry, match: { sensor: meter }, forward: true, notify: [ops] }
http: { listen: "127.0.0.1:${httpPort}" }
outbox: { min_free_disk: 6MB }
`,
    );
    const agent = new AgentProcess(configFile);
    agents.push(agent);
    await agent.start();
    const before = ofType(receiver, "reading", "meter-telemetry").length;
    await pty.write("w=0\n");
    await receiver.waitFor(
      () => ofType(receiver, "reading", "meter-telemetry").length === before + 1,
      "the first serial reading delivered",
    );

    const filler = disk.fill(2 * MiB);
    fillers.push(filler);
    const filledAt = Date.now();
    await waitUntil(() => Date.now() > filledAt + 1_100, "the free-space reading to be renewed");
    await pty.write(Array.from({ length: 100 }, (_, i) => `w=${i + 1}\n`).join(""));
    await agent.waitForLog((l) => l.code === "EDGEHOOK_DISK_FLOOR", "the disk floor noticed");
    await waitUntil(
      async () => ((await healthz(httpPort)).body.sources as { held?: number }[]).some((s) => s.held === 100),
      "100 readings held",
    );
    expect(ofType(receiver, "reading", "meter-telemetry").length).toBe(before + 1);

    rmSync(filler);
    await receiver.waitFor(
      () => ofType(receiver, "reading", "meter-telemetry").length === before + 101,
      "every held serial reading",
      30_000,
    );
    const values = ofType(receiver, "reading", "meter-telemetry").map((r) => Number(body(r).data.value));
    expect(new Set(values)).toEqual(new Set(Array.from({ length: 101 }, (_, i) => i)));
    expect(sumOf(await scrapeMetrics(httpPort), "edgehook_readings_dropped_total")).toBe(0);
    expect((await agent.stop()).code).toBe(0);
  }, 90_000);

  it("when_full: block: a full outbox holds readings at the broker instead of dropping, and takes them once deliveries make room", async () => {
    const dir = tempDir();
    const httpPort = await freePort();
    const slow = new Receiver(WEBHOOK_SECRET);
    slow.answer = () => ({ kind: "status", status: 503 }); // not taking anything until later
    await slow.start();
    const configFile = writeConfig(
      dir,
      `version: 1
agent: { id: block-pi, data_dir: ./data, require_clock_sync: never }
mqtt:
  url: ${broker.url}
  client_id: block-agent
  subscriptions:
    - { topic: "p/+", metric: probe, format: number, qos: 1 }
    - { topic: "b/+", sensor: "{1}", metric: level, format: number, qos: 1 }
destinations:
  ops: { url: "${slow.url}", secret: ${WEBHOOK_SECRET}, retry_schedule: [200ms], max_attempts: 1000 }
rules:
  - { name: levels, match: { metric: level }, forward: true, notify: [ops] }
http: { listen: "127.0.0.1:${httpPort}" }
outbox: { max_events: 20, when_full: block }
`,
    );
    const agent = new AgentProcess(configFile);
    agents.push(agent);
    await agent.start();
    const pub = await publisher("block-publisher", httpPort);
    const pending = async () => ((await healthz(httpPort)).body.outbox as { pending: number }).pending;
    // Up to the limit (a commit that starts under it is stored whole, so it may pass it a little).
    for (let i = 0; i < 25; i++) await pub.publishAsync(`b/s${i % 3}`, String(i), { qos: 1 });
    await waitUntil(async () => (await pending()) >= 20, "the outbox full");
    const stored = await pending();
    // Beyond it: held at the broker, neither stored nor dropped.
    for (let i = 25; i < 60; i++) await pub.publishAsync(`b/s${i % 3}`, String(i), { qos: 1 });
    await agent.waitForLog((l) => l.code === "EDGEHOOK_OUTBOX_FULL", "the full outbox noticed");
    await waitUntil(
      async () => ((await healthz(httpPort)).body.sources as { held?: number }[]).some((s) => (s.held ?? 0) > 0),
      "readings held at the source",
    );
    const during = await healthz(httpPort);
    expect(during.body).toMatchObject({ status: "degraded", outbox: { refusing: "full", pending: stored } });
    expect(sumOf(await scrapeMetrics(httpPort), "edgehook_outbox_dropped_total")).toBe(0);

    slow.answer = () => ({ kind: "accept" });
    try {
      await slow.waitFor(
        () => new Set(slow.accepted.map((r) => body(r).data.value)).size === 60,
        "every reading, once deliveries made room",
        60_000,
      );
      expect(slow.accepted.every((r) => r.verified)).toBe(true);
    } finally {
      await slow.stop();
    }
    expect(sumOf(await scrapeMetrics(httpPort), "edgehook_outbox_dropped_total")).toBe(0);
    expect((await agent.stop()).code).toBe(0);
  }, 120_000);
});
