// Durable enqueue rate of the SQLite outbox: events/s whose commit() promise resolved
// (WAL, synchronous=FULL, group commit). Realistic ~300-byte bodies, 1 destination,
// many concurrent callers (as MQTT messages in flight would be). Median of 5 runs.
//
//   npx tsc -p tsconfig.build.json && node scripts/bench/enqueue.mjs [events-per-run] [callers]
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { systemClock } from "../../dist/clock.js";
import { newEventId } from "../../dist/events.js";
import { silentLogger } from "../../dist/ops/logger.js";
import { Metrics } from "../../dist/ops/metrics.js";
import { Outbox } from "../../dist/store/outbox.js";

const EVENTS = Number(process.argv[2] ?? 200_000);
const CALLERS = Number(process.argv[3] ?? 1000);
const RUNS = 5;

function event(i) {
  const now = Date.now();
  const sensor = `greenhouse-${i % 40}`;
  return {
    id: newEventId(now),
    type: "alert.firing",
    rule: "temp-high",
    series: `temp-high\u001f${sensor}\u001ftemperature`,
    severity: "warning",
    priority: 10,
    destinations: ["ops"],
    createdAt: now,
    body: {
      type: "alert.firing",
      timestamp: new Date(now).toISOString(),
      data: {
        agent: "pi-greenhouse-01",
        rule: "temp-high",
        sensor,
        metric: "temperature",
        value: 31.7 + (i % 10) / 10,
        threshold: 30,
        severity: "warning",
        labels: { site: "north", room: "b2" },
        since: new Date(now - 60_000).toISOString(),
      },
    },
  };
}

async function run() {
  const dir = mkdtempSync(join(tmpdir(), "edgehook-bench-enqueue-"));
  const outbox = new Outbox({
    file: join(dir, "outbox.db"),
    limits: {
      max_events: 10_000_000,
      max_bytes: 10 * 1024 ** 3,
      max_age: 7 * 86_400_000,
      min_free_disk: 1,
      keep_delivered: 86_400_000,
      commit_delay: 2,
    },
    clock: systemClock,
    logger: silentLogger(),
    metrics: new Metrics(),
  });
  outbox.open();
  let next = 0;
  const caller = async () => {
    while (next < EVENTS) {
      const i = next++;
      const r = await outbox.commit({ events: [event(i)], states: [], removedStates: [] });
      if (r.accepted !== 1) throw new Error("not accepted");
    }
  };
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  await Promise.all(Array.from({ length: CALLERS }, caller));
  const secs = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const cpuUs = (cpu.user + cpu.system) / EVENTS;
  const tx = outbox.transactionCount;
  const pending = outbox.totals().pending;
  outbox.close();
  rmSync(dir, { recursive: true, force: true });
  if (pending !== EVENTS) throw new Error(`expected ${EVENTS} pending, found ${pending}`);
  return { rate: EVENTS / secs, tx, secs, cpuUs };
}

const rates = [];
const cpus = [];
for (let r = 0; r < RUNS; r++) {
  const { rate, tx, secs, cpuUs } = await run();
  rates.push(rate);
  cpus.push(cpuUs);
  console.log(
    `run ${r + 1}: ${Math.round(rate)} events/s (${EVENTS} events in ${secs.toFixed(2)} s, ${tx} transactions, ${cpuUs.toFixed(1)} µs CPU per event incl. building it)`,
  );
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
// The CPU figure hardly depends on what else the machine runs; the rate does.
console.log(
  `median: ${Math.round(median(rates))} events/s durable (target >= 50000), ${median(cpus).toFixed(1)} µs CPU per event, ${CALLERS} concurrent callers`,
);
