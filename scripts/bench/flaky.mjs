#!/usr/bin/env node
/**
 * A flaky receiver under a steady stream, end to end with real parts: a publisher sends
 * `--rate` readings/s (QoS 1) spread over `--series` sensors for `--seconds` to a real
 * mosquitto; the real agent (`node bin/edgehook.js run`, its own process) turns every
 * reading into an event (values alternate above/below the threshold, so each reading
 * fires or resolves its alert) and delivers it to a real HTTP receiver in this process
 * that answers 500 to `--fail` of the requests (a seeded draw per request) and 200 to the
 * rest. Each run does the same workload twice: first with a healthy receiver (the
 * baseline), then with the flaky one.
 *
 * With `--outage S`, each run adds a third workload: the healthy receiver stops listening
 * (connection refused) for S seconds in the middle of the stream, then comes back on the
 * same port. For it the bench also prints how long after the receiver's return the first
 * event arrived, and the latency of the readings published after the return.
 *
 * Per workload it prints the latency of each event (receiver's first 2xx arrival minus
 * the reading's publish time: p50, p99, max), how many events were still undelivered
 * when the last reading was published and when the run gave up waiting (`--wait`
 * seconds after it), the time from the last reading to the last arrival, and whether
 * the first arrivals of every series came in publish order, and the agent's CPU time per
 * event (stream and drain; with the load average printed at start and end, this says
 * whether a slow figure is the agent's or the machine's). Medians over `--runs`.
 *
 *   npm run build && node scripts/bench/flaky.mjs [--rate 200] [--series 100] [--seconds 30]
 *        [--fail 0.1] [--runs 3] [--wait 60] [--concurrency 4] [--outage 10] [--root DIR]
 *
 * `--root` runs another checkout's build (its bin/edgehook.js and dist/), e.g. main's, to
 * compare before and after with the same script.
 *
 * Loopback only; bounded in count and time; stops mosquitto, the agent and the receiver itself.
 */
import { spawn } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { connect } from "node:net";
import { cpus, loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import mqtt from "mqtt";

const here = fileURLToPath(new URL(".", import.meta.url));
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const RATE = Number(opt("rate", 200));
const SERIES = Number(opt("series", 100));
const SECONDS = Number(opt("seconds", 30));
const FAIL = Number(opt("fail", 0.1));
const RUNS = Number(opt("runs", 3));
const WAIT_S = Number(opt("wait", 60));
const CONCURRENCY = Number(opt("concurrency", 4));
const OUTAGE_S = Number(opt("outage", 0));
const ROOT = resolve(opt("root", join(here, "../..")));
const BIN = join(ROOT, "bin/edgehook.js");
const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const THRESHOLD = 500;

const dir = mkdtempSync(join(tmpdir(), "edgehook-bench-flaky-"));
chmodSync(dir, 0o777); // mosquitto drops root and must be able to read its config here

async function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on("error", rej);
  });
}

async function waitForPort(port, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise((r) => {
      const s = connect(port, "127.0.0.1");
      s.once("connect", () => {
        s.destroy();
        r(true);
      });
      s.once("error", () => r(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`port ${port} did not open`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * CPU time (user + system, ms) a process has used so far, from /proc/PID/stat (Linux; NaN
 * elsewhere). utime and stime are fields 14 and 15, counted after the ")" closing the name.
 */
function cpuMs(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // USER_HZ is 100 on Linux
  } catch {
    return Number.NaN;
  }
}

/** mulberry32: the same failure pattern for every run of the bench. */
function seeded(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const pct = (sorted, p) =>
  sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
const median = (xs) => {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.floor(s.length / 2)];
};

/**
 * One workload: a fresh agent (own data dir, own MQTT client id and topics) against a
 * receiver failing `fail` of the requests, or gone for `outageS` seconds mid-stream.
 */
async function workload(brokerPort, label, fail, runNo, outageS = 0) {
  const tag = `r${runNo}${label}`;
  const random = seeded(1234 + runNo);
  /** key "sensor/value" → { k, publishedAt, arrivedAt } */
  const readings = new Map();
  const firstArrivals = new Map(); // sensor → [k...] in order of first 2xx arrival
  let requests = 0;
  let failed = 0;
  let duplicates = 0;
  let lastArrival = 0;
  let ready = false;
  let waiter;
  let outstanding = 0;

  const receiver = createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      requests++;
      let data;
      let eventAt;
      try {
        const body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
        data = body.data;
        // The event's time: when the agent took the reading in (it carries no time of its own).
        eventAt = Date.parse(body.timestamp);
      } catch {
        res.writeHead(400).end();
        return;
      }
      if (data.sensor === "probe") {
        ready = true;
        res.writeHead(200).end();
        return;
      }
      if (fail > 0 && random() < fail) {
        failed++;
        res.writeHead(500).end("flaky");
        return;
      }
      const now = Date.now();
      res.writeHead(200).end();
      const r = readings.get(`${data.sensor}/${data.value}`);
      if (!r) return;
      if (r.arrivedAt !== undefined) {
        duplicates++;
        return;
      }
      r.arrivedAt = now;
      r.eventAt = eventAt;
      lastArrival = now;
      outstanding--;
      const list = firstArrivals.get(data.sensor) ?? [];
      firstArrivals.set(data.sensor, list);
      list.push(r.k);
      if (outstanding === 0 && waiter) waiter();
    });
  });
  receiver.keepAliveTimeout = 60_000;
  await new Promise((r) => receiver.listen(0, "127.0.0.1", r));
  const port = receiver.address().port;

  const agentDir = join(dir, tag);
  mkdirSync(join(agentDir, "data"), { recursive: true });
  writeFileSync(
    join(agentDir, "agent.yaml"),
    `version: 1
agent: { id: flaky-${tag}, data_dir: ./data, require_clock_sync: never, log_level: warn }
mqtt:
  url: mqtt://127.0.0.1:${brokerPort}
  subscriptions:
    - { topic: "${tag}/+/temp", qos: 1, sensor: "{1}", metric: temp, format: json, value: value }
destinations:
  sink: { url: "http://127.0.0.1:${port}/hooks", secret: ${SECRET}, concurrency: ${CONCURRENCY} }
rules:
  - { name: hot, match: { metric: temp }, above: ${THRESHOLD}, notify: [sink] }
http: { listen: false }
`,
  );
  const agent = spawn(process.execPath, [BIN, "run", "--config", join(agentDir, "agent.yaml")], {
    stdio: ["ignore", "ignore", "inherit"],
  });
  const agentExit = new Promise((r) => agent.once("exit", r));
  const killer = setTimeout(() => agent.kill("SIGKILL"), (SECONDS + WAIT_S + 60) * 1000);

  const pub = await mqtt.connectAsync(`mqtt://127.0.0.1:${brokerPort}`, { clientId: `flaky-pub-${tag}` });
  try {
    // The agent is ready once a probe reading made it through rule, outbox and receiver.
    const readyBy = Date.now() + 30_000;
    while (!ready) {
      if (Date.now() > readyBy) throw new Error("the agent did not deliver the probe within 30 s");
      await pub.publishAsync(`${tag}/probe/temp`, JSON.stringify({ value: THRESHOLD * 10 }), { qos: 1 });
      await new Promise((r) => setTimeout(r, 200));
    }

    // The stream: reading k goes to sensor k % SERIES at t0 + k / RATE; its value encodes k
    // and alternates above and below the threshold within each sensor (every reading is a
    // transition: firing, resolved, firing, ...).
    const total = Math.round(RATE * SECONDS);
    const t0 = Date.now() + 50;
    const cpuAtStart = cpuMs(agent.pid);
    let k = 0;
    let returnedAt;
    if (outageS > 0) {
      setTimeout(
        () => {
          receiver.close();
          receiver.closeAllConnections();
          setTimeout(() => {
            receiver.listen(port, "127.0.0.1", () => {
              returnedAt = Date.now();
            });
          }, outageS * 1000);
        },
        Math.max(0, t0 - Date.now() + ((SECONDS - outageS) / 2) * 1000),
      );
    }
    await new Promise((resolveStream) => {
      const tick = () => {
        const due = Math.min(total, Math.floor(((Date.now() - t0) * RATE) / 1000) + 1);
        while (k < due) {
          const sensor = `s${k % SERIES}`;
          const nth = Math.floor(k / SERIES);
          const value = nth % 2 === 0 ? THRESHOLD * 2 + k : -k - 1;
          readings.set(`${sensor}/${value}`, { k, publishedAt: Date.now(), arrivedAt: undefined });
          outstanding++;
          pub.publish(`${tag}/${sensor}/temp`, JSON.stringify({ value }), { qos: 1 });
          k++;
        }
        if (k >= total) resolveStream();
        else setTimeout(tick, Math.max(1, Math.min(5, t0 + (k * 1000) / RATE - Date.now())));
      };
      setTimeout(tick, Math.max(0, t0 - Date.now()));
    });
    const lastPublish = Date.now();
    const pendingAtEnd = outstanding;
    await new Promise((r) => {
      const timer = setTimeout(r, WAIT_S * 1000);
      waiter = () => {
        clearTimeout(timer);
        r();
      };
      if (outstanding === 0) waiter();
    });
    const left = outstanding;
    // The agent's CPU for the stream and its drain, per event: what it needs of a core at RATE.
    const agentCpuPerEvent = (cpuMs(agent.pid) - cpuAtStart) / total;

    // An event that never arrived counts as infinitely late (p99 says "never" when more
    // than 1 % did not arrive).
    const lat = [...readings.values()]
      .map((r) => (r.arrivedAt === undefined ? Number.POSITIVE_INFINITY : r.arrivedAt - r.publishedAt))
      .sort((a, b) => a - b);
    // Where the time went: publish → agent (MQTT, broker) and agent → receiver (rule, outbox,
    // delivery), for the events that arrived.
    const arrived = [...readings.values()].filter((r) => r.arrivedAt !== undefined && Number.isFinite(r.eventAt));
    const ingest = arrived.map((r) => r.eventAt - r.publishedAt).sort((a, b) => a - b);
    const delivery = arrived.map((r) => r.arrivedAt - r.eventAt).sort((a, b) => a - b);
    let resumeMs = Number.NaN;
    let afterReturn = [];
    if (returnedAt !== undefined) {
      const arrivals = [...readings.values()].map((r) => r.arrivedAt).filter((a) => a !== undefined && a >= returnedAt);
      resumeMs = arrivals.length > 0 ? Math.min(...arrivals) - returnedAt : Number.POSITIVE_INFINITY;
      afterReturn = [...readings.values()]
        .filter((r) => r.publishedAt >= returnedAt)
        .map((r) => (r.arrivedAt === undefined ? Number.POSITIVE_INFINITY : r.arrivedAt - r.publishedAt))
        .sort((a, b) => a - b);
    }
    let outOfOrder = 0;
    for (const list of firstArrivals.values())
      for (let i = 1; i < list.length; i++) if (list[i] < list[i - 1]) outOfOrder++;
    return {
      label,
      events: total,
      p50: pct(lat, 0.5),
      p99: pct(lat, 0.99),
      max: lat.at(-1) ?? Number.NaN,
      pendingAtEnd,
      left,
      tail: left > 0 ? Number.POSITIVE_INFINITY : Math.max(0, lastArrival - lastPublish),
      outOfOrder,
      duplicates,
      requests,
      failed,
      ingestP50: pct(ingest, 0.5),
      deliveryP50: pct(delivery, 0.5),
      deliveryP99: pct(delivery, 0.99),
      resumeMs,
      afterP50: pct(afterReturn, 0.5),
      afterP99: pct(afterReturn, 0.99),
      agentCpuPerEvent,
    };
  } finally {
    clearTimeout(killer);
    await pub.endAsync().catch(() => undefined);
    agent.kill("SIGTERM");
    await agentExit;
    receiver.closeAllConnections();
    if (receiver.listening) await new Promise((r) => receiver.close(r));
  }
}

function line(r) {
  const ms = (x) => (x === Number.POSITIVE_INFINITY ? "never" : Number.isFinite(x) ? `${Math.round(x)} ms` : "n/a");
  const outage = Number.isNaN(r.resumeMs)
    ? ""
    : `  first arrival ${ms(r.resumeMs)} after the receiver's return; readings published after it: p50 ${ms(r.afterP50)} p99 ${ms(r.afterP99)}`;
  return `${r.label.padEnd(8)} p50 ${ms(r.p50).padStart(9)}  p99 ${ms(r.p99).padStart(9)}  max ${ms(r.max).padStart(9)}  pending at stream end ${String(r.pendingAtEnd).padStart(5)}  left after ${WAIT_S} s ${String(r.left).padStart(5)}  last arrival ${ms(r.tail).padStart(9)} after the last reading  order violations ${r.outOfOrder}  duplicates ${r.duplicates}  (${r.requests} requests, ${r.failed} answered 500)  [publish→agent p50 ${ms(r.ingestP50)}; agent→receiver p50 ${ms(r.deliveryP50)} p99 ${ms(r.deliveryP99)}; agent CPU ${r.agentCpuPerEvent.toFixed(2)} ms/event]${outage}`;
}

const brokerPort = await freePort();
writeFileSync(
  join(dir, "mosquitto.conf"),
  [
    `listener ${brokerPort} 127.0.0.1`,
    "allow_anonymous true",
    "max_queued_messages 0",
    "max_inflight_messages 0",
    "",
  ].join("\n"),
);
const broker = spawn("mosquitto", ["-c", join(dir, "mosquitto.conf")], { stdio: "ignore" });
const results = { healthy: [], flaky: [], outage: [] };
try {
  await waitForPort(brokerPort);
  console.log(
    `load average at start: ${loadavg()
      .map((x) => x.toFixed(2))
      .join(" ")} (${cpus().length} CPUs)`,
  );
  console.log(
    `flaky receiver bench: ${RATE} readings/s over ${SERIES} series for ${SECONDS} s (every reading an event), ${FAIL * 100} % answered 500, concurrency ${CONCURRENCY}; agent ${BIN}`,
  );
  for (let run = 1; run <= RUNS; run++) {
    const healthy = await workload(brokerPort, "healthy", 0, run);
    console.log(`run ${run}: ${line(healthy)}`);
    const flaky = await workload(brokerPort, "flaky", FAIL, run);
    console.log(`run ${run}: ${line(flaky)}`);
    results.healthy.push(healthy);
    results.flaky.push(flaky);
    if (OUTAGE_S > 0) {
      const outage = await workload(brokerPort, "outage", 0, run, OUTAGE_S);
      console.log(`run ${run}: ${line(outage)}`);
      results.outage.push(outage);
    }
  }
  for (const label of ["healthy", "flaky", "outage"]) {
    const rs = results[label];
    if (rs.length === 0) continue;
    const m = (key) => median(rs.map((r) => r[key]));
    const keys = [
      "p50",
      "p99",
      "max",
      "pendingAtEnd",
      "left",
      "tail",
      "outOfOrder",
      "duplicates",
      "requests",
      "failed",
    ];
    const more = ["ingestP50", "deliveryP50", "deliveryP99", "resumeMs", "afterP50", "afterP99", "agentCpuPerEvent"];
    const med = Object.fromEntries([...keys, ...more].map((k) => [k, m(k)]));
    console.log(`median of ${rs.length}: ${line({ label, ...med })}`);
  }
  console.log(
    `load average at end: ${loadavg()
      .map((x) => x.toFixed(2))
      .join(" ")}`,
  );
} finally {
  broker.kill("SIGTERM");
  await new Promise((r) => broker.once("exit", r));
  rmSync(dir, { recursive: true, force: true });
}
