// Rule evaluation alone: readings/s through RuleEngine.process (plus tick() whenever the
// engine says work is due), with 1,000 series (100 sensors × 10 metrics) and 50 rules of
// mixed kinds. Median of 5 runs, each on a fresh engine. Needs the build:
//   npm run build && node scripts/bench/rules.mjs
// Bounded: 5 runs × 500,000 readings per batch size; well under a minute on a Pi-class CPU.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

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
  const RUNS = 5;

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

  for (const batchSize of [1, 100]) {
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
    const median = rates[Math.floor(rates.length / 2)];
    console.log(
      `rules: ${Math.round(median).toLocaleString("en-US")} readings/s (median of ${RUNS}; batch ${batchSize}; ` +
        `1,000 series, 50 rules; ${events.toLocaleString("en-US")} events, ${states.toLocaleString("en-US")} state rows per run of ${READINGS.toLocaleString("en-US")})`,
    );
  }
}
