// Drain benchmark: a 30,000-webhook backlog in a real outbox file, drained by the
// dispatcher (signing on, keep-alive, no rate limit) into a local node:http receiver that
// runs in a child process (so it does not share our event loop) and answers 200. A drain is
// timed from start to the last 2xx; the outcomes still waiting to be written then (delivered
// ones wait up to 1 s, settle-writer.ts) are a fixed tail, printed beside it.
// Each run drains the backlog spread over `--narrow` series (8), then over `--series` (256),
// then has a bare undici Pool post the same number of bodies (bareOnce), all at the
// same concurrency against the same receiver; the order alternates run by run, after one
// warm-up round that is not counted. Five runs by default: a bare run lasts about a second,
// and on a loaded machine single runs of either swing by a factor of two. Prints events/s
// per run and the medians; with --json=<file> it appends the issue-15 rows (BENCHROWS.md):
// drain_8_series (baseline: the 256-series drain) and drain_vs_undici (drain with 256
// series / bare undici, per run; baseline: bare undici events/s).
// Needs the build: npx tsc -p tsconfig.build.json
//
//   node scripts/bench/drain.mjs [--events 30000] [--narrow 8] [--series 256] [--concurrency 64]
//                                [--runs 5] [--settle-delay ms] [--json=<file>]
import { fork } from "node:child_process";
import { appendFileSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Pool } from "undici";

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

/**
 * Baseline (bare-undici.mjs): `events` POSTs of the same bodies from memory by a bare undici
 * Pool, no outbox, no signing, no ordering at `concurrency` to the receiver; { ms, rate, cpuPerK }. */
export async function bareOnce(receiver, { events, concurrency }) {
  const url = new URL(receiver.url);
  const pool = new Pool(url.origin, { connections: concurrency, headersTimeout: 15_000, bodyTimeout: 15_000 });
  const bodies = [];
  for (let i = 0; i < 256; i++) bodies.push(Buffer.from(JSON.stringify(body(i, i))));
  let next = 0;
  let failed = 0;
  const deadline = Date.now() + RUN_LIMIT_MS;
  const worker = async () => {
    while (next < events && Date.now() < deadline) {
      const i = next++;
      const res = await pool.request({
        path: url.pathname,
        method: "POST",
        headers: { "content-type": "application/json", "webhook-id": `msg_${i}` },
        body: bodies[i % bodies.length],
      });
      await res.body.dump();
      if (res.statusCode !== 200) failed++;
    }
  };
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(Array.from({ length: concurrency }, worker));
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  await pool.close();
  if (next < events || failed > 0) throw new Error(`bare run incomplete: sent ${next}, failed ${failed}`);
  return { ms, rate: (events / ms) * 1000, cpuPerK: ((cpu.user + cpu.system) / 1000 / events) * 1000 };
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
    let timer;
    const limit = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`drain did not finish within ${RUN_LIMIT_MS} ms`)), RUN_LIMIT_MS);
    });
    // The drain is timed to the last 2xx the dispatcher saw (edgehook_deliveries_total, looked
    // at every 2 ms). Delivered outcomes are written up to 1 s later (settle-writer.ts), a
    // fixed tail that says nothing about the rate; `settledMs` is the time until they are all
    // on disk, and the CPU is counted to then.
    let ms;
    let poll;
    const delivered = new Promise((resolve) => {
      poll = setInterval(async () => {
        const { values } = await metrics.deliveries.get();
        let n = 0;
        for (const v of values) if (v.labels.destination === "sink" && v.labels.class === "2xx") n += v.value;
        if (n >= events) {
          ms ??= performance.now() - t0;
          clearInterval(poll);
          resolve();
        }
      }, 2);
    });
    try {
      await Promise.race([Promise.all([delivered, dispatcher.whenIdle()]), limit]);
    } finally {
      clearTimeout(timer);
      clearInterval(poll);
    }
    const settledMs = performance.now() - t0;
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
    return { ms, settledMs, received, rate: (events / ms) * 1000, cpuPerK };
  } finally {
    outbox.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** `--json=<file>` (BENCHROWS.md): where to append the rows, or undefined. */
function jsonFile() {
  const a = process.argv.find((x) => x.startsWith("--json="));
  return a === undefined ? undefined : a.slice("--json=".length);
}

async function main() {
  const events = arg("events", 30_000);
  const narrow = arg("narrow", 8);
  const wide = arg("series", 256);
  const concurrency = arg("concurrency", 64);
  const runs = arg("runs", 5);
  const settleDelayMs = arg("settle-delay", undefined);
  const json = jsonFile();
  const kinds = {
    narrow: () => drainOnce(receiver, { concurrency }, { events, seriesCount: narrow, settleDelayMs }),
    wide: () => drainOnce(receiver, { concurrency }, { events, seriesCount: wide, settleDelayMs }),
    bare: () => bareOnce(receiver, { events, concurrency }),
  };
  const label = {
    narrow: `drain, ${narrow} series`,
    wide: `drain, ${wide} series`,
    bare: "bare undici",
  };
  const receiver = await startReceiver();
  try {
    // Warm-up (not counted): JIT, connections and page cache for all three alike.
    for (const run of Object.values(kinds)) await run();
    const results = { narrow: [], wide: [], bare: [] };
    const order = Object.keys(kinds);
    for (let r = 0; r < runs; r++) {
      // Alternate: each kind goes first as often as last.
      for (const kind of r % 2 === 0 ? order : [...order].reverse()) {
        const res = await kinds[kind]();
        results[kind].push(res);
        console.log(
          `run ${r + 1} ${label[kind]}: ${events} webhooks in ${(res.ms / 1000).toFixed(2)} s = ${Math.round(res.rate)}/s, ${res.cpuPerK.toFixed(0)} ms CPU per 1,000${res.settledMs === undefined ? "" : ` (all outcomes written after ${(res.settledMs / 1000).toFixed(2)} s)`}`,
        );
      }
    }
    const rates = (kind) => results[kind].map((x) => Math.round(x.rate));
    const cpu = (kind) => Math.round(median(results[kind].map((x) => x.cpuPerK)));
    const ratios = results.wide.map((w, i) => Math.round((w.rate / results.bare[i].rate) * 1000) / 1000);
    for (const kind of order) {
      console.log(
        `${label[kind]}: median ${median(rates(kind))} webhooks/s, ${cpu(kind)} ms CPU per 1,000 in this process (${events} events, concurrency ${concurrency}${kind === "bare" ? "" : ", signing on"})`,
      );
    }
    console.log(`drain (${wide} series) / bare undici: median ${median(ratios)} (per run ${ratios.join(", ")})`);
    if (json !== undefined) {
      const load = loadavg()
        .map((x) => x.toFixed(1))
        .join(" ");
      const command = `node scripts/bench/drain.mjs ${process.argv.slice(2).join(" ")}`.trim();
      const rows = [
        {
          row: "drain_8_series",
          value: median(rates("narrow")),
          unit: "events/s",
          baseline: median(rates("wide")),
          baseline_label: `the same drain with ${wide} series`,
          runs: rates("narrow"),
          baseline_runs: rates("wide"),
          series: narrow,
          cpu_ms_per_1000: cpu("narrow"),
          load,
          command,
        },
        {
          row: "drain_vs_undici",
          value: median(ratios),
          unit: "ratio",
          baseline: median(rates("bare")),
          baseline_label: `bare undici Pool events/s, concurrency ${concurrency}`,
          runs: ratios,
          drain_runs: rates("wide"),
          baseline_runs: rates("bare"),
          series: wide,
          // CPU of this process per 1,000 (less sensitive to other load than the rates).
          cpu_ms_per_1000: cpu("wide"),
          baseline_cpu_ms_per_1000: cpu("bare"),
          load,
          command,
        },
      ];
      for (const row of rows) appendFileSync(json, `${JSON.stringify(row)}\n`);
    }
  } finally {
    await receiver.stop();
  }
}

if (process.argv.includes("--receiver")) runReceiver();
else if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main();
