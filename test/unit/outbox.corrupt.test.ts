/**
 * A damaged outbox file (SD card trouble, a file that is not a database) must not
 * crash-loop the agent: it is moved aside with a clear error line and a fresh outbox
 * starts.
 */
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { newEventId } from "../../src/events.js";
import { createLogger, silentLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import { openDatabase } from "../../src/store/db.js";
import { Outbox } from "../../src/store/outbox.js";
import { FakeClock } from "../support/fake-clock.js";

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "edgehook-corrupt-"));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function capture() {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split("\n").filter(Boolean)) lines.push(JSON.parse(l));
      cb();
    },
  });
  return { logger: createLogger("info", stream), lines };
}

const limits = {
  max_events: 1000,
  max_bytes: 10_000_000,
  max_age: 86_400_000,
  min_free_disk: 1,
  keep_delivered: 60_000,
  commit_delay: 0,
};

async function roundTrip(file: string, clock: FakeClock) {
  const o = new Outbox({ file, limits, clock, logger: silentLogger(), metrics: new Metrics() });
  o.open();
  const id = newEventId();
  await o.commit({
    events: [
      {
        id,
        type: "test",
        rule: "r",
        series: "r:s:m",
        severity: "info",
        priority: 0,
        destinations: ["ops"],
        createdAt: clock.now(),
        body: { type: "test", timestamp: new Date(clock.now()).toISOString(), data: {} },
      },
    ],
    states: [],
    removedStates: [],
  });
  const got = o.next("ops", clock.now(), 1, new Set());
  o.close();
  return { id, got };
}

describe("corrupt outbox file", () => {
  it("moves a file that is not a database aside, says so, and starts fresh", async () => {
    const file = join(dir, "outbox.db");
    writeFileSync(file, Buffer.alloc(64 * 1024, "garbage! "));
    const clock = new FakeClock(Date.parse("2026-03-04T05:06:07.000Z"));
    const { logger, lines } = capture();
    const db = openDatabase(file, { logger, now: () => clock.now() });
    db.close();
    await new Promise((r) => setTimeout(r, 50)); // pino writes asynchronously
    const files = readdirSync(dir).sort();
    expect(files).toContain("outbox.db.corrupt-2026-03-04T05:06:07.000Z");
    const err = lines.find((l) => l.level === "error");
    expect(err?.code).toBe("EDGEHOOK_DB_CORRUPT");
    expect(String(err?.msg)).toMatch(/damaged.*moved it to .*outbox\.db\.corrupt-.*started an empty outbox/);
    const { id, got } = await roundTrip(file, clock);
    expect(got.map((d) => d.eventId)).toEqual([id]);
  });

  it("moves a database whose pages are damaged aside (quick_check) and starts fresh", async () => {
    const file = join(dir, "outbox.db");
    const clock = new FakeClock();
    // A real outbox with a few thousand rows, then scribble over its middle pages.
    const o = new Outbox({
      file,
      limits: { ...limits, max_events: 100_000 },
      clock,
      logger: silentLogger(),
      metrics: new Metrics(),
    });
    o.open();
    const events = Array.from({ length: 3000 }, (_, i) => ({
      id: newEventId(),
      type: "test" as const,
      rule: "r",
      series: `r:s${i % 50}:m`,
      severity: "info" as const,
      priority: 0,
      destinations: ["ops"],
      createdAt: clock.now(),
      body: { type: "test" as const, timestamp: "2026-01-01T00:00:00Z", data: { i, pad: "p".repeat(200) } },
    }));
    await o.commit({ events, states: [], removedStates: [] });
    o.close();
    const fd = openSync(file, "r+");
    for (let page = 20; page < 60; page += 3) writeSync(fd, Buffer.alloc(4096, 0xa5), 0, 4096, page * 4096);
    closeSync(fd);

    const { logger, lines } = capture();
    openDatabase(file, { logger }).close();
    await new Promise((r) => setTimeout(r, 50));
    expect(readdirSync(dir).some((f) => f.startsWith("outbox.db.corrupt-"))).toBe(true);
    expect(lines.find((l) => l.level === "error")?.code).toBe("EDGEHOOK_DB_CORRUPT");
    const { id, got } = await roundTrip(file, clock);
    expect(got.map((d) => d.eventId)).toEqual([id]);
  });

  it("a healthy file is left alone, and check: false never moves anything", () => {
    const file = join(dir, "outbox.db");
    openDatabase(file, { logger: silentLogger() }).close();
    openDatabase(file, { logger: silentLogger() }).close();
    expect(readdirSync(dir).filter((f) => f.includes("corrupt"))).toEqual([]);
    writeFileSync(join(dir, "other.db"), "not a database at all, and long enough to have a header.........");
    expect(() => openDatabase(join(dir, "other.db"), { logger: silentLogger(), check: false })).toThrow();
    expect(existsSync(join(dir, "other.db"))).toBe(true);
  });
});
