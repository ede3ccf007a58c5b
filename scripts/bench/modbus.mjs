#!/usr/bin/env node
/**
 * The Modbus source at work: 10 devices of 20 registers each behind one real ServerTCP
 * process (test/support/modbus-slave.mjs) on a loopback port, polled by a real Agent in
 * a child process of its own (outbox in a temp directory, no rules). Per run it reports
 * the poll cycle time (all 10 devices, from edgehook_source_poll_duration_seconds), the
 * CPU the child spends per cycle beyond the baseline, and the RSS the source adds: the
 * baseline child runs the same agent without the modbus: section, measured the same
 * way, in turns with the measured one. Prints the median of the runs.
 *
 *   npm run build && node scripts/bench/modbus.mjs [--runs 3] [--seconds 10] [--every 250]
 *   MODBUS_BENCH_NODE_ARGS="--max-semi-space-size=1" node scripts/bench/modbus.mjs   (flags for both children)
 *
 * Loopback only, bounded in time; kills the server and every child it started by PID.
 */
import { fork } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const RUNS = arg("runs", 3);
const SECONDS = arg("seconds", 10);
const EVERY_MS = arg("every", 250);
const WARMUP_MS = 3_000;
// Extra node flags for both children, e.g. MODBUS_BENCH_NODE_ARGS="--max-semi-space-size=1".
const NODE_ARGS = (process.env.MODBUS_BENCH_NODE_ARGS ?? "").split(" ").filter(Boolean);
const DEVICES = 10;
const SELF = fileURLToPath(import.meta.url);
const SLAVE = fileURLToPath(new URL("../../test/support/modbus-slave.mjs", import.meta.url));

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** 20 registers per device, 16 values: 12 × uint16 and 4 × float32 (word swapped), addresses 0–19. */
function registers() {
  const regs = [];
  for (let a = 0; a < 12; a++) regs.push({ metric: `r${a}`, table: "holding", address: a, type: "uint16", scale: 0.1 });
  for (let a = 12; a < 20; a += 2)
    regs.push({ metric: `f${a}`, table: "holding", address: a, type: "float32", word_order: "little" });
  return regs;
}

// ---------------------------------------------------------------- the measured child

async function child(mode, url) {
  // The real agent in both children (outbox in a temp directory, no rules, no HTTP);
  // only "with" has the modbus: section, and so loads modbus-serial when it connects.
  const { Agent } = await import("../../dist/agent.js");
  const { parseConfig } = await import("../../dist/config/load.js");
  const { silentLogger } = await import("../../dist/ops/logger.js");
  const dir = mkdtempSync(join(tmpdir(), "edgehook-bench-modbus-"));
  const device = (i) => ({ unit_id: i + 1, sensor: `meter-${i + 1}`, registers: registers() });
  const bus = {
    name: "bench",
    url,
    every: `${EVERY_MS}ms`,
    timeout: `${Math.min(200, Math.floor(EVERY_MS / 2))}ms`,
    devices: Array.from({ length: DEVICES }, (_, i) => device(i)),
  };
  const config = {
    version: 1,
    agent: { id: "bench", data_dir: dir, require_clock_sync: "never" },
    http: { listen: false },
    ...(mode === "with" ? { modbus: [bus] } : {}),
  };
  // JSON is YAML.
  const agent = new Agent({
    loaded: parseConfig(JSON.stringify(config), join(dir, "agent.yaml")),
    logger: silentLogger(),
  });
  await agent.start();
  const metrics = agent.metrics;
  const readingsNow = async () =>
    Number(
      (await metrics.registry.getMetricsAsJSON())
        .find((x) => x.name === "edgehook_readings_total")
        ?.values.find((v) => v.labels.source === "modbus:bench")?.value ?? 0,
    );
  await sleep(WARMUP_MS);
  const hist = async () => {
    const m = (await metrics.registry.getMetricsAsJSON()).find(
      (x) => x.name === "edgehook_source_poll_duration_seconds",
    );
    const v = (suffix) =>
      Number(m?.values.find((x) => x.metricName === `edgehook_source_poll_duration_seconds_${suffix}`)?.value ?? 0);
    return { sum: v("sum"), count: v("count") };
  };
  const h0 = await hist();
  const r0 = await readingsNow();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const rss = [];
  const end = t0 + SECONDS * 1000;
  while (performance.now() < end) {
    await sleep(250);
    rss.push(process.memoryUsage.rss());
  }
  const cpu = process.cpuUsage(cpu0);
  const wall = (performance.now() - t0) / 1000;
  const h1 = await hist();
  const readings = await readingsNow();
  const state = agent.health().sources[0]?.status;
  await agent.stop();
  rmSync(dir, { recursive: true, force: true });
  const cycles = h1.count - h0.count;
  process.send({
    cycles,
    cycleMs: cycles > 0 ? ((h1.sum - h0.sum) / cycles) * 1000 : 0,
    readingsPerCycle: cycles > 0 ? (readings - r0) / cycles : 0,
    cpuMs: (cpu.user + cpu.system) / 1000,
    wall,
    rss: median(rss),
    heap: process.memoryUsage().heapTotal,
    state,
  });
}

// ---------------------------------------------------------------- the driver

const started = [];
function track(proc) {
  started.push(proc);
  return proc;
}
function killAll() {
  for (const p of started) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
}
process.on("exit", killAll);

async function startServer() {
  const proc = track(fork(SLAVE, ["tcp"], { stdio: ["ignore", "inherit", "inherit", "ipc"] }));
  let seq = 0;
  const waiting = new Map();
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("modbus server did not start")), 10_000);
    proc.on("message", (m) => {
      if (m.ready) {
        clearTimeout(timer);
        resolve(m.port);
      } else waiting.get(m.id)?.(m);
    });
  });
  const call = (op, body) =>
    new Promise((resolve) => {
      const id = ++seq;
      waiting.set(id, resolve);
      proc.send({ id, op, ...body });
    });
  const units = Array.from({ length: DEVICES }, (_, i) => i + 1);
  await call("units", { units });
  for (const unit of units) {
    await call("set", { unit, table: "holding", address: 0, values: Array.from({ length: 20 }, (_, i) => 1000 + i) });
  }
  return { proc, port };
}

function runChild(mode, url) {
  return new Promise((resolve, reject) => {
    const opts = ["--seconds", String(SECONDS), "--every", String(EVERY_MS)];
    const proc = track(
      fork(SELF, ["--child", mode, url, ...opts], {
        execArgv: NODE_ARGS,
        stdio: ["ignore", "inherit", "inherit", "ipc"],
      }),
    );
    const timer = setTimeout(
      () => {
        proc.kill("SIGKILL");
        reject(new Error(`${mode} child timed out`));
      },
      WARMUP_MS + SECONDS * 1000 + 30_000,
    );
    proc.once("message", (m) => {
      clearTimeout(timer);
      resolve(m);
    });
    proc.once("exit", (code) => {
      clearTimeout(timer);
      if (code !== 0) reject(new Error(`${mode} child exited with ${code}`));
    });
  });
}

async function main() {
  const { port } = await startServer();
  const url = `tcp://127.0.0.1:${port}`;
  console.log(
    `modbus bench: ${DEVICES} devices × 20 registers (16 values) over TCP (ServerTCP on 127.0.0.1:${port}), every ${EVERY_MS} ms, ` +
      `${SECONDS} s measured after ${WARMUP_MS / 1000} s warm-up, ${RUNS} runs; load average ${loadavg()
        .map((x) => x.toFixed(2))
        .join(" ")}`,
  );
  const rows = [];
  for (let run = 1; run <= RUNS; run++) {
    const base = await runChild("without", url);
    const withSrc = await runChild("with", url);
    if (withSrc.state !== "up" || withSrc.cycles === 0)
      throw new Error(`the source did not poll: ${JSON.stringify(withSrc)}`);
    const row = {
      run,
      cycles: withSrc.cycles,
      cycleMs: withSrc.cycleMs,
      readingsPerCycle: withSrc.readingsPerCycle,
      cpuMsPerCycle: (withSrc.cpuMs - (base.cpuMs * withSrc.wall) / base.wall) / withSrc.cycles,
      cpuPct: (withSrc.cpuMs / 1000 / withSrc.wall) * 100,
      basePct: (base.cpuMs / 1000 / base.wall) * 100,
      rssBase: base.rss,
      rssWith: withSrc.rss,
      heapBase: base.heap,
      heapWith: withSrc.heap,
    };
    rows.push(row);
    console.log(
      `run ${run}: ${row.cycles} cycles, cycle ${row.cycleMs.toFixed(2)} ms (${Math.round(row.readingsPerCycle)} readings), ` +
        `CPU ${row.cpuMsPerCycle.toFixed(2)} ms/cycle added (process ${row.cpuPct.toFixed(1)} % of a core, baseline ${row.basePct.toFixed(1)} %), ` +
        `RSS ${(row.rssWith / 2 ** 20).toFixed(1)} MiB vs baseline ${(row.rssBase / 2 ** 20).toFixed(1)} MiB ` +
        `(V8 heap ${(row.heapWith / 2 ** 20).toFixed(1)} vs ${(row.heapBase / 2 ** 20).toFixed(1)} MiB)`,
    );
  }
  const m = (k) => median(rows.map((r) => r[k]));
  console.log(
    `median of ${RUNS}: poll cycle ${m("cycleMs").toFixed(2)} ms for ${DEVICES} devices (${(m("cycleMs") / DEVICES).toFixed(2)} ms per device), ` +
      `CPU ${m("cpuMsPerCycle").toFixed(2)} ms per cycle, ` +
      `RSS added by the Modbus source ${((m("rssWith") - m("rssBase")) / 2 ** 20).toFixed(1)} MiB ` +
      `(${(m("rssBase") / 2 ** 20).toFixed(1)} → ${(m("rssWith") / 2 ** 20).toFixed(1)} MiB; ` +
      `V8 heap ${(m("heapBase") / 2 ** 20).toFixed(1)} → ${(m("heapWith") / 2 ** 20).toFixed(1)} MiB)`,
  );
  console.log(
    `load average after: ${loadavg()
      .map((x) => x.toFixed(2))
      .join(" ")}`,
  );
}

if (process.argv[2] === "--child") {
  await child(process.argv[3], process.argv[4]);
  process.exit(0);
} else {
  try {
    await main();
  } finally {
    killAll();
  }
}
