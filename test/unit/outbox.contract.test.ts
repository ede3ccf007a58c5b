/**
 * Contract of the outbox, on real database files in a temp directory with a FakeClock.
 * What a user would notice: nothing committed is lost, order per series, priorities after
 * an outage, limits that drop what the policy says and count it.
 *
 * The OutboxReader part (what the dispatcher sees: next, nextDueAt, retryNow, pendingCount,
 * settle) runs against every implementation of it: the SQLite outbox and the memory outbox
 * of test/support, which dispatcher unit tests may use instead of a database. The rest is
 * the SQLite outbox's own: storage, group commit, limits, operator queries.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { CommitBatch, NewEvent, SeriesStateRow } from "../../src/events.js";
import { newEventId } from "../../src/events.js";
import { silentLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import type { OutboxLimits } from "../../src/store/outbox.js";
import { Outbox } from "../../src/store/outbox.js";
import type { AttemptRecord, OutboxReader, Settlement } from "../../src/store/types.js";
import { FakeClock } from "../support/fake-clock.js";
import { MemoryOutbox } from "../support/memory-outbox.js";
import { seededRandom } from "../support/random.js";

const DEFAULT_LIMITS: OutboxLimits = {
  max_events: 1_000_000,
  max_bytes: 512 * 1024 * 1024,
  max_age: 7 * 86_400_000,
  min_free_disk: 1,
  keep_delivered: 86_400_000,
  commit_delay: 2,
};

let dir: string;
let clock: FakeClock;
let metrics: Metrics;
const opened: Outbox[] = [];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "edgehook-outbox-"));
  clock = new FakeClock();
  metrics = new Metrics();
});

afterEach(() => {
  for (const o of opened.splice(0)) o.close();
  rmSync(dir, { recursive: true, force: true });
});

function file(): string {
  return join(dir, "outbox.db");
}

function makeOutbox(limits: Partial<OutboxLimits> = {}, extra: { destinationMaxAge?: Record<string, number> } = {}) {
  const o = new Outbox({
    file: file(),
    limits: { ...DEFAULT_LIMITS, ...limits },
    clock,
    logger: silentLogger(),
    metrics,
    ...extra,
  });
  o.open();
  opened.push(o);
  return o;
}

let seq = 0;
function ev(series: string, opts: Partial<NewEvent> = {}): NewEvent {
  seq++;
  return {
    id: newEventId(clock.now()),
    type: "alert.firing",
    rule: series.split(":")[0] ?? "r",
    series,
    severity: "warning",
    priority: 10,
    destinations: ["ops"],
    createdAt: clock.now(),
    body: {
      type: "alert.firing",
      timestamp: new Date(clock.now()).toISOString(),
      data: { n: seq, series, note: "é ✓" },
    },
    ...opts,
  };
}

function batch(events: NewEvent[], states: SeriesStateRow[] = [], removed: CommitBatch["removedStates"] = []) {
  return { events, states, removedStates: removed };
}

/** Commits and lets the group-commit timer fire (FakeClock). */
async function commit(o: Outbox, events: NewEvent[], states: SeriesStateRow[] = []) {
  const p = o.commit(batch(events, states));
  clock.advance(2);
  return p;
}

const attempt = (status?: number, error?: string): AttemptRecord => ({
  at: clock.now(),
  durationMs: 12,
  ...(status === undefined ? {} : { status }),
  ...(error === undefined ? {} : { error }),
});

/** Drains a destination to the end, delivering everything; returns event ids in delivery order. */
function drain(o: OutboxReader, destination = "ops"): string[] {
  const order: string[] = [];
  for (;;) {
    const batchOut = o.next(destination, clock.now(), 50, new Set());
    if (batchOut.length === 0) return order;
    for (const d of batchOut) order.push(d.eventId);
    o.settle(batchOut.map((d) => ({ id: d.id, outcome: "delivered" as const, attempt: attempt(200) })));
  }
}

const ids = (ds: { eventId: string }[]) => ds.map((d) => d.eventId);

/** Counts straight from the file through a second connection, to check the kept counters. */
function realCounts(): Record<string, number> {
  const db = new Database(file(), { readonly: true });
  try {
    const out: Record<string, number> = {};
    for (const r of db.prepare("SELECT destination, state, COUNT(*) AS n FROM deliveries GROUP BY 1, 2").all() as {
      destination: string;
      state: number;
      n: number;
    }[]) {
      out[`${r.destination}/${["pending", "delivered", "dead"][r.state]}`] = r.n;
    }
    out.events = (db.prepare("SELECT COUNT(*) FROM events").pluck().get() as number) ?? 0;
    out.heads = db.prepare("SELECT COUNT(*) FROM deliveries WHERE is_head = 1").pluck().get() as number;
    return out;
  } finally {
    db.close();
  }
}

/** The head column in the file marks exactly the earliest pending row of each (destination, series). */
function assertHeads(): void {
  const db = new Database(file(), { readonly: true });
  try {
    const count = (sql: string) => db.prepare(sql).pluck().get() as number;
    expect({
      heads: count("SELECT COUNT(*) FROM deliveries WHERE is_head = 1"),
      wrong: count(
        `SELECT COUNT(*) FROM deliveries d WHERE is_head = 1 AND id <> (SELECT MIN(id) FROM deliveries x
         WHERE x.destination = d.destination AND x.series = d.series AND x.state = 0)`,
      ),
    }).toEqual({
      heads: count("SELECT COUNT(*) FROM (SELECT DISTINCT destination, series FROM deliveries WHERE state = 0)"),
      wrong: 0,
    });
  } finally {
    db.close();
  }
}

function statsCounts(o: Outbox): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of o.stats()) {
    if (s.pending) out[`${s.destination}/pending`] = s.pending;
    if (s.delivered) out[`${s.destination}/delivered`] = s.delivered;
    if (s.dead) out[`${s.destination}/dead`] = s.dead;
  }
  return out;
}

/** Drops counted for `reason`, over every destination or for one. */
async function dropCount(reason: string, destination?: string): Promise<number> {
  const m = await metrics.drops.get();
  return m.values
    .filter((v) => v.labels.reason === reason && (destination === undefined || v.labels.destination === destination))
    .reduce((n, v) => n + v.value, 0);
}

// ---------------------------------------------------------------- the OutboxReader contract

/** An OutboxReader under test, and how to put events into it as one committed batch. */
interface ReaderUnderTest {
  reader: OutboxReader;
  enqueue(events: NewEvent[]): Promise<void>;
  /** What only this implementation can check of itself (the SQLite head column). */
  check(): void;
}

/** Every implementation of OutboxReader: the contract below runs against each. */
const READERS: [string, () => ReaderUnderTest][] = [
  [
    "SQLite outbox",
    () => {
      const o = makeOutbox();
      return {
        reader: o,
        enqueue: async (events) => {
          await commit(o, events);
        },
        check: assertHeads,
      };
    },
  ],
  [
    "memory outbox (test/support)",
    () => {
      const m = new MemoryOutbox(() => clock.now());
      return { reader: m, enqueue: async (events) => m.enqueue(events), check: () => {} };
    },
  ],
];

describe.each(READERS)("OutboxReader contract: %s", (_name, make) => {
  it("hands out one delivery per destination with the event's id, type, series, priority and exact body", async () => {
    const { reader, enqueue } = make();
    const e = ev("r1:s1:t", { destinations: ["ops", "backup"] });
    await enqueue([e]);
    const [a] = reader.next("ops", clock.now(), 10, new Set());
    const [b] = reader.next("backup", clock.now(), 10, new Set());
    expect(a?.eventId).toBe(e.id);
    expect(b?.eventId).toBe(e.id);
    expect(a?.body.equals(Buffer.from(JSON.stringify(e.body)))).toBe(true);
    expect(JSON.parse(a!.body.toString("utf8"))).toEqual(e.body);
    expect(a).toMatchObject({
      destination: "ops",
      series: "r1:s1:t",
      type: "alert.firing",
      priority: 10,
      attempts: 0,
      createdAt: e.createdAt,
    });
    expect(a?.id).not.toBe(b?.id);
    expect(reader.next("nobody", clock.now(), 10, new Set())).toEqual([]);
    expect(reader.next("ops", clock.now(), 0, new Set())).toEqual([]);
    expect([reader.pendingCount("ops"), reader.pendingCount("backup"), reader.pendingCount("nobody")]).toEqual([
      1, 1, 0,
    ]);
  });

  it("delivered and dead leave the queue; the next delivery of the series becomes head; late duplicates change nothing", async () => {
    const { reader, enqueue, check } = make();
    const [e1, e2, e3] = [ev("r:s:m"), ev("r:s:m"), ev("r:s:m")];
    await enqueue([e1!, e2!, e3!]);
    const [d1] = reader.next("ops", clock.now(), 10, new Set());
    expect(d1?.eventId).toBe(e1!.id);
    reader.settle([{ id: d1!.id, outcome: "delivered", attempt: attempt(204) }]);
    const [d2] = reader.next("ops", clock.now(), 10, new Set());
    expect(d2?.eventId).toBe(e2!.id);
    reader.settle([{ id: d2!.id, outcome: "dead", attempt: attempt(400, "http 400"), reason: "http 400" }]);
    const [d3] = reader.next("ops", clock.now(), 10, new Set());
    expect(d3?.eventId).toBe(e3!.id);
    expect(reader.pendingCount("ops")).toBe(1);
    check();
    // A late duplicate of a settled outcome, or an empty batch, changes nothing.
    reader.settle([{ id: d1!.id, outcome: "retry", attempt: attempt(503), nextAt: clock.now() + 1000, counted: true }]);
    reader.settle([]);
    expect(reader.next("ops", clock.now(), 10, new Set())).toMatchObject([{ id: d3!.id, attempts: 0 }]);
    reader.settle([{ id: d3!.id, outcome: "delivered", attempt: attempt(200) }]);
    reader.settle([{ id: d3!.id, outcome: "retry", attempt: attempt(500), nextAt: clock.now(), counted: true }]);
    expect(reader.next("ops", clock.now(), 10, new Set())).toEqual([]);
    expect(reader.pendingCount("ops")).toBe(0);
    expect(reader.nextDueAt("ops")).toBeUndefined();
    check();
  });

  it("retry waits until nextAt, keeps the series blocked, and counts attempts only when told", async () => {
    const { reader, enqueue } = make();
    const [e1, e2] = [ev("r:s:m"), ev("r:s:m")];
    await enqueue([e1!, e2!, ev("other:s:m")]);
    const [d] = reader.next("ops", clock.now(), 1, new Set());
    expect(d?.eventId).toBe(e1!.id);
    const retryAt = clock.now() + 60_000;
    reader.settle([{ id: d!.id, outcome: "retry", attempt: attempt(503), nextAt: retryAt, counted: true }]);
    // Only the other series is due; e2 waits behind its head (order per series).
    expect(reader.next("ops", clock.now(), 10, new Set()).map((x) => x.series)).toEqual(["other:s:m"]);
    expect(reader.nextDueAt("ops")).toBeLessThanOrEqual(clock.now());
    drain(reader); // delivers other:s:m
    expect(reader.nextDueAt("ops")).toBe(retryAt);
    expect(reader.pendingCount("ops")).toBe(2);
    clock.advance(59_999);
    expect(reader.next("ops", clock.now(), 10, new Set())).toEqual([]);
    clock.advance(1);
    const [again] = reader.next("ops", clock.now(), 10, new Set());
    expect(again).toMatchObject({ id: d!.id, eventId: e1!.id, attempts: 1 });
    // An offline outcome does not spend an attempt.
    reader.settle([
      { id: d!.id, outcome: "retry", attempt: attempt(undefined, "ECONNREFUSED"), nextAt: clock.now(), counted: false },
    ]);
    expect(reader.next("ops", clock.now(), 10, new Set())[0]?.attempts).toBe(1);
    expect(drain(reader)).toEqual([e1!.id, e2!.id]);
    expect(reader.nextDueAt("ops")).toBeUndefined();
  });

  it("new events are due at once even after the wall clock stepped backwards", async () => {
    const { reader, enqueue } = make();
    clock.jumpWall(clock.now() + 3_600_000); // clock was an hour ahead...
    const e = ev("r:s:m");
    await enqueue([e]);
    clock.jumpWall(clock.now() - 3_600_000); // ...until NTP corrected it
    expect(ids(reader.next("ops", clock.now(), 10, new Set()))).toEqual([e.id]);
    expect(reader.nextDueAt("ops")).toBeLessThanOrEqual(clock.now());
  });

  it("retryNow makes every waiting head of the destination due now, keeping its attempts", async () => {
    const { reader, enqueue } = make();
    const [a1, a2, b1, c1] = [ev("a:s:m"), ev("a:s:m"), ev("b:s:m"), ev("c:s:m")];
    await enqueue([a1!, a2!, b1!, c1!, ev("d:s:m", { destinations: ["lake"] })]);
    const byEvent = new Map(reader.next("ops", clock.now(), 10, new Set()).map((d) => [d.eventId, d.id]));
    const now = clock.now();
    reader.settle([
      { id: byEvent.get(a1!.id)!, outcome: "retry", attempt: attempt(503), nextAt: now + 60_000, counted: true },
      { id: byEvent.get(b1!.id)!, outcome: "retry", attempt: attempt(), nextAt: now + 30_000, counted: false },
      { id: byEvent.get(c1!.id)!, outcome: "delivered", attempt: attempt(200) },
    ]);
    expect(reader.next("ops", now, 10, new Set())).toEqual([]);
    expect(reader.nextDueAt("ops")).toBe(now + 30_000);
    expect(reader.pendingCount("ops")).toBe(3);
    expect(reader.retryNow("lake", now)).toBe(0);
    expect(reader.retryNow("ops", now)).toBe(2);
    expect(reader.retryNow("ops", now)).toBe(0);
    expect(reader.nextDueAt("ops")).toBe(now);
    expect(reader.next("ops", now, 10, new Set()).map((d) => [d.eventId, d.attempts])).toEqual([
      [a1!.id, 1],
      [b1!.id, 0],
    ]);
    expect(drain(reader)).toEqual([a1!.id, b1!.id, a2!.id]);
  });

  it("delivers each series in commit order per destination while series interleave", async () => {
    const { reader, enqueue } = make();
    const committed: Record<string, string[]> = {};
    for (let round = 0; round < 5; round++) {
      const events = ["a", "b", "c"].map((s) => ev(`r:${s}:m`));
      for (const e of events) committed[e.series] = [...(committed[e.series] ?? []), e.id];
      await enqueue(events);
    }
    // one head per series: 3 in flight at most
    expect(reader.next("ops", clock.now(), 100, new Set())).toHaveLength(3);
    const order = drain(reader);
    for (const [series, eventIds] of Object.entries(committed)) {
      expect(order.filter((id) => eventIds.includes(id))).toEqual(eventIds);
      expect(series).toBeTruthy();
    }
    expect(order).toHaveLength(15);
  });

  it("hands out only heads with many series, and drains them all", async () => {
    const { reader, enqueue, check } = make();
    const events: NewEvent[] = [];
    for (let i = 0; i < 2000; i++) events.push(ev(`r:s${i % 1000}:m`));
    await enqueue(events);
    const first = reader.next("ops", clock.now(), 200, new Set());
    expect(first).toHaveLength(200);
    expect(new Set(first.map((d) => d.series)).size).toBe(200);
    // every handed-out delivery is the first of its series
    for (const d of first) expect(d.eventId).toBe(events.find((e) => e.series === d.series)?.id);
    check();
    expect(drain(reader)).toHaveLength(2000);
    check();
  });

  it("after an outage sends the highest priority first, then the oldest", async () => {
    const { reader, enqueue } = make();
    const info = ev("i:s:m", { priority: 0 });
    clock.advance(1000);
    const warnOld = ev("w1:s:m", { priority: 10 });
    clock.advance(1000);
    const crit = ev("c:s:m", { priority: 20 });
    clock.advance(1000);
    const warnNew = ev("w2:s:m", { priority: 10 });
    await enqueue([info, warnOld, crit, warnNew]);
    expect(ids(reader.next("ops", clock.now(), 10, new Set()))).toEqual([crit.id, warnOld.id, warnNew.id, info.id]);
  });

  it("skips deliveries in flight by id and by series", async () => {
    const { reader, enqueue } = make();
    const [a, b, c] = [ev("a:s:m"), ev("b:s:m"), ev("c:s:m")];
    await enqueue([a!, b!, c!]);
    const all = reader.next("ops", clock.now(), 10, new Set());
    const idOfA = String(all.find((d) => d.eventId === a!.id)?.id);
    const got = reader.next("ops", clock.now(), 10, new Set([idOfA, "b:s:m"]));
    expect(ids(got)).toEqual([c!.id]);
    // limit still honoured after exclusions
    expect(reader.next("ops", clock.now(), 1, new Set([idOfA]))).toHaveLength(1);
  });

  it("after: a series whose head is settled but not yet written goes on with the delivery after it, in queue order", async () => {
    const { reader, enqueue } = make();
    const [a1, b1, a2, a3, c1] = [ev("a:s:m"), ev("b:s:m"), ev("a:s:m"), ev("a:s:m"), ev("c:s:m", { priority: 20 })];
    await enqueue([a1!, b1!, a2!, a3!, c1!]);
    const next = (limit: number, exclude: string[], after?: [string, number]) =>
      reader.next("ops", clock.now(), limit, new Set(exclude), after && new Map([after]));
    const heads = next(10, []);
    expect(ids(heads)).toEqual([c1!.id, a1!.id, b1!.id]);
    const idOfA1 = heads[1]!.id;
    // a1 delivered (not written): a2 stands in for series a, behind the older b1.
    const withA2 = next(10, [], ["a:s:m", idOfA1]);
    expect(ids(withA2)).toEqual([c1!.id, b1!.id, a2!.id]);
    expect(ids(next(2, [], ["a:s:m", idOfA1]))).toEqual([c1!.id, b1!.id]);
    const idOfA2 = withA2[2]!.id;
    const idOfA3 = next(10, [], ["a:s:m", idOfA2])[2]!.id;
    expect(ids(next(10, [], ["a:s:m", idOfA2]))).toEqual([c1!.id, b1!.id, a3!.id]);
    // a1 and a2 delivered, a3 in flight: nothing of series a.
    expect(ids(next(10, ["a:s:m"], ["a:s:m", idOfA2]))).toEqual([c1!.id, b1!.id]);
    // The last one of a series settled: nothing after it.
    expect(ids(next(10, [], ["a:s:m", idOfA3]))).toEqual([c1!.id, b1!.id]);
    // Once the outcomes are written, the same answer without `after`.
    reader.settle([{ id: idOfA1, outcome: "delivered", attempt: attempt(200) }]);
    expect(ids(next(10, [], ["a:s:m", idOfA1]))).toEqual([c1!.id, b1!.id, a2!.id]);
  });
});

describe("the memory outbox keeps the SQLite outbox's semantics", () => {
  it("hands out the same deliveries step by step through a random mix of enqueues, retries and settles", async () => {
    const sqlite = makeOutbox();
    const memory = new MemoryOutbox(() => clock.now());
    const rand = seededRandom(7);
    for (let round = 0; round < 40; round++) {
      const events = Array.from({ length: rand(8) }, () =>
        ev(`r:s${rand(5)}:m`, { priority: rand(3) * 10, destinations: rand(3) === 0 ? ["ops", "lake"] : ["ops"] }),
      );
      await commit(sqlite, events);
      memory.enqueue(events);
      for (const dest of ["ops", "lake"]) {
        const now = clock.now();
        const exclude = new Set(rand(3) === 0 ? [`r:s${rand(5)}:m`] : []);
        const limit = rand(6);
        const handed = sqlite.next(dest, now, limit, exclude);
        expect(memory.next(dest, now, limit, exclude)).toEqual(handed);
        expect([memory.nextDueAt(dest), memory.pendingCount(dest)]).toEqual([
          sqlite.nextDueAt(dest),
          sqlite.pendingCount(dest),
        ]);
        // As the dispatcher asks while the outcomes of the handed-out ones wait to be written.
        const unwritten = new Map(handed.map((d) => [d.series, d.id]));
        expect(memory.next(dest, now, 10, new Set(), unwritten)).toEqual(
          sqlite.next(dest, now, 10, new Set(), unwritten),
        );
        const settlements: Settlement[] = handed.map((d) => {
          const r = rand(4);
          if (r === 0) return { id: d.id, outcome: "delivered", attempt: attempt(200) };
          if (r === 1) return { id: d.id, outcome: "dead", attempt: attempt(400), reason: "x" };
          return { id: d.id, outcome: "retry", attempt: attempt(500), nextAt: now + rand(20), counted: r === 2 };
        });
        sqlite.settle(settlements);
        memory.settle(settlements);
        if (rand(6) === 0) expect(memory.retryNow(dest, now)).toBe(sqlite.retryNow(dest, now));
      }
      clock.advance(rand(10));
    }
    for (const dest of ["ops", "lake"]) {
      clock.advance(100);
      expect(drain(memory, dest)).toEqual(drain(sqlite, dest));
    }
  });
});

// ---------------------------------------------------------------- the SQLite outbox beyond OutboxReader

describe("enqueue", () => {
  it("stores the body bytes once for all destinations", async () => {
    const o = makeOutbox();
    const res = await commit(o, [ev("r1:s1:t", { destinations: ["ops", "backup"] })]);
    expect(res).toEqual({ accepted: 1, dropped: {} });
    expect(realCounts()).toMatchObject({ events: 1, "ops/pending": 1, "backup/pending": 1 });
  });

  it("an event without destinations is not stored but its rule state is", async () => {
    const o = makeOutbox();
    const res = await commit(
      o,
      [ev("r:s:m", { destinations: [] })],
      [{ rule: "r", series: "r:s:m", version: "v1", state: { firing: true } }],
    );
    expect(res.accepted).toBe(1);
    expect(o.stats()).toEqual([]);
    expect(o.loadStates()).toEqual([{ rule: "r", series: "r:s:m", version: "v1", state: { firing: true } }]);
  });

  it("commit resolves only after the group transaction; close() flushes what is queued", async () => {
    const o = makeOutbox({ commit_delay: 50 });
    let done = false;
    const p = o.commit(batch([ev("a:b:c")])).then(() => {
      done = true;
    });
    await Promise.resolve();
    expect(done).toBe(false);
    expect(realCounts().events).toBe(0);
    o.close();
    await p;
    expect(done).toBe(true);
    expect(realCounts().events).toBe(1);
    o.close(); // twice is fine
    await expect(o.commit(batch([ev("a:b:c")]))).rejects.toThrow(/not open/);
  });
});

describe("next() with after (a series' head settled, not written yet)", () => {
  it("reads the delivery after it again once the file changed: a commit of ours, or another process", async () => {
    const o = makeOutbox();
    await commit(o, [ev("a:s:m")]);
    const [a1] = o.next("ops", clock.now(), 10, new Set());
    const after = new Map([["a:s:m", a1!.id]]);
    // Nothing after a1 yet (next() keeps that answer until the file changes).
    expect(o.next("ops", clock.now(), 10, new Set(), after)).toEqual([]);
    const a2 = ev("a:s:m");
    await commit(o, [a2]);
    expect(ids(o.next("ops", clock.now(), 10, new Set(), after))).toEqual([a2.id]);
    // Another process puts a2 off (a second connection to the same file).
    const other = new Database(file());
    other
      .prepare("UPDATE deliveries SET next_at = ? WHERE destination = 'ops' AND series = 'a:s:m' AND is_head = 0")
      .run(clock.now() + 60_000);
    other.close();
    expect(o.next("ops", clock.now(), 10, new Set(), after)).toEqual([]);
  });

  it("hands out a head that fell due while nothing was written, and reads further when more are excluded", async () => {
    const o = makeOutbox();
    await commit(o, [ev("a:s:m"), ev("b:s:m")]);
    const [a1] = o.next("ops", clock.now(), 1, new Set());
    o.settle([{ id: a1!.id, outcome: "retry", attempt: attempt(500), nextAt: clock.now() + 1_000, counted: true }]);
    expect(o.next("ops", clock.now(), 10, new Set())).toHaveLength(1);
    clock.advance(1_000); // no write in between: a1 is due by the clock alone
    expect(o.next("ops", clock.now(), 10, new Set()).map((d) => d.id)).toContain(a1!.id);

    const many = Array.from({ length: 70 }, (_, i) => ev(`m:s${i}:m`));
    await commit(o, many);
    const first = o.next("ops", clock.now(), 1, new Set());
    expect(first).toHaveLength(1);
    // 66 series in flight (more heads than the first read took): the six after them still go.
    const inFlight = new Set(["a:s:m", "b:s:m", ...many.slice(0, 64).map((e) => e.series)]);
    expect(ids(o.next("ops", clock.now(), 10, inFlight))).toEqual(many.slice(64).map((e) => e.id));
  });

  it("walks a long series past many unwritten outcomes in order, then hands out nothing of it", async () => {
    const o = makeOutbox();
    const series = Array.from({ length: 20 }, () => ev("a:s:m"));
    await commit(o, [...series, ev("b:s:m")]);
    const handed: string[] = [];
    let after: Map<string, number> | undefined;
    for (let i = 0; i < 21; i++) {
      const got = o.next("ops", clock.now(), 10, new Set(["b:s:m"]), after);
      if (got.length === 0) break;
      expect(got).toHaveLength(1);
      handed.push(got[0]!.eventId);
      after = new Map([["a:s:m", got[0]!.id]]);
    }
    expect(handed).toEqual(series.map((e) => e.id));
  });

  it("settling several deliveries of one series in one write leaves the next pending one as its only head", async () => {
    const o = makeOutbox();
    const [a1, a2, a3, a4] = [ev("a:s:m"), ev("a:s:m"), ev("a:s:m"), ev("a:s:m")];
    await commit(o, [a1!, a2!, a3!, a4!]);
    const got: number[] = [];
    let after: Map<string, number> | undefined;
    for (let i = 0; i < 3; i++) {
      const [d] = o.next("ops", clock.now(), 10, new Set(), after);
      got.push(d!.id);
      after = new Map([["a:s:m", d!.id]]);
    }
    o.settle(got.map((id) => ({ id, outcome: "delivered" as const, attempt: attempt(200) })));
    expect(ids(o.next("ops", clock.now(), 10, new Set()))).toEqual([a4!.id]);
    expect(realCounts()).toEqual({ events: 4, "ops/pending": 1, "ops/delivered": 3, heads: 1 });
    assertHeads();
  });
});

describe("settle", () => {
  it("settled deliveries show in stats and queue show with reason, status and history; a late duplicate changes nothing", async () => {
    const o = makeOutbox();
    const [e1, e2, e3] = [ev("r:s:m"), ev("r:s:m"), ev("r:s:m")];
    await commit(o, [e1!, e2!, e3!]);
    let [d] = o.next("ops", clock.now(), 10, new Set());
    o.settle([{ id: d!.id, outcome: "delivered", attempt: attempt(204) }]);
    [d] = o.next("ops", clock.now(), 10, new Set());
    o.settle([{ id: d!.id, outcome: "dead", attempt: attempt(400, "http 400"), reason: "http 400" }]);
    [d] = o.next("ops", clock.now(), 10, new Set());
    expect(statsCounts(o)).toEqual({ "ops/pending": 1, "ops/delivered": 1, "ops/dead": 1 });

    const shown = o.show(e2!.id);
    expect(shown?.deliveries[0]).toMatchObject({ state: "dead", reason: "http 400", lastStatus: 400, attempts: 1 });
    expect(shown?.deliveries[0]?.history).toEqual([
      { at: clock.now(), status: 400, durationMs: 12, error: "http 400" },
    ]);
    // settling again (e.g. a late duplicate) changes nothing
    o.settle([{ id: d!.id, outcome: "delivered", attempt: attempt(200) }]);
    o.settle([{ id: d!.id, outcome: "dead", attempt: attempt(500), reason: "x" }]);
    expect(statsCounts(o)).toEqual({ "ops/delivered": 2, "ops/dead": 1 });
    expect(o.show(e3!.id)?.deliveries[0]).toMatchObject({ state: "delivered", reason: null, lastStatus: 200 });
  });
  it("keeps the last 10 attempts per delivery", async () => {
    const o = makeOutbox();
    const e = ev("r:s:m");
    await commit(o, [e]);
    const [d] = o.next("ops", clock.now(), 1, new Set());
    for (let i = 0; i < 13; i++) {
      clock.advance(1000);
      o.settle([{ id: d!.id, outcome: "retry", attempt: attempt(500 + i), nextAt: clock.now(), counted: true }]);
    }
    const h = o.show(e.id)?.deliveries[0];
    expect(h?.attempts).toBe(13);
    expect(h?.history.map((a) => a.status)).toEqual([503, 504, 505, 506, 507, 508, 509, 510, 511, 512]);
    expect(h?.lastStatus).toBe(512);
  });
});

describe("durability and reopening", () => {
  it("reopen keeps pending rows, attempts, heads, rule states and destination flags", async () => {
    let o = makeOutbox();
    const [e1, e2] = [ev("r:s:m"), ev("r:s:m")];
    await commit(o, [e1!, e2!], [{ rule: "r", series: "r:s:m", version: "h1", state: { since: 5 } }]);
    const [d] = o.next("ops", clock.now(), 1, new Set());
    o.settle([{ id: d!.id, outcome: "retry", attempt: attempt(500), nextAt: clock.now() + 10, counted: true }]);
    o.setDestinationDisabled("ops", "410 Gone");
    const disabledAt = clock.now();
    await commit(o, [], []); // empty batch is fine
    const removal = o.commit(batch([], [], [{ rule: "x", series: "y" }]));
    clock.advance(2);
    await removal;
    o.close();

    o = makeOutbox();
    clock.advance(10);
    expect(o.next("ops", clock.now(), 10, new Set())).toMatchObject([{ eventId: e1!.id, attempts: 1 }]);
    expect(o.loadStates()).toEqual([{ rule: "r", series: "r:s:m", version: "h1", state: { since: 5 } }]);
    expect(o.destinationFlags()).toEqual({ ops: { disabled: true, reason: "410 Gone", since: disabledAt } });
    expect(o.enableDestination("ops")).toBe(true);
    expect(o.enableDestination("ops")).toBe(false);
    expect(o.destinationFlags().ops?.disabled).toBe(false);
    expect(statsCounts(o)).toEqual({ "ops/pending": 2 });
    expect(drain(o)).toEqual([e1!.id, e2!.id]);
  });

  it("rule states and events of one batch commit together; a failing batch does not fail its group", async () => {
    const o = makeOutbox();
    const dup = ev("r:s:m");
    await commit(o, [dup]);
    const good = o.commit(batch([ev("g:s:m")], [{ rule: "g", series: "g:s:m", version: "1", state: 1 }]));
    const bad = o.commit(
      batch([ev("b:s:m"), { ...dup, series: "b:s:m" }], [{ rule: "b", series: "b:s:m", version: "1", state: 1 }]),
    );
    clock.advance(2);
    await expect(good).resolves.toMatchObject({ accepted: 1 });
    await expect(bad).rejects.toThrow(/UNIQUE/);
    expect(o.loadStates().map((s) => s.rule)).toEqual(["g"]);
    expect(realCounts()).toMatchObject({ events: 2, "ops/pending": 2 });
  });

  it("a body that cannot be serialised fails only its own batch", async () => {
    const o = makeOutbox();
    const bad = ev("b:s:m");
    bad.body.data.big = 10n; // JSON.stringify throws on BigInt
    const good = o.commit(batch([ev("g:s:m")]));
    const failing = o.commit(batch([bad], [{ rule: "b", series: "b:s:m", version: "1", state: 1 }]));
    clock.advance(2);
    await expect(good).resolves.toMatchObject({ accepted: 1 });
    await expect(failing).rejects.toThrow(/BigInt/);
    expect(o.loadStates()).toEqual([]);
    expect(realCounts()).toMatchObject({ events: 1 });
  });

  it("removes rule states in the same transaction", async () => {
    const o = makeOutbox();
    await commit(o, [], [{ rule: "r", series: "a", version: "1", state: { x: 1 } }]);
    const p = o.commit(batch([ev("r:a:m")], [], [{ rule: "r", series: "a" }]));
    clock.advance(2);
    await p;
    expect(o.loadStates()).toEqual([]);
  });
});

describe("group commit", () => {
  it("many concurrent commits share a few transactions", async () => {
    const o = makeOutbox();
    const before = o.transactionCount;
    const promises = Array.from({ length: 500 }, (_, i) =>
      o.commit(batch([ev(`r:s${i % 7}:m`)], [{ rule: "r", series: `s${i}`, version: "1", state: i }])),
    );
    clock.advance(2);
    const results = await Promise.all(promises);
    expect(results.every((r) => r.accepted === 1)).toBe(true);
    expect(o.transactionCount - before).toBe(1);
    expect(realCounts()).toMatchObject({ events: 500, "ops/pending": 500, heads: 7 });
    expect(o.loadStates()).toHaveLength(500);
  });

  it("commits at once when the group reaches its size cap", async () => {
    const o = makeOutbox({ commit_delay: 60_000 });
    const events = Array.from({ length: 5000 }, () => ev("r:s:m"));
    const res = await o.commit(batch(events)); // no clock advance needed
    expect(res.accepted).toBe(5000);
  });

  it("under load the next group does not wait for commit_delay; when quiet again it does", async () => {
    const o = makeOutbox({ commit_delay: 50 });
    const first = Array.from({ length: 100 }, () => o.commit(batch([ev("a:b:c")])));
    clock.advance(50);
    await Promise.all(first);
    // 100 callers were queueing: the next group goes on the next turn, no clock needed.
    await o.commit(batch([ev("a:b:c")]));
    // That group was small: back to waiting commit_delay.
    let done = false;
    const quiet = o.commit(batch([ev("a:b:c")])).then(() => {
      done = true;
    });
    await new Promise((r) => setImmediate(r));
    expect(done).toBe(false);
    clock.advance(50);
    await quiet;
    expect(o.transactionCount).toBe(3);
  });

  it("commit_delay 0 commits on the next turn of the event loop", async () => {
    const o = makeOutbox({ commit_delay: 0 });
    const res = await Promise.all([o.commit(batch([ev("a:b:c")])), o.commit(batch([ev("a:b:c")]))]);
    expect(res.map((r) => r.accepted)).toEqual([1, 1]);
    expect(o.transactionCount).toBe(1);
  });
});

describe("limits", () => {
  it("max_events: prunes delivered rows first, then drops the oldest pending of the lowest priority", async () => {
    const o = makeOutbox({ max_events: 10 });
    // 4 delivered
    await commit(o, [ev("d:s:m"), ev("d:s:m"), ev("d:s:m"), ev("d:s:m")]);
    drain(o);
    const low = [ev("low:s:m", { priority: 0 }), ev("low:s:m", { priority: 0 })];
    clock.advance(1);
    const high = Array.from({ length: 4 }, () => ev("high:s:m", { priority: 20 }));
    let res = await commit(o, [...low, ...high]); // 10 events stored: at the limit
    expect(res.dropped).toEqual({});
    res = await commit(o, [ev("mid:s:m"), ev("mid:s:m")]); // 12: delivered rows go first
    expect(res.dropped).toEqual({});
    expect(realCounts()).toMatchObject({ events: 10, "ops/delivered": 2 });
    res = await commit(o, [ev("mid:s:m"), ev("mid:s:m"), ev("mid:s:m")]); // delivered gone, then 1 low dropped
    expect(res).toEqual({ accepted: 3, dropped: { max_events: 1 } });
    expect(o.show(low[0]!.id)).toBeUndefined();
    expect(o.show(low[1]!.id)).toBeDefined();
    expect(await dropCount("max_events")).toBe(1);
    // the surviving low event became the head of its series
    const next = o.next("ops", clock.now(), 20, new Set()).map((d) => d.eventId);
    expect(next).toContain(low[1]!.id);
    expect(realCounts()).toMatchObject({ events: 10, "ops/pending": 10 });
    expect(o.totals()).toMatchObject({ events: 10, pending: 10 });
  });

  it("max_bytes drops oldest low-priority events until the stored size fits", async () => {
    const o = makeOutbox({ max_bytes: 20_000 });
    const big = (p: number) => {
      const e = ev("r:s:m", { priority: p });
      e.body.data.pad = "x".repeat(2500);
      return e;
    };
    const events = Array.from({ length: 10 }, (_, i) => big(i < 5 ? 20 : 0));
    await commit(o, events);
    const { bytes, events: n } = o.totals();
    expect(bytes).toBeLessThanOrEqual(20_000);
    expect(n).toBeLessThan(10);
    const kept = new Set(o.list({ limit: 100 }).map((l) => l.eventId));
    // all critical (priority 20) kept, low-priority ones dropped oldest first
    for (const e of events.slice(0, 5)) expect(kept.has(e.id)).toBe(true);
    const lowKept = events.slice(5).filter((e) => kept.has(e.id));
    expect(lowKept).toEqual(events.slice(10 - lowKept.length));
    expect(await dropCount("max_bytes")).toBe(10 - n);
  });

  it("prunes dead rows before dropping pending ones, and counts them", async () => {
    const o = makeOutbox({ max_events: 3 });
    await commit(o, [ev("a:s:m"), ev("b:s:m")]);
    for (const d of o.next("ops", clock.now(), 10, new Set())) {
      o.settle([{ id: d.id, outcome: "dead", attempt: attempt(400), reason: "http 400" }]);
    }
    const res = await commit(o, [ev("c:s:m"), ev("c:s:m")]);
    expect(res.dropped).toEqual({ dead_pruned: 1 });
    expect(statsCounts(o)).toEqual({ "ops/pending": 2, "ops/dead": 1 });
  });

  it("disk floor refuses the whole batch: no event, no rule state, no message key (never half done)", async () => {
    const o = makeOutbox({ min_free_disk: Number.MAX_SAFE_INTEGER });
    expect(o.refusal()).toMatchObject({ reason: "disk_floor" });
    const p = o.commit({
      ...batch(
        [ev("r:s:m", { destinations: ["a", "b"] })],
        [{ rule: "r", series: "r:s:m", version: "1", state: "firing" }],
      ),
      messageKeys: ["mqtt:1:t:x"],
    });
    clock.advance(2);
    await expect(p).rejects.toMatchObject({ code: "EDGEHOOK_DISK_FLOOR", refusal: { reason: "disk_floor" } });
    expect(o.stats()).toEqual([]);
    expect(o.loadStates()).toEqual([]);
    expect(o.messageKeys()).not.toContain("mqtt:1:t:x");
    expect(await dropCount("disk_floor")).toBe(0); // refused, not dropped: the source still has it
  });

  it("when_full: block refuses new batches at the limit and never drops a pending delivery", async () => {
    const o = makeOutbox({ max_events: 4, when_full: "block" });
    await commit(o, [ev("a:s:m"), ev("a:s:m"), ev("a:s:m")]);
    expect(o.refusal()).toBeUndefined();
    // Under the limit a whole group goes in, even if it passes it (by at most one group).
    expect((await commit(o, [ev("b:s:m"), ev("b:s:m")])).accepted).toBe(2);
    expect(o.refusal()).toMatchObject({ reason: "full" });
    const refused = o.commit(batch([ev("c:s:m")], [{ rule: "c", series: "c:s:m", version: "1", state: "firing" }]));
    clock.advance(2);
    await expect(refused).rejects.toMatchObject({ code: "EDGEHOOK_OUTBOX_FULL" });
    expect(o.loadStates()).toEqual([]);
    expect(o.totals()).toMatchObject({ events: 5, pending: 5 });
    expect(await dropCount("max_events")).toBe(0);
    o.maintain(); // maintenance drops nothing either
    expect(o.totals()).toMatchObject({ events: 5, pending: 5 });

    // Deliveries settle: delivered rows are pruned to make room, and batches are stored again.
    const two = o.next("ops", clock.now(), 1, new Set());
    o.settle(two.map((d) => ({ id: d.id, outcome: "delivered" as const, attempt: attempt(200) })));
    const one = o.next("ops", clock.now(), 1, new Set());
    o.settle(one.map((d) => ({ id: d.id, outcome: "delivered" as const, attempt: attempt(200) })));
    clock.advance(1000); // past the cached answer
    expect(o.refusal()).toBeUndefined();
    expect(o.totals().events).toBeLessThan(4);
    expect((await commit(o, [ev("c:s:m")])).accepted).toBe(1);
    expect(await dropCount("max_events")).toBe(0);
  });

  it("rejects a batch whose valid() says it is stale, storing nothing of it, and commits the rest", async () => {
    const o = makeOutbox();
    const stale = o.commit(batch([ev("a:s:m")], [{ rule: "a", series: "a:s:m", version: "1", state: 1 }]), {
      valid: () => false,
    });
    const fresh = o.commit(batch([ev("b:s:m")]), { valid: () => true });
    clock.advance(2);
    await expect(stale).rejects.toMatchObject({ code: "EDGEHOOK_STALE_BATCH" });
    expect((await fresh).accepted).toBe(1);
    expect(o.loadStates()).toEqual([]);
    expect(o.totals().events).toBe(1);
  });

  it("max_age expires old pending deliveries (destination override first) and promotes the next head", async () => {
    const o = makeOutbox({ max_age: 3_600_000 }, { destinationMaxAge: { fast: 60_000 } });
    const old = ev("r:s:m", { destinations: ["ops", "fast"] });
    await commit(o, [old]);
    clock.advance(120_000);
    const fresh = ev("r:s:m", { destinations: ["ops", "fast"] });
    await commit(o, [fresh]);
    let res = o.maintain();
    expect(res.expired).toBe(1);
    expect(o.next("fast", clock.now(), 10, new Set()).map((d) => d.eventId)).toEqual([fresh.id]);
    expect(o.next("ops", clock.now(), 10, new Set()).map((d) => d.eventId)).toEqual([old.id]);
    expect(o.show(old.id)?.deliveries.find((d) => d.destination === "fast")).toMatchObject({
      state: "dead",
      reason: "expired",
    });
    clock.advance(3_600_000);
    res = o.maintain();
    expect(res.expired).toBe(3);
    expect(o.stats().map((s) => [s.destination, s.pending, s.dead])).toEqual([
      ["fast", 0, 2],
      ["ops", 0, 2],
    ]);
    expect(await dropCount("expired")).toBe(4);
    expect(await dropCount("expired", "fast")).toBe(2);
  });

  it("maintain prunes delivered rows after keep_delivered and updates the metrics", async () => {
    const o = makeOutbox({ keep_delivered: 60_000 });
    await commit(o, [ev("r:s:m"), ev("r:s:m")]);
    drain(o);
    await commit(o, [ev("r:s:m")]);
    clock.advance(30_000);
    expect(o.maintain().pruned).toBe(0);
    clock.advance(30_001);
    expect(o.maintain()).toEqual({ pruned: 2, expired: 0, dropped: {}, more: false });
    expect(realCounts()).toMatchObject({ events: 1, "ops/pending": 1 });
    const depth = await metrics.outboxDepth.get();
    expect(depth.values.find((v) => v.labels.state === "pending")?.value).toBe(1);
    expect(depth.values.find((v) => v.labels.state === "delivered")?.value).toBe(0);
    const oldest = await metrics.oldestPendingSeconds.get();
    expect(oldest.values[0]?.value).toBeCloseTo(60.001, 2);
    expect((await metrics.outboxBytes.get()).values[0]?.value).toBeGreaterThan(0);
  });
});

describe("operator queries", () => {
  it("stats, list and show", async () => {
    const o = makeOutbox();
    const e1 = ev("r:s:m", { destinations: ["ops", "lake"] });
    await commit(o, [e1]);
    clock.advance(5000);
    await commit(o, [ev("r:s:m")]);
    drain(o, "lake");
    expect(o.stats()).toEqual([
      { destination: "lake", pending: 0, delivered: 1, dead: 0, oldestPendingAgeMs: null },
      { destination: "ops", pending: 2, delivered: 0, dead: 0, oldestPendingAgeMs: clock.now() - e1.createdAt },
    ]);
    expect(o.list({ state: "delivered" }).map((l) => [l.eventId, l.destination])).toEqual([[e1.id, "lake"]]);
    expect(o.list({ destination: "ops", limit: 1 })).toHaveLength(1);
    expect(o.list()).toHaveLength(3);
    const shown = o.show(e1.id)!;
    expect(JSON.parse(shown.body)).toEqual(e1.body);
    expect(shown.deliveries.map((d) => [d.destination, d.state])).toEqual([
      ["ops", "pending"],
      ["lake", "delivered"],
    ]);
    expect(o.show("msg_nope")).toBeUndefined();
  });

  it("replay of dead deliveries puts them back in their place in the series", async () => {
    const o = makeOutbox();
    const [e1, e2, e3] = [ev("r:s:m"), ev("r:s:m"), ev("r:s:m")];
    await commit(o, [e1!, e2!, e3!]);
    let [d] = o.next("ops", clock.now(), 1, new Set());
    o.settle([{ id: d!.id, outcome: "dead", attempt: attempt(422), reason: "http 422" }]);
    [d] = o.next("ops", clock.now(), 1, new Set());
    expect(d?.eventId).toBe(e2!.id);
    expect(o.replay({ destination: "ops", state: "dead" })).toBe(1);
    // e1 is back and is the head again, ahead of e2, with its attempts reset
    expect(o.next("ops", clock.now(), 10, new Set())).toMatchObject([{ eventId: e1!.id, attempts: 0 }]);
    expect(realCounts().heads).toBe(1);
    expect(drain(o)).toEqual([e1!.id, e2!.id, e3!.id]);
    expect(o.replay({ eventId: e2!.id })).toBe(1);
    expect(o.replay({ eventId: "msg_unknown" })).toBe(0);
    expect(statsCounts(o)).toEqual({ "ops/pending": 1, "ops/delivered": 2 });
  });

  it("purge removes settled rows older than the given age", async () => {
    const o = makeOutbox();
    await commit(o, [ev("a:s:m"), ev("b:s:m"), ev("c:s:m")]);
    const ds = o.next("ops", clock.now(), 10, new Set());
    o.settle([
      { id: ds[0]!.id, outcome: "delivered", attempt: attempt(200) },
      { id: ds[1]!.id, outcome: "dead", attempt: attempt(400), reason: "http 400" },
    ]);
    clock.advance(10_000);
    expect(o.purge({ olderThanMs: 20_000, states: ["delivered", "dead"] })).toBe(0);
    expect(o.purge({ olderThanMs: 5_000, states: ["dead"] })).toBe(1);
    expect(o.purge({ olderThanMs: 5_000, states: ["delivered", "dead"] })).toBe(1);
    expect(realCounts()).toEqual({ events: 1, "ops/pending": 1, heads: 1 });
    expect(o.totals().events).toBe(1);
  });

  it("changes made by another process (edgehook queue) show up in the agent's counters", async () => {
    const agent = makeOutbox();
    await commit(agent, [ev("a:s:m"), ev("b:s:m")]);
    for (const d of agent.next("ops", clock.now(), 10, new Set())) {
      agent.settle([{ id: d.id, outcome: "dead", attempt: attempt(400), reason: "http 400" }]);
    }
    const cli = new Outbox({
      file: file(),
      limits: DEFAULT_LIMITS,
      clock,
      logger: silentLogger(),
      metrics: new Metrics(),
      check: false,
    });
    cli.open();
    expect(cli.replay({ destination: "ops", state: "dead" })).toBe(2);
    cli.close();
    expect(statsCounts(agent)).toEqual({ "ops/pending": 2 });
    expect(agent.next("ops", clock.now(), 10, new Set())).toHaveLength(2);
  });
});

describe("counters stay in step with the rows", () => {
  it("after a random mix of operations", async () => {
    const o = makeOutbox({ max_events: 150 });
    const rand = seededRandom(42);
    for (let round = 0; round < 30; round++) {
      const events = Array.from({ length: rand(12) }, () =>
        ev(`r:s${rand(6)}:m`, { priority: rand(3) * 10, destinations: rand(3) === 0 ? ["ops", "lake"] : ["ops"] }),
      );
      await commit(o, events);
      for (const dest of ["ops", "lake"]) {
        for (const d of o.next(dest, clock.now(), rand(5), new Set())) {
          const r = rand(4);
          if (r === 0) o.settle([{ id: d.id, outcome: "delivered", attempt: attempt(200) }]);
          else if (r === 1) o.settle([{ id: d.id, outcome: "dead", attempt: attempt(400), reason: "x" }]);
          else
            o.settle([{ id: d.id, outcome: "retry", attempt: attempt(500), nextAt: clock.now() + 5, counted: true }]);
        }
      }
      if (rand(5) === 0) o.replay({ destination: "ops", state: "dead" });
      clock.advance(rand(10));
      if (rand(4) === 0) o.maintain();
    }
    const { heads: _, events, ...byState } = realCounts();
    expect(statsCounts(o)).toEqual(byState);
    expect(o.totals().events).toBe(events);
    expect(events).toBeLessThanOrEqual(150);
    // one head per (destination, series) that has pending rows
    assertHeads();
  });
});
