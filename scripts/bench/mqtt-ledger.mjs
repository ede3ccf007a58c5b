#!/usr/bin/env node
/**
 * What the MQTT redelivery keys cost on the SD card: bytes this process writes to
 * storage (/proc/self/io write_bytes: the outbox's WAL and database) while the real agent
 * (persistent session, QoS 1) takes readings from a local mosquitto, per scenario:
 *
 *   quiet   2,000 readings that change nothing (below the threshold): should write 0 bytes
 *   burst   2,000 readings that each fire or resolve an alert, published at once
 *   sparse  10 such readings, 1.2 s apart (each commit alone; keys deleted on their own)
 *
 * Measured from the subscription being in place until 6 s after the last reading was
 * decoded (so delayed key deletions count). Median of --runs runs (default 3).
 *
 *   npm run build && node scripts/bench/mqtt-ledger.mjs [--runs 3] [--dist dist]
 *
 * --dist points at another build (e.g. a checkout of an older commit) for a baseline.
 * Loopback only, bounded in count and time; stops mosquitto itself.
 */
import { spawn } from "node:child_process";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import mqtt from "mqtt";

const argv = process.argv;
const opt = (name, dflt) => {
  const i = argv.indexOf(`--${name}`);
  return i > 0 ? argv[i + 1] : dflt;
};
const RUNS = Number(opt("runs", 3));
const DIST = resolve(opt("dist", new URL("../../dist", import.meta.url).pathname));
const { Agent } = await import(pathToFileURL(join(DIST, "agent.js")).href);
const { parseConfig } = await import(pathToFileURL(join(DIST, "config/load.js")).href);
const { silentLogger } = await import(pathToFileURL(join(DIST, "ops/logger.js")).href);

const dir = mkdtempSync(join(tmpdir(), "edgehook-ledger-bench-"));
chmodSync(dir, 0o777);

const writeBytes = () => Number(/write_bytes: (\d+)/.exec(readFileSync("/proc/self/io", "utf8"))[1]);
/** Longer than the outbox waits before deleting released keys on their own (5 s). */
const SETTLE_MS = 6000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

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

async function startMosquitto(port) {
  const conf = join(dir, "mosquitto.conf");
  writeFileSync(
    conf,
    [
      `listener ${port} 127.0.0.1`,
      "allow_anonymous true",
      "max_queued_messages 0",
      "max_inflight_messages 100",
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
    await sleep(25);
  }
}

async function run(url, scenario, n) {
  const dataDir = join(dir, `${scenario}-${n}`);
  const closed = await freePort();
  const yaml = `
version: 1
agent: { id: bench, data_dir: ${JSON.stringify(dataDir)}, require_clock_sync: never, log_level: error }
http: { listen: false }
mqtt:
  url: ${url}
  client_id: ledger-bench-${scenario}-${n}
  subscriptions:
    - { topic: "bench/+/t", sensor: "{1}", metric: temperature, format: number, qos: 1 }
destinations:
  void: { url: "http://127.0.0.1:${closed}/", signature: none }
rules:
  - { name: hot, match: { metric: temperature }, above: 30, clear_below: 25, notify: [void] }
`;
  const agent = new Agent({
    loaded: parseConfig(yaml, join(dir, "agent.yaml"), { env: {} }),
    logger: silentLogger(),
    env: {},
  });
  await agent.start();
  const decoded = async () => (await agent.metrics.readings.get()).values.reduce((a, v) => a + v.value, 0);
  const pub = await mqtt.connectAsync(url, { clientId: `ledger-bench-pub-${scenario}-${n}` });
  const deadline = Date.now() + 20_000;
  while ((await decoded()) === 0) {
    if (Date.now() > deadline) throw new Error("no subscription");
    await pub.publishAsync("bench/probe/t", "0", { qos: 1 });
    await sleep(50);
  }
  await sleep(SETTLE_MS); // startup writes (session record, probe keys) done
  const probes = await decoded();
  const before = writeBytes();
  const count = scenario === "sparse" ? 10 : 2000;
  const value = (i) => (scenario === "quiet" ? "20" : i % 2 === 0 ? "35" : "20");
  if (scenario === "sparse") {
    for (let i = 0; i < count; i++) {
      await pub.publishAsync("bench/s1/t", value(i), { qos: 1 });
      await sleep(1200);
    }
  } else {
    await Promise.all(Array.from({ length: count }, (_, i) => pub.publishAsync("bench/s1/t", value(i), { qos: 1 })));
  }
  while ((await decoded()) < probes + count) {
    if (Date.now() > deadline + 30_000) throw new Error("readings did not arrive");
    await sleep(20);
  }
  await sleep(SETTLE_MS);
  const bytes = writeBytes() - before;
  const pending = agent.health().outbox.pending;
  await pub.endAsync();
  await agent.stop();
  return { bytes, perReading: bytes / count, events: pending };
}

const port = await freePort();
const mosq = await startMosquitto(port);
const url = `mqtt://127.0.0.1:${port}`;
try {
  console.log(`mqtt-ledger: build ${DIST}, ${RUNS} runs per scenario, node ${process.version}`);
  for (const scenario of ["quiet", "burst", "sparse"]) {
    const results = [];
    for (let i = 0; i < RUNS; i++) results.push(await run(url, scenario, i));
    console.log(
      `${scenario.padEnd(6)}: ${median(results.map((r) => r.bytes))} bytes written median ` +
        `[${results.map((r) => r.bytes).join(", ")}], ${Math.round(median(results.map((r) => r.perReading)))} per reading, ` +
        `${results[0].events} events stored in run 1`,
    );
  }
} finally {
  mosq.kill("SIGTERM");
  rmSync(dir, { recursive: true, force: true });
}
