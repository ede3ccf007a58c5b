// Memory under overload (issue 15): the real agent, a real mosquitto, a slow receiver. A
// publisher sends QoS 1 readings as fast as the broker acknowledges them for SECONDS seconds,
// far faster than the receiver takes webhooks (DELAY_MS per request, the destination's
// `concurrency` connections). Every reading is forwarded, so every reading is one webhook.
// Reported per run:
//   idle RSS (before the flood) and peak RSS (VmHWM) of the agent, and their ratio;
//   readings accepted by the agent (edgehook_readings_total) and readings the broker still
//   holds ($SYS/broker/store/messages/count) when the flood stops;
//   webhooks/s the receiver got during the flood, and webhooks/s with no ingest: once the agent
//   has taken everything (the broker holds nothing, every published reading is accepted), the
//   receiver's rate over the next NOINGEST_S seconds while the agent drains its backlog
//   (the same agent, the same outbox, nothing arriving);
//   loss: after the flood the agent gets up to DRAIN_S seconds to take and acknowledge
//   what the broker holds; loss = published − accepted + readings and events the agent counted as dropped
//   (edgehook_readings_dropped_total, edgehook_outbox_dropped_total). It must be 0: overload
//   is backpressure, not dropping. If the broker still holds unacknowledged readings then, loss is
//   reported as undetermined, with what the broker still holds. Accepted counts a reading the
//   broker sent again and the agent recognised (edgehook_redeliveries_skipped_total) once.
//   This loss is a count, not a check of each reading: a reading decoded twice (sent again
//   before it was acknowledged, not recognised) hides one lost reading, and a negative loss
//   means duplicates. "sessions lost" (edgehook_mqtt_sessions_lost_total) tells whether the
//   agent reconnected to a broker that had discarded what it held for it.
// "Broker holds" is the broker's stored-message count above its level before the flood:
// readings the agent has not acknowledged yet, whether still queued at the broker or already
// sent to the agent and held there unacknowledged (QoS 1 is acknowledged after the commit).
//
//   npm run build && node scripts/bench/overload.mjs [seconds=60] [runs=3] [--bin=path/to/bin/edgehook.js]... [--json=FILE]
//
// Several --bin= run those builds alternately (e.g. an older checkout first, as the baseline of
// the same run); the default is this checkout. Medians per build are printed at the end.
// --json=FILE appends the issue-15 rows overload_peak_rss (baseline: the idle RSS of the same
// agent before the flood) and overload_deliveries (baseline: webhooks/s with no ingest, same
// run) for the first --bin (BENCHROWS.md).
// Environment: OVERLOAD_DELAY_MS (2), OVERLOAD_CONCURRENCY (4), OVERLOAD_DRAIN_S (90),
// OVERLOAD_NOINGEST_S (10).
// Loopback only; everything in a temp directory; every child is killed by PID; bounded in time.
import { appendFileSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import mqtt from "mqtt";
import {
  cleanUp,
  freePort,
  keepOutput,
  killChildrenOnSignal,
  loadavg,
  median as medianOf,
  metricSum,
  overTime,
  sleep,
  spawnTracked,
  startMosquitto,
  startReceiver,
  waitFor as waitUntil,
} from "./support.mjs";

const positional = process.argv.slice(2).filter((a) => !a.startsWith("--"));
const JSON_FILE = process.argv.find((a) => a.startsWith("--json="))?.slice("--json=".length);
const SECONDS = Number(positional[0] ?? 60);
const RUNS = Number(positional[1] ?? 3);
const bins = process.argv.filter((a) => a.startsWith("--bin=")).map((a) => a.slice(6));
const BINS = bins.length > 0 ? bins : [fileURLToPath(new URL("../../bin/edgehook.js", import.meta.url))];
const DELAY_MS = Number(process.env.OVERLOAD_DELAY_MS ?? 2);
const CONCURRENCY = Number(process.env.OVERLOAD_CONCURRENCY ?? 4);
const DRAIN_S = Number(process.env.OVERLOAD_DRAIN_S ?? 90);
const NOINGEST_S = Number(process.env.OVERLOAD_NOINGEST_S ?? 10);
const SERIES = 100;
const IN_FLIGHT = 500; // QoS 1 publishes awaited together
const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

// NaN: not measured in that run (see quietPerS).
const median = (xs) => medianOf(xs.filter((x) => !Number.isNaN(x)));
const vmKb = (pid, key) =>
  Number(new RegExp(`^${key}:\\s+(\\d+)`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0);
const mib = (kb) => (kb / 1024).toFixed(1);

const waitFor = (check, what, timeoutMs) => waitUntil(check, what, timeoutMs, 100);

/** Sums of the agent's counters: readings decoded, and readings or events dropped (counted drops). */
async function scrape(httpPort) {
  try {
    const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
    const sum = (name) => metricSum(text, name);
    return {
      // A QoS 1 message the broker sends again (after a reconnect) and the agent recognises is skipped.
      readings: sum("edgehook_readings_total") - sum("edgehook_redeliveries_skipped_total"),
      dropped: sum("edgehook_readings_dropped_total") + sum("edgehook_outbox_dropped_total"),
      reconnects: sum("edgehook_mqtt_sessions_lost_total"),
    };
  } catch {
    return { readings: Number.NaN, dropped: Number.NaN, reconnects: Number.NaN };
  }
}

async function readingsAccepted(httpPort) {
  return (await scrape(httpPort)).readings;
}

async function run(bin) {
  const dir = mkdtempSync(join(tmpdir(), "edgehook-overload-"));
  // Answers 200 after DELAY_MS; counts requests.
  const receiver = await startReceiver({ status: 200, delayMs: DELAY_MS });
  const mine = [];
  const track = (c) => {
    mine.push(c);
    return c;
  };
  try {
    // No broker-side limits: whatever the agent does not take yet, the broker keeps (and
    // reports in $SYS), so a reading the agent never takes shows up as loss, not as a broker drop.
    const broker = await startMosquitto(dir, "max_queued_messages 0\nmax_queued_bytes 0\nsys_interval 1\n", 100);
    track(broker.child);
    const brokerPort = broker.port;
    const httpPort = await freePort();
    writeFileSync(
      join(dir, "agent.yaml"),
      `version: 1
agent: { id: overload, data_dir: ./data, require_clock_sync: never, log_level: warn }
mqtt:
  url: mqtt://127.0.0.1:${brokerPort}
  client_id: overload-agent
  subscriptions: [{ topic: "t/+", sensor: "{1}", metric: temperature, format: number, qos: 1 }]
destinations:
  sink: { url: "http://127.0.0.1:${receiver.port}/hook", secret: ${SECRET}, concurrency: ${CONCURRENCY} }
rules:
  - { name: telemetry, match: { metric: temperature }, forward: true, notify: [sink] }
http: { listen: "127.0.0.1:${httpPort}" }
`,
    );
    const agent = track(
      spawnTracked(process.execPath, [bin, "run", "--config", join(dir, "agent.yaml")], {
        cwd: dir,
        stdio: ["ignore", "pipe", "pipe"],
      }),
    );
    const log = keepOutput(agent, 20_000);
    await waitFor(async () => !Number.isNaN(await readingsAccepted(httpPort)), "agent /metrics", 30_000).catch(
      (err) => {
        throw new Error(`${err.message}\n${log().slice(-2000)}`);
      },
    );
    await sleep(3000);
    const idleKb = vmKb(agent.pid, "VmRSS");

    // The broker's count of stored messages, once a second.
    const monitor = await mqtt.connectAsync(`mqtt://127.0.0.1:${brokerPort}`, { clientId: "overload-monitor" });
    let brokerHolds = Number.NaN;
    monitor.on("message", (_topic, payload) => {
      brokerHolds = Number(payload.toString());
    });
    await monitor.subscribeAsync("$SYS/broker/store/messages/count");
    // The store also holds the broker's own retained $SYS messages: count from that level.
    await waitFor(() => !Number.isNaN(brokerHolds), "$SYS store count", 10_000);
    await sleep(1500);
    const storeBase = brokerHolds;
    const held = () => brokerHolds - storeBase;

    const pub = await mqtt.connectAsync(`mqtt://127.0.0.1:${brokerPort}`, { clientId: "overload-pub" });
    let published = 0;
    let rssMaxSampled = idleKb;
    const sampler = setInterval(() => {
      if (agent.exitCode === null) rssMaxSampled = Math.max(rssMaxSampled, vmKb(agent.pid, "VmRSS"));
    }, 500);
    const received0 = receiver.counts.requests;
    const t0 = performance.now();
    const end = t0 + SECONDS * 1000;
    while (performance.now() < end && agent.exitCode === null) {
      const batch = [];
      for (let j = 0; j < IN_FLIGHT; j++) {
        const n = published + j;
        batch.push(pub.publishAsync(`t/s${n % SERIES}`, String(20 + (n % 20)), { qos: 1 }));
      }
      await Promise.all(batch);
      published += IN_FLIGHT;
    }
    const floodS = (performance.now() - t0) / 1000;
    const deliveredDuring = receiver.counts.requests - received0;
    const acceptedAtEnd = await readingsAccepted(httpPort);
    await sleep(1500); // one more $SYS interval
    const holdsAtEnd = held();
    await pub.endAsync();

    // Let the agent take and acknowledge the rest (bounded), then count.
    await waitFor(async () => held() <= 0 && (await readingsAccepted(httpPort)) >= published, null, DRAIN_S * 1000);
    // Not caught up within DRAIN_S: the window below would still be ingesting.
    const caughtUp = held() <= 0 && (await readingsAccepted(httpPort)) >= published;
    await sleep(1500);
    // No ingest: the same agent drains the backlog the flood left, nothing arriving.
    const backlogAtRest = published - receiver.counts.requests;
    const quiet0 = receiver.counts.requests;
    const q0 = performance.now();
    await sleep(NOINGEST_S * 1000);
    const quietPerS = caughtUp ? (receiver.counts.requests - quiet0) / ((performance.now() - q0) / 1000) : Number.NaN;
    // Still draining at the end of the window: the rate was not limited by an empty outbox.
    const quietDrained = receiver.counts.requests >= published;
    clearInterval(sampler);
    const { readings: accepted, dropped, reconnects } = await scrape(httpPort);
    const holdsAfter = held();
    const peakKb = vmKb(agent.pid, "VmHWM");
    await monitor.endAsync();
    return {
      idleKb,
      peakKb,
      rssMaxSampled,
      published,
      floodS,
      acceptedAtEnd,
      holdsAtEnd,
      deliveredPerS: deliveredDuring / floodS,
      quietPerS,
      quietDrained,
      backlogAtRest,
      accepted,
      holdsAfter,
      dropped,
      reconnects,
      // Not taken from the broker (once it holds nothing more), or taken and then dropped.
      // A reading taken twice (sent again by the broker before the agent acknowledged it) makes
      // this negative: at-least-once, not loss.
      loss: holdsAfter <= 0 ? published - accepted + dropped : Number.NaN,
      alive: agent.exitCode === null,
    };
  } finally {
    cleanUp(mine, receiver, dir);
  }
}

overTime("overload", RUNS * BINS.length * (SECONDS + DRAIN_S + NOINGEST_S + 60) * 1000);
killChildrenOnSignal();

console.log(
  `overload: ${SECONDS} s of QoS 1 publishes at the broker's pace, receiver ${DELAY_MS} ms/request, concurrency ${CONCURRENCY}; load average ${loadavg()}`,
);
const results = new Map(BINS.map((b) => [b, []]));
for (let i = 0; i < RUNS; i++) {
  for (const bin of BINS) {
    const r = await run(bin);
    results.get(bin).push(r);
    console.log(
      `run ${i + 1} ${bin}: idle ${mib(r.idleKb)} MiB, peak ${mib(r.peakKb)} MiB (${(r.peakKb / r.idleKb).toFixed(2)}× idle); ` +
        `published ${r.published} in ${r.floodS.toFixed(1)} s (${(r.published / r.floodS).toFixed(0)}/s); at the end accepted ${r.acceptedAtEnd}, broker holds ${r.holdsAtEnd}; ` +
        `webhooks during the flood ${r.deliveredPerS.toFixed(0)}/s, with no ingest ${Number.isNaN(r.quietPerS) ? `undetermined (still taking the flood after ${DRAIN_S} s)` : `${r.quietPerS.toFixed(0)}/s`} (backlog ${r.backlogAtRest}${r.quietDrained ? ", the backlog ran out: understated" : ""}); by then: accepted ${r.accepted}, broker holds ${r.holdsAfter}, ` +
        `loss ${Number.isNaN(r.loss) ? "undetermined" : r.loss}, sessions lost ${r.reconnects}${r.alive ? "" : ", AGENT EXITED"}; load average ${loadavg()}`,
    );
  }
}
for (const [bin, rs] of results) {
  const m = (f) => median(rs.map(f));
  console.log(
    `${bin}: median over ${rs.length} runs: peak RSS ${mib(m((r) => r.peakKb))} MiB = ${m((r) => r.peakKb / r.idleKb).toFixed(2)}× idle (${mib(m((r) => r.idleKb))} MiB; target ≤ 1.5×); ` +
      `published ${m((r) => r.published)}, accepted by the end ${m((r) => r.acceptedAtEnd)}, broker held ${m((r) => r.holdsAtEnd)}; ` +
      `webhooks/s during the flood ${m((r) => r.deliveredPerS).toFixed(0)} = ${m((r) => r.deliveredPerS / r.quietPerS).toFixed(2)}× the rate with no ingest (${m((r) => r.quietPerS).toFixed(0)}/s; target ≥ 0.5×); loss ${rs.map((r) => (Number.isNaN(r.loss) ? "?" : r.loss)).join(", ")} (target 0)`,
  );
}
if (JSON_FILE) {
  const rs = results.get(BINS[0]);
  const load = loadavg();
  const command = `node scripts/bench/overload.mjs ${SECONDS} ${RUNS}`;
  const mb = (kb) => Math.round((kb / 1024) * 10) / 10;
  const row = (r) => appendFileSync(JSON_FILE, `${JSON.stringify(r)}\n`);
  row({
    row: "overload_peak_rss",
    value: mb(median(rs.map((r) => r.peakKb))),
    unit: "MiB",
    baseline: mb(median(rs.map((r) => r.idleKb))),
    baseline_label: "idle RSS of the same agent before the flood",
    runs: rs.map((r) => mb(r.peakKb)),
    baseline_runs: rs.map((r) => mb(r.idleKb)),
    loss: rs.map((r) => (Number.isNaN(r.loss) ? null : r.loss)),
    load,
    command,
  });
  row({
    row: "overload_deliveries",
    value: Math.round(median(rs.map((r) => r.deliveredPerS))),
    unit: "webhooks/s",
    baseline: Math.round(median(rs.map((r) => r.quietPerS))),
    baseline_label: "webhooks/s with no ingest (draining the flood's backlog), same agent, same run",
    runs: rs.map((r) => Math.round(r.deliveredPerS)),
    baseline_runs: rs.map((r) => Math.round(r.quietPerS)),
    loss: rs.map((r) => (Number.isNaN(r.loss) ? null : r.loss)),
    load,
    command,
  });
}
