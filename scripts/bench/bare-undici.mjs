// Baseline for drain.mjs: the same receiver child, the same bodies and concurrency, but a
// bare undici Pool firing POSTs from memory (no outbox, no signing, no ordering). The ratio
// dispatcher / bare says what the store-and-forward machinery costs. drain.mjs runs it
// (bareOnce) alternately with the dispatcher for the drain_vs_undici row.
//
//   node scripts/bench/bare-undici.mjs [--events 100000] [--concurrency 64] [--runs 3]
import { fileURLToPath } from "node:url";
import { arg, bareOnce, median, startReceiver } from "./drain.mjs";

async function main() {
  const events = arg("events", 100_000);
  const concurrency = arg("concurrency", 64);
  const runs = arg("runs", 3);
  const receiver = await startReceiver();
  try {
    const rates = [];
    for (let r = 0; r < runs; r++) {
      const { ms, rate } = await bareOnce(receiver, { events, concurrency });
      rates.push(rate);
      console.log(`run ${r + 1}: ${events} POSTs in ${(ms / 1000).toFixed(2)} s = ${Math.round(rate)} req/s`);
    }
    console.log(
      `bare undici Pool: median ${Math.round(median(rates))} req/s (${events} requests, concurrency ${concurrency})`,
    );
  } finally {
    await receiver.stop();
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main();
