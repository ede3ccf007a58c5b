/**
 * next(), nextDueAt() and settle() must not scan the backlog: with a 100,000-row series
 * and 10,000 other series waiting, each call stays well under a millisecond or two.
 * (A scan of the long series, or a sort of all 10,000 heads, costs several ms here.)
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type NewEvent, newEventId } from "../../src/events.js";
import { silentLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import { MAINTAIN_MAX_ROWS, Outbox } from "../../src/store/outbox.js";
import { FakeClock } from "../support/fake-clock.js";

const LONG_SERIES = 100_000;
const OTHER_SERIES = 10_000;

let dir: string;
let outbox: Outbox;
const clock = new FakeClock();

function ev(series: string, priority = 10): NewEvent {
  return {
    id: newEventId(clock.now()),
    type: "reading",
    rule: "r",
    series,
    severity: "info",
    priority,
    destinations: ["ops"],
    createdAt: clock.now(),
    body: { type: "reading", timestamp: "2026-01-01T00:00:00Z", data: { v: 1, pad: "x".repeat(150) } },
  };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "edgehook-scale-"));
  outbox = new Outbox({
    file: join(dir, "outbox.db"),
    limits: {
      max_events: 10_000_000,
      max_bytes: 2 ** 40,
      max_age: 86_400_000,
      min_free_disk: 1,
      keep_delivered: 86_400_000,
      commit_delay: 0,
    },
    clock,
    logger: silentLogger(),
    metrics: new Metrics(),
  });
  outbox.open();
  for (let i = 0; i < LONG_SERIES; i += 5000) {
    await outbox.commit({ events: Array.from({ length: 5000 }, () => ev("long", 20)), states: [], removedStates: [] });
  }
  for (let i = 0; i < OTHER_SERIES; i += 5000) {
    await outbox.commit({
      events: Array.from({ length: 5000 }, (_, k) => ev(`s${i + k}`)),
      states: [],
      removedStates: [],
    });
  }
}, 60_000);

afterAll(() => {
  outbox.close();
  rmSync(dir, { recursive: true, force: true });
});

function timeEach(n: number, fn: () => void): number {
  fn(); // warm the page cache
  const t = performance.now();
  for (let i = 0; i < n; i++) fn();
  return (performance.now() - t) / n;
}

describe("outbox at scale", () => {
  it("next() returns heads quickly with a long series and 10,000 series", () => {
    const exclude = new Set<string>(["long"]);
    const ms = timeEach(300, () => {
      const got = outbox.next("ops", clock.now(), 4, exclude);
      if (got.length !== 4) throw new Error("expected 4 heads");
    });
    expect(ms).toBeLessThan(1.5);
    // Only heads: one per series, so never two rows of the long series.
    const batch = outbox.next("ops", clock.now(), 500, new Set());
    expect(batch.filter((d) => d.series === "long")).toHaveLength(1);
    expect(new Set(batch.map((d) => d.series)).size).toBe(500);
  });

  it("next() stays fast when most heads are in backoff", () => {
    // Put 2,000 heads into backoff; the due ones still come quickly.
    const heads = outbox.next("ops", clock.now(), 2000, new Set());
    outbox.settle(
      heads.map((d) => ({
        id: d.id,
        outcome: "retry" as const,
        attempt: { at: clock.now(), status: 503, durationMs: 1 },
        nextAt: clock.now() + 60_000,
        counted: true,
      })),
    );
    const ms = timeEach(100, () => {
      outbox.next("ops", clock.now(), 4, new Set());
    });
    expect(ms).toBeLessThan(5);
    expect(outbox.nextDueAt("ops")).toBeLessThanOrEqual(clock.now());
  });

  it("settle() promotes the next row of the long series without scanning it", () => {
    // "long" has the highest priority, so its head is always first (once out of backoff).
    clock.advance(60_000);
    const settleOne = (exclude: ReadonlySet<string>, series?: string) => {
      const [d] = outbox.next("ops", clock.now(), 1, exclude);
      if (!d || (series !== undefined && d.series !== series)) throw new Error(`expected a head of ${series}`);
      const t = performance.now();
      outbox.settle([{ id: d.id, outcome: "delivered", attempt: { at: clock.now(), status: 200, durationMs: 1 } }]);
      return { ms: performance.now() - t, id: d.id };
    };
    const notLong = new Set(["long"]);
    settleOne(notLong); // warm-up
    // Interleaved, so both pay the same fsync and machine load; only the promotion differs:
    // the next row of a 100,000-row series versus a series with nothing behind its head.
    const long: number[] = [];
    const short: number[] = [];
    let previous = 0;
    for (let i = 0; i < 100; i++) {
      const l = settleOne(new Set(), "long");
      expect(l.id).toBeGreaterThan(previous);
      previous = l.id;
      long.push(l.ms);
      short.push(settleOne(notLong).ms);
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1] as number;
    // Neither promotion may cost a scan (which would take several ms here).
    const [a, b] = [median(long), median(short)];
    expect(Math.max(a, b)).toBeLessThan(Math.min(a, b) * 2 + 1);
    const stats = outbox.stats()[0];
    expect(stats?.delivered).toBe(201);
    expect(stats?.pending).toBe(LONG_SERIES + OTHER_SERIES - 201);
  });

  it("expiring a huge backlog is spread over several maintain() passes", () => {
    clock.advance(86_400_001); // past max_age for every pending row
    const first = outbox.maintain();
    expect(first.pruned + first.expired).toBe(MAINTAIN_MAX_ROWS);
    expect(first.more).toBe(true);
    let expired = first.expired;
    let passes = 1;
    for (let more = true; more && passes < 20; passes++) {
      const r = outbox.maintain();
      expired += r.expired;
      more = r.more;
    }
    expect(expired).toBe(LONG_SERIES + OTHER_SERIES - 201);
    expect(passes).toBe(Math.ceil((LONG_SERIES + OTHER_SERIES) / MAINTAIN_MAX_ROWS));
    expect(outbox.next("ops", clock.now(), 10, new Set())).toEqual([]);
    expect(outbox.nextDueAt("ops")).toBeUndefined();
    expect(outbox.stats()[0]).toMatchObject({ pending: 0, dead: LONG_SERIES + OTHER_SERIES - 201 });
  });

  it("a lowered limit on a full outbox converges over passes of bounded size", () => {
    // A restart with a smaller outbox.max_events (a second connection to the same file).
    const smaller = new Outbox({
      file: join(dir, "outbox.db"),
      limits: {
        max_events: 50_000,
        max_bytes: 2 ** 40,
        max_age: 10 * 86_400_000, // the dead rows are not old enough to be pruned by age
        min_free_disk: 1,
        keep_delivered: 86_400_000,
        commit_delay: 0,
      },
      clock,
      logger: silentLogger(),
      metrics: new Metrics(),
      check: false,
    });
    smaller.open();
    try {
      const before = smaller.totals().events;
      expect(before).toBe(LONG_SERIES + OTHER_SERIES - 201);
      const passes = [];
      for (let more = true; more && passes.length < 10; ) {
        const r = smaller.maintain();
        passes.push(r.dropped.dead_pruned ?? 0);
        more = r.more;
      }
      expect(passes).toEqual([MAINTAIN_MAX_ROWS, MAINTAIN_MAX_ROWS, before - 50_000 - 2 * MAINTAIN_MAX_ROWS]);
      expect(smaller.totals().events).toBe(50_000);
    } finally {
      smaller.close();
    }
  });
});
