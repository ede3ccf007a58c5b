#!/usr/bin/env node
/**
 * Ingest throughput: readings/s from a separate MQTT publisher process (QoS 1)
 * through a local mosquitto into MqttSource, whose sink commits to SQLite the way the
 * agent does: one WAL transaction with synchronous=FULL per sink call, inserting a
 * row for ~1 in 100 readings (realistic: most readings change no rule state) or for
 * every reading (worst case); a baseline run without SQLite shows what the publisher
 * and broker allow. Figures are the median of 3 runs per mix, with the CPU
 * time of this process (MQTT client, decode, SQLite) per 1,000 readings.
 *
 *   npm run build && node scripts/bench/ingest.mjs [--count 100000] [--runs 3]
 *        [--broker-inflight 0] [--protocol 4] [--agent] [--persistent]
 *
 * --persistent: a persistent session (clean: false, as deployed), so QoS 1 messages are
 * tracked for redelivery (src/sources/redelivery.ts); the default is a clean session.
 *
 * Loopback only, bounded in count and time; stops mosquitto and the publisher itself.
 */
import { spawn } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { Agent } from "../../dist/agent.js";
import { systemClock } from "../../dist/clock.js";
import { parseConfig } from "../../dist/config/load.js";
import { configSchema } from "../../dist/config/schema.js";
import { silentLogger } from "../../dist/ops/logger.js";
import { Metrics } from "../../dist/ops/metrics.js";
import { MqttSource } from "../../dist/sources/mqtt.js";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const COUNT = arg("count", 100_000);
const RUNS = arg("runs", 3);
/** mosquitto's max_inflight_messages (0 = unlimited; its own default is 20). */
const INFLIGHT = arg("broker-inflight", 0);
const PROTOCOL = arg("protocol", 4);
/** Run the real Agent (rule engine + outbox + dispatcher) instead of the stand-in sink. */
const AGENT = process.argv.includes("--agent");
const PERSISTENT = process.argv.includes("--persistent");
const RUN_TIMEOUT_MS = 30_000;

const dir = mkdtempSync(join(tmpdir(), "edgehook-bench-"));
chmodSync(dir, 0o777); // mosquitto drops root and must write its files here

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

async function startMosquitto(port) {
  const conf = join(dir, "mosquitto.conf");
  writeFileSync(
    conf,
    [
      `listener ${port} 127.0.0.1`,
      "allow_anonymous true",
      "max_queued_messages 0",
      `max_inflight_messages ${INFLIGHT}`,
      "",
    ].join("\n"),
  );
  const proc = spawn("mosquitto", ["-c", conf], { stdio: "ignore" });
  const deadline = Date.now() + 5_000;
  for (;;) {
    const ok = await new Promise((r) => {
      const s = connect(port, "127.0.0.1");
      s.once("connect", () => {
        s.destroy();
        r(true);
      });
      s.once("error", () => r(false));
    });
    if (ok) return proc;
    if (Date.now() > deadline) throw new Error("mosquitto did not start");
    await new Promise((r) => setTimeout(r, 25));
  }
}

// The publisher runs in its own process so its CPU is not counted as ours.
const publisherScript = join(dir, "publisher.mjs");
writeFileSync(
  publisherScript,
  `import mqtt from ${JSON.stringify(new URL("../../node_modules/mqtt/build/index.js", import.meta.url).pathname)};
const [url, count] = [process.argv[2], Number(process.argv[3])];
const client = await mqtt.connectAsync(url, { clientId: "bench-pub-" + process.pid });
let acked = 0, sent = 0;
const WINDOW = 2000;
await new Promise((resolve) => {
  const pump = () => {
    while (sent < count && sent - acked < WINDOW) {
      const i = sent++;
      const payload = JSON.stringify({ temperature: 20 + (i % 100) / 10, seq: i });
      client.publish("bench/s" + (i % 100) + "/env", payload, { qos: 1 }, () => {
        if (++acked === count) resolve();
        else if (sent - acked < WINDOW / 2) pump();
      });
    }
  };
  pump();
});
await client.endAsync();
`,
);

function openDb(file) {
  const db = new Database(file);
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = FULL");
  db.exec("CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, sensor TEXT, metric TEXT, value REAL, ts INTEGER)");
  return db;
}

async function run(url, mix, runNo) {
  const db = openDb(join(dir, `bench-${mix}-${runNo}.db`));
  const insert = db.prepare("INSERT INTO rows (sensor, metric, value, ts) VALUES (?, ?, ?, ?)");
  const every = mix === "worst" ? 1 : 100;
  let seen = 0;
  let calls = 0;
  const commit = db.transaction((readings) => {
    for (const r of readings) {
      if (seen++ % every === 0) insert.run(r.sensor, r.metric, r.value, r.ts);
    }
  });
  let done;
  const finished = new Promise((r) => {
    done = r;
  });
  let first = 0;
  let cpu0;
  const sink = async (readings) => {
    if (first === 0) {
      first = performance.now();
      cpu0 = process.cpuUsage();
    }
    calls++;
    if (mix === "baseline") seen += readings.length;
    else commit(readings);
    if (seen >= COUNT) done();
  };
  const config = configSchema.parse({
    version: 1,
    agent: { id: "bench" },
    mqtt: {
      url,
      client_id: `bench-${mix}-${runNo}`,
      protocol_version: PROTOCOL,
      clean: !PERSISTENT,
      subscriptions: [{ topic: "bench/+/env", metric: "temperature", value: "temperature", qos: 1 }],
    },
  }).mqtt;
  const src = new MqttSource({
    config,
    agentId: "bench",
    sink,
    logger: silentLogger(),
    metrics: new Metrics(),
    clock: systemClock,
  });
  await src.start();
  const t0 = Date.now();
  while (src.state().status !== "up") {
    if (Date.now() - t0 > 5_000) throw new Error("source did not connect");
    await new Promise((r) => setTimeout(r, 10));
  }
  await new Promise((r) => setTimeout(r, 200)); // let the SUBACK land
  const pub = spawn(process.execPath, [publisherScript, url, String(COUNT)], { stdio: "inherit" });
  const timeout = new Promise((_, rej) =>
    setTimeout(() => rej(new Error(`run timed out (${seen}/${COUNT})`)), RUN_TIMEOUT_MS).unref(),
  );
  try {
    await Promise.race([finished, timeout]);
  } finally {
    pub.kill("SIGKILL");
  }
  const elapsed = performance.now() - first;
  const cpu = process.cpuUsage(cpu0);
  await src.stop();
  db.close();
  return {
    perSec: Math.round((COUNT / elapsed) * 1000),
    cpuMsPer1000: ((cpu.user + cpu.system) / 1000 / COUNT) * 1000,
    avgBatch: Math.round(COUNT / calls),
  };
}

/**
 * The real agent: a forward rule turns matching readings into outbox rows (one event
 * per reading for one destination). Realistic: the rule matches 1 sensor of 100;
 * worst case: every sensor. The destination is a closed loopback port, so deliveries
 * stay pending (offline) and the dispatcher does no HTTP work during the run.
 */
async function runAgent(url, mix, runNo) {
  const dataDir = join(dir, `agent-${mix}-${runNo}`);
  const closed = await freePort();
  const yaml = `
version: 1
agent: { id: bench, data_dir: ${JSON.stringify(dataDir)}, require_clock_sync: never, log_level: error }
http: { listen: false }
mqtt:
  url: ${url}
  client_id: bench-agent-${mix}-${runNo}
  clean: ${!PERSISTENT}
  protocol_version: ${PROTOCOL}
  subscriptions:
    - { topic: "bench/+/env", metric: temperature, value: temperature, qos: 1 }
destinations:
  void: { url: "http://127.0.0.1:${closed}/", signature: none }
rules:
  - name: fwd
    match: { sensor: "${mix === "worst" ? "*" : "s7"}" }
    forward: true
    notify: [void]
`;
  const loaded = parseConfig(yaml, join(dir, "agent.yaml"), { env: {} });
  const agent = new Agent({ loaded, logger: silentLogger(), env: {} });
  await agent.start();
  const decoded = async () => (await agent.metrics.readings.get()).values.reduce((a, v) => a + v.value, 0);
  await new Promise((r) => setTimeout(r, 300)); // connect and subscribe
  const pub = spawn(process.execPath, [publisherScript, url, String(COUNT)], { stdio: "inherit" });
  let first = 0;
  let cpu0;
  const deadline = Date.now() + RUN_TIMEOUT_MS;
  try {
    for (;;) {
      const n = await decoded();
      if (n > 0 && first === 0) {
        first = performance.now();
        cpu0 = process.cpuUsage();
      }
      if (n >= COUNT) break;
      if (Date.now() > deadline) throw new Error(`run timed out (${n}/${COUNT})`);
      await new Promise((r) => setTimeout(r, 5));
    }
  } finally {
    pub.kill("SIGKILL");
  }
  // Decoded is not committed: stop() waits for the last batches' commits and acks,
  // and counts in the elapsed time.
  await agent.stop();
  const elapsed = performance.now() - first;
  const cpu = process.cpuUsage(cpu0);
  const db = new Database(join(dataDir, "outbox.db"), { readonly: true });
  const tables = db
    .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
    .all()
    .map((t) => t.name);
  const events = tables.includes("events") ? db.prepare("SELECT count(*) AS n FROM events").get().n : undefined;
  db.close();
  return {
    perSec: Math.round((COUNT / elapsed) * 1000),
    cpuMsPer1000: ((cpu.user + cpu.system) / 1000 / COUNT) * 1000,
    rows: events ?? "?",
  };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const port = await freePort();
const mosq = await startMosquitto(port);
const url = `mqtt://127.0.0.1:${port}`;
try {
  console.log(
    `ingest: ${COUNT} QoS 1 readings per run, ${RUNS} runs per mix, MQTT protocol ${PROTOCOL}, ` +
      `mosquitto max_inflight_messages ${INFLIGHT}, ${PERSISTENT ? "persistent" : "clean"} session, node ${process.version}`,
  );
  for (const mix of AGENT ? ["realistic", "worst"] : ["baseline", "realistic", "worst"]) {
    const results = [];
    for (let i = 0; i < RUNS; i++) results.push(await (AGENT ? runAgent : run)(url, mix, i));
    const rowNote = AGENT
      ? { realistic: "agent, forward rule on 1 sensor in 100", worst: "agent, forward rule on every reading" }[mix]
      : { baseline: "no SQLite, for reference", realistic: "a row per 100 readings", worst: "a row per reading" }[mix];
    console.log(
      `${mix.padEnd(9)} (${rowNote}): ${median(results.map((r) => r.perSec))} readings/s median ` +
        `[${results.map((r) => r.perSec).join(", ")}], ` +
        `${median(results.map((r) => r.cpuMsPer1000)).toFixed(1)} CPU ms per 1,000 readings, ` +
        (AGENT
          ? `${results[0].rows} outbox events in run 1`
          : `~${median(results.map((r) => r.avgBatch))} readings per commit`),
    );
  }
} finally {
  mosq.kill("SIGTERM");
  rmSync(dir, { recursive: true, force: true });
}
