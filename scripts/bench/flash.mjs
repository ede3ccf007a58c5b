// Bytes written to storage per event (issue 15, item 3): the real agent (bin/edgehook.js)
// reads QoS 1 readings from its own mosquitto and delivers to a loopback receiver that
// answers 200 at once. The outbox lives in a temp directory on a real disk (write_bytes is
// counted when the page cache is dirtied; on tmpfs it stays 0).
//
// Two phases per run, each measured as the change of the agent's /proc/<pid>/io:
//   unchanged  UNCHANGED readings, RATE per second, that change nothing (an alert rule's
//              value stays under its threshold: no event, no rule state change)
//   events     EVENTS readings, RATE per second, each making one event (the value crosses the
//              threshold up, then down: alert.firing, alert.resolved, ...), so every commit
//              holds one event. Measured until every event was delivered, its outcome
//              written and its MQTT message key deleted (RELEASE_DELAY_MS), with WAL
//              checkpoints as they fall (the WAL is checkpointed every 1,000 pages, so
//              several within a phase).
// write_bytes / events is the figure (KB = 1,000 bytes); wchar (bytes passed to write()) and
// syscw (write calls) per event are printed for insight.
//
// Baseline, in the same run and alternating with the agent: a bare better-sqlite3 process
// with the outbox's pragmas (page_size 1024, WAL, synchronous FULL, cache_size -8192,
// journal_size_limit 16 MiB) inserting one row of the events' median body size per
// transaction, EVENTS transactions at RATE per second.
//
//   npm run build && node scripts/bench/flash.mjs [events=100] [runs=3] [rate=5] [--bin=path/to/bin/edgehook.js]... [--json=file] [--pages]
//
// Several --bin= run those builds alternately (the first is the one the --json rows describe);
// the default is this checkout. --pages: after the runs, one more agent run of 10 events that
// is SIGKILLed before any checkpoint, and its WAL is read frame by frame: which b-tree (table
// or index) each written page belongs to, per transaction.
// FLASH_STRACE=<file> (analysis): the agent runs under strace, and each run prints per file
// (outbox.db, outbox.db-wal) the bytes passed to pwrite, the fsyncs and a model of write_bytes
// in the events phase; the /proc figures are then strace's own, not the agent's.
// Loopback only; everything in a temp directory; every child is killed by PID; bounded in time.
import { appendFileSync, copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
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
  median,
  metricSum,
  overTime,
  sleep,
  spawnTracked,
  startMosquitto,
  startReceiver,
  waitFor,
} from "./support.mjs";

const positional = process.argv.slice(2).filter((a) => !a.startsWith("--"));
const EVENTS = Number(positional[0] ?? 100);
const RUNS = Number(positional[1] ?? 3);
const RATE = Number(positional[2] ?? 5);
const UNCHANGED = EVENTS;
const bins = process.argv.filter((a) => a.startsWith("--bin=")).map((a) => a.slice(6));
const BINS = bins.length > 0 ? bins : [fileURLToPath(new URL("../../bin/edgehook.js", import.meta.url))];
const JSON_FILE = process.argv.find((a) => a.startsWith("--json="))?.slice(7);
const PAGES = process.argv.includes("--pages");
/** FLASH_STRACE=file: the agent runs under strace, its writes and fsyncs logged to that file (analysis only). */
const STRACE = process.env.FLASH_STRACE;
const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/** Released MQTT message keys are deleted within this (src/store/message-keys.ts), plus margin. */
const SETTLE_MS = 7000;

const io = (pid) => {
  const out = {};
  for (const line of readFileSync(`/proc/${pid}/io`, "utf8").split("\n")) {
    const [k, v] = line.split(": ");
    if (k && v) out[k] = Number(v);
  }
  return out;
};
const ioDelta = (a, b) => ({
  write_bytes: b.write_bytes - a.write_bytes,
  wchar: b.wchar - a.wchar,
  syscw: b.syscw - a.syscw,
});
const kb = (bytes) => (bytes / 1000).toFixed(1);

async function readingsTotal(httpPort) {
  try {
    const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
    return metricSum(text, "edgehook_readings_total");
  } catch {
    return Number.NaN;
  }
}

/** Publishes `values` (QoS 1) at RATE per second. */
async function publishPaced(pub, values) {
  const t0 = performance.now();
  for (let i = 0; i < values.length; i++) {
    const wait = t0 + (i * 1000) / RATE - performance.now();
    if (wait > 0) await sleep(wait);
    await pub.publishAsync("t/room", String(values[i]), { qos: 1 });
  }
}

/**
 * One agent run: both phases. With `killAfter` (the --pages run) the agent is SIGKILLed after
 * that many events and its files are kept for reading.
 */
async function runAgent(bin, { killAfter } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "edgehook-flash-"));
  // Answers 200 at once; counts requests and keeps the body sizes.
  const receiver = await startReceiver({ status: 200, sizes: true });
  const mine = [];
  const track = (c) => {
    mine.push(c);
    return c;
  };
  try {
    const broker = await startMosquitto(dir, "", 50);
    track(broker.child);
    const brokerPort = broker.port;
    const httpPort = await freePort();
    writeFileSync(
      join(dir, "agent.yaml"),
      `version: 1
agent: { id: flash, data_dir: ./data, require_clock_sync: never, log_level: warn }
mqtt:
  url: mqtt://127.0.0.1:${brokerPort}
  client_id: flash-agent
  subscriptions: [{ topic: "t/+", sensor: "{1}", metric: temperature, format: number, qos: 1 }]
destinations:
  sink: { url: "http://127.0.0.1:${receiver.port}/hook", secret: ${SECRET} }
rules:
  - { name: hot, match: { metric: temperature }, above: 50, notify: [sink] }
http: { listen: "127.0.0.1:${httpPort}" }
`,
    );
    const agent = track(
      spawnTracked(
        STRACE ? "strace" : process.execPath,
        [
          ...(STRACE
            ? [
                "-f",
                "-y",
                "-qq",
                "-tt",
                "-e",
                "trace=pwrite64,pwritev,write,fsync,fdatasync,ftruncate",
                "-o",
                STRACE,
                process.execPath,
              ]
            : []),
          bin,
          "run",
          "--config",
          join(dir, "agent.yaml"),
        ],
        {
          cwd: dir,
          stdio: ["ignore", "pipe", "pipe"],
        },
      ),
    );
    const log = keepOutput(agent, 20_000);
    await waitFor(async () => !Number.isNaN(await readingsTotal(httpPort)), "agent /metrics", 30_000).catch((err) => {
      throw new Error(`${err.message}\n${log().slice(-2000)}`);
    });
    const pub = await mqtt.connectAsync(`mqtt://127.0.0.1:${brokerPort}`, { clientId: "flash-pub" });
    // Warm-up: the series exists and is at rest; what start-up writes is done.
    const r0 = await readingsTotal(httpPort);
    await pub.publishAsync("t/room", "20", { qos: 1 });
    await waitFor(async () => (await readingsTotal(httpPort)) >= r0 + 1, "warm-up reading", 10_000);
    await sleep(SETTLE_MS);

    const walFile = join(dir, "data", "outbox.db-wal");
    if (killAfter !== undefined) {
      const walBefore = existsSync(walFile) ? readFileSync(walFile).length : 0;
      const values = Array.from({ length: killAfter }, (_, i) => (i % 2 === 0 ? 60 : 40));
      await publishPaced(pub, values);
      await waitFor(() => receiver.counts.requests >= killAfter, "deliveries", 60_000);
      await sleep(SETTLE_MS);
      agent.kill("SIGKILL");
      await new Promise((r) => agent.once("exit", r));
      const keepDir = mkdtempSync(join(tmpdir(), "edgehook-flash-pages-"));
      for (const ext of ["", "-wal"])
        copyFileSync(join(dir, "data", `outbox.db${ext}`), join(keepDir, `outbox.db${ext}`));
      return { keepDir, walBefore, events: killAfter };
    }

    // Phase 1: readings that change nothing.
    let before = io(agent.pid);
    const rBefore = await readingsTotal(httpPort);
    await publishPaced(
      pub,
      Array.from({ length: UNCHANGED }, (_, i) => 20 + (i % 10)),
    );
    // Polled slowly: each /metrics answer is a socket write the wchar figure counts.
    await waitFor(
      async () => (await readingsTotal(httpPort)) >= rBefore + UNCHANGED,
      "unchanged readings",
      60_000,
      1000,
    );
    await sleep(SETTLE_MS);
    const unchanged = ioDelta(before, io(agent.pid));
    const eventsDuringUnchanged = receiver.counts.requests;

    // Phase 2: one event per reading.
    const phaseStart = clockTime(new Date());
    before = io(agent.pid);
    const t0 = performance.now();
    await publishPaced(
      pub,
      Array.from({ length: EVENTS }, (_, i) => (i % 2 === 0 ? 60 : 40)),
    );
    await waitFor(() => receiver.counts.requests >= EVENTS, "deliveries", 60_000);
    await sleep(SETTLE_MS);
    const events = ioDelta(before, io(agent.pid));
    const seconds = (performance.now() - t0) / 1000;
    await pub.endAsync();
    if (eventsDuringUnchanged !== 0) throw new Error(`the unchanged readings made ${eventsDuringUnchanged} events`);
    if (receiver.counts.requests !== EVENTS) {
      throw new Error(`expected ${EVENTS} webhooks, the receiver got ${receiver.counts.requests}`);
    }
    if (STRACE) straceSummary(STRACE, phaseStart, EVENTS);
    return { unchanged, events, seconds, bodySize: median(receiver.counts.sizes) };
  } finally {
    // Under strace the agent is strace's child, and a killed strace would leave it running.
    if (STRACE) for (const c of mine) if (c.exitCode === null) killTracees(c.pid);
    cleanUp(mine, receiver, dir);
  }
}

function killTracees(pid) {
  try {
    for (const child of readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/)) {
      if (child) process.kill(Number(child), "SIGKILL");
    }
  } catch {
    // gone already
  }
}

/** HH:MM:SS.micro in local time, as strace -tt writes it. */
function clockTime(d) {
  const p = (n, w = 2) => String(n).padStart(w, "0");
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}000`;
}

/**
 * FLASH_STRACE: per file, from `from` on, the bytes passed to write calls and the fsyncs, and
 * a model of write_bytes: the kernel counts a 4 KiB page-cache page when a write dirties it,
 * and an fsync cleans it, so the page holding the end of one commit is counted again by the
 * next. (The -shm file is written through mmap: strace does not see it.)
 */
function straceSummary(file, from, events) {
  const rx = /^\d+ (\d\d:\d\d:\d\d\.\d+) (\w+)\(\d+<([^>]*)>(.*)$/;
  const files = new Map();
  for (const line of readFileSync(file, "utf8").split("\n")) {
    const m = rx.exec(line);
    if (!m || m[1] < from) continue;
    const [, , call, path, rest] = m;
    if (!path.startsWith("/")) continue;
    const name = path.slice(path.lastIndexOf("/") + 1);
    let f = files.get(name);
    if (!f) {
      f = { wchar: 0, calls: 0, fsyncs: 0, modeled: 0, dirty: new Set() };
      files.set(name, f);
    }
    if (call === "pwrite64") {
      const w = /, (\d+), (\d+)\) = \d+$/.exec(rest);
      if (!w) continue;
      const n = Number(w[1]);
      const off = Number(w[2]);
      f.wchar += n;
      f.calls++;
      for (let p = Math.floor(off / 4096); p <= Math.floor((off + n - 1) / 4096); p++) {
        if (!f.dirty.has(p)) {
          f.dirty.add(p);
          f.modeled += 4096;
        }
      }
    } else if (call === "fsync" || call === "fdatasync") {
      f.fsyncs++;
      f.dirty.clear();
    }
  }
  for (const [name, f] of files) {
    console.log(
      `  ${name}: per event ${kb(f.wchar / events)} KB in ${(f.calls / events).toFixed(1)} pwrite calls, ${(f.fsyncs / events).toFixed(2)} fsyncs, modelled write_bytes ${kb(f.modeled / events)} KB`,
    );
  }
}

/** The baseline: bare better-sqlite3 in its own process, one row per transaction. */
const BASELINE_CHILD = `
import Database from "better-sqlite3";
const [file, n, rate, size] = process.argv.slice(2).map((a, i) => (i === 0 ? a : Number(a)));
const db = new Database(file);
db.pragma("page_size = 1024");
db.pragma("journal_mode = WAL");
db.pragma("synchronous = FULL");
db.pragma("cache_size = -8192");
db.pragma("journal_size_limit = 16777216");
db.exec("CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, body BLOB NOT NULL)");
const insert = db.prepare("INSERT INTO rows (body) VALUES (?)");
const body = Buffer.alloc(size, 120);
insert.run(body);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
process.stdout.write("ready\\n");
await new Promise((r) => process.stdin.once("data", r));
const t0 = performance.now();
for (let i = 0; i < n; i++) {
  const wait = t0 + (i * 1000) / rate - performance.now();
  if (wait > 0) await sleep(wait);
  db.transaction(() => insert.run(body)).immediate();
}
process.stdout.write("done\\n");
await new Promise((r) => process.stdin.once("data", r));
`;

async function runBaseline(size) {
  const dir = mkdtempSync(join(tmpdir(), "edgehook-flash-base-"));
  const script = join(dir, "baseline.mjs");
  // Resolve better-sqlite3 from this checkout.
  writeFileSync(script, BASELINE_CHILD.replace('"better-sqlite3"', JSON.stringify(BETTER_SQLITE3)));
  const child = spawnTracked(
    process.execPath,
    [script, join(dir, "base.db"), String(EVENTS), String(RATE), String(size)],
    {
      stdio: ["pipe", "pipe", "inherit"],
    },
  );
  try {
    const lines = [];
    child.stdout.on("data", (d) => lines.push(...d.toString().split("\n").filter(Boolean)));
    await waitFor(() => lines.includes("ready"), "baseline ready", 10_000);
    const before = io(child.pid);
    child.stdin.write("go\n");
    await waitFor(() => lines.includes("done"), "baseline done", 120_000);
    await sleep(500);
    return ioDelta(before, io(child.pid));
  } finally {
    if (child.exitCode === null) child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
}

const BETTER_SQLITE3 = fileURLToPath(new URL("../../node_modules/better-sqlite3/lib/index.js", import.meta.url));

// ------------------------------------------------------------ --pages: the WAL frame by frame

/** Frames of a WAL file: page number and, for the last frame of a transaction, the db size. */
function walFrames(file, pageSize) {
  const buf = readFileSync(file);
  const salt1 = buf.readUInt32BE(16);
  const salt2 = buf.readUInt32BE(20);
  const frames = [];
  for (let off = 32; off + 24 + pageSize <= buf.length; off += 24 + pageSize) {
    if (buf.readUInt32BE(off + 8) !== salt1 || buf.readUInt32BE(off + 12) !== salt2) break;
    frames.push({ offset: off, page: buf.readUInt32BE(off), commit: buf.readUInt32BE(off + 4) });
  }
  return frames;
}

async function pages(bin) {
  const n = 10;
  const { keepDir, walBefore, events } = await runAgent(bin, { killAfter: n });
  try {
    const Database = (await import(BETTER_SQLITE3)).default;
    const db = new Database(join(keepDir, "outbox.db"), { readonly: true });
    const pageSize = db.pragma("page_size", { simple: true });
    const owner = new Map();
    for (const r of db.prepare("SELECT name, pageno FROM dbstat").all()) owner.set(r.pageno, r.name);
    db.close();
    const frames = walFrames(join(keepDir, "outbox.db-wal"), pageSize);
    const firstFrame = walBefore === 0 ? 0 : Math.floor((walBefore - 32) / (24 + pageSize));
    const mine = frames.slice(firstFrame);
    const txs = [];
    let cur = [];
    for (const f of mine) {
      cur.push(f);
      if (f.commit !== 0) {
        txs.push(cur);
        cur = [];
      }
    }
    const byName = new Map();
    console.log(`pages: ${n} events, page size ${pageSize} B, ${mine.length} WAL frames in ${txs.length} transactions`);
    for (const [i, tx] of txs.entries()) {
      const names = new Map();
      for (const f of tx) {
        const name =
          owner.get(f.page) ?? (f.page === 1 ? "sqlite_schema (page 1: header)" : `page ${f.page} (freelist?)`);
        names.set(name, (names.get(name) ?? 0) + 1);
        byName.set(name, (byName.get(name) ?? 0) + 1);
      }
      console.log(`  tx ${i + 1}: ${tx.length} frames: ${[...names].map(([k, v]) => `${k} ${v}`).join(", ")}`);
    }
    console.log(
      `  per event: ${(mine.length / events).toFixed(1)} frames = ${kb((mine.length * (pageSize + 24)) / events)} KB of WAL (before the checkpoint writes the pages again)`,
    );
    for (const [name, c] of [...byName].sort((a, b) => b[1] - a[1])) {
      console.log(`    ${name}: ${(c / events).toFixed(2)} pages/event`);
    }
  } finally {
    rmSync(keepDir, { recursive: true, force: true });
  }
}

// ------------------------------------------------------------ main

overTime("flash", RUNS * (BINS.length + 1) * ((2 * EVENTS) / RATE + 60) * 1000 + 300_000);
killChildrenOnSignal();

const startLoad = loadavg();
console.log(
  `flash: ${EVENTS} single-event readings and ${UNCHANGED} unchanged readings at ${RATE}/s per run, ${RUNS} runs; data in ${tmpdir()}; load average ${startLoad}`,
);
const results = new Map(BINS.map((b) => [b, []]));
const baselines = [];
for (let i = 0; i < RUNS; i++) {
  let size = 0;
  for (const bin of BINS) {
    const r = await runAgent(bin);
    size = r.bodySize;
    results.get(bin).push(r);
    const e = r.events;
    const u = r.unchanged;
    console.log(
      `run ${i + 1} ${bin}: per event ${kb(e.write_bytes / EVENTS)} KB write_bytes, ${kb(e.wchar / EVENTS)} KB wchar, ${(e.syscw / EVENTS).toFixed(1)} write calls; ` +
        `per unchanged reading ${(u.write_bytes / UNCHANGED).toFixed(0)} B write_bytes, ${(u.wchar / UNCHANGED).toFixed(0)} B wchar, ${(u.syscw / UNCHANGED).toFixed(2)} write calls (body ${size} B); load ${loadavg()}`,
    );
  }
  const b = await runBaseline(size);
  baselines.push(b);
  console.log(
    `run ${i + 1} baseline (bare better-sqlite3, one ${size} B row per transaction): ${kb(b.write_bytes / EVENTS)} KB write_bytes, ${kb(b.wchar / EVENTS)} KB wchar, ${(b.syscw / EVENTS).toFixed(1)} write calls per transaction`,
  );
}
const load = loadavg();
const baseKb = median(baselines.map((b) => b.write_bytes / EVENTS / 1000));
for (const [bin, rs] of results) {
  const m = (f) => median(rs.map(f));
  console.log(
    `${bin}: median of ${rs.length}: ${m((r) => r.events.write_bytes / EVENTS / 1000).toFixed(1)} KB written per event (target ≤ 8; baseline ${baseKb.toFixed(1)} KB per bare one-row transaction, ratio ${(m((r) => r.events.write_bytes / EVENTS / 1000) / baseKb).toFixed(2)}), ` +
      `${m((r) => r.unchanged.write_bytes / UNCHANGED).toFixed(0)} B per unchanged reading (target 0); load average ${load}`,
  );
}
if (JSON_FILE) {
  const rs = results.get(BINS[0]);
  const command = `node scripts/bench/flash.mjs ${EVENTS} ${RUNS} ${RATE}`;
  const perEvent = rs.map((r) => Number((r.events.write_bytes / EVENTS / 1000).toFixed(2)));
  const unchanged = rs.map((r) => Math.round(r.unchanged.write_bytes / UNCHANGED));
  appendFileSync(
    JSON_FILE,
    `${JSON.stringify({
      row: "flash_per_event",
      value: median(perEvent),
      unit: "KB",
      baseline: Number(baseKb.toFixed(2)),
      baseline_label: "bare better-sqlite3, one row per transaction, same pragmas",
      runs: perEvent,
      load,
      command,
    })}\n`,
  );
  appendFileSync(
    JSON_FILE,
    `${JSON.stringify({
      row: "flash_unchanged",
      value: median(unchanged),
      unit: "B",
      baseline: 0,
      baseline_label: "bare better-sqlite3 writing nothing",
      runs: unchanged,
      load,
      command,
    })}\n`,
  );
}
if (PAGES) await pages(BINS[0]);
process.exit(0);
