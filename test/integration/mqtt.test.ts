/**
 * MqttSource against a real mosquitto: payload formats end to end, acknowledgements
 * held until the sink resolved (a rejected commit and a killed process both get the
 * message again), and no QoS 1 reading lost across broker and source restarts.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { type AddressInfo, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import mqtt, { type MqttClient } from "mqtt";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { systemClock } from "../../src/clock.js";
import { configSchema, type MqttConfig } from "../../src/config/schema.js";
import { createLogger, silentLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import { MqttSource } from "../../src/sources/mqtt.js";
import type { Reading } from "../../src/sources/reading.js";
import { Mosquitto } from "../support/mosquitto.js";
import { waitUntil } from "../support/wait.js";

function mqttConfig(url: string, extra: Record<string, unknown>): MqttConfig {
  const cfg = configSchema.parse({
    version: 1,
    agent: { id: "t1" },
    mqtt: { url, reconnect_period: "50ms", reconnect_max: "400ms", ...extra },
  });
  return cfg.mqtt!;
}

class Collect {
  readings: Reading[] = [];
  calls = 0;
  behaviour: (r: Reading[]) => Promise<void> = async () => {};
  #waiters: (() => void)[] = [];
  sink = async (r: Reading[]) => {
    this.calls++;
    await this.behaviour(r);
    this.readings.push(...r);
    for (const w of this.#waiters.splice(0)) w();
  };
  async waitFor(pred: (r: Reading[]) => boolean, what: string, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred(this.readings)) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; have ${this.readings.length}`);
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        setTimeout(r, 100);
      });
    }
  }
}

async function publisher(url: string, id = `pub-${Math.random().toString(16).slice(2)}`): Promise<MqttClient> {
  return mqtt.connectAsync(url, { clientId: id, reconnectPeriod: 50 });
}

async function counter(metrics: Metrics, name: string, labels: Record<string, string>): Promise<number> {
  const m = (await metrics.registry.getMetricsAsJSON()).find((x) => x.name === name);
  const v = m?.values.find((x) => Object.entries(labels).every(([k, val]) => x.labels[k] === val));
  return Number(v?.value ?? 0);
}

const broker = new Mosquitto();
const sources: MqttSource[] = [];
const clients: MqttClient[] = [];

function source(config: MqttConfig, sink: Collect, metrics = new Metrics(), agentId = "t1"): MqttSource {
  const s = new MqttSource({ config, agentId, sink: sink.sink, logger: silentLogger(), metrics, clock: systemClock });
  sources.push(s);
  return s;
}

beforeAll(async () => {
  await broker.start();
});
afterEach(async () => {
  for (const s of sources.splice(0)) await s.stop().catch(() => {});
  for (const c of clients.splice(0)) await c.endAsync(true).catch(() => {});
});
afterAll(async () => {
  await broker.stop();
});

/** Publishes a probe and waits for it, so the subscriptions are known to be active. */
async function ready(src: MqttSource, sink: Collect, pub: MqttClient, probeTopic: string, payload: string) {
  await waitUntil(() => src.state().status === "up", "connected");
  const before = sink.readings.length;
  const deadline = Date.now() + 10_000;
  while (sink.readings.length === before) {
    if (Date.now() > deadline) throw new Error("probe never arrived");
    await pub.publishAsync(probeTopic, payload, { qos: 1 });
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("MqttSource", () => {
  it("counts and logs a message the resumed session still carries for a subscription it no longer has", async () => {
    const metrics = new Metrics();
    const logs: Record<string, unknown>[] = [];
    const logger = createLogger("info", { write: (s: string) => logs.push(JSON.parse(s)) });
    const sink = new Collect();
    const old = source(
      mqttConfig(broker.url, {
        client_id: "resub",
        clean: false,
        subscriptions: [{ topic: "old/+", metric: "v", format: "number", qos: 1 }],
      }),
      sink,
    );
    await old.start();
    const pub = await publisher(broker.url);
    clients.push(pub);
    await ready(old, sink, pub, "old/probe", "1");
    const readings = sink.readings.length;
    await old.stop();
    // Queued by the broker for the session, which still subscribes old/+.
    await pub.publishAsync("old/x", "2", { qos: 1 });
    const renamed = mqttConfig(broker.url, {
      client_id: "resub",
      clean: false,
      subscriptions: [{ topic: "new/+", metric: "v", format: "number", qos: 1 }],
    });
    const src = new MqttSource({
      config: renamed,
      agentId: "t1",
      sink: sink.sink,
      logger,
      metrics,
      clock: systemClock,
    });
    sources.push(src);
    await src.start();
    await waitUntil(
      async () => (await counter(metrics, "edgehook_decode_errors_total", { reason: "no_subscription" })) === 1,
      "the stray message counted",
    );
    expect(logs.filter((l) => l.msg === "skipped a message on a topic no subscription matches")).toEqual([
      expect.objectContaining({ topic: "old/x", reason: "no_subscription" }),
    ]);
    expect(sink.readings.length).toBe(readings);
  });

  it("decodes every payload format end to end and counts bad payloads without stopping", async () => {
    const config = mqttConfig(broker.url, {
      client_id: "formats",
      max_payload: 1024,
      subscriptions: [
        { topic: "sensors/+/temp", metric: "temperature", value: "temperature", qos: 1 },
        { topic: "home/+/state", format: "text", metric: "power", states: { ON: 1, OFF: 0 } },
        { topic: "raw/+/+", format: "number", sensor: "{topic.2}", metric: "{2}" },
        { topic: "kv/+", format: "kv", values: { temp: "t", hum: "h" }, labels: { room: "lab" } },
        {
          topic: "multi/#",
          sensor: "{id}",
          values: { t: "env.t", h: "env.h" },
          timestamp: "ts",
        },
      ],
    });
    const sink = new Collect();
    const metrics = new Metrics();
    const logs: Record<string, unknown>[] = [];
    const logger = createLogger("info", { write: (s: string) => logs.push(JSON.parse(s)) });
    const src = new MqttSource({ config, agentId: "t1", sink: sink.sink, logger, metrics, clock: systemClock });
    sources.push(src);
    await src.start();
    const pub = await publisher(broker.url);
    clients.push(pub);
    await ready(src, sink, pub, "raw/probe/x", "1");
    sink.readings = [];

    await pub.publishAsync("sensors/kitchen/temp", JSON.stringify({ temperature: 21.5 }), { qos: 1 });
    await pub.publishAsync("sensors/kitchen/temp", "not json", { qos: 1 });
    await pub.publishAsync("sensors/kitchen/temp", JSON.stringify({ humidity: 3 }), { qos: 1 });
    await pub.publishAsync("sensors/kitchen/temp", Buffer.from([0x00, 0xff, 0x13, 0x37]), { qos: 1 });
    await pub.publishAsync("sensors/kitchen/temp", JSON.stringify({ temperature: 1, pad: "x".repeat(2000) }), {
      qos: 1,
    });
    await pub.publishAsync("home/plug1/state", "on", { qos: 1 });
    await pub.publishAsync("raw/tank/level", " 42.5\n", { qos: 0 });
    await pub.publishAsync("kv/node7", "t=19.5 h=40 x=1", { qos: 1 });
    await pub.publishAsync("multi/a/b", JSON.stringify({ id: "m1", env: { t: 5, h: 60 }, ts: 1_700_000_000 }), {
      qos: 1,
    });

    await sink.waitFor((r) => r.length >= 7, "7 readings");
    const got = sink.readings.map((r) => [r.sensor, r.metric, r.value]);
    expect(got).toEqual(
      expect.arrayContaining([
        ["kitchen", "temperature", 21.5],
        ["plug1", "power", 1],
        ["tank", "level", 42.5],
        ["node7", "temp", 19.5],
        ["node7", "hum", 40],
        ["m1", "t", 5],
        ["m1", "h", 60],
      ]),
    );
    expect(sink.readings).toHaveLength(7);
    expect(sink.readings.find((r) => r.sensor === "m1")!.ts).toBe(1_700_000_000_000);
    expect(sink.readings.find((r) => r.sensor === "node7")!.labels).toEqual({ room: "lab" });
    expect(sink.readings.every((r) => r.source === "mqtt")).toBe(true);
    expect(await counter(metrics, "edgehook_decode_errors_total", { reason: "not_json" })).toBe(1);
    expect(await counter(metrics, "edgehook_decode_errors_total", { reason: "no_value" })).toBe(1);
    expect(await counter(metrics, "edgehook_decode_errors_total", { reason: "binary" })).toBe(1);
    expect(await counter(metrics, "edgehook_decode_errors_total", { reason: "too_large" })).toBe(1);
    expect(src.state().status).toBe("up");

    // A flood of garbage is counted in full but logged at a bounded rate.
    for (let i = 0; i < 50; i++) pub.publish("sensors/x/temp", "garbage", { qos: 0 });
    await pub.publishAsync("sensors/kitchen/temp", JSON.stringify({ temperature: 22 }), { qos: 1 });
    await sink.waitFor((r) => r.length === 8, "reading after the flood");
    expect(await counter(metrics, "edgehook_decode_errors_total", { reason: "not_json" })).toBe(51);
    expect(
      logs.filter((l) => l.msg === "skipped a payload that could not be decoded" && l.reason === "not_json"),
    ).toHaveLength(1);

    // Bad payloads were acknowledged too: a new session with the same id gets none of them again.
    await src.stop();
    const metrics2 = new Metrics();
    const sink2 = new Collect();
    const src2 = source(config, sink2, metrics2);
    await src2.start();
    await ready(src2, sink2, pub, "raw/probe/x", "2");
    expect(sink2.readings.map((r) => r.value)).toEqual([2]);
    expect(await counter(metrics2, "edgehook_decode_errors_total", {})).toBe(0);
  });

  it("backs off while the broker refuses connections, logs it once, and stops promptly", async () => {
    // A TCP server that hangs up on every connection: a broker that is not there yet.
    let attempts = 0;
    const server = createServer((sock) => {
      attempts++;
      sock.destroy();
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const port = (server.address() as AddressInfo).port;
    try {
      const config = mqttConfig(`mqtt://127.0.0.1:${port}`, { client_id: "away" });
      const logs: Record<string, unknown>[] = [];
      const logger = createLogger("info", { write: (s: string) => logs.push(JSON.parse(s)) });
      const src = new MqttSource({
        config,
        agentId: "t1",
        sink: async () => {},
        logger,
        metrics: new Metrics(),
        clock: systemClock,
      });
      sources.push(src);
      await src.start();
      await new Promise((r) => setTimeout(r, 1_600));
      expect(src.state().status).toBe("down");
      // reconnect_period 50ms doubling to 400ms: about 6 tries in 1.6 s, not 30.
      expect(attempts).toBeGreaterThanOrEqual(4);
      expect(attempts).toBeLessThanOrEqual(9);
      expect(logs.filter((l) => l.msg === "MQTT broker not reachable; retrying")).toHaveLength(1);
      const t0 = Date.now();
      await src.stop();
      expect(Date.now() - t0).toBeLessThan(1_000);
      expect(src.state().status).toBe("stopped");
    } finally {
      server.close();
    }
  });

  it("publishes a retained online status and offline on a clean stop", async () => {
    const config = mqttConfig(broker.url, { client_id: "status", subscriptions: [] });
    const sink = new Collect();
    const watcher = await publisher(broker.url);
    clients.push(watcher);
    const seen: string[] = [];
    watcher.on("message", (topic, payload) => {
      if (topic === "edgehook/t1/status") seen.push(payload.toString());
    });
    await watcher.subscribeAsync("edgehook/t1/status", { qos: 1 });
    const src = source(config, sink);
    await src.start();
    await waitUntil(() => seen.includes("online"), "online status");
    await src.stop();
    await waitUntil(() => seen.at(-1) === "offline", "offline status");
  });

  it.each([4, 5] as const)(
    "acknowledges stored QoS 1 readings over MQTT protocol %i: the persistent session holds none of them afterwards",
    async (protocol) => {
      const config = mqttConfig(broker.url, {
        client_id: `acked-${protocol}`,
        protocol_version: protocol,
        subscriptions: [{ topic: `acked${protocol}/+`, metric: "v", format: "number", qos: 1 }],
      });
      const sink = new Collect();
      const src = source(config, sink);
      await src.start();
      const pub = await publisher(broker.url);
      clients.push(pub);
      await ready(src, sink, pub, `acked${protocol}/probe`, "0");
      // Several per batch and one alone: the acknowledgements of a batch leave in one write.
      await Promise.all([1, 2, 3, 4, 5].map((v) => pub.publishAsync(`acked${protocol}/a`, String(v), { qos: 1 })));
      await pub.publishAsync(`acked${protocol}/a`, "6", { qos: 1 });
      await sink.waitFor((r) => r.filter((x) => x.sensor === "a").length === 6, "six readings");
      await src.stop();

      // The same client id resumes the session: anything not acknowledged would come back.
      const sink2 = new Collect();
      const src2 = source(config, sink2);
      await src2.start();
      await ready(src2, sink2, pub, `acked${protocol}/probe`, "9");
      expect(sink2.readings.map((r) => r.value)).toEqual([9]);
    },
  );

  it.each([1, 2] as const)(
    "does not acknowledge QoS %i until the sink resolved: a rejected commit is kept and offered again",
    async (qos) => {
      const config = mqttConfig(broker.url, {
        client_id: `reject-${qos}`,
        subscriptions: [{ topic: `rej${qos}/+`, metric: "v", format: "number", qos }],
      });
      const sink = new Collect();
      let failures = 0;
      sink.behaviour = async (r) => {
        if (r.some((x) => x.value === 7) && failures === 0) {
          failures++;
          throw new Error("disk full");
        }
      };
      const src = source(config, sink);
      await src.start();
      const pub = await publisher(broker.url);
      clients.push(pub);
      await ready(src, sink, pub, `rej${qos}/probe`, "1");
      await pub.publishAsync(`rej${qos}/a`, "7", { qos });
      await sink.waitFor((r) => r.some((x) => x.value === 7), "redelivered reading");
      expect(failures).toBe(1);
      expect(src.state().status).toBe("up");
    },
  );

  it("while commits are refused: holds the batch unacknowledged, reads nothing more, keeps the connection past the keepalive, then stores all in order", async () => {
    const config = mqttConfig(broker.url, {
      client_id: "refused",
      keepalive: "1s",
      subscriptions: [{ topic: "full/+", metric: "v", format: "number", qos: 1 }],
    });
    const sink = new Collect();
    let refusing = false;
    let refusals = 0;
    const offered: number[][] = [];
    sink.behaviour = async (r) => {
      if (!refusing) return;
      refusals++;
      offered.push(r.map((x) => x.value as number));
      throw Object.assign(new Error("outbox refuses new events (disk_floor)"), { code: "EDGEHOOK_DISK_FLOOR" });
    };
    const logs: Record<string, unknown>[] = [];
    const src = new MqttSource({
      config,
      agentId: "t1",
      sink: sink.sink,
      logger: createLogger("info", { write: (line: string) => logs.push(JSON.parse(line)) }),
      metrics: new Metrics(),
      clock: systemClock,
    });
    sources.push(src);
    await src.start();
    const pub = await publisher(broker.url);
    clients.push(pub);
    await ready(src, sink, pub, "full/probe", "0");
    sink.readings = [];
    refusing = true;
    for (let i = 1; i <= 200; i++) await pub.publishAsync("full/a", String(i), { qos: 1 });
    const refusedAt = Date.now();
    await waitUntil(() => refusals >= 3, "the held batch offered again", 10_000);
    // The held batch is offered again as it was: nothing newer was read meanwhile.
    expect(offered.at(-1)).toEqual(offered[0]);
    expect(src.state().held).toBeGreaterThan(0);
    // Held for over 1.5 × keepalive without reading the socket: the connection stays.
    await waitUntil(() => Date.now() - refusedAt > 2_500, "1.5 × keepalive to pass", 10_000);
    refusing = false;
    await sink.waitFor((r) => r.length === 200, "every reading stored", 15_000);
    expect(sink.readings.map((x) => x.value)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    expect(src.state()).toMatchObject({ status: "up" });
    expect(src.state().held).toBeUndefined();
    expect(logs.filter((l) => l.msg === "MQTT connection lost; reconnecting")).toEqual([]);
    expect(logs.filter((l) => String(l.msg).startsWith("outbox refuses new readings: holding"))).toHaveLength(1);
    expect(logs.some((l) => String(l.msg).startsWith("stored the"))).toBe(true);
  });

  it("while delivery is busy: rests after each commit twice as long as it took and holds at most 1,000 messages (the broker keeps the rest); stores every reading in order; no rest when delivery is idle", async () => {
    const config = mqttConfig(broker.url, {
      client_id: "fair-share",
      subscriptions: [{ topic: "fair/+", metric: "v", format: "number", qos: 1 }],
    });
    const sink = new Collect();
    let delivering = false;
    const commits: { start: number; end: number; size: number }[] = [];
    sink.behaviour = async (r) => {
      const start = performance.now();
      await new Promise((res) => setTimeout(res, 60)); // a slow commit
      commits.push({ start, end: performance.now(), size: r.length });
    };
    const src = new MqttSource({
      config,
      agentId: "t1",
      sink: sink.sink,
      logger: silentLogger(),
      metrics: new Metrics(),
      clock: systemClock,
      yieldTo: () => delivering,
    });
    sources.push(src);
    await src.start();
    const pub = await publisher(broker.url);
    clients.push(pub);
    await ready(src, sink, pub, "fair/probe", "0");
    const flood = async (from: number, n: number) => {
      sink.readings = [];
      commits.length = 0;
      await Promise.all(Array.from({ length: n }, (_, i) => pub.publishAsync("fair/a", String(from + i), { qos: 1 })));
      await sink.waitFor((r) => r.length === n, "every reading stored", 30_000);
      expect(sink.readings.map((x) => x.value)).toEqual(Array.from({ length: n }, (_, i) => from + i));
      return commits.slice(1).map((c, i) => c.start - (commits[i] as { end: number }).end);
    };

    delivering = true;
    const gaps = await flood(1, 4000);
    // Bounded memory: at most 1,000 messages gathered while a commit is in flight.
    expect(Math.max(...commits.map((c) => c.size))).toBeLessThanOrEqual(1000);
    // Fair share: after each commit (60 ms or more) a rest twice as long (120 ms or more), reading nothing.
    expect(gaps.length).toBeGreaterThanOrEqual(3);
    expect(Math.min(...gaps)).toBeGreaterThanOrEqual(110);

    delivering = false;
    const idleGaps = await flood(5001, 2000);
    // Nothing to deliver: the next batch is committed as soon as the last one is.
    expect(Math.min(...idleGaps)).toBeLessThan(30);
  });

  it.each([1, 2] as const)(
    "a QoS %i message whose commit never finished is redelivered to the next process (SIGKILL)",
    async (qos) => {
      const config = mqttConfig(broker.url, {
        client_id: `killed-${qos}`,
        subscriptions: [{ topic: `kill${qos}/+`, metric: "v", format: "number", qos }],
      });
      // A child process runs the built MqttSource with a sink that never resolves.
      const dir = mkdtempSync(join(tmpdir(), "edgehook-mqtt-kill-"));
      const script = join(dir, "child.mjs");
      const dist = resolve("dist/sources/mqtt.js");
      writeFileSync(
        script,
        `import { MqttSource } from ${JSON.stringify(dist)};
import { Metrics } from ${JSON.stringify(resolve("dist/ops/metrics.js"))};
import { silentLogger } from ${JSON.stringify(resolve("dist/ops/logger.js"))};
import { systemClock } from ${JSON.stringify(resolve("dist/clock.js"))};
const config = JSON.parse(process.argv[2]);
const src = new MqttSource({ config, agentId: "t1", logger: silentLogger(), metrics: new Metrics(), clock: systemClock,
  sink: (r) => { process.stdout.write(JSON.stringify(r.map((x) => x.value)) + "\\n"); return new Promise(() => {}); } });
await src.start();
setInterval(() => { if (src.state().status === "up") process.stdout.write("up\\n"); }, 50);
`,
      );
      const child = spawn(process.execPath, [script, JSON.stringify(config)], { stdio: ["ignore", "pipe", "inherit"] });
      let out = "";
      child.stdout.on("data", (d) => {
        out += String(d);
      });
      try {
        await waitUntil(() => out.includes("up"), "child connected");
        const pub = await publisher(broker.url);
        clients.push(pub);
        // Until the child's subscription is active, probes may be lost; publish until one arrives.
        let n = 0;
        while (!out.includes("[")) {
          await pub.publishAsync(`kill${qos}/a`, String(++n), { qos });
          await new Promise((r) => setTimeout(r, 100));
          if (n > 50) throw new Error("child never received a message");
        }
      } finally {
        child.kill("SIGKILL");
      }
      await new Promise((r) => child.once("exit", r));
      const inChild = JSON.parse(out.split("\n").find((l) => l.startsWith("["))!) as number[];
      // The same client id resumes the session: what the child never acknowledged comes back.
      const sink = new Collect();
      const src = source(config, sink);
      await src.start();
      await sink.waitFor((r) => inChild.every((v) => r.some((x) => x.value === v)), "redelivery of the uncommitted");
    },
  );

  it.each([4, 5] as const)(
    "loses no QoS 1 reading while the broker and the source restart (protocol %i, persistent session)",
    async (protocol_version) => {
      const config = mqttConfig(broker.url, {
        client_id: `persist-${protocol_version}`,
        protocol_version,
        subscriptions: [{ topic: "seq/+", metric: "n", format: "number", qos: 1 }],
      });
      const sink = new Collect();
      const logs: Record<string, unknown>[] = [];
      const logger = createLogger("info", { write: (s: string) => logs.push(JSON.parse(s)) });
      const metrics = new Metrics();
      let src = new MqttSource({ config, agentId: "t1", sink: sink.sink, logger, metrics, clock: systemClock });
      sources.push(src);
      await src.start();
      const pub = await mqtt.connectAsync(broker.url, { clientId: "seq-pub", clean: false, reconnectPeriod: 50 });
      clients.push(pub);
      await ready(src, sink, pub, "seq/probe", "-1");

      const total = 3000;
      const acked = new Set<number>();
      let sent = 0;
      // The publisher keeps sending (into its offline queue while the broker is away).
      const publishUpTo = async (end: number) => {
        while (sent < end) {
          const n = sent++;
          pub.publish("seq/a", String(n), { qos: 1 }, (err) => {
            if (!err) acked.add(n);
          });
          if (n % 50 === 0) await new Promise((r) => setTimeout(r, 5));
        }
      };
      const allAcked = (end: number) => () => {
        for (let i = 0; i < end; i++) if (!acked.has(i)) return false;
        return true;
      };

      // 1. The broker restarts while the first half is being sent.
      const firstHalf = publishUpTo(total / 2);
      await waitUntil(() => sent > total / 4, "a quarter sent");
      await broker.stop();
      await waitUntil(() => src.state().status === "down", "down while the broker is away");
      expect(await counter(metrics, "edgehook_mqtt_connected", {})).toBe(0);
      await new Promise((r) => setTimeout(r, 300)); // a few failed reconnects
      await broker.start();
      await waitUntil(() => src.state().status === "up", "up again");
      expect(await counter(metrics, "edgehook_mqtt_connected", {})).toBe(1);
      // One line per state change, however many reconnects failed in between.
      expect(logs.filter((l) => l.msg === "MQTT connection lost; reconnecting")).toHaveLength(1);
      expect(logs.filter((l) => l.msg === "connected to MQTT broker")).toHaveLength(2);
      await firstHalf;
      await waitUntil(allAcked(total / 2), "broker accepted the first half", 20_000);

      // 2. The source is stopped; the second half is accepted by the broker meanwhile.
      await src.stop();
      await publishUpTo(total);
      await waitUntil(allAcked(total), "broker accepted the second half", 20_000);
      expect(sink.readings.some((r) => (r.value as number) >= total / 2)).toBe(false);

      // 3. The same client id resumes the session and gets what it missed.
      src = source(config, sink);
      await src.start();
      const missing = () => {
        const got = new Set(sink.readings.map((x) => x.value));
        return Array.from({ length: total }, (_, i) => i).filter((i) => !got.has(i));
      };
      await sink
        .waitFor(() => missing().length === 0, "all readings", 20_000)
        .catch((err) => {
          throw new Error(
            `${(err as Error).message}; missing ${missing().slice(0, 20).join(",")} (${missing().length})`,
          );
        });
    },
  );
});
