// Baseline for drain.mjs: the same receiver child, the same bodies and concurrency, but a
// bare undici Pool firing POSTs from memory (no outbox, no signing, no ordering). The ratio
// dispatcher / bare says what the store-and-forward machinery costs.
//
//   node scripts/bench/bare-undici.mjs [--events 100000] [--concurrency 64] [--runs 3]
import { Pool } from "undici";
import { arg, body, median, startReceiver } from "./drain.mjs";

const RUN_LIMIT_MS = 30_000;

async function once(receiver, { events, concurrency }) {
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
  const t0 = performance.now();
  await Promise.all(Array.from({ length: concurrency }, worker));
  const ms = performance.now() - t0;
  await pool.close();
  if (next < events || failed > 0) throw new Error(`bare run incomplete: sent ${next}, failed ${failed}`);
  return { ms, rate: (events / ms) * 1000 };
}

const events = arg("events", 100_000);
const concurrency = arg("concurrency", 64);
const runs = arg("runs", 3);
const receiver = await startReceiver();
try {
  const rates = [];
  for (let r = 0; r < runs; r++) {
    const { ms, rate } = await once(receiver, { events, concurrency });
    rates.push(rate);
    console.log(`run ${r + 1}: ${events} POSTs in ${(ms / 1000).toFixed(2)} s = ${Math.round(rate)} req/s`);
  }
  console.log(
    `bare undici Pool: median ${Math.round(median(rates))} req/s (${events} requests, concurrency ${concurrency})`,
  );
} finally {
  await receiver.stop();
}
