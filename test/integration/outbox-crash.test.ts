/**
 * Invariant 1 with a real process and a real SIGKILL: every event whose commit()
 * promise resolved (the child prints its id only then) is in the database after the
 * process died at a random moment, together with its rule state.
 *
 * Uses the built code (dist/): run `npx tsc -p tsconfig.build.json` first.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { silentLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import { Outbox } from "../../src/store/outbox.js";
import { FakeClock } from "../support/fake-clock.js";

const DIST = resolve("dist");

const CHILD = `
import { Outbox } from ${JSON.stringify(pathToFileURL(join(DIST, "store/outbox.js")).href)};
import { systemClock } from ${JSON.stringify(pathToFileURL(join(DIST, "clock.js")).href)};
import { newEventId } from ${JSON.stringify(pathToFileURL(join(DIST, "events.js")).href)};
import { silentLogger } from ${JSON.stringify(pathToFileURL(join(DIST, "ops/logger.js")).href)};
import { Metrics } from ${JSON.stringify(pathToFileURL(join(DIST, "ops/metrics.js")).href)};

// "busy": a small outbox that is full all the time, drained concurrently like the
// dispatcher does, so kills land in drops, settles, promotions and maintenance too.
const busy = process.argv[4] === "busy";
const outbox = new Outbox({
  file: process.argv[2],
  limits: { max_events: busy ? 1500 : 10_000_000, max_bytes: 2 ** 40, max_age: 86_400_000, min_free_disk: 1,
            keep_delivered: busy ? 5 : 86_400_000, commit_delay: 2 },
  clock: systemClock, logger: silentLogger(), metrics: new Metrics(),
});
outbox.open();
const run = process.argv[3];
if (busy) {
  let k = 0;
  setInterval(() => {
    for (const dest of ["a", "b"]) {
      const got = outbox.next(dest, Date.now(), 8, new Set());
      outbox.settle(got.map((d, j) => {
        const attempt = { at: Date.now(), status: 200, durationMs: 1 };
        const r = (k + j) % 4;
        if (r === 0) return { id: d.id, outcome: "dead", attempt, reason: "http 400" };
        if (r === 1) return { id: d.id, outcome: "retry", attempt, nextAt: Date.now() + 3, counted: true };
        return { id: d.id, outcome: "delivered", attempt };
      }));
    }
    if (++k % 20 === 0) outbox.maintain();
    if (k % 50 === 0) outbox.replay({ destination: "a", state: "dead" });
  }, 1);
}
let n = 0;
async function caller(c) {
  for (;;) {
    const i = n++;
    const series = "crash:" + (i % 17) + ":m";
    const events = Array.from({ length: 1 + (i % 3) }, () => ({
      id: newEventId(), type: "alert.firing", rule: "crash", series, severity: "warning", priority: 10,
      destinations: i % 5 === 0 ? ["a", "b"] : ["a"], createdAt: Date.now(),
      body: { type: "alert.firing", timestamp: new Date().toISOString(), data: { i, pad: "x".repeat(200) } },
    }));
    const state = { rule: "crash", series: run + ":" + c, version: "1", state: { i } };
    const result = await outbox.commit({ events, states: [state], removedStates: [] });
    const dropped = Object.values(result.dropped).reduce((a, b) => a + b, 0);
    if (dropped > 0) process.stdout.write("D " + dropped + "\\n");
    // Printed only after the commit is durable.
    process.stdout.write(events.map((e) => "E " + e.id).join("\\n") + "\\nS " + run + ":" + c + " " + i + "\\n");
  }
}
for (let c = 0; c < 40; c++) caller(c);
`;

let dir: string;
let childFile: string;
const children: ChildProcess[] = [];

beforeAll(() => {
  if (!existsSync(join(DIST, "store/outbox.js"))) {
    throw new Error("dist/ is missing: run `npx tsc -p tsconfig.build.json` before the integration tests");
  }
  dir = mkdtempSync(join(tmpdir(), "edgehook-crash-"));
  childFile = join(dir, "child.mjs");
  writeFileSync(childFile, CHILD);
});

afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

/** Starts the committing child, SIGKILLs it after `afterLines` printed lines, returns what it printed. */
function runAndKill(file: string, run: string, afterLines: number, mode = "plain"): Promise<string[]> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [childFile, file, run, mode], { stdio: ["ignore", "pipe", "pipe"] });
    children.push(child);
    let buffered = "";
    const lines: string[] = [];
    let stderr = "";
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    child.stdout.on("data", (d: Buffer) => {
      buffered += d.toString();
      const parts = buffered.split("\n");
      buffered = parts.pop() ?? "";
      lines.push(...parts);
      if (lines.length >= afterLines && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    });
    child.on("error", reject);
    child.on("close", (_code, signal) => {
      if (signal !== "SIGKILL") reject(new Error(`child ended without being killed: ${stderr}`));
      // A partial last line may be cut by the kill: only complete lines count.
      else resolvePromise(lines);
    });
  });
}

describe("outbox under SIGKILL", () => {
  it("keeps every event and rule state whose commit resolved", async () => {
    const file = join(dir, "outbox.db");
    let seed = 7;
    const rand = () => {
      seed = (seed * 48271) % 2147483647;
      return seed / 2147483647;
    };
    const allIds: string[] = [];
    for (let run = 0; run < 4; run++) {
      const lines = await runAndKill(file, `run${run}`, 300 + Math.floor(rand() * 4000));
      const ids = lines.filter((l) => l.startsWith("E ")).map((l) => l.slice(2));
      const states = new Map<string, number>();
      for (const l of lines.filter((x) => x.startsWith("S "))) {
        const [, series, i] = l.split(" ");
        states.set(series as string, Math.max(states.get(series as string) ?? -1, Number(i)));
      }
      expect(ids.length).toBeGreaterThan(100);
      allIds.push(...ids);

      const outbox = new Outbox({
        file,
        limits: {
          max_events: 10_000_000,
          max_bytes: 2 ** 40,
          max_age: 86_400_000,
          min_free_disk: 1,
          keep_delivered: 86_400_000,
          commit_delay: 0,
        },
        clock: new FakeClock(),
        logger: silentLogger(),
        metrics: new Metrics(),
      });
      outbox.open();
      try {
        const missing = allIds.filter((id) => outbox.show(id) === undefined);
        expect(missing).toEqual([]);
        // each caller's last printed state (or a later one) survived
        const stored = new Map(
          outbox.loadStates().map((s) => [s.series, (s.state as { i: number }).i] as [string, number]),
        );
        for (const [series, i] of states) expect(stored.get(series)).toBeGreaterThanOrEqual(i);
        // deliveries for every printed event, counters consistent with rows
        const totals = outbox.totals();
        expect(totals.events).toBeGreaterThanOrEqual(allIds.length);
        const pending = outbox.stats().reduce((s, d) => s + d.pending, 0);
        expect(pending).toBe(totals.pending);
      } finally {
        outbox.close();
      }
      expect(readdirSync(dir).filter((f) => f.includes("corrupt"))).toEqual([]);
    }
  });

  it("leaves counters, heads and limits consistent when killed in drops, settles and maintenance", async () => {
    const file = join(dir, "busy.db");
    let drops = 0;
    for (let run = 0; run < 4; run++) {
      const lines = await runAndKill(file, `busy${run}`, 500 + run * 700, "busy");
      expect(lines.length).toBeGreaterThan(100);
      drops += lines.filter((l) => l.startsWith("D ")).length;
      // Straight from the file, before any Outbox.open() recounts anything.
      const db = new Database(file, { readonly: true });
      try {
        const counted = db
          .prepare("SELECT destination, state, COUNT(*) AS n FROM deliveries GROUP BY 1, 2 ORDER BY 1, 2")
          .all();
        const kept = db.prepare("SELECT destination, state, n FROM counts WHERE n <> 0 ORDER BY 1, 2").all();
        expect(kept).toEqual(counted);
        const totals = Object.fromEntries(
          (db.prepare("SELECT key, value FROM totals").all() as { key: string; value: number }[]).map((r) => [
            r.key,
            r.value,
          ]),
        );
        expect(totals.events).toBe(db.prepare("SELECT COUNT(*) FROM events").pluck().get());
        expect(totals.bytes).toBe(db.prepare("SELECT COALESCE(SUM(size), 0) FROM events").pluck().get());
        expect(totals.events).toBeLessThanOrEqual(1500);
        // exactly one head, the earliest pending row, per (destination, series) with pending rows
        const wrongHeads = db
          .prepare(
            `SELECT COUNT(*) FROM (SELECT destination, series, MIN(id) AS first FROM deliveries WHERE state = 0
             GROUP BY 1, 2) p LEFT JOIN deliveries h ON h.destination = p.destination AND h.series = p.series
             AND h.is_head = 1 WHERE h.id IS NULL OR h.id <> p.first`,
          )
          .pluck()
          .get();
        expect(wrongHeads).toBe(0);
        expect(db.prepare("SELECT COUNT(*) FROM deliveries WHERE is_head = 1 AND state <> 0").pluck().get()).toBe(0);
        expect(
          db
            .prepare(
              "SELECT COUNT(*) FROM events e WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq)",
            )
            .pluck()
            .get(),
        ).toBe(0);
      } finally {
        db.close();
      }
    }
    expect(drops).toBeGreaterThan(0); // the kills did land while the outbox was full
  });
});
