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

const outbox = new Outbox({
  file: process.argv[2],
  limits: { max_events: 10_000_000, max_bytes: 2 ** 40, max_age: 86_400_000, min_free_disk: 1,
            keep_delivered: 86_400_000, commit_delay: 2 },
  clock: systemClock, logger: silentLogger(), metrics: new Metrics(),
});
outbox.open();
const run = process.argv[3];
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
    await outbox.commit({ events, states: [state], removedStates: [] });
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
function runAndKill(file: string, run: string, afterLines: number): Promise<string[]> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [childFile, file, run], { stdio: ["ignore", "pipe", "pipe"] });
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
});
