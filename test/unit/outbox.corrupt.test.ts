/**
 * A damaged outbox file (SD card trouble, a file that is not a database) must not
 * crash-loop the agent nor cost the whole backlog: the rows SQLite can still read are
 * salvaged into a fresh outbox, the damaged file is moved aside, and one error line says
 * how many rows were saved and lost. Damage met while running is noticed at once.
 */
import { randomBytes } from "node:crypto";
import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { newEventId } from "../../src/events.js";
import { createLogger, silentLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import { openDatabase } from "../../src/store/db.js";
import { damageKind, Outbox } from "../../src/store/outbox.js";
import { salvageInto } from "../../src/store/salvage.js";
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

/** An outbox with `n` pending events on 50 series and a rule state per series and event. */
async function fill(file: string, clock: FakeClock, n: number): Promise<void> {
  const o = new Outbox({ file, limits: bigLimits, clock, logger: silentLogger(), metrics: new Metrics() });
  o.open();
  for (let start = 0; start < n; start += 500) {
    const events = Array.from({ length: Math.min(500, n - start) }, (_, j) => {
      const i = start + j;
      return {
        id: newEventId(),
        type: "test" as const,
        rule: "r",
        series: `r:s${i % 50}:m`,
        severity: "info" as const,
        priority: 0,
        destinations: ["ops"],
        createdAt: clock.now(),
        body: { type: "test" as const, timestamp: "2026-01-01T00:00:00Z", data: { i, pad: "p".repeat(200) } },
      };
    });
    const states = events.map((e) => ({
      rule: "r",
      series: `state-${e.body.data.i}`,
      version: "1",
      state: { i: e.body.data.i },
    }));
    await o.commit({ events, states, removedStates: [] });
  }
  o.close();
}

const limits = {
  max_events: 1000,
  max_bytes: 10_000_000,
  max_age: 86_400_000,
  min_free_disk: 1,
  keep_delivered: 60_000,
  commit_delay: 0,
};

const bigLimits = { ...limits, max_events: 100_000 };

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
    expect(String(err?.msg)).toMatch(
      /damaged \(file is not a database\) and holds nothing readable; moved it to .*outbox\.db\.corrupt-.* and started an empty outbox/,
    );
    const { id, got } = await roundTrip(file, clock);
    expect(got.map((d) => d.eventId)).toEqual([id]);
  });

  it("salvages every readable pending event (with its deliveries) and rule state, and says how many were lost", async () => {
    const file = join(dir, "outbox.db");
    const clock = new FakeClock();
    const total = 2000;
    await fill(file, clock, total);
    // 8 KiB of garbage in the middle of the file.
    const size = statSync(file).size;
    const fd = openSync(file, "r+");
    writeSync(fd, randomBytes(8192), 0, 8192, Math.floor(size / 2 / 1024) * 1024);
    closeSync(fd);

    const { logger, lines } = capture();
    const o = new Outbox({ file, limits: bigLimits, clock, logger, metrics: new Metrics() });
    o.open();
    await new Promise((r) => setTimeout(r, 50));
    const err = lines.find((l) => l.code === "EDGEHOOK_DB_CORRUPT") as {
      saved: { events: number; pending: number; states: number };
      lost: { pending: number };
      msg: string;
    };
    expect(err).toBeDefined();
    // Most rows survive 8 KiB of damage; what is lost is counted exactly.
    expect(err.saved.pending).toBeGreaterThan(total * 0.95);
    expect(err.saved.pending + err.lost.pending).toBe(total);
    expect(err.saved.states).toBeGreaterThan(total * 0.95);
    expect(err.msg).toMatch(
      new RegExp(
        `salvaged ${err.saved.events} pending events \\(${err.saved.pending} deliveries\\).*lost ${err.lost.pending} pending deliveries`,
      ),
    );
    expect(readdirSync(dir).some((f) => f.startsWith("outbox.db.corrupt-"))).toBe(true);

    // The fresh outbox holds them consistently: counters, one head per series, bodies intact.
    expect(o.totals()).toMatchObject({ pending: err.saved.pending, events: err.saved.events });
    expect(o.loadStates()).toHaveLength(err.saved.states);
    const seen = new Set<string>();
    for (;;) {
      const batch = o.next("ops", clock.now(), 100, new Set());
      if (batch.length === 0) break;
      for (const d of batch) {
        const body = JSON.parse(d.body.toString("utf8")) as { data: { i: number } };
        expect(d.series).toBe(`r:s${body.data.i % 50}:m`);
        seen.add(d.eventId);
      }
      o.settle(batch.map((d) => ({ id: d.id, outcome: "delivered" as const, attempt: { at: 0, durationMs: 1 } })));
    }
    expect(seen.size).toBe(err.saved.pending);
    o.close();
    expect(lines.some((l) => l.msg === "outbox counters did not match the stored rows; recounted")).toBe(false);
  });

  it("moves a database whose pages are widely damaged aside (quick_check), salvaging what it can", async () => {
    const file = join(dir, "outbox.db");
    const clock = new FakeClock();
    await fill(file, clock, 3000);
    const fd = openSync(file, "r+");
    for (let page = 20; page < 60; page += 3) writeSync(fd, Buffer.alloc(4096, 0xa5), 0, 4096, page * 4096);
    closeSync(fd);

    const { logger, lines } = capture();
    openDatabase(file, { logger }).close();
    await new Promise((r) => setTimeout(r, 50));
    expect(readdirSync(dir).some((f) => f.startsWith("outbox.db.corrupt-"))).toBe(true);
    const err = lines.find((l) => l.level === "error") as {
      code: string;
      saved: { pending: number };
      lost: { pending: number };
    };
    expect(err.code).toBe("EDGEHOOK_DB_CORRUPT");
    expect(err.saved.pending + err.lost.pending).toBe(3000);
    const db = openDatabase(file, { logger: silentLogger() });
    expect(db.pragma("quick_check", { simple: true })).toBe("ok");
    db.close();
  });

  it("notices damage while running: failing state, one loud line, and nothing new stored", async () => {
    const file = join(dir, "outbox.db");
    const clock = new FakeClock();
    await fill(file, clock, 2000);
    const { logger, lines } = capture();
    const o = new Outbox({ file, limits: bigLimits, clock, logger, metrics: new Metrics() });
    o.open();
    expect(o.damage).toBeUndefined();
    // Damage the middle of the file under the open outbox. Another connection's write
    // (as `edgehook queue` does) makes it read pages from the file again.
    const size = statSync(file).size;
    const fd = openSync(file, "r+");
    writeSync(fd, randomBytes(8192), 0, 8192, Math.floor(size / 2 / 1024) * 1024);
    closeSync(fd);
    const other = new Database(file);
    other.prepare("INSERT INTO destination_flags (name, disabled) VALUES ('other', 0)").run();
    other.close();

    let thrown: unknown;
    try {
      for (let i = 0; i < 100; i++) {
        const batch = o.next("ops", clock.now(), 50, new Set());
        if (batch.length === 0) break;
        o.settle(batch.map((d) => ({ id: d.id, outcome: "delivered" as const, attempt: { at: 0, durationMs: 1 } })));
      }
    } catch (err) {
      thrown = err;
    }
    expect((thrown as { code?: string }).code).toMatch(/^SQLITE_CORRUPT/);
    expect(o.damage).toMatchObject({ kind: "corrupt" });
    expect(o.refusal()).toMatchObject({ reason: "damaged" });
    const p = o.commit({ events: [], states: [{ rule: "r", series: "x", version: "1", state: 1 }], removedStates: [] });
    await expect(p).rejects.toMatchObject({ code: "EDGEHOOK_DB_CORRUPT" });
    try {
      o.close();
    } catch {
      // Closing a damaged file may fail too.
    }
    await new Promise((r) => setTimeout(r, 50));
    const fatal = lines.filter((l) => l.level === "fatal");
    expect(fatal).toHaveLength(1);
    expect(fatal[0]).toMatchObject({ code: "EDGEHOOK_DB_CORRUPT" });
    expect(String(fatal[0]?.msg)).toMatch(/while running.*\/healthz now reports failing.*salvaged/);
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

/**
 * `n` events of about 5 KB on their own series (bodies that size live on SQLite overflow
 * pages); event `marked` carries a run of "Q" no other body has. Returns the event ids.
 */
async function fillLarge(file: string, clock: FakeClock, n: number, marked: number): Promise<string[]> {
  const o = new Outbox({ file, limits: bigLimits, clock, logger: silentLogger(), metrics: new Metrics() });
  o.open();
  const events = Array.from({ length: n }, (_, i) => ({
    id: newEventId(),
    type: "test" as const,
    rule: "r",
    series: `r:s${i}:m`,
    severity: "info" as const,
    priority: 0,
    destinations: ["ops"],
    createdAt: clock.now(),
    body: {
      type: "test" as const,
      timestamp: "2026-01-01T00:00:00Z",
      data: { i, pad: (i === marked ? "Q" : "x").repeat(5000) },
    },
  }));
  await o.commit({ events, states: [], removedStates: [] });
  o.close(); // checkpoints: every body is in the main file
  return events.map((e) => e.id);
}

/**
 * Overwrites 64 bytes inside the marked body with "Z": what a bad sector does to the bytes
 * of a row. The body stays valid JSON and SQLite's page structure stays intact, so neither
 * quick_check nor a JSON parse can tell; only the body's checksum can.
 */
function damageMarkedBody(file: string): void {
  const at = readFileSync(file).indexOf("Q".repeat(1000));
  expect(at).toBeGreaterThan(0);
  const fd = openSync(file, "r+");
  writeSync(fd, Buffer.alloc(64, "Z"), 0, 64, at + 100);
  closeSync(fd);
}

const intact = (body: Buffer) => {
  const pad = (JSON.parse(body.toString("utf8")) as { data: { pad: string } }).data.pad;
  return pad === "x".repeat(5000) || pad === "Q".repeat(5000);
};

describe("event bodies are checksummed", () => {
  it("never hands out a body damaged inside its bytes: the outbox fails as for SQLITE_CORRUPT, and the restart salvages without it", async () => {
    const file = join(dir, "outbox.db");
    const clock = new FakeClock();
    const ids = await fillLarge(file, clock, 20, 7);
    damageMarkedBody(file);

    const { logger, lines } = capture();
    let o = new Outbox({ file, limits: bigLimits, clock, logger, metrics: new Metrics() });
    o.open(); // quick_check cannot see damage inside a row: the file opens
    expect(readdirSync(dir).some((f) => f.includes("corrupt"))).toBe(false);

    // Drained five at a time: 0-4 go out; the call that reaches event 7 fails whole.
    const handedOut: Buffer[] = [];
    let thrown: unknown;
    try {
      for (;;) {
        const batch = o.next("ops", clock.now(), 5, new Set());
        if (batch.length === 0) break;
        handedOut.push(...batch.map((d) => d.body));
        o.settle(batch.map((d) => ({ id: d.id, outcome: "delivered" as const, attempt: { at: 0, durationMs: 1 } })));
      }
    } catch (err) {
      thrown = err;
    }
    expect(handedOut.filter((b) => !intact(b))).toEqual([]);
    expect(handedOut).toHaveLength(5);
    // `queue show` (and so `queue replay ID`) refuses it too.
    expect(() => o.show(ids[7] as string)).toThrow(/body of event .* does not match its checksum/);
    expect(thrown).toMatchObject({ code: "SQLITE_CORRUPT" });
    expect(o.damage).toMatchObject({ kind: "corrupt", sqliteCode: "SQLITE_CORRUPT" });
    expect(o.refusal()).toMatchObject({ reason: "damaged" });
    await expect(
      o.commit({ events: [], states: [{ rule: "r", series: "x", version: "1", state: 1 }], removedStates: [] }),
    ).rejects.toMatchObject({ code: "EDGEHOOK_DB_CORRUPT" });
    o.close();
    await new Promise((r) => setTimeout(r, 50));
    const fatal = lines.filter((l) => l.level === "fatal");
    expect(fatal).toHaveLength(1);
    expect(fatal[0]).toMatchObject({ code: "EDGEHOOK_DB_CORRUPT", sqliteCode: "SQLITE_CORRUPT" });
    expect(String(fatal[0]?.msg)).toMatch(new RegExp(`body of event ${ids[7]} does not match its checksum`));

    // The restart salvages (although quick_check still finds nothing): the damaged event
    // is left out and counted lost, the 14 others still pending are kept.
    lines.length = 0;
    o = new Outbox({ file, limits: bigLimits, clock, logger, metrics: new Metrics() });
    o.open();
    await new Promise((r) => setTimeout(r, 50));
    const salvage = lines.find((l) => l.code === "EDGEHOOK_DB_CORRUPT") as {
      saved: { pending: number };
      lost: { pending: number; damagedBodies: number };
      msg: string;
    };
    expect(salvage).toMatchObject({ saved: { pending: 14 }, lost: { pending: 1, damagedBodies: 1 } });
    expect(salvage.msg).toMatch(
      /found while running.*lost 1 pending deliveries and 1 unreadable rows \(1 event body failed its checksum\)/,
    );
    expect(readdirSync(dir).some((f) => f.startsWith("outbox.db.corrupt-"))).toBe(true);
    expect(existsSync(`${file}-damaged`)).toBe(false);
    const rest = o.next("ops", clock.now(), 50, new Set());
    expect(rest.map((d) => d.eventId).sort()).toEqual(
      ids
        .slice(5)
        .filter((_, i) => i !== 2)
        .sort(),
    );
    expect(rest.every((d) => intact(d.body))).toBe(true);
    expect(o.damage).toBeUndefined();
    o.close();
  });

  it("salvage leaves out a body that fails its checksum and counts it lost", async () => {
    const file = join(dir, "outbox.db");
    const clock = new FakeClock();
    const ids = await fillLarge(file, clock, 20, 12);
    damageMarkedBody(file);
    const from = new Database(file, { readonly: true });
    const to = openDatabase(join(dir, "fresh.db"), { logger: silentLogger() });
    const counts = salvageInto(from, to);
    from.close();
    expect(counts).toMatchObject({ events: 19, pending: 19, expectedPending: 20, rejected: 1, damagedBodies: 1 });
    const kept = to.prepare("SELECT id FROM events").pluck().all();
    to.close();
    expect(kept).not.toContain(ids[12]);
    expect(kept).toHaveLength(19);
  });

  it("rows stored before bodies had checksums are taken as before, and salvaged from a file of that schema", async () => {
    const file = join(dir, "outbox.db");
    const clock = new FakeClock();
    const ids = await fillLarge(file, clock, 5, -1);
    // The file as schema 3 left it: no body_crc column.
    const old = new Database(file);
    old.exec("ALTER TABLE events DROP COLUMN body_crc");
    old.pragma("user_version = 3");
    old.close();

    const to = openDatabase(join(dir, "fresh.db"), { logger: silentLogger() });
    const from = new Database(file, { readonly: true });
    expect(salvageInto(from, to)).toMatchObject({ events: 5, pending: 5, rejected: 0 });
    from.close();
    to.close();

    const o = new Outbox({ file, limits: bigLimits, clock, logger: silentLogger(), metrics: new Metrics() });
    o.open(); // migrates: the old rows have no checksum
    const got = o.next("ops", clock.now(), 50, new Set());
    expect(got.map((d) => d.eventId).sort()).toEqual([...ids].sort());
    expect(o.show(ids[0] as string)?.body).toContain('"pad":"xxx');
    expect(o.damage).toBeUndefined();
    o.close();
  });
});

describe("damageKind", () => {
  it.each([
    ["SQLITE_CORRUPT", "corrupt"],
    ["SQLITE_CORRUPT_INDEX", "corrupt"],
    ["SQLITE_NOTADB", "corrupt"],
    ["SQLITE_IOERR", "io_error"],
    ["SQLITE_IOERR_WRITE", "io_error"],
    ["SQLITE_IOERR_FSYNC", "io_error"],
    ["SQLITE_IOERR_SHORT_READ", "io_error"],
    ["SQLITE_FULL", undefined],
    ["SQLITE_BUSY", undefined],
    ["SQLITE_CONSTRAINT_UNIQUE", undefined],
  ])("%s → %s", (code, kind) => {
    expect(damageKind(code)).toBe(kind);
  });
});
