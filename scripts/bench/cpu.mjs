// CPU time of the real agent per 1,000 readings under a realistic mix (issue 15 row
// `cpu_per_1000`), against a bare mqtt.js subscriber doing JSON.parse of the same readings
// (the floor of any Node agent), both measured in the same invocation, windows alternating.
//
//   npx tsc -p tsconfig.build.json && node scripts/bench/cpu.mjs [runs=3] [window-s=15] [rate=1000] [--json=<file>]
//
// The mix, RATE readings/s (default 1,000):
//   - 90 % over MQTT (QoS 1, persistent session as deployed): 50 sensors s00..s49 publish
//     JSON `{"temperature":23.41,"humidity":51.2}` on bench/<sensor>/env, 2 readings each;
//   - 10 % as serial lines `id=p3 temp=21.50` over a socat pty, 10 sensors p0..p9;
//   - ten rules: temperature above 50 (clear below 45), humidity above 90 (clear below 85),
//     temperature below -10, serial temp above 50 (clear below 45), absent_for on every
//     MQTT sensor, a few that match nothing, and forward of s00's temperature;
//   - values: temperature 20–30 and humidity 40–60 (change nothing), except that each
//     MQTT sensor runs hot (55) for 0.5 s once every 20 s (fires, then resolves) and each
//     serial sensor likewise: about 5 alert events/s; forwarding s00's temperature adds
//     about 9 `reading` events/s. So about 1.4 % of readings make an event, the rest
//     change nothing; every event is delivered to a loopback webhook receiver.
//
// CPU = utime+stime of the process (/proc/<pid>/stat) from the start of a window's load
// until every reading sent in it is counted by the agent (edgehook_readings_total) or the
// subscriber, divided by those readings, x1000. The baseline gets the same readings, all
// over MQTT (the serial ones as one-field JSON messages), and only JSON.parses them.
// A warm-up window (10 s for the agent, not counted) goes first. Everything on 127.0.0.1 and in a temp
// directory; every child is killed by PID at the end.
import { spawn, spawnSync } from "node:child_process";
import {
  appendFileSync,
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import mqtt from "mqtt";
import {
  children,
  cleanUp,
  freePort,
  keepOutput,
  loadavg,
  median,
  metricSum,
  overTime,
  sleep,
  startMosquitto,
  startPty,
  startReceiver,
  track,
  waitFor,
} from "./support.mjs";

const positional = process.argv.slice(2).filter((a) => !a.startsWith("--"));
const RUNS = Number(positional[0] ?? 3);
const WINDOW_S = Number(positional[1] ?? 15);
const RATE = Number(positional[2] ?? 1000);
// --quiet: only readings that change nothing (no hot episodes, no forward rule), to see the floor.
const QUIET = process.argv.includes("--quiet");
const JSON_OUT = process.argv.find((a) => a.startsWith("--json="))?.slice("--json=".length);
// Another build: CPU_BIN=/path/to/bin/edgehook.js. CPU_BIN_B=/path/to/other/bin/edgehook.js
// runs a second agent beside the first on the same readings at the same time (its own
// client id, data directory and pty): an A/B comparison under exactly the same load.
const CHECKOUT = fileURLToPath(new URL("../..", import.meta.url));
const BIN = process.env.CPU_BIN ?? join(CHECKOUT, "bin/edgehook.js");
const BIN_B = process.env.CPU_BIN_B;
const NODE_ARGS = (process.env.CPU_NODE_ARGS ?? "").split(" ").filter(Boolean);
const CLK_TCK = Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout.trim()) || 100;
const MQTT_SENSORS = 50;
const SERIAL_SENSORS = 10;
// CPU_SERIAL_SHARE: another share of serial readings (0 = MQTT only), for finding where the CPU goes.
const SERIAL_SHARE = Number(process.env.CPU_SERIAL_SHARE ?? 0.1);

/** CPU seconds (user + system) of a process so far. */
function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // fields[0] is field 3 (state): utime is field 14, stime field 15.
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

// ---------------------------------------------------------------- parts

function writeConfig(dir, { mqttPort, tty, receiverUrl, httpPort, id = "bench-cpu" }) {
  const yaml = `version: 1
agent:
  id: ${id}
  data_dir: ${join(dir, `data-${id}`)}
  log_level: warn
mqtt:
  url: mqtt://127.0.0.1:${mqttPort}
  subscriptions:
    - topic: bench/+/env
      qos: 1
      sensor: "{1}"
      format: json
      values: { temperature: temperature, humidity: humidity }
serial:
  - name: bench
    path: ${tty}
    baud_rate: 115200
    format: kv
    sensor: "{id}"
    values: { temp: temp }
destinations:
  sink:
    url: ${receiverUrl}
    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
rules:
  - name: temp-high
    match: { sensor: "s*", metric: temperature }
    above: 50
    clear_below: 45
    notify: [sink]
  - name: humidity-high
    match: { sensor: "s*", metric: humidity }
    above: 90
    clear_below: 85
    notify: [sink]
  - name: frost
    match: { sensor: "s*", metric: temperature }
    below: -10
    clear_above: -5
    severity: critical
    notify: [sink]
  - name: serial-hot
    match: { sensor: "p*", metric: temp }
    above: 50
    clear_below: 45
    notify: [sink]
  - name: sensor-silent
    match: { sensor: "s*", metric: temperature }
    absent_for: 5m
    notify: [sink]
${
  QUIET
    ? ""
    : `  - name: forward-s00
    match: { sensor: s00, metric: temperature }
    forward: true
    notify: [sink]
`
}  - name: pressure-low
    match: { metric: pressure }
    below: 950
    notify: [sink]
  - name: co2-high
    match: { metric: co2 }
    above: 1500
    notify: [sink]
  - name: battery-low
    match: { metric: battery }
    below: 10
    notify: [sink]
  - name: door-open
    match: { metric: contact }
    below: 0.5
    notify: [sink]
http:
  listen: 127.0.0.1:${httpPort}
`;
  const file = join(dir, `${id}.yaml`);
  writeFileSync(file, yaml, { mode: 0o600 });
  return file;
}

function startAgent(config, bin = BIN) {
  const child = track(
    spawn(process.execPath, [...NODE_ARGS, bin, "run", "--config", config], { stdio: ["ignore", "pipe", "pipe"] }),
    "agent",
  );
  const log = keepOutput(child, 200_000);
  // CPU_AGENT_OUT=<file>: all the agent writes (e.g. with CPU_NODE_ARGS=--trace-deopt).
  if (process.env.CPU_AGENT_OUT) {
    const out = openSync(`${process.env.CPU_AGENT_OUT}.${child.pid}`, "w");
    child.stdout.on("data", (d) => writeSync(out, d));
    child.once("exit", () => closeSync(out));
  }
  return { child, log };
}

async function readingsCounted(httpPort) {
  const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
  return metricSum(text, "edgehook_readings_total");
}

/** The baseline: a bare mqtt.js subscriber (QoS 1, persistent session) that JSON.parses each payload. */
const SUBSCRIBER = `
import mqtt from "mqtt";
let readings = 0;
let sink = 0;
const client = mqtt.connect(process.argv[1], { clientId: "cpu-bare-subscriber", clean: false });
client.on("message", (_topic, payload) => {
  const o = JSON.parse(payload.toString());
  for (const k in o) if (typeof o[k] === "number") { readings++; sink += o[k]; }
});
client.on("connect", () => client.subscribe("base/+/env", { qos: 1 }, () => process.send({ ready: true })));
process.on("message", () => process.send({ readings }));
`;

async function startSubscriber(mqttPort) {
  const child = track(
    spawn(process.execPath, ["--input-type=module", "-e", SUBSCRIBER, `mqtt://127.0.0.1:${mqttPort}`], {
      cwd: CHECKOUT,
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    }),
    "subscriber",
  );
  await new Promise((resolve) => child.once("message", resolve));
  return {
    child,
    count: () =>
      new Promise((resolve) => {
        child.once("message", (m) => resolve(m.readings));
        child.send("count");
      }),
  };
}

// ---------------------------------------------------------------- load

const pad = (i) => String(i).padStart(2, "0");
/** Temperature at tick t (10 ms) of sensor i: 20–30, hot (55) for 0.5 s once every 20 s. */
const temperature = (t, i) =>
  (!QUIET && (t + i * 37) % 2000 < 50 ? 55 : 20 + ((t * 7 + i * 13) % 1000) / 100).toFixed(2);
const humidity = (t, i) => (40 + ((t * 3 + i * 29) % 2000) / 100).toFixed(1);

/**
 * RATE readings/s for `seconds`. `toAgent`: MQTT JSON on bench/..., serial lines on the pty;
 * otherwise the same readings all over MQTT on base/... for the bare subscriber.
 * Returns the number of readings sent.
 */
async function load(client, ttys, seconds, toAgent, tick0) {
  const tickMs = 10;
  const perTick = RATE / (1000 / tickMs);
  const serialPerTick = perTick * SERIAL_SHARE;
  const mqttMsgsPerTick = (perTick - serialPerTick) / 2;
  const root = toAgent ? "bench" : "base";
  let serialCarry = 0;
  let mqttCarry = 0;
  let serialNext = 0;
  let mqttNext = 0;
  let sent = 0;
  const t0 = performance.now();
  const ticks = (seconds * 1000) / tickMs;
  for (let k = 0; k < ticks; k++) {
    const t = tick0 + k;
    serialCarry += serialPerTick;
    mqttCarry += mqttMsgsPerTick;
    let lines = "";
    for (; serialCarry >= 1; serialCarry--) {
      const i = serialNext++ % SERIAL_SENSORS;
      const temp = temperature(t, i + 100);
      if (toAgent) lines += `id=p${i} temp=${temp}\n`;
      else client.publish(`base/p${i}/env`, `{"temp":${temp}}`, { qos: 1 });
      sent++;
    }
    if (lines) for (const tty of ttys) writeSync(tty, lines);
    for (; mqttCarry >= 1; mqttCarry--) {
      const i = mqttNext++ % MQTT_SENSORS;
      client.publish(`${root}/s${pad(i)}/env`, `{"temperature":${temperature(t, i)},"humidity":${humidity(t, i)}}`, {
        qos: 1,
      });
      sent += 2;
    }
    const wait = t0 + (k + 1) * tickMs - performance.now();
    if (wait > 0) await sleep(wait);
  }
  return sent;
}

/**
 * One window: CPU of `pid` from the start of the load until `counted()` reaches what was
 * sent. The count is asked for only after the load (asking costs the agent CPU too); if
 * it is short, the CPU sample is taken again after the next wait.
 */
async function window(procs, send) {
  const before = await Promise.all(procs.map((p) => p.counted()));
  const cpu0 = procs.map((p) => cpuSeconds(p.pid));
  const sent = await send();
  await sleep(500);
  const out = [];
  for (const [k, p] of procs.entries()) {
    for (let i = 0; ; i++) {
      const cpu1 = cpuSeconds(p.pid);
      const n = (await p.counted()) - before[k];
      if (n >= sent) {
        out.push({ sent, readings: n, msPer1000: ((cpu1 - cpu0[k]) * 1000 * 1000) / n });
        break;
      }
      if (i > 100) throw new Error(`only ${n} of ${sent} readings counted`);
      await sleep(200);
    }
  }
  return out;
}

async function startReadyAgent(config, httpPort, bin) {
  const agent = startAgent(config, bin);
  await waitFor(
    async () => {
      if (agent.child.exitCode !== null) throw new Error(`agent exited:\n${agent.log().slice(-3000)}`);
      return fetch(`http://127.0.0.1:${httpPort}/healthz`).then(
        (r) => r.ok,
        () => false,
      );
    },
    "agent ready",
    30_000,
    100,
  );
  return { pid: agent.child.pid, counted: () => readingsCounted(httpPort) };
}

// ---------------------------------------------------------------- main

async function main() {
  if (!existsSync(BIN)) throw new Error(`no agent at ${BIN}`);
  if (!process.env.CPU_BIN && !existsSync(join(CHECKOUT, "dist/main.js")))
    throw new Error("build first: npx tsc -p tsconfig.build.json");
  const dir = mkdtempSync(join(tmpdir(), "edgehook-cpu-"));
  const receiver = await startReceiver();
  const ttys = [];
  let client;
  try {
    const { port: mqttPort } = await startMosquitto(dir, "max_queued_messages 1000000\n");
    const agents = [];
    for (const [id, bin] of [["bench-cpu", BIN], ...(BIN_B ? [["bench-cpu-b", BIN_B]] : [])]) {
      const { agentSide, benchSide } = await startPty(join(dir, `tty-${id}`), join(dir, `tty-bench-${id}`));
      const httpPort = await freePort();
      const config = writeConfig(dir, { mqttPort, tty: agentSide, receiverUrl: receiver.url, httpPort, id });
      agents.push(await startReadyAgent(config, httpPort, bin));
      ttys.push(openSync(benchSide, "w"));
    }
    const subscriber = await startSubscriber(mqttPort);
    client = mqtt.connect(`mqtt://127.0.0.1:${mqttPort}`, { clientId: "cpu-load" });
    await new Promise((resolve, reject) => {
      client.once("connect", resolve);
      client.once("error", reject);
    });
    let tick = 0;
    const run = async (toAgent, seconds) => {
      const procs = toAgent ? agents : [{ pid: subscriber.child.pid, counted: subscriber.count }];
      const r = await window(procs, () => load(client, ttys, seconds, toAgent, tick));
      tick += seconds * 100;
      return r;
    };
    // Warm-up (JIT, first alerts, first deliveries), not counted: a daemon runs for days,
    // and V8 is still optimising the event path a few seconds in.
    await run(true, 10);
    await run(false, 5);
    const agentRuns = [];
    const bRuns = [];
    const baseRuns = [];
    for (let i = 0; i < RUNS; i++) {
      const [a, ab] = await run(true, WINDOW_S);
      const [b] = await run(false, WINDOW_S);
      agentRuns.push(a.msPer1000);
      baseRuns.push(b.msPer1000);
      if (ab) bRuns.push(ab.msPer1000);
      console.log(
        `run ${i + 1}: agent ${a.msPer1000.toFixed(2)} ms/1000 (${a.readings} readings)${ab ? `, agent B ${ab.msPer1000.toFixed(2)} (B/A ${(ab.msPer1000 / a.msPer1000).toFixed(2)})` : ""}, bare subscriber ${b.msPer1000.toFixed(2)} ms/1000 (${b.readings}); load ${loadavg()}`,
      );
    }
    if (BIN_B) {
      const ratios = bRuns.map((b, i) => b / agentRuns[i]);
      console.log(
        `A ${BIN}: median ${median(agentRuns).toFixed(2)}; B ${BIN_B}: median ${median(bRuns).toFixed(2)}; B/A median ${median(ratios).toFixed(2)} (${ratios.map((r) => r.toFixed(2)).join(", ")})`,
      );
    }
    const value = median(agentRuns);
    const baseline = median(baseRuns);
    console.log(
      `cpu_per_1000: agent ${value.toFixed(2)} ms per 1,000 readings (median of ${RUNS}), bare mqtt.js + JSON.parse ${baseline.toFixed(2)} ms, ratio ${(value / baseline).toFixed(2)}; webhooks received ${receiver.counts.requests}; target <= 6 ms`,
    );
    if (JSON_OUT) {
      appendFileSync(
        JSON_OUT,
        `${JSON.stringify({
          row: "cpu_per_1000",
          value: Number(value.toFixed(2)),
          unit: "ms",
          baseline: Number(baseline.toFixed(2)),
          baseline_label: "bare mqtt.js subscriber + JSON.parse",
          runs: agentRuns.map((x) => Number(x.toFixed(2))),
          baseline_runs: baseRuns.map((x) => Number(x.toFixed(2))),
          load: loadavg(),
          command: `node scripts/bench/cpu.mjs ${RUNS} ${WINDOW_S} ${RATE}`,
        })}\n`,
      );
    }
  } finally {
    for (const tty of ttys) closeSync(tty);
    client?.end(true);
    // SIGTERM first, so that an agent run with --cpu-prof writes its profile.
    for (const agentChild of children.filter((c) => c.spawnargs.includes("run"))) {
      if (agentChild.exitCode !== null || agentChild.signalCode !== null) continue;
      const exited = new Promise((r) => agentChild.once("exit", r));
      agentChild.kill("SIGTERM");
      await Promise.race([exited, sleep(10_000)]);
    }
    cleanUp(children, receiver, dir);
  }
}

overTime("cpu", (RUNS * 2 * (WINDOW_S + 15) + 90) * 1000);

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
