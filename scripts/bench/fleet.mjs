#!/usr/bin/env node
/**
 * A small fleet on one machine: N real agent processes (`node bin/edgehook.js run`) read
 * readings over MQTT from one mosquitto and deliver each as a `reading` event (forward
 * rule) to one nats-server -js, through a `nats://` destination into stream FLEET
 * (subject fleet.<agent>.<sensor>, Nats-Msg-Id = event id). Once every agent has
 * subscribed (their sessions are new: the broker keeps nothing for them before), the bench
 * publishes at a steady rate per agent (QoS 1), restarts nats-server (SIGTERM, same store)
 * half-way, then waits until the stream holds every event. Figures:
 *
 *   - aggregate events/s delivered (stream messages / time from first publish to last stored)
 *   - per agent CPU (% of one core) and RSS: idle (baseline, before publishing) and loaded
 *   - loss = published - stored (must be 0); duplicates are removed by JetStream's window
 *
 *   npm run build && node scripts/bench/fleet.mjs [--agents 20] [--rate 5] [--seconds 60]
 *
 * Loopback only, free ports, bounded in time (--seconds + 190 s at most); kills only the
 * processes it started.
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import mqtt from "mqtt";

const argv = process.argv;
const opt = (name, dflt) => {
  const i = argv.indexOf(`--${name}`);
  return i > 0 ? Number(argv[i + 1]) : dflt;
};
const AGENTS = opt("agents", 20);
const RATE = opt("rate", 5); // readings per second per agent
const SECONDS = opt("seconds", 60);
const IDLE_S = 10;
const BIN = resolve(import.meta.dirname, "../../bin/edgehook.js");
const TICK = 100; // /proc/<pid>/stat clock ticks per second (USER_HZ)

const children = new Set();
const dir = mkdtempSync(join(tmpdir(), "edgehook-fleet-"));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

function start(cmd, args, opts = {}) {
  const p = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"], ...opts });
  children.add(p);
  p.once("exit", () => children.delete(p));
  p.stderrText = "";
  p.stderr?.on("data", (d) => {
    if (p.stderrText.length < 4000) p.stderrText += d;
  });
  return p;
}

async function stopChild(p, signal = "SIGTERM") {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const done = new Promise((r) => p.once("exit", r));
  p.kill(signal);
  const t = setTimeout(() => p.kill("SIGKILL"), 10_000);
  await done;
  clearTimeout(t);
}

async function cleanup() {
  await Promise.all([...children].map((p) => stopChild(p)));
  rmSync(dir, { recursive: true, force: true });
}

const deadline = setTimeout(
  async () => {
    console.error("fleet bench: time limit reached, stopping");
    await cleanup();
    process.exit(2);
  },
  (SECONDS + IDLE_S + 180) * 1000,
);
deadline.unref();
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.once(sig, async () => {
    await cleanup();
    process.exit(130);
  });
}

function procStat(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = Number(f[11]) + Number(f[12]); // utime + stime
    const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) * 1024;
    return { ticks, rss };
  } catch {
    return { ticks: 0, rss: 0 };
  }
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? 0 : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const mib = (b) => (b / 1048576).toFixed(1);

async function waitFor(pred, what, ms) {
  const end = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

async function main() {
  const mqttPort = await freePort();
  const natsPort = await freePort();
  writeFileSync(
    join(dir, "mosquitto.conf"),
    `listener ${mqttPort} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n`,
  );
  writeFileSync(
    join(dir, "nats.conf"),
    `listen: "127.0.0.1:${natsPort}"\njetstream { store_dir: "${join(dir, "js")}" }\n`,
  );
  start("mosquitto", ["-c", join(dir, "mosquitto.conf")]);
  let nats = start("nats-server", ["-c", join(dir, "nats.conf")]);
  const natsUrl = `nats://127.0.0.1:${natsPort}`;
  let nc;
  await waitFor(
    async () => {
      try {
        nc = await connect({ servers: natsUrl, reconnect: true, maxReconnectAttempts: -1 });
        return true;
      } catch {
        return false;
      }
    },
    "nats-server",
    10_000,
  );
  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({ name: "FLEET", subjects: ["fleet.>"], duplicate_window: 120_000_000_000 });

  const agents = [];
  const spawnedAt = Date.now();
  for (let i = 0; i < AGENTS; i++) {
    const id = `dev-${String(i).padStart(4, "0")}`;
    const adir = join(dir, id);
    const file = join(dir, `${id}.yaml`);
    const httpPort = await freePort();
    writeFileSync(
      file,
      `version: 1
agent: { id: ${id}, data_dir: ${adir}, require_clock_sync: never, log_level: info }
mqtt:
  url: mqtt://127.0.0.1:${mqttPort}
  client_id: ${id}
  subscriptions:
    - { topic: "dev/${id}/+", qos: 1, sensor: "{1}", metric: temp, format: number }
destinations:
  stream: { url: "${natsUrl}", subject: "fleet.{agent}.{sensor}", stream: FLEET, signature: none }
rules:
  - { name: telemetry, match: { metric: temp }, forward: true, notify: [stream] }
http: { listen: "127.0.0.1:${httpPort}" }
`,
    );
    const p = start(process.execPath, [BIN, "run", "--config", file], { stdio: ["ignore", "pipe", "pipe"] });
    // Subscribed = the agent logged its SUBACK. Its session is new (sessionPresent: false),
    // so the broker keeps nothing published to dev/<id>/+ before that: publishing earlier
    // loses readings that never reached the agent.
    const agent = { id, p, file, httpPort, subscribed: false };
    let out = "";
    p.stdout?.on("data", (d) => {
      out = (out + d).slice(-4000);
      if (out.includes("subscribed to MQTT topics")) agent.subscribed = true;
    });
    agents.push(agent);
  }
  const pub = await mqtt.connectAsync(`mqtt://127.0.0.1:${mqttPort}`, { clientId: "fleet-bench-pub" });
  // Every agent must have subscribed before the first reading (on a loaded machine 20
  // agents take 10 s or more to start); then 2 s for the end of their start-up.
  await waitFor(
    () => {
      for (const a of agents) if (a.p.exitCode !== null) throw new Error(`${a.id} exited: ${a.p.stderrText}`);
      return agents.every((a) => a.subscribed);
    },
    "every agent subscribed",
    60_000,
  );
  const readyS = (Date.now() - spawnedAt) / 1000;
  await sleep(2000);

  // Baseline: idle agents.
  const idle0 = agents.map((a) => procStat(a.p.pid));
  const t0 = Date.now();
  await sleep(IDLE_S * 1000);
  const idleS = (Date.now() - t0) / 1000;
  const idle1 = agents.map((a) => procStat(a.p.pid));

  // Load: RATE readings/s per agent for SECONDS; nats-server restarted half-way.
  const load0 = agents.map((a) => procStat(a.p.pid));
  const loadStart = Date.now();
  let published = 0;
  let restarted = false;
  const peakRss = agents.map(() => 0);
  const total = SECONDS * RATE;
  for (let k = 0; k < total; k++) {
    const due = loadStart + (k * 1000) / RATE;
    const wait = due - Date.now();
    if (wait > 0) await sleep(wait);
    await Promise.all(agents.map((a) => pub.publishAsync(`dev/${a.id}/s${k % 4}`, String(k), { qos: 1 })));
    published += agents.length;
    if (k % RATE === 0) {
      agents.forEach((a, i) => {
        peakRss[i] = Math.max(peakRss[i], procStat(a.p.pid).rss);
      });
    }
    if (!restarted && k >= total / 2) {
      restarted = true;
      await stopChild(nats);
      await sleep(2000); // down for 2 s while readings keep coming
      nats = start("nats-server", ["-c", join(dir, "nats.conf")]);
    }
  }
  const pubEnd = Date.now();
  let stored = 0;
  let lastChange = Date.now();
  await waitFor(
    async () => {
      try {
        const n = (await jsm.streams.info("FLEET")).state.messages;
        if (n !== stored) lastChange = Date.now();
        stored = n;
      } catch {
        // nats reconnecting
      }
      return stored >= published || Date.now() - lastChange > 45_000;
    },
    "every event stored",
    90_000,
  );
  const doneAt = lastChange;
  const load1 = agents.map((a) => procStat(a.p.pid));
  const loadS = (pubEnd - loadStart) / 1000;
  const elapsed = (doneAt - loadStart) / 1000;

  const cpu = (a, b, s) => a.map((x, i) => (100 * (b[i].ticks - x.ticks)) / TICK / s);
  const idleCpu = cpu(idle0, idle1, idleS);
  const loadCpu = cpu(load0, load1, (Date.now() - loadStart) / 1000);
  const idleRss = idle1.map((x) => x.rss);
  const loadRss = peakRss;
  // What the agents still hold (pending or dead) is not lost, but not delivered either.
  let pending = 0;
  let dead = 0;
  let acked = 0;
  for (const a of agents) {
    const r = spawnSync(process.execPath, [BIN, "queue", "stats", "--json", "--config", a.file], { encoding: "utf8" });
    try {
      for (const d of JSON.parse(r.stdout)) {
        pending += d.pending;
        dead += d.dead;
        acked += d.delivered;
      }
    } catch {
      console.error(`${a.id}: queue stats failed: ${r.stderr}`);
    }
  }
  const loss = published - stored - pending;
  // Intake as the agents counted it (http /metrics), summed over the fleet.
  const sums = {};
  for (const a of agents) {
    try {
      const text = await (await fetch(`http://127.0.0.1:${a.httpPort}/metrics`)).text();
      for (const line of text.split("\n")) {
        const m =
          /^(edgehook_(readings_total|rule_readings_skipped_total|mqtt_sessions_lost_total|mqtt_broker_dropped_total|decode_errors_total)[^ ]*) (\S+)/.exec(
            line,
          );
        if (m) sums[m[1]] = (sums[m[1]] ?? 0) + Number(m[3]);
      }
    } catch (err) {
      console.error(`${a.id}: metrics failed: ${err}`);
    }
  }
  const metric = (name) =>
    Object.entries(sums)
      .filter(([k]) => k === name || k.startsWith(`${name}{`))
      .reduce((n, [, v]) => n + v, 0);

  const load = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
  console.log(`fleet bench: ${AGENTS} agents, ${RATE} readings/s each, ${SECONDS} s, nats-server restarted half-way`);
  console.log(`agents subscribed ${readyS.toFixed(1)} s after spawn (publishing starts after that)`);
  console.log(`load average at end: ${load} (${(await import("node:os")).cpus().length} cores)`);
  console.log("");
  console.log("                      idle (baseline)   loaded");
  console.log(
    `CPU per agent median  ${median(idleCpu).toFixed(2).padStart(8)} %       ${median(loadCpu).toFixed(2).padStart(6)} %   (max ${Math.max(...loadCpu).toFixed(2)} %)`,
  );
  console.log(
    `RSS per agent median  ${mib(median(idleRss)).padStart(8)} MiB     ${mib(median(loadRss)).padStart(6)} MiB (max ${mib(Math.max(...loadRss))} MiB, peak)`,
  );
  console.log("");
  console.log(`published  ${published} readings (${(published / loadS).toFixed(1)}/s offered)`);
  console.log(
    `received   ${metric("edgehook_readings_total")} readings by the agents (${metric("edgehook_rule_readings_skipped_total")} skipped by rules, ${metric("edgehook_decode_errors_total")} undecodable, ${metric("edgehook_mqtt_broker_dropped_total")} broker drops seen, ${metric("edgehook_mqtt_sessions_lost_total")} sessions lost)`,
  );
  console.log(`stored     ${stored} events in stream FLEET`);
  console.log(
    `delivered  ${(stored / elapsed).toFixed(1)} events/s aggregate (first publish to last stored: ${elapsed.toFixed(1)} s)`,
  );
  console.log(`acked      ${acked} deliveries marked delivered by the agents (PubAck)`);
  console.log(`waiting    ${pending} pending, ${dead} dead in the agents' outboxes`);
  console.log(`loss       ${loss}${loss === 0 ? " (none)" : " LOST"} (published - stored - pending)`);
  await pub.endAsync();
  await nc.close().catch(() => undefined);
  await cleanup();
  process.exit(loss === 0 && pending === 0 ? 0 : 1);
}

main().catch(async (err) => {
  console.error(err);
  await cleanup();
  process.exit(1);
});
