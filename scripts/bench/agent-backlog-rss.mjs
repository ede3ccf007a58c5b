#!/usr/bin/env node
/**
 * The real agent's memory with an empty outbox and with 1,000,000 pending deliveries
 * (design invariant 6: the backlog costs disk, not RAM). Each agent runs as its own
 * process (`node bin/edgehook.js run`) for SECONDS seconds; peak RSS (VmHWM) and RSS at
 * the end are read from /proc. Two situations:
 *   down: the receiver is unreachable (the backlog waits; one probe at a time), which is
 *         what "memory does not grow with the queue" is about;
 *   up:   a local keep-alive receiver answers 200 and the agent drains at full speed
 *         (memory under load, compared with the same agent idle).
 *
 *   npx tsc -p tsconfig.build.json && node scripts/bench/agent-backlog-rss.mjs [backlog] [seconds] [down|up]
 *
 * Loopback only; bounded in time; stops the agents and the receiver itself.
 */
import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const BACKLOG = Number(process.argv[2] ?? 1_000_000);
const SECONDS = Number(process.argv[3] ?? 20);
const MODE = process.argv[4] ?? "down";
const here = fileURLToPath(new URL(".", import.meta.url));
const BIN = join(here, "../../bin/edgehook.js");
const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

let received = 0;
const server = createServer((req, res) => {
  req.resume();
  req.on("end", () => {
    received++;
    res.writeHead(200).end();
  });
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const port = server.address().port;
// A port nothing listens on: connection refused, the destination is offline.
const probe = createServer();
await new Promise((r) => probe.listen(0, "127.0.0.1", r));
const downPort = probe.address().port;
await new Promise((r) => probe.close(r));

const vm = (pid, key) => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]);

async function measure(label, backlog) {
  const dir = mkdtempSync(join(tmpdir(), "edgehook-agent-rss-"));
  mkdirSync(join(dir, "data"));
  if (backlog > 0) {
    // The same fill as backlog-rss.mjs: 1,000 series, destination "ops".
    execFileSync(
      process.execPath,
      [join(here, "backlog-rss.mjs"), "--child", "fill", join(dir, "data", "outbox.db"), String(backlog)],
      {
        timeout: 300_000,
      },
    );
  }
  writeFileSync(
    join(dir, "agent.yaml"),
    `version: 1
agent: { id: rss-pi, data_dir: ./data, require_clock_sync: never, log_level: warn }
destinations:
  ops: { url: "http://127.0.0.1:${MODE === "up" ? port : downPort}/hooks", secret: ${SECRET}, concurrency: 16 }
rules:
  - { name: temp-high, match: { metric: temperature }, above: 30, notify: [ops] }
outbox: { max_events: 10000000, max_bytes: 16GB }
http: { listen: false }
`,
  );
  const before = received;
  const agent = spawn(process.execPath, [BIN, "run", "--config", join(dir, "agent.yaml")], { stdio: "ignore" });
  await new Promise((r) => setTimeout(r, SECONDS * 1000));
  const peakKb = vm(agent.pid, "VmHWM");
  const rssKb = vm(agent.pid, "VmRSS");
  agent.kill("SIGTERM");
  await new Promise((r) => agent.once("exit", r));
  rmSync(dir, { recursive: true, force: true });
  const drained = received - before;
  console.log(
    `${label}: peak RSS ${(peakKb / 1024).toFixed(1)} MiB, RSS after ${SECONDS} s ${(rssKb / 1024).toFixed(1)} MiB, ${drained} webhooks delivered meanwhile`,
  );
  return peakKb;
}

try {
  const empty = await measure("empty outbox", 0);
  const full = await measure(`${BACKLOG} pending`, BACKLOG);
  console.log(
    `agent peak RSS: empty ${(empty / 1024).toFixed(1)} MiB, full ${(full / 1024).toFixed(1)} MiB, ratio ${(full / empty).toFixed(3)} (target <= 1.20)`,
  );
} finally {
  server.close();
}
