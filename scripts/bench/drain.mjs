// Drain benchmark: a 100,000-webhook backlog in a real outbox file, drained by the
// dispatcher (signing on, keep-alive, no rate limit) into a local node:http receiver that
// runs in a child process (so it does not share our event loop) and answers 200.
// Prints webhooks/s per run and the median of 3. Needs the build: npx tsc -p tsconfig.build.json
//
//   node scripts/bench/drain.mjs [--events 100000] [--series 256] [--concurrency 64] [--runs 3]
import { fork } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const RUN_LIMIT_MS = 30_000;

export function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}

/** Child side: a keep-alive receiver on 127.0.0.1:0 that counts and answers 200. */
function runReceiver() {
  let count = 0;
  const server = createServer((req, res) => {
    req.on("data", () => {});
    req.on("end", () => {
      count++;
      res.writeHead(200, { "content-length": "2" });
      res.end("ok");
    });
  });
  server.keepAliveTimeout = 60_000;
  server.listen(0, "127.0.0.1", () => process.send({ port: server.address().port }));
  process.on("message", (m) => {
    if (m === "count") process.send({ count });
    if (m === "exit") process.exit(0);
  });
  // Never outlive the benchmark.
  process.on("disconnect", () => process.exit(0));
}

/** Parent side: starts the receiver child; resolves with { url, count(), stop() }. */
export function startReceiver() {
  const child = fork(fileURLToPath(import.meta.url), ["--receiver"], {
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const killer = setTimeout(() => child.kill("SIGKILL"), 5 * 60_000);
  killer.unref();
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("message", ({ port }) => {
      resolve({
        url: `http://127.0.0.1:${port}/hooks`,
        count: () =>
          new Promise((r) => {
            child.once("message", (m) => r(m.count));
            child.send("count");
          }),
        stop: () =>
          new Promise((r) => {
            clearTimeout(killer);
            child.once("exit", r);
            child.send("exit");
          }),
      });
    });
  });
}

export function body(i, series) {
  return {
    type: "alert.firing",
    timestamp: new Date(1_767_225_600_000 + i * 1000).toISOString(),
    data: {
      agent: "bench-pi",
      rule: "boiler-hot",
      sensor: `sensor-${series}`,
      metric: "temperature",
      value: 80 + (i % 20) / 10,
      threshold: 80,
      severity: "warning",
      labels: { site: "north", room: "plant" },
      since: new Date(1_767_225_600_000).toISOString(),
    },
  };
}

export function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/**
 * Fills a fresh outbox with `events` across `seriesCount` series for destination "sink"
 * (the receiver, with `dest` as its extra settings), then times the dispatcher draining
 * it. Returns the time, the requests the receiver saw and events/s. drain-formats.mjs
 * runs it per destination format.
 */
export async function drainOnce(receiver, dest, { events, seriesCount, settleDelayMs }) {
  const { Outbox } = await import("../../dist/store/outbox.js");
  const { Dispatcher } = await import("../../dist/delivery/dispatcher.js");
  const { configSchema } = await import("../../dist/config/schema.js");
  const { Metrics } = await import("../../dist/ops/metrics.js");
  const { silentLogger } = await import("../../dist/ops/logger.js");
  const { systemClock } = await import("../../dist/clock.js");
  const { newEventId } = await import("../../dist/events.js");

  const dir = mkdtempSync(join(tmpdir(), "edgehook-bench-"));
  const config = configSchema.parse({
    version: 1,
    agent: { id: "bench" },
    destinations: { sink: { url: receiver.url, secret: SECRET, ...dest } },
  });
  const metrics = new Metrics();
  const outbox = new Outbox({
    file: join(dir, "outbox.db"),
    limits: config.outbox,
    clock: systemClock,
    logger: silentLogger(),
    metrics,
  });
  outbox.open();
  try {
    // Fill (not timed): one series per sensor, events interleaved as they would happen.
    const BATCH = 5_000;
    let i = 0;
    while (i < events) {
      const list = [];
      for (let k = 0; k < BATCH && i < events; k++, i++) {
        const series = i % seriesCount;
        list.push({
          id: newEventId(),
          type: "alert.firing",
          rule: "boiler-hot",
          series: `boiler-hot\u001fsensor-${series}\u001ftemperature`,
          severity: "warning",
          priority: 10,
          destinations: ["sink"],
          createdAt: Date.now(),
          body: body(i, series),
        });
      }
      await outbox.commit({ events: list, states: [], removedStates: [] });
    }
    const dispatcher = new Dispatcher({
      outbox,
      destinations: config.destinations,
      clock: systemClock,
      logger: silentLogger(),
      metrics,
      env: {},
      ...(settleDelayMs !== undefined ? { settleDelayMs } : {}),
    });
    const before = await receiver.count();
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    dispatcher.start();
    const limit = new Promise((_, reject) =>
      setTimeout(() => reject(new Error(`drain did not finish within ${RUN_LIMIT_MS} ms`)), RUN_LIMIT_MS).unref(),
    );
    await Promise.race([dispatcher.whenIdle(), limit]);
    const ms = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    await dispatcher.stop(1_000);
    const received = (await receiver.count()) - before;
    const stats = outbox.stats().find((s) => s.destination === "sink");
    if (stats?.pending !== 0 || stats?.delivered !== events) {
      throw new Error(`drain incomplete: ${JSON.stringify(stats)}`);
    }
    // CPU time of this process (dispatcher, signing, SQLite) per 1,000 webhooks: less
    // sensitive than the rate to other load on the machine.
    const cpuPerK = ((cpu.user + cpu.system) / 1000 / events) * 1000;
    return { ms, received, rate: (events / ms) * 1000, cpuPerK };
  } finally {
    outbox.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main() {
  const events = arg("events", 100_000);
  const seriesCount = arg("series", 256);
  const concurrency = arg("concurrency", 64);
  const runs = arg("runs", 3);
  const receiver = await startReceiver();
  try {
    const rates = [];
    const cpus = [];
    for (let r = 0; r < runs; r++) {
      const { ms, received, rate, cpuPerK } = await drainOnce(
        receiver,
        { concurrency },
        { events, seriesCount, settleDelayMs: arg("settle-delay", undefined) },
      );
      rates.push(rate);
      cpus.push(cpuPerK);
      console.log(
        `run ${r + 1}: ${events} webhooks (${received} received) in ${(ms / 1000).toFixed(2)} s = ${Math.round(rate)} webhooks/s, ${cpuPerK.toFixed(0)} ms CPU per 1,000`,
      );
    }
    console.log(
      `dispatcher drain: median ${Math.round(median(rates))} webhooks/s, ${median(cpus).toFixed(0)} ms CPU per 1,000 (${events} events, ${seriesCount} series, concurrency ${concurrency}, signing on)`,
    );
  } finally {
    await receiver.stop();
  }
}

if (process.argv.includes("--receiver")) runReceiver();
else if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main();
