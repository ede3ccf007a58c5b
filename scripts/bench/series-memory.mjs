#!/usr/bin/env node
/**
 * Memory cost of one rule series, for documenting agent.max_series: heap used after a
 * forced GC with N series in a RuleEngine, minus the heap before, divided by N. One
 * process per scenario and run, so nothing of one run is left in the next; median of
 * RUNS runs. Needs the build and --expose-gc (the script re-runs itself with it):
 *
 *   npm run build && node scripts/bench/series-memory.mjs [series] [runs]
 *
 * Bounded: N readings per run (default 100,000), a few seconds each. Pure CPU, no IO.
 */
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const N = Number(process.argv[2] ?? 100_000);
const RUNS = Number(process.argv[3] ?? 3);
const engineUrl = new URL("../../dist/rules/engine.js", import.meta.url);
const schemaUrl = new URL("../../dist/config/schema.js", import.meta.url);

/** Scenario → rule and how each series is fed (value, samples per series). */
const SCENARIOS = {
  "threshold, ok": { rule: { above: 30 }, value: 20, samples: 1 },
  "threshold, firing": { rule: { above: 30 }, value: 31, samples: 1 },
  "avg over 5m, 10 samples": { rule: { above: 30, aggregate: { fn: "avg", over: "5m" } }, value: 20, samples: 10 },
  "absent_for, seen": { rule: { absent_for: "10m" }, value: 20, samples: 1 },
};

if (!existsSync(fileURLToPath(engineUrl))) {
  console.error("dist/ is missing: run `npm run build` first");
  process.exitCode = 1;
} else if (process.argv[4] === "--one") {
  await one(process.argv[5]);
} else {
  const self = fileURLToPath(import.meta.url);
  console.log(`bytes per series, ${N} series, median of ${RUNS} runs (node ${process.version})`);
  for (const name of Object.keys(SCENARIOS)) {
    const runs = [];
    for (let i = 0; i < RUNS; i++) {
      const out = execFileSync(process.execPath, ["--expose-gc", self, String(N), "1", "--one", name], {
        encoding: "utf8",
      });
      runs.push(Number(out.trim()));
    }
    runs.sort((a, b) => a - b);
    console.log(
      `${name.padEnd(26)} ${String(runs[Math.floor(runs.length / 2)]).padStart(6)}   (runs: ${runs.join(", ")})`,
    );
  }
}

async function one(name) {
  const { RuleEngine } = await import(engineUrl.href);
  const { configSchema } = await import(schemaUrl.href);
  const sc = SCENARIOS[name];
  const rules = configSchema.parse({
    version: 1,
    agent: { id: "bench" },
    destinations: { ops: { url: "http://127.0.0.1:9/hook", signature: "none" } },
    rules: [{ name: "r", match: { sensor: "*", metric: "t" }, notify: ["ops"], ...sc.rule }],
  }).rules;
  let now = Date.parse("2026-01-01T00:00:00Z");
  const clock = { now: () => now, monotonic: () => now, setTimeout: () => ({}), clearTimeout() {} };
  globalThis.gc();
  const before = process.memoryUsage().heapUsed;
  const engine = new RuleEngine({ agentId: "bench", rules, clock, maxSeries: N + 1 });
  for (let k = 0; k < sc.samples; k++) {
    now += 1000;
    for (let i = 0; i < N; i += 1000) {
      const batch = [];
      for (let j = i; j < Math.min(N, i + 1000); j++) {
        batch.push({ sensor: `sensor-${j}`, metric: "t", value: sc.value, ts: now, source: "bench", labels: {} });
      }
      engine.process(batch); // the batch a commit would take; dropped here
    }
  }
  globalThis.gc();
  const after = process.memoryUsage().heapUsed;
  if (engine.seriesCount !== N) throw new Error(`expected ${N} series, have ${engine.seriesCount}`);
  console.log(Math.round((after - before) / N));
}
