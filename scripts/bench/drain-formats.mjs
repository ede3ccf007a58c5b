// Drain benchmark for destination formats: the same backlog as drain.mjs (a real outbox file,
// a keep-alive node:http receiver in a child process answering 200), drained through
// (1) the standard format, (2) a preset (slack: the body is rendered per attempt) and
// (3) batches of --batch events. Prints events/s and requests/s per run and the median.
// Needs the build: npx tsc -p tsconfig.build.json
//
//   node scripts/bench/drain-formats.mjs [--events 30000] [--series 256] [--concurrency 16] [--batch 50] [--runs 3]
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { arg, body, median, startReceiver } from "./drain.mjs";

const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const RUN_LIMIT_MS = 30_000;

async function drainOnce(receiver, dest, { events, seriesCount }) {
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
    let i = 0;
    while (i < events) {
      const list = [];
      for (let k = 0; k < 5_000 && i < events; k++, i++) {
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
    });
    const before = await receiver.count();
    const t0 = performance.now();
    dispatcher.start();
    const limit = new Promise((_, reject) =>
      setTimeout(() => reject(new Error(`drain did not finish within ${RUN_LIMIT_MS} ms`)), RUN_LIMIT_MS).unref(),
    );
    await Promise.race([dispatcher.whenIdle(), limit]);
    const ms = performance.now() - t0;
    await dispatcher.stop(1_000);
    const requests = (await receiver.count()) - before;
    const stats = outbox.stats().find((s) => s.destination === "sink");
    if (stats?.pending !== 0 || stats?.delivered !== events)
      throw new Error(`drain incomplete: ${JSON.stringify(stats)}`);
    return { ms, requests };
  } finally {
    outbox.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main() {
  const events = arg("events", 30_000);
  const seriesCount = arg("series", 256);
  const concurrency = arg("concurrency", 16);
  const batch = arg("batch", 50);
  const runs = arg("runs", 3);
  const variants = [
    ["standard", { concurrency }],
    ["preset slack", { concurrency, preset: "slack" }],
    [`batch ${batch}`, { concurrency, batch: { max_events: batch, max_wait: "0s" } }],
  ];
  const receiver = await startReceiver();
  try {
    for (const [name, dest] of variants) {
      const rates = [];
      for (let r = 0; r < runs; r++) {
        const { ms, requests } = await drainOnce(receiver, dest, { events, seriesCount });
        const rate = (events / ms) * 1000;
        rates.push(rate);
        console.log(
          `${name} run ${r + 1}: ${events} events in ${requests} requests, ${(ms / 1000).toFixed(2)} s = ${Math.round(rate)} events/s, ${Math.round((requests / ms) * 1000)} requests/s`,
        );
      }
      console.log(`${name}: median ${Math.round(median(rates))} events/s`);
    }
    console.log(`(${events} events, ${seriesCount} series, concurrency ${concurrency}, signing on)`);
  } finally {
    await receiver.stop();
  }
}

await main();
