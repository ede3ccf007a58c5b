// Memory must not grow with the backlog (design invariant 6). Measures, each in its own
// child process, the peak RSS of an agent-like outbox user doing next()/settle() rounds:
//   empty: an outbox holding only the few thousand events it drains;
//   full:  an outbox holding 1,000,000 pending deliveries (opened fresh, integrity check
//          included), doing the same rounds.
// Prints both peaks (median of RUNS runs each), their ratio (target: within 20 %) and
// the time per next() call.
//
//   npx tsc -p tsconfig.build.json && node scripts/bench/backlog-rss.mjs [backlog]
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const SELF = fileURLToPath(import.meta.url);
const ROUNDS = 2000;
const RUNS = 3;

async function child(mode, file, backlog) {
  const { Outbox } = await import("../../dist/store/outbox.js");
  const { systemClock } = await import("../../dist/clock.js");
  const { newEventId } = await import("../../dist/events.js");
  const { silentLogger } = await import("../../dist/ops/logger.js");
  const { Metrics } = await import("../../dist/ops/metrics.js");
  const outbox = new Outbox({
    file,
    limits: {
      max_events: 10_000_000,
      max_bytes: 16 * 1024 ** 3,
      max_age: 7 * 86_400_000,
      min_free_disk: 1,
      keep_delivered: 86_400_000,
      commit_delay: 2,
    },
    clock: systemClock,
    logger: silentLogger(),
    metrics: new Metrics(),
  });
  const event = (i) => {
    const now = Date.now();
    const sensor = `sensor-${i % 1000}`;
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
        data: { agent: "pi-01", rule: "temp-high", sensor, metric: "temperature", value: 31.7, threshold: 30, i },
      },
    };
  };
  const fill = async (n) => {
    const BATCH = 5000; // a full group: committed at once, one transaction each
    for (let i = 0; i < n; i += BATCH) {
      const events = Array.from({ length: Math.min(BATCH, n - i) }, (_, k) => event(i + k));
      await outbox.commit({ events, states: [], removedStates: [] });
    }
  };
  const opening = performance.now();
  outbox.open(); // integrity check and recount included
  const openMs = performance.now() - opening;
  if (mode === "fill") {
    await fill(backlog);
    outbox.close();
    return;
  }
  // Agent-like rounds: take up to 4 heads, settle them delivered.
  const t0 = performance.now();
  let nextCalls = 0;
  let nextMs = 0;
  for (let r = 0; r < ROUNDS; r++) {
    const a = performance.now();
    const batch = outbox.next("ops", Date.now(), 4, new Set());
    nextMs += performance.now() - a;
    nextCalls++;
    outbox.settle(
      batch.map((d) => ({ id: d.id, outcome: "delivered", attempt: { at: Date.now(), status: 200, durationMs: 3 } })),
    );
    if (r % 500 === 0) outbox.maintain();
  }
  const pending = outbox.totals().pending;
  outbox.close();
  process.stdout.write(
    JSON.stringify({
      maxRssKb: process.resourceUsage().maxRSS,
      openMs,
      pending,
      nextUs: (nextMs / nextCalls) * 1000,
      secs: (performance.now() - t0) / 1000,
    }),
  );
}

function runChild(mode, file, backlog) {
  const out = execFileSync(process.execPath, [SELF, "--child", mode, file, String(backlog)], {
    encoding: "utf8",
    timeout: 120_000,
  });
  return out ? JSON.parse(out) : undefined;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

if (process.argv[2] === "--child") {
  await child(process.argv[3], process.argv[4], Number(process.argv[5]));
} else {
  const BACKLOG = Number(process.argv[2] ?? 1_000_000);
  const dir = mkdtempSync(join(tmpdir(), "edgehook-bench-rss-"));
  try {
    const full = join(dir, "full.db");
    const t = performance.now();
    runChild("fill", full, BACKLOG);
    console.log(
      `filled ${BACKLOG} pending deliveries in ${((performance.now() - t) / 1000).toFixed(1)} s (${(statSync(full).size / 1024 ** 2).toFixed(0)} MiB file)`,
    );
    const empties = [];
    const fulls = [];
    for (let r = 0; r < RUNS; r++) {
      // Both children only open and drain; filling happens in a separate child.
      const emptyFile = join(dir, `empty-${r}.db`);
      runChild("fill", emptyFile, ROUNDS * 4);
      empties.push(runChild("empty", emptyFile, 0));
      rmSync(emptyFile, { force: true });
      fulls.push(runChild("full", full, BACKLOG));
      const e = empties.at(-1);
      const f = fulls.at(-1);
      console.log(
        `run ${r + 1}: peak RSS empty ${(e.maxRssKb / 1024).toFixed(1)} MiB, full ${(f.maxRssKb / 1024).toFixed(1)} MiB (${f.pending} pending left); next() ${e.nextUs.toFixed(0)} µs vs ${f.nextUs.toFixed(0)} µs; open ${(f.openMs / 1000).toFixed(1)} s (quick_check + recount), ${ROUNDS} rounds ${f.secs.toFixed(1)} s`,
      );
    }
    const e = median(empties.map((x) => x.maxRssKb)) / 1024;
    const f = median(fulls.map((x) => x.maxRssKb)) / 1024;
    console.log(
      `median peak RSS: empty ${e.toFixed(1)} MiB, ${BACKLOG} pending ${f.toFixed(1)} MiB, ratio ${(f / e).toFixed(3)} (target <= 1.20); ` +
        `next() median ${median(empties.map((x) => x.nextUs)).toFixed(0)} µs empty, ${median(fulls.map((x) => x.nextUs)).toFixed(0)} µs full`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
