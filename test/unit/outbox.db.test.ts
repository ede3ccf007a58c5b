/**
 * The database file itself: durability pragmas, schema versioning, and the log lines an
 * operator reads when the outbox drops or refuses events.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type NewEvent, newEventId } from "../../src/events.js";
import { createLogger, silentLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import { openDatabase, SCHEMA_VERSION } from "../../src/store/db.js";
import type { OutboxLimits } from "../../src/store/outbox.js";
import { Outbox } from "../../src/store/outbox.js";
import { FakeClock } from "../support/fake-clock.js";

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "edgehook-db-"));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe("openDatabase", () => {
  it("uses WAL with synchronous=FULL, foreign keys and a busy timeout", () => {
    const db = openDatabase(join(dir, "nested", "outbox.db"), { logger: silentLogger() });
    try {
      expect(db.pragma("journal_mode", { simple: true })).toBe("wal");
      expect(db.pragma("synchronous", { simple: true })).toBe(2); // FULL
      expect(db.pragma("foreign_keys", { simple: true })).toBe(1);
      expect(db.pragma("busy_timeout", { simple: true })).toBeGreaterThanOrEqual(1000);
      expect(db.pragma("user_version", { simple: true })).toBe(SCHEMA_VERSION);
      // A delivery must point at a stored event.
      expect(() =>
        db
          .prepare(
            "INSERT INTO deliveries (event_seq, destination, series, priority, created_at, next_at) VALUES (?,?,?,?,?,?)",
          )
          .run(999, "ops", "s", 0, 0, 0),
      ).toThrow(/FOREIGN KEY/);
    } finally {
      db.close();
    }
  });

  it("migrates once and keeps data across opens", () => {
    const file = join(dir, "outbox.db");
    let db = openDatabase(file, { logger: silentLogger() });
    db.prepare("INSERT INTO destination_flags (name, disabled) VALUES ('ops', 1)").run();
    db.close();
    db = openDatabase(file, { logger: silentLogger() });
    expect(db.prepare("SELECT COUNT(*) FROM destination_flags").pluck().get()).toBe(1);
    db.close();
  });

  it("refuses a database written by a newer edgehook instead of damaging it", () => {
    const file = join(dir, "outbox.db");
    openDatabase(file, { logger: silentLogger() }).close();
    const raw = new Database(file);
    raw.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    raw.close();
    expect(() => openDatabase(file, { logger: silentLogger() })).toThrow(/newer than this edgehook understands/);
  });
});

describe("Outbox options", () => {
  it("names the wrong option", () => {
    const base = {
      file: join(dir, "outbox.db"),
      clock: new FakeClock(),
      logger: silentLogger(),
      metrics: new Metrics(),
    };
    const limits: OutboxLimits = {
      max_events: 10,
      max_bytes: 1000,
      max_age: 1000,
      min_free_disk: 0,
      keep_delivered: 1000,
      commit_delay: 0,
    };
    expect(() => new Outbox({ ...base, limits: { ...limits, max_events: 0 } }).open()).toThrow(
      "outbox.max_events must be a positive number (is 0)",
    );
    expect(() => new Outbox({ ...base, limits: { ...limits, commit_delay: -1 } }).open()).toThrow(
      /outbox\.commit_delay/,
    );
    expect(() => new Outbox({ ...base, limits, destinationMaxAge: { ops: 0 } }).open()).toThrow(
      /destinations\.ops\.max_age/,
    );
    const ok = new Outbox({ ...base, limits });
    ok.open();
    ok.close();
  });
});

describe("operator log lines", () => {
  const limits: OutboxLimits = {
    max_events: 3,
    max_bytes: 10_000_000,
    max_age: 86_400_000,
    min_free_disk: 1,
    keep_delivered: 60_000,
    commit_delay: 0,
  };
  const ev = (clock: FakeClock): NewEvent => ({
    id: newEventId(),
    type: "reading",
    rule: "r",
    series: "r:s:m",
    severity: "info",
    priority: 0,
    destinations: ["ops"],
    createdAt: clock.now(),
    body: { type: "reading", timestamp: "2026-01-01T00:00:00Z", data: {} },
  });

  function setup(overrides: Partial<OutboxLimits>) {
    const lines: Record<string, unknown>[] = [];
    const stream = new Writable({
      write(chunk, _enc, cb) {
        for (const l of String(chunk).split("\n").filter(Boolean)) lines.push(JSON.parse(l));
        cb();
      },
    });
    const clock = new FakeClock();
    const outbox = new Outbox({
      file: join(dir, "outbox.db"),
      limits: { ...limits, ...overrides },
      clock,
      logger: createLogger("info", stream),
      metrics: new Metrics(),
    });
    outbox.open();
    return { lines, clock, outbox };
  }
  const settle = () => new Promise((r) => setTimeout(r, 30)); // pino writes asynchronously

  it("reports every drop: the first at once, then a summary per minute and at close, none swallowed", async () => {
    const { lines, clock, outbox } = setup({});
    const commit = () => outbox.commit({ events: [ev(clock)], states: [], removedStates: [] });
    for (let i = 0; i < 3; i++) await commit();
    await commit(); // drop 1: reported at once
    await commit(); // drop 2 and 3: summed
    await commit();
    clock.advance(30_000);
    outbox.maintain(); // half a minute: nothing yet
    clock.advance(30_000);
    outbox.maintain(); // a minute since the first report: "dropped 2 since the last report"
    for (let i = 0; i < 5; i++) await commit(); // drops 4..8
    outbox.close(); // the rest, at close
    await settle();
    const reports = lines.filter((l) => l.code === "EDGEHOOK_OUTBOX_DROPPED");
    expect(reports.map((l) => l.dropped)).toEqual([1, 2, 5]);
    expect(reports[0]).toMatchObject({
      level: "warn",
      reasons: { max_events: 1 },
      destinations: { ops: { max_events: 1 } },
    });
    expect(String(reports[1]?.msg)).toMatch(
      /^outbox dropped 2 deliveries since the last report \(max_events: 2 \(ops 2\)\); max_events: the outbox was full .*lowest priority and oldest first.*raise outbox\.max_events$/,
    );
    expect(reports[1]?.periodS).toBe(60);
  });

  it("recounts the counters from the rows when the agent opens the outbox", async () => {
    let { lines, clock, outbox } = setup({ max_events: 100 });
    for (let i = 0; i < 5; i++) await outbox.commit({ events: [ev(clock)], states: [], removedStates: [] });
    const [d] = outbox.next("ops", clock.now(), 1, new Set());
    outbox.settle([{ id: d!.id, outcome: "delivered", attempt: { at: clock.now(), status: 200, durationMs: 1 } }]);
    clock.advance(120_000);
    outbox.maintain(); // prunes the delivered row: its count row stays at 0
    outbox.close();
    await settle();
    expect(lines.filter((l) => l.level === "warn")).toEqual([]);

    const raw = new Database(join(dir, "outbox.db"));
    raw.prepare("UPDATE counts SET n = n + 1000").run();
    raw.prepare("UPDATE totals SET value = 7").run();
    raw.close();
    ({ lines, clock, outbox } = setup({ max_events: 100 }));
    expect(outbox.totals()).toMatchObject({ events: 4, pending: 4 });
    expect(outbox.stats()).toMatchObject([{ destination: "ops", pending: 4, delivered: 0, dead: 0 }]);
    outbox.close();
    await settle();
    expect(lines.filter((l) => l.level === "warn").map((l) => l.msg)).toEqual([
      "outbox counters did not match the stored rows; recounted",
    ]);
  });

  it("a damaged rule-state or history row is skipped, not fatal", async () => {
    let { lines, clock, outbox } = setup({});
    await outbox.commit({
      events: [ev(clock)],
      states: [
        { rule: "r", series: "good", version: "1", state: { n: 1 } },
        { rule: "r", series: "bad", version: "1", state: { n: 2 } },
      ],
      removedStates: [],
    });
    const [d] = outbox.next("ops", clock.now(), 1, new Set());
    outbox.close();
    const raw = new Database(join(dir, "outbox.db"));
    raw.prepare("UPDATE series_state SET state = '{not json' WHERE series = 'bad'").run();
    raw.prepare("UPDATE deliveries SET history = 'garbage'").run();
    raw.close();
    ({ lines, clock, outbox } = setup({}));
    expect(outbox.loadStates()).toEqual([{ rule: "r", series: "good", version: "1", state: { n: 1 } }]);
    outbox.settle([{ id: d!.id, outcome: "delivered", attempt: { at: clock.now(), status: 200, durationMs: 4 } }]);
    const shown = outbox.list({ state: "delivered" });
    expect(shown).toHaveLength(1);
    outbox.close();
    await settle();
    expect(lines.filter((l) => l.level === "warn").map((l) => l.msg)).toEqual([
      "unreadable rule state skipped; the series starts fresh",
    ]);
  });

  it("warns once when the disk floor is reached, not on every refused commit", async () => {
    const { lines, clock, outbox } = setup({ min_free_disk: Number.MAX_SAFE_INTEGER });
    for (let i = 0; i < 3; i++) {
      await expect(outbox.commit({ events: [ev(clock)], states: [], removedStates: [] })).rejects.toMatchObject({
        code: "EDGEHOOK_DISK_FLOOR",
      });
      clock.advance(5000); // past the cached free-space reading
    }
    outbox.close();
    await settle();
    const warns = lines.filter((l) => l.level === "warn");
    expect(warns).toHaveLength(1);
    expect(warns[0]).toMatchObject({ code: "EDGEHOOK_DISK_FLOOR", reason: "disk_floor" });
    expect(String(warns[0]?.msg)).toMatch(
      /outbox refuses new events \(disk_floor\): .* free on .*free up space there or lower outbox\.min_free_disk\. Nothing is dropped meanwhile: MQTT messages stay unacknowledged/,
    );
  });
});
