/**
 * Alerts that always get through: the real agent process, a real mosquitto and real HTTP
 * receivers on 127.0.0.1 that fail the way real ones do — one event the receiver chokes on
 * (reset or hang), a receiver that fails one request in ten, a receiver that is gone for
 * ten seconds. What is asserted is what a user sees: which alerts arrive, in which order,
 * how soon, and what the log says.
 */
import { readFileSync, writeFileSync } from "node:fs";
import mqtt from "mqtt";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { AgentProcess, edgehook, tempDir, writeConfig } from "../support/agent-process.js";
import { Mosquitto } from "../support/mosquitto.js";
import { freePort } from "../support/ports.js";
import { seededRandom } from "../support/random.js";
import { type Received, Receiver } from "../support/receiver.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

const THRESHOLD = 50;

const broker = new Mosquitto();
beforeAll(() => broker.start());
afterAll(() => broker.stop());

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

interface Rig {
  agent: AgentProcess;
  receiver: Receiver;
  config: string;
  /** Publishes one reading of `sensor` (QoS 1); resolves once the broker has it. */
  publish(sensor: string, value: number): Promise<void>;
  /** edgehook_deliveries_total{destination="ops",class} from /metrics (rigs started with metrics). */
  deliveries(cls: string): Promise<number>;
}

const data = (r: Received) => (r.json as { type: string; data: { sensor: string; value: number } }).data;
const typeOf = (r: Received) => (r.json as { type: string }).type;

/**
 * Starts a receiver and an agent whose rule turns readings above THRESHOLD into
 * alert.firing and below it into alert.resolved for destination `ops` (with `extra`
 * destination keys), and waits until a probe reading went all the way through.
 */
async function rig(id: string, extra = "", opts: { metrics?: boolean } = {}): Promise<Rig> {
  const receiver = new Receiver(WEBHOOK_SECRET);
  await receiver.start();
  cleanups.push(() => receiver.stop());
  const dir = tempDir();
  const httpPort = opts.metrics ? await freePort() : undefined;
  const config = writeConfig(
    dir,
    `version: 1
agent: { id: ${id}, data_dir: ./data, require_clock_sync: never, shutdown_timeout: 1s }
mqtt:
  url: ${broker.url}
  subscriptions:
    - { topic: "${id}/+/temp", qos: 1, sensor: "{1}", metric: temp, format: json, value: value }
destinations:
  ops: { url: "${receiver.url}", secret: ${WEBHOOK_SECRET}${extra ? `, ${extra}` : ""} }
rules:
  - { name: hot, match: { metric: temp }, above: ${THRESHOLD}, notify: [ops] }
http: { listen: ${httpPort ? `"127.0.0.1:${httpPort}"` : "false"} }
`,
  );
  const agent = new AgentProcess(config);
  await agent.start();
  cleanups.push(() => agent.stop());
  const client = await mqtt.connectAsync(broker.url, { clientId: `${id}-pub` });
  cleanups.push(() => client.endAsync());
  const publish = async (sensor: string, value: number) => {
    await client.publishAsync(`${id}/${sensor}/temp`, JSON.stringify({ value }), { qos: 1 });
  };
  // "edgehook running" may come before the broker confirmed the subscription, and a QoS 1
  // message nobody subscribed to is dropped: the rig is ready once a probe came through.
  const probed = () => receiver.accepted.some((r) => data(r).sensor === "probe");
  for (let i = 0; i < 50 && !probed(); i++) {
    await publish("probe", THRESHOLD * 2);
    await receiver.waitFor(probed, "the probe", 300).catch(() => undefined);
  }
  await receiver.waitFor(probed, "the probe", 1_000);
  const deliveries = async (cls: string) => {
    if (!httpPort) throw new Error("this rig was started without metrics");
    const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
    const line = text
      .split("\n")
      .find(
        (l) =>
          l.startsWith("edgehook_deliveries_total{") && l.includes(`class="${cls}"`) && l.includes(`destination="ops"`),
      );
    return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : 0;
  };
  return { agent, receiver, config, publish, deliveries };
}

describe("one event the receiver cannot take holds back only its own series", () => {
  const what = {
    reset: "resets the connection",
    hang: "hangs past response_timeout",
    // The issue's "answers after 60 s with a 15 s timeout", at a scale a test can wait for.
    slow: "answers 200 only after four times response_timeout",
  } as const;
  for (const how of ["reset", "hang", "slow"] as const) {
    it(`a receiver that ${what[how]} for one sensor: the other sensors' alerts arrive within seconds`, async () => {
      const r = await rig(
        `poison-${how}`,
        // Short so the poisoned alert is dead within the test; the defaults take ~27 h.
        "response_timeout: 500ms, max_attempts: 3, retry_schedule: [200ms]",
      );
      // The receiver cannot take the firing alert of sensor "bad"; everything else is fine.
      r.receiver.answer = (rec) =>
        data(rec).sensor !== "bad" || typeOf(rec) !== "alert.firing"
          ? { kind: "accept" }
          : how === "slow"
            ? { kind: "accept", delayMs: 2_000 }
            : { kind: how };
      await r.publish("bad", 99);
      // Its first attempt has failed (reset, or timed out and closed) before the others come.
      await r.receiver.waitFor(
        () => r.receiver.arrivals.some((a) => data(a).sensor === "bad") && r.receiver.open === 0,
        "the poisoned alert's first attempt",
      );

      const t0 = Date.now();
      const sensors = ["a", "b", "c", "d", "e", "f"];
      for (const s of sensors) await r.publish(s, 99);
      await r.receiver.waitFor(
        () => sensors.every((s) => r.receiver.accepted.some((a) => data(a).sensor === s)),
        "the other sensors' alerts",
        5_000,
      );
      expect(Date.now() - t0).toBeLessThan(5_000);
      // The destination was never taken for unreachable.
      expect(r.agent.logs.filter((l) => l.msg.includes("unreachable"))).toEqual([]);

      // The poisoned alert spent its attempts and is dead, visible to the operator; its
      // series then moves on (the resolve after it is delivered).
      await r.publish("bad", 1);
      await r.receiver.waitFor(
        () => r.receiver.accepted.some((a) => data(a).sensor === "bad" && typeOf(a) === "alert.resolved"),
        "the bad sensor's resolve, once its firing alert is dead",
        10_000,
      );
      const dead = edgehook(["queue", "list", "--state", "dead", "--json", "--config", r.config]);
      expect(dead.code).toBe(0);
      const rows = JSON.parse(dead.stdout) as { series: string; attempts: number; reason: string }[];
      expect(rows).toHaveLength(1);
      expect(rows[0]?.series).toContain("bad");
      expect(rows[0]?.attempts).toBe(3);
      expect(rows[0]?.reason).toMatch(how === "reset" ? /reset|closed/ : /response timeout/);
    });
  }
});

it("a receiver failing one request in ten: every alert arrives within 10 s of the last reading, in order per series", async () => {
  const r = await rig("flaky");
  // 50 readings/s over 10 sensors for 8 s, every reading a transition (fires or resolves).
  const SERIES = 10;
  const TOTAL = 400;
  // Reading k fails on its first failures(k) attempts, drawn as from a receiver that fails
  // one request in ten at random (seeded: every run is the same): about one reading in ten
  // fails once, one in a hundred twice, spread over all sensors. Four readings of four
  // sensors fail three times in a row: the repeated failures that used to park a series
  // for minutes.
  const rand = seededRandom(10);
  const drawn = Array.from({ length: TOTAL }, () => {
    let n = 0;
    while (n < 3 && rand(10) === 0) n++;
    return n;
  });
  for (const k of [41, 152, 263, 374]) drawn[k] = 3;
  const failures = (k: number) => drawn[k] ?? 0;
  const tries = new Map<string, number>();
  const reading = (k: number, series: number) => (Math.floor(k / series) % 2 === 0 ? 1_000 + k : -1 - k);
  const kOf = (value: number) => (value >= 1_000 ? value - 1_000 : -1 - value);
  r.receiver.answer = (rec) => {
    const d = data(rec);
    if (d.sensor === "probe") return { kind: "accept" };
    const n = (tries.get(rec.id) ?? 0) + 1;
    tries.set(rec.id, n);
    return n <= failures(kOf(d.value)) ? { kind: "status", status: 500 } : { kind: "accept" };
  };
  const start = Date.now();
  for (let k = 0; k < TOTAL; k++) {
    const due = start + k * 20;
    if (due > Date.now()) await new Promise((res) => setTimeout(res, due - Date.now()));
    await r.publish(`s${k % SERIES}`, reading(k, SERIES));
  }
  const lastReading = Date.now();
  const done = () => r.receiver.accepted.filter((a) => data(a).sensor !== "probe").length >= TOTAL;
  await r.receiver.waitFor(done, "every alert", 15_000);
  expect(Date.now() - lastReading).toBeLessThan(10_000);
  // First arrivals of each series in the order the readings were published.
  for (let s = 0; s < SERIES; s++) {
    const ks = r.receiver.accepted.filter((a) => data(a).sensor === `s${s}`).map((a) => kOf(data(a).value));
    expect(ks).toEqual([...ks].sort((x, y) => x - y));
    expect(new Set(ks).size).toBe(TOTAL / SERIES);
  }
  // The receiver failed what was drawn: one reading in ten or so, in every series.
  const failed = [...tries.values()].filter((n) => n > 1).length;
  expect(failed).toBe(drawn.filter((n) => n > 0).length);
  expect(failed).toBeGreaterThan(30);
  for (let s = 0; s < SERIES; s++) expect(drawn.some((n, k) => n > 0 && k % SERIES === s)).toBe(true);
});

it("a receiver gone for 10 s: the backlog resumes within a second of its return, readings after it arrive at once, and the log says so", async () => {
  const r = await rig("outage", "concurrency: 4", { metrics: true });
  const { receiver, agent } = r;
  const outage = async () => {
    await receiver.stop();
    const t = Date.now();
    return async () => {
      const left = 10_000 - (Date.now() - t);
      // The outage itself is the scenario: ten seconds of nothing listening.
      if (left > 0) await new Promise((res) => setTimeout(res, left));
      await receiver.start();
      return Date.now();
    };
  };

  // 1. A backlog built during the outage goes within a second of the receiver's return,
  //    with no new reading to nudge it.
  const offlineBefore = await r.deliveries("offline");
  const end1 = await outage();
  for (const s of ["a", "b", "c", "d", "e"]) await r.publish(s, 99);
  await agent.waitForLog((l) => l.msg.includes("unreachable ("), "the destination taken for unreachable");
  const before = receiver.accepted.length;
  const back1 = await end1();
  await receiver.waitFor(() => receiver.accepted.length >= before + 5, "the backlog", 5_000);
  const first = receiver.accepted[before] as Received;
  // Probes go every 0.75 to 1 s; the rest is scheduling slack on a loaded test machine.
  expect(first.receivedAt - back1).toBeLessThan(1_250);
  // While it was down, five series waited with concurrency 4, yet the agent tried one
  // request at a time, about once a second: at most 10 s / 0.75 s + 1, plus the 4 that may
  // have been on their way when the first refusal came back (trying every waiting series
  // each second would be 50). And it kept trying, which is what let it resume at once.
  const tries = (await r.deliveries("offline")) - offlineBefore;
  expect(tries).toBeGreaterThanOrEqual(7);
  expect(tries).toBeLessThanOrEqual(18);
  const line = await agent.waitForLog((l) => l.msg.includes("reachable again"), "the comeback line");
  expect(line).toMatchObject({ level: "info", destination: "ops", backlog: 5 });
  expect(line.downSeconds as number).toBeGreaterThan(8);
  expect(line.downSeconds as number).toBeLessThan(13);

  // 2. A reading published right after the receiver returns does not wait for the next probe.
  const end2 = await outage();
  await r.publish("x", 99);
  await agent.waitForLog(
    (l) => l.msg.includes("unreachable (") && agent.logs.filter((m) => m.msg.includes("unreachable (")).length === 2,
    "the second outage noticed",
  );
  await end2();
  const sentAt = Date.now();
  await r.publish("y", 99);
  await receiver.waitFor(() => receiver.accepted.some((a) => data(a).sensor === "y"), "the fresh reading", 5_000);
  const fresh = receiver.accepted.find((a) => data(a).sensor === "y") as Received;
  expect(fresh.receivedAt - sentAt).toBeLessThan(600);
  expect(receiver.accepted.some((a) => data(a).sensor === "x")).toBe(true);
}, 40_000);

it("a reload that fixes a destination's url sends what waited at once: retries due in an hour, and an outage", async () => {
  const r = await rig("fix-url", "retry_schedule: [1h]");
  const { receiver, agent } = r;
  const good = readFileSync(r.config, "utf8");
  const reloads = () => agent.logs.filter((l) => l.msg === "configuration reloaded").length;
  const reload = async (text: string) => {
    const n = reloads();
    writeFileSync(r.config, text);
    agent.kill("SIGHUP");
    await agent.waitForLog(() => reloads() > n, "the reload");
    return Date.now();
  };
  const sensors = () => receiver.accepted.map((a) => data(a).sensor);

  // 1. A wrong path answers 503: each alert spends an attempt and waits an hour for its retry.
  receiver.answer = (rec) => (rec.path.endsWith("-wrong") ? { kind: "status", status: 503 } : { kind: "accept" });
  await reload(good.replace(`url: "${receiver.url}"`, `url: "${receiver.url}-wrong"`));
  await r.publish("a", 99);
  await r.publish("b", 99);
  const waiting = () => {
    const out = edgehook(["queue", "list", "--state", "pending", "--json", "--config", r.config]);
    return (JSON.parse(out.stdout) as { series: string; attempts: number }[]).filter((d) => d.attempts === 1).length;
  };
  await receiver.waitFor(() => receiver.arrivals.filter((a) => a.path.endsWith("-wrong")).length === 2, "two 503s");
  for (let i = 0; i < 50 && waiting() < 2; i++) await new Promise((res) => setTimeout(res, 100));
  expect(waiting()).toBe(2);
  const fixed1 = await reload(good);
  await receiver.waitFor(() => sensors().includes("a") && sensors().includes("b"), "the retries, due at once", 5_000);
  expect(Date.now() - fixed1).toBeLessThan(1_000);

  // 2. A port where nothing listens: the destination is down until the reload fixes it.
  const closed = `http://127.0.0.1:${await freePort()}/hooks`;
  await reload(good.replace(`url: "${receiver.url}"`, `url: "${closed}"`));
  await r.publish("c", 99);
  await agent.waitForLog((l) => l.msg.includes("unreachable ("), "the destination taken for unreachable");
  const fixed2 = await reload(good);
  await receiver.waitFor(() => sensors().includes("c"), "the backlog after the fix", 5_000);
  expect(Date.now() - fixed2).toBeLessThan(1_000);
}, 40_000);

it("kill -9 while delivering a busy stream: every alert arrives, first arrivals in order per series, a repeat is the same webhook", async () => {
  const r = await rig("busy-crash", "concurrency: 8");
  // Answers take a moment, so requests overlap and outcomes wait to be written when the
  // process dies.
  r.receiver.answer = () => ({ kind: "accept", delayMs: 2 });
  const SERIES = 4;
  const TOTAL = 400;
  const value = (k: number) => (Math.floor(k / SERIES) % 2 === 0 ? 1_000 + k : -1 - k);
  const kOf = (v: number) => (v >= 1_000 ? v - 1_000 : -1 - v);
  const stream = (async () => {
    for (let k = 0; k < TOTAL; k++) await r.publish(`s${k % SERIES}`, value(k));
  })();
  await r.receiver.waitFor(() => r.receiver.accepted.length >= 100, "a hundred alerts delivered", 20_000);
  r.agent.kill("SIGKILL");
  await r.agent.exited();
  await stream;
  const again = new AgentProcess(r.config);
  cleanups.push(() => again.stop());
  await again.start();
  const real = () => r.receiver.accepted.filter((a) => data(a).sensor !== "probe");
  await r.receiver.waitFor(() => new Set(real().map((a) => a.id)).size === TOTAL, "every alert", 30_000);
  const seen = new Map<string, Received>();
  for (const a of real()) {
    const earlier = seen.get(a.id);
    // Sent again after the crash: the same webhook, byte for byte.
    if (earlier) expect(a.body).toBe(earlier.body);
    else seen.set(a.id, a);
  }
  for (let s = 0; s < SERIES; s++) {
    const firsts = [...seen.values()].filter((a) => data(a).sensor === `s${s}`).map((a) => kOf(data(a).value));
    expect(firsts).toEqual(Array.from({ length: TOTAL / SERIES }, (_, i) => i * SERIES + s));
  }
});
