// Peak RSS of the real agent while its outbox refuses new events (backpressure) and an
// MQTT publisher floods it. The floor is forced with an unreachable outbox.min_free_disk,
// so every reading is refused: the agent should hold one batch, stop reading from the
// broker, and stay flat however many messages wait at the broker.
//
//   npx tsc -p tsconfig.build.json && node scripts/bench/refused-rss.mjs [messages=50000] [runs=3] [--bin=path/to/bin/edgehook.js]
//
// --bin runs another build (e.g. an older checkout) for a baseline in the same run.
// A private mosquitto on a free loopback port; everything in a temp dir; children killed by PID.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import mqtt from "mqtt";
import { freePort, sleep } from "./support.mjs";

const positional = process.argv.slice(2).filter((a) => !a.startsWith("--"));
const MESSAGES = Number(positional[0] ?? 50_000);
const RUNS = Number(positional[1] ?? 3);
const binArg = process.argv.find((a) => a.startsWith("--bin="));
const BIN = binArg ? binArg.slice(6) : fileURLToPath(new URL("../../bin/edgehook.js", import.meta.url));
const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const vm = (pid, key) => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]);

async function run() {
  const dir = mkdtempSync(join(tmpdir(), "edgehook-refused-rss-"));
  const brokerPort = await freePort();
  const deadPort = await freePort();
  writeFileSync(
    join(dir, "mosquitto.conf"),
    `listener ${brokerPort} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n`,
  );
  const broker = spawn("mosquitto", ["-c", join(dir, "mosquitto.conf")], { stdio: "ignore" });
  await sleep(300);
  writeFileSync(
    join(dir, "agent.yaml"),
    `version: 1
agent: { id: refused-rss, data_dir: ./data, require_clock_sync: never, log_level: warn }
mqtt:
  url: mqtt://127.0.0.1:${brokerPort}
  client_id: refused-rss
  subscriptions: [{ topic: "t/+", sensor: "{1}", metric: temperature, format: number, qos: 1 }]
destinations:
  ops: { url: "http://127.0.0.1:${deadPort}/hooks", secret: ${SECRET} }
rules:
  - { name: hot, match: { metric: temperature }, above: 30, notify: [ops] }
  - { name: telemetry, match: { metric: temperature }, forward: true, notify: [ops] }
http: { listen: false }
outbox: { min_free_disk: 100000GB }
`,
  );
  const agent = spawn(process.execPath, [BIN, "run", "--config", join(dir, "agent.yaml")], { stdio: "ignore" });
  try {
    await sleep(1500);
    const idleKb = vm(agent.pid, "VmRSS");
    const pub = await mqtt.connectAsync(`mqtt://127.0.0.1:${brokerPort}`, { clientId: "refused-rss-pub" });
    const started = Date.now();
    for (let i = 0; i < MESSAGES; i += 500) {
      await Promise.all(
        Array.from({ length: 500 }, (_, j) =>
          pub.publishAsync(`t/s${(i + j) % 100}`, String(20 + ((i + j) % 20)), { qos: 1 }),
        ),
      );
    }
    const publishMs = Date.now() - started;
    await sleep(3000);
    const peakKb = vm(agent.pid, "VmHWM");
    const rssKb = vm(agent.pid, "VmRSS");
    await pub.endAsync();
    return { idleKb, peakKb, rssKb, publishMs };
  } finally {
    agent.kill("SIGKILL");
    broker.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
}

const results = [];
for (let i = 0; i < RUNS; i++) {
  const r = await run();
  results.push(r);
  console.log(
    `run ${i + 1}: idle ${(r.idleKb / 1024).toFixed(1)} MiB, peak ${(r.peakKb / 1024).toFixed(1)} MiB, after ${(r.rssKb / 1024).toFixed(1)} MiB (${MESSAGES} messages published in ${r.publishMs} ms)`,
  );
}
console.log(
  `${BIN}: median peak RSS ${(median(results.map((r) => r.peakKb)) / 1024).toFixed(1)} MiB over ${RUNS} runs of ${MESSAGES} refused messages`,
);
