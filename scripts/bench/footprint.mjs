// Footprint of the real agent process: start-to-READY time, idle RSS and CPU, and RSS, CPU
// and bytes written under 1,000 readings/s. Two sources (MQTT to a private mosquitto, one
// socat pty serial line), ten rules, one loopback receiver. Everything on 127.0.0.1 and in
// a temp directory; every child is killed by PID at the end.
//
//   npm run build && node scripts/bench/footprint.mjs [idle-s=20] [load-s=30] [rate=1000] [--no-serial] [--no-load] [--json=FILE]
//
// Three cold starts; each agent is timed to READY=1 and then watched idle for idle-s seconds,
// beside a bare Node.js process (the baseline) in the same window; the last one then takes
// the load. Figures are medians of the three. --no-load stops after the idle phase.
// --json=FILE appends the issue-15 rows idle_rss and start_to_ready (BENCHROWS.md).
//
// Targets (issue 15): idle RSS ≤ 60 MB, idle CPU ≤ 0.5 %, start to READY ≤ 300 ms.
import { spawn, spawnSync } from "node:child_process";
import { appendFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
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
const IDLE_S = Number(positional[0] ?? 20);
const LOAD_S = Number(positional[1] ?? 30);
const RATE = Number(positional[2] ?? 1000);
// --no-serial: MQTT only (for builds without the serial source).
const SERIAL = !process.argv.includes("--no-serial");
const NO_LOAD = process.argv.includes("--no-load");
const JSON_FILE = process.argv.find((a) => a.startsWith("--json="))?.slice("--json=".length);
// FOOTPRINT_RUNS (default 3) cold starts; FOOTPRINT_BIN runs another build's bin/edgehook.js.
const START_RUNS = Number(process.env.FOOTPRINT_RUNS ?? 3);
const SETTLE_S = 5;
const QUIET_S = 10;
const SERIAL_SHARE = SERIAL ? 0.1 : 0; // a tenth of the readings arrive over the serial line
const CHECKOUT = fileURLToPath(new URL("../..", import.meta.url));
const BIN = process.env.FOOTPRINT_BIN ?? join(CHECKOUT, "bin/edgehook.js");
// The agent runs with the Node.js flags of the unit that build ships (agent.service's
// ExecStart), as systemd starts it; FOOTPRINT_NODE_ARGS adds more, e.g. "--lite-mode".
const NODE_ARGS = [
  ...unitNodeArgs(join(BIN, "../../agent.service")),
  ...(process.env.FOOTPRINT_NODE_ARGS ?? "").split(" ").filter(Boolean),
];

function unitNodeArgs(unitFile) {
  if (!existsSync(unitFile)) return [];
  const exec = /^ExecStart=\S+((?:\s+-\S+)*)\s+\S*bin\/edgehook\.js\b/m.exec(readFileSync(unitFile, "utf8"));
  return (exec?.[1] ?? "").split(/\s+/).filter(Boolean);
}
const COMMAND = `node scripts/bench/footprint.mjs ${process.argv
  .slice(2)
  .filter((a) => !a.startsWith("--json="))
  .join(" ")}`.trim();
const CLK_TCK = Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout.trim()) || 100;

const mb = (bytes) => (bytes / 1024 / 1024).toFixed(1);

// ---------------------------------------------------------------- /proc

function procSample(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // fields[0] is field 3 (state): utime is field 14, stime field 15.
  const ticks = Number(fields[11]) + Number(fields[12]);
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const rssKb = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? 0);
  const io = readFileSync(`/proc/${pid}/io`, "utf8");
  const writeBytes = Number(/^write_bytes: (\d+)/m.exec(io)?.[1] ?? 0);
  return { at: performance.now(), cpuS: ticks / CLK_TCK, rss: rssKb * 1024, writeBytes };
}

/** Samples every second for `seconds`; `during` runs alongside (the load). */
async function observe(pid, seconds, during) {
  const first = procSample(pid);
  const rss = [];
  let last = first;
  const work = during ? during() : Promise.resolve();
  for (let i = 0; i < seconds; i++) {
    await sleep(1000);
    last = procSample(pid);
    rss.push(last.rss);
  }
  await work;
  const wall = (last.at - first.at) / 1000;
  return {
    rssMedian: median(rss),
    rssMax: Math.max(...rss),
    cpuPct: ((last.cpuS - first.cpuS) / wall) * 100,
    written: last.writeBytes - first.writeBytes,
  };
}

function dirBytes(dir) {
  if (!existsSync(dir)) return 0;
  return readdirSync(dir).reduce((n, f) => n + statSync(join(dir, f)).size, 0);
}

// ---------------------------------------------------------------- parts

/** A real sd_notify socket (python3 binds it; Node cannot), reporting each datagram. */
async function startNotifySocket(dir) {
  const path = join(dir, "notify.sock");
  const py = track(
    spawn(
      "python3",
      [
        "-c",
        "import socket,sys\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\ns.bind(sys.argv[1])\nprint('LISTENING',flush=True)\nwhile True:\n  print(s.recv(65536).decode().replace('\\n',' '),flush=True)",
        path,
      ],
      { stdio: ["ignore", "pipe", "inherit"] },
    ),
    "notify socket",
  );
  const listeners = new Set();
  const lines = createInterface({ input: py.stdout });
  await new Promise((resolve) => lines.once("line", resolve));
  lines.on("line", (line) => {
    for (const l of listeners) l(line, performance.now());
  });
  return {
    path,
    /** Resolves with the arrival time of the next message containing `field`. */
    next(field) {
      return new Promise((resolve) => {
        const l = (line, at) => {
          if (line.split(" ").includes(field)) {
            listeners.delete(l);
            resolve(at);
          }
        };
        listeners.add(l);
      });
    },
  };
}

function writeConfig(dir, { mqttPort, tty, receiverUrl, httpPort }) {
  const rules = Array.from(
    { length: 10 },
    (_, i) => `  - name: temp-high-${i}
    match: { sensor: "s${i}", metric: temp }
    above: 50
    clear_below: 45
    severity: warning
    notify: [sink]`,
  ).join("\n");
  const yaml = `version: 1
agent:
  id: bench-pi
  data_dir: ${join(dir, "data")}
  log_level: warn
mqtt:
  url: mqtt://127.0.0.1:${mqttPort}
  subscriptions:
    - topic: bench/+/temp
      qos: 1
      sensor: "{1}"
      metric: temp
      format: number
${
  SERIAL
    ? `serial:
  - name: bench
    path: ${tty}
    baud_rate: 115200
    format: kv
    sensor: "{id}"
    values: { temp: temp }
`
    : ""
}destinations:
  sink:
    url: ${receiverUrl}
    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
rules:
${rules}
http:
  listen: 127.0.0.1:${httpPort}
`;
  const file = join(dir, "agent.yaml");
  writeFileSync(file, yaml, { mode: 0o600 });
  return file;
}

function startAgent(config, notifyPath, logFile) {
  const t0 = performance.now();
  const child = track(
    spawn(process.execPath, [...NODE_ARGS, BIN, "run", "--config", config], {
      env: { ...process.env, NOTIFY_SOCKET: notifyPath },
      stdio: ["ignore", "pipe", "pipe"],
    }),
    "agent",
  );
  const log = keepOutput(child, 200_000);
  child.once("exit", () => writeFileSync(logFile, log()));
  return { child, t0, log };
}

async function stopAgent(child) {
  if (child.exitCode !== null || child.signalCode !== null) return { code: child.exitCode, ms: 0 };
  const t0 = performance.now();
  const exited = new Promise((r) => child.once("exit", (code) => r(code)));
  child.kill("SIGTERM");
  const code = await exited;
  return { code, ms: performance.now() - t0 };
}

async function scrape(httpPort) {
  const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
  const sum = (name) => metricSum(text, name);
  return {
    readings: sum("edgehook_readings_total"),
    events: sum("edgehook_rule_events_total"),
    heapUsed: sum("edgehook_nodejs_heap_size_used_bytes"),
    heapTotal: sum("edgehook_nodejs_heap_size_total_bytes"),
    external: sum("edgehook_nodejs_external_memory_bytes"),
  };
}

/** Bare Node.js, the baseline: spawn to exit of `node -e 0`. */
async function bareNodeStartMs() {
  const t0 = performance.now();
  const child = track(spawn(process.execPath, ["-e", "0"], { stdio: "ignore" }), "bare node");
  await new Promise((r) => child.once("exit", r));
  return performance.now() - t0;
}

/** Bare Node.js doing nothing, the idle RSS baseline. */
function startBareIdleNode() {
  return track(spawn(process.execPath, ["-e", "setInterval(() => {}, 1 << 30)"], { stdio: "ignore" }), "bare node");
}

// ---------------------------------------------------------------- load

/** Sensor values swing across the rule threshold (50, clear below 45) about every 5 s. */
const swinging = (tick, i) => (50 + 8 * Math.sin((tick / 500) * 2 * Math.PI + i)).toFixed(2);
/** Values that change no rule state: below the threshold and the clear level. */
const quiet = (tick, i) => (30 + ((tick + i) % 7)).toFixed(2);

/** RATE readings/s for `seconds`: most over MQTT (QoS 1), a tenth as serial lines. */
async function load(mqttPort, benchTty, seconds, valueAt) {
  const client = mqtt.connect(`mqtt://127.0.0.1:${mqttPort}`, { clientId: "footprint-load" });
  await new Promise((resolve, reject) => {
    client.once("connect", resolve);
    client.once("error", reject);
  });
  const { openSync, writeSync, closeSync } = await import("node:fs");
  const tty = openSync(benchTty, "w");
  const tickMs = 10;
  const perTick = RATE / (1000 / tickMs);
  const serialPerTick = perTick * SERIAL_SHARE;
  let sent = 0;
  let serialCarry = 0;
  const t0 = performance.now();
  const totalTicks = (seconds * 1000) / tickMs;
  for (let tick = 0; tick < totalTicks; tick++) {
    const value = (i) => valueAt(tick, i);
    serialCarry += serialPerTick;
    const serialNow = Math.floor(serialCarry);
    serialCarry -= serialNow;
    let lines = "";
    for (let k = 0; k < serialNow; k++) lines += `id=s${(sent + k) % 10} temp=${value((sent + k) % 10)}\n`;
    if (lines) writeSync(tty, lines);
    for (let k = serialNow; k < perTick; k++) {
      const i = (sent + k) % 10;
      client.publish(`bench/s${i}/temp`, value(i), { qos: 1 });
    }
    sent += perTick;
    const due = t0 + (tick + 1) * tickMs;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
  }
  closeSync(tty);
  await new Promise((r) => client.end(false, {}, r));
  return sent;
}

// ---------------------------------------------------------------- main

async function main() {
  if (!existsSync(join(BIN, "../../dist"))) throw new Error("build first: npm run build");
  const dir = mkdtempSync(join(tmpdir(), "edgehook-footprint-"));
  const receiver = await startReceiver();
  try {
    const { port: mqttPort } = await startMosquitto(dir, "max_queued_messages 1000000\n");
    const { agentSide, benchSide } = await startPty(join(dir, "tty-agent"), join(dir, "tty-bench"));
    const notify = await startNotifySocket(dir);
    const httpPort = await freePort();
    const config = writeConfig(dir, { mqttPort, tty: agentSide, receiverUrl: receiver.url, httpPort });

    // Cold starts, alternating with the baselines: bare `node -e 0` start to exit, then the
    // agent to READY=1, then the agent idle beside a bare idle Node.js in the same window.
    // The last agent stays up for the load phases.
    const readyMs = [];
    const readyCpuMs = [];
    const bareStartMs = [];
    const idleRss = [];
    const bareRss = [];
    let idle;
    let agent;
    for (let run = 0; run < START_RUNS; run++) {
      bareStartMs.push(await bareNodeStartMs());
      const ready = notify.next("READY=1");
      agent = startAgent(config, notify.path, join(dir, `agent-${run}.log`));
      const exited = new Promise((r) => agent.child.once("exit", (code) => r(code)));
      const at = await Promise.race([
        ready,
        exited.then((code) => Promise.reject(new Error(`agent exited ${code}:\n${agent.log().slice(-3000)}`))),
      ]);
      readyMs.push(at - agent.t0);
      // CPU the start-up used: unlike wall time, not inflated by other load on the machine.
      readyCpuMs.push(procSample(agent.child.pid).cpuS * 1000);
      const bare = startBareIdleNode();
      await sleep(SETTLE_S * 1000); // let start-up work (JIT, first connects) settle
      const [agentIdle, bareIdle] = await Promise.all([observe(agent.child.pid, IDLE_S), observe(bare.pid, IDLE_S)]);
      bare.kill("SIGKILL");
      idle = agentIdle;
      idleRss.push(agentIdle.rssMedian);
      bareRss.push(bareIdle.rssMedian);
      console.log(
        `run ${run + 1}: READY=1 after ${readyMs[run].toFixed(0)} ms (CPU ${readyCpuMs[run].toFixed(0)} ms; bare node -e 0 ${bareStartMs[run].toFixed(0)} ms); idle RSS ${mb(agentIdle.rssMedian)} MB (bare node ${mb(bareIdle.rssMedian)} MB), CPU ${agentIdle.cpuPct.toFixed(2)} %, written ${agentIdle.written} B`,
      );
      if (run < START_RUNS - 1 || NO_LOAD) await stopAgent(agent.child);
    }
    const loadAverage = loadavg();
    console.log(`agent: node ${[...NODE_ARGS, BIN].join(" ")} run`);
    const ms = (xs) => xs.map((m) => Math.round(m));
    const mbs = (xs) => xs.map((b) => Number(mb(b)));
    console.log(
      `start to READY=1: median ${median(readyMs).toFixed(0)} ms (${ms(readyMs).join(", ")}), CPU used by then ${median(readyCpuMs).toFixed(0)} ms; bare node -e 0 start to exit ${median(bareStartMs).toFixed(0)} ms; load average ${loadAverage}`,
    );
    console.log(
      `idle ${IDLE_S} s: RSS median ${mb(median(idleRss))} MB (${mbs(idleRss).join(", ")}); bare node ${mb(median(bareRss))} MB (${mbs(bareRss).join(", ")})`,
    );
    if (JSON_FILE) {
      const row = (r) =>
        appendFileSync(JSON_FILE, `${JSON.stringify({ ...r, load: loadAverage, command: COMMAND })}\n`);
      row({
        row: "idle_rss",
        value: Number(mb(median(idleRss))),
        unit: "MB",
        baseline: Number(mb(median(bareRss))),
        baseline_label: `bare node ${process.versions.node.split(".")[0]} idle`,
        runs: mbs(idleRss),
      });
      row({
        row: "start_to_ready",
        value: Math.round(median(readyMs)),
        unit: "ms",
        baseline: Math.round(median(bareStartMs)),
        baseline_label: "bare `node -e 0` start to exit",
        runs: ms(readyMs),
      });
    }
    const verdictIdle = [
      ["idle RSS ≤ 60 MB", median(idleRss) <= 60 * 1024 * 1024],
      ["idle CPU ≤ 0.5 %", idle.cpuPct <= 0.5],
      ["start to READY ≤ 300 ms", median(readyMs) <= 300],
    ];
    if (NO_LOAD) {
      for (const [what, ok] of verdictIdle) console.log(`${ok ? "PASS" : "FAIL"} ${what}`);
      return;
    }
    const pid = agent.child.pid;

    const dbBefore = dirBytes(join(dir, "data"));
    const before = await scrape(httpPort);
    console.log(
      `  V8 heap used ${mb(before.heapUsed)} MB of ${mb(before.heapTotal)} MB, external ${mb(before.external)} MB`,
    );
    let sent = 0;
    const busy = await observe(pid, LOAD_S, async () => {
      sent = await load(mqttPort, benchSide, LOAD_S, swinging);
    });
    // Let the agent finish what is in flight before counting.
    const caughtUp = (base, n) => async () => (await scrape(httpPort)).readings - base >= n;
    await waitFor(caughtUp(before.readings, sent), "readings to arrive", 20_000).catch(() => {});
    const after = await scrape(httpPort);
    const readings = after.readings - before.readings;
    const events = after.events - before.events;
    const dbGrowth = dirBytes(join(dir, "data")) - dbBefore;
    console.log(
      `load ${RATE}/s for ${LOAD_S} s: RSS median ${mb(busy.rssMedian)} MB (max ${mb(busy.rssMax)}), CPU ${busy.cpuPct.toFixed(1)} %`,
    );
    console.log(
      `  readings sent ${sent}, counted ${readings}; events ${events}; webhooks received ${receiver.counts.requests}`,
    );
    console.log(
      `  written ${mb(busy.written)} MB = ${(busy.written / Math.max(1, readings)).toFixed(0)} B/reading, ${(busy.written / Math.max(1, events)).toFixed(0)} B/event; database files grew ${mb(dbGrowth)} MB`,
    );

    // Readings that change no rule state should write nothing (src/rules/engine.ts):
    // one settling round (resolves what fired), then 10 s of quiet values.
    const settle = await scrape(httpPort);
    const settled = await load(mqttPort, benchSide, 1, quiet);
    await waitFor(caughtUp(settle.readings, settled), "settling readings", 10_000).catch(() => {});
    await sleep(1_000);
    const quietBefore = await scrape(httpPort);
    let quietSent = 0;
    const calm = await observe(pid, QUIET_S, async () => {
      quietSent = await load(mqttPort, benchSide, QUIET_S, quiet);
    });
    await waitFor(caughtUp(quietBefore.readings, quietSent), "quiet readings", 10_000).catch(() => {});
    const quietAfter = await scrape(httpPort);
    console.log(
      `no-change load ${RATE}/s for ${QUIET_S} s: CPU ${calm.cpuPct.toFixed(1)} %, readings ${quietAfter.readings - quietBefore.readings}, events ${quietAfter.events - quietBefore.events}, written ${calm.written} B = ${(calm.written / Math.max(1, quietSent)).toFixed(1)} B/reading`,
    );

    const stop = await stopAgent(agent.child);
    console.log(`SIGTERM: exit ${stop.code} after ${stop.ms.toFixed(0)} ms`);
    const verdict = verdictIdle;
    for (const [what, ok] of verdict) console.log(`${ok ? "PASS" : "FAIL"} ${what}`);
  } finally {
    cleanUp(children, receiver, dir);
  }
}

overTime("footprint", (START_RUNS * (IDLE_S + SETTLE_S + 10) + LOAD_S + QUIET_S + 90) * 1000);

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
