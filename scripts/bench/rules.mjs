// Rule evaluation alone: readings/s through RuleEngine.process (plus tick() whenever the
// engine says work is due), with 1,000 series (100 sensors × 10 metrics) and 50 rules of
// mixed kinds; then compound `when` rules (1,000 sensors, 20 rules of 3 inputs) beside
// it. Median of 5 runs, each on a fresh engine. Needs the build:
//   npm run build && node scripts/bench/rules.mjs
// Bounded: 5 runs × 500,000 readings per case and batch size; about a minute on a Pi-class CPU.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const RUNS = 5;
const fmt = (n) => Math.round(n).toLocaleString("en-US");

const engineUrl = new URL("../../dist/rules/engine.js", import.meta.url);
if (!existsSync(fileURLToPath(engineUrl))) {
  console.error("dist/ is missing: run `npm run build` first");
  process.exitCode = 1;
} else {
  await main();
}

async function main() {
  const { RuleEngine } = await import(engineUrl.href);
  const { configSchema } = await import(new URL("../../dist/config/schema.js", import.meta.url).href);

  const SENSORS = 100;
  const METRICS = 10;
  const READINGS = 500_000;

  const defs = [];
  for (let i = 0; i < 14; i++) {
    defs.push({
      match: { sensor: `s${i % 10}*`, metric: `m${i % METRICS}` },
      above: 60,
      clear_below: 55,
      ...(i % 2 ? { for: "30s" } : {}),
    });
  }
  for (let i = 0; i < 6; i++)
    defs.push({ match: { sensor: "s*", metric: `m${i}`, labels: { site: "barn" } }, below: 42 });
  for (let i = 0; i < 8; i++) {
    defs.push({
      match: { sensor: `s${i}?`, metric: "m*" },
      above: 58,
      aggregate: { fn: ["avg", "min", "max", "count"][i % 4], over: "1m" },
    });
  }
  for (let i = 0; i < 8; i++) {
    defs.push({
      match: { sensor: `s${i}*`, metric: `m${(i + 3) % METRICS}` },
      rate_above: 2,
      rate_per: "s",
      rate_window: "30s",
    });
  }
  for (let i = 0; i < 6; i++)
    defs.push({ match: { sensor: `s${i}*`, metric: i % 2 ? "*" : `m${i}` }, absent_for: "5m" });
  for (let i = 0; i < 4; i++) defs.push({ match: { sensor: `s0${i}`, metric: "m?" }, equals: "OPEN" });
  defs.push({ match: { sensor: "s00", metric: "m0" }, forward: true });
  defs.push({ match: { sensor: "s01", metric: "*" }, forward: true });
  defs.push({ match: { sensor: "s02", metric: "*" }, forward: { batch_every: "1m" } });
  defs.push({ match: { sensor: "s0*", metric: "m9" }, forward: { batch_every: "5m" } });
  if (defs.length !== 50) throw new Error(`expected 50 rules, have ${defs.length}`);
  const rules = configSchema.parse({
    version: 1,
    agent: { id: "bench" },
    destinations: { ops: { url: "http://127.0.0.1:9/", signature: "none" } },
    rules: defs.map((d, i) => ({ name: `rule-${i}`, notify: ["ops"], ...d })),
  }).rules;

  // Readings round-robin over the 1,000 series, 1 ms apart (each series every second).
  // Values wander slowly around 50 so thresholds are crossed now and then, not constantly.
  const names = [];
  for (let s = 0; s < SENSORS; s++) names.push(`s${String(s).padStart(2, "0")}`);
  const metrics = Array.from({ length: METRICS }, (_, m) => `m${m}`);
  const barn = Object.freeze({ site: "barn" });
  const house = Object.freeze({ site: "house" });
  const t0 = Date.parse("2026-01-01T00:00:00Z");
  const readings = new Array(READINGS);
  for (let i = 0; i < READINGS; i++) {
    const series = i % (SENSORS * METRICS);
    const s = (series / METRICS) | 0;
    const m = series % METRICS;
    const round = (i / (SENSORS * METRICS)) | 0;
    const value = m === 7 && s < 4 ? (round % 50 < 25 ? "OPEN" : "CLOSED") : 50 + 12 * Math.sin(round / 20 + series);
    readings[i] = {
      sensor: names[s],
      metric: metrics[m],
      value,
      ts: t0 + i,
      source: "bench",
      labels: s % 2 ? barn : house,
    };
  }

  const baseline = {};
  for (const batchSize of [1, 100]) {
    const m = measure(RuleEngine, rules, readings, batchSize, t0);
    baseline[batchSize] = m.median;
    console.log(
      `rules: ${fmt(m.median)} readings/s (median of ${RUNS}; batch ${batchSize}; ` +
        `1,000 series, 50 rules; ${fmt(m.events)} events, ${fmt(m.states)} state rows per run of ${fmt(READINGS)})`,
    );
  }

  // Compound case (issue 17): 1,000 sensors with 4 metrics each, 20 `when` rules of 3
  // inputs each; like the rules above, each rule matches a tenth of the sensors
  // (s0*..s9*), so every sensor is judged by 2 rules. Values wander as above, rounded to
  // 0.1 as sensors report them; an expression is evaluated only when an input changes.
  const CSENSORS = 1000;
  const CMETRICS = 4;
  const cdefs = [];
  for (let i = 0; i < 20; i++) {
    const [a, b, c] = [i % CMETRICS, (i + 1) % CMETRICS, (i + 2) % CMETRICS];
    cdefs.push({
      match: { sensor: `s${i % 10}*` },
      when: `c${a} > 60 && c${b} < 45 || c${c} - c${a} > 20`,
      ...(i % 2 ? { for: "30s", clear_when: `c${a} < 55` } : {}),
    });
  }
  const crules = configSchema.parse({
    version: 1,
    agent: { id: "bench" },
    destinations: { ops: { url: "http://127.0.0.1:9/", signature: "none" } },
    rules: cdefs.map((d, i) => ({ name: `when-${i}`, notify: ["ops"], ...d })),
  }).rules;
  const cnames = Array.from({ length: CSENSORS }, (_, s) => `s${String(s).padStart(3, "0")}`);
  const cmetrics = Array.from({ length: CMETRICS }, (_, m) => `c${m}`);
  const creadings = new Array(READINGS);
  for (let i = 0; i < READINGS; i++) {
    const series = i % (CSENSORS * CMETRICS);
    const s = (series / CMETRICS) | 0;
    const round = (i / (CSENSORS * CMETRICS)) | 0;
    creadings[i] = {
      sensor: cnames[s],
      metric: cmetrics[series % CMETRICS],
      value: Math.round(10 * (50 + 12 * Math.sin(round / 2 + series))) / 10,
      ts: t0 + i,
      source: "bench",
      labels: house,
    };
  }
  for (const batchSize of [1, 100]) {
    const m = measure(RuleEngine, crules, creadings, batchSize, t0);
    console.log(
      `rules compound: ${fmt(m.median)} readings/s (median of ${RUNS}; batch ${batchSize}; ` +
        `1,000 sensors × 4 metrics, 20 when rules of 3 inputs; ${fmt(m.events)} events per run of ${fmt(READINGS)}); ` +
        `${(m.median / baseline[batchSize]).toFixed(2)}× the single-metric rules above`,
    );
  }
}

/** Median readings/s of RUNS runs (after one warm-up run), each on a fresh engine. */
function measure(RuleEngine, rules, readings, batchSize, t0) {
  const READINGS = readings.length;
  const rates = [];
  let events = 0;
  let states = 0;
  for (let run = 0; run <= RUNS; run++) {
    let now = t0;
    const clock = { now: () => now, monotonic: () => now, setTimeout: () => ({}), clearTimeout: () => {} };
    const engine = new RuleEngine({ agentId: "bench", rules, clock });
    events = 0;
    states = 0;
    const start = process.hrtime.bigint();
    for (let i = 0; i < READINGS; i += batchSize) {
      now = t0 + i;
      const due = engine.nextDueAt();
      if (due !== undefined && due <= now) {
        const b = engine.tick();
        events += b.events.length;
        states += b.states.length + b.removedStates.length;
      }
      const b = engine.process(batchSize === 1 ? [readings[i]] : readings.slice(i, i + batchSize));
      events += b.events.length;
      states += b.states.length + b.removedStates.length;
    }
    const secs = Number(process.hrtime.bigint() - start) / 1e9;
    if (run > 0) rates.push(READINGS / secs); // run 0 warms the JIT
  }
  rates.sort((a, b) => a - b);
  return { median: rates[Math.floor(rates.length / 2)], events, states };
}
