// Drain benchmark for destination formats: the same backlog as drain.mjs (a real outbox file,
// a keep-alive node:http receiver in a child process answering 200), drained through
// (1) the standard format, (2) a preset (slack: the body is rendered per attempt) and
// (3) batches of --batch events. Prints events/s and requests/s per run and the median.
// Needs the build: npx tsc -p tsconfig.build.json
//
//   node scripts/bench/drain-formats.mjs [--events 30000] [--series 256] [--concurrency 16] [--batch 50] [--runs 3]
import { arg, drainOnce, median, startReceiver } from "./drain.mjs";

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
        const { ms, received: requests } = await drainOnce(receiver, dest, { events, seriesCount });
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
