import { Webhook } from "standardwebhooks";
import { afterEach, describe, expect, it } from "vitest";
import type { DestinationConfig } from "../../src/config/schema.js";
import { Dispatcher } from "../../src/delivery/dispatcher.js";
import type { NewEvent } from "../../src/events.js";
import { createLogger, silentLogger } from "../../src/ops/logger.js";
import type { Metrics } from "../../src/ops/metrics.js";
import type { Outbox } from "../../src/store/outbox.js";
import { dispatcherRig, testDestination, testEvent } from "../support/dispatcher-rig.js";
import type { FakeClock } from "../support/fake-clock.js";
import { Receiver } from "../support/receiver.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";
import { waitUntil } from "../support/wait.js";

interface Rig {
  clock: FakeClock;
  outbox: Outbox;
  receiver: Receiver;
  dispatcher: Dispatcher;
  metrics: Metrics;
  dest: DestinationConfig;
  commit(series: string, n: number, priority?: number): Promise<NewEvent[]>;
  /** Lets every pass, request and write finish (time does not move). */
  settle(): Promise<void>;
  /** Moves logical time and lets what became due run. */
  advance(ms: number): Promise<void>;
  counted(cls: string): number;
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface RigOptions {
  startReceiver?: boolean;
  clockSynced?: () => boolean;
  /** Collects the dispatcher's log lines (parsed JSON). */
  logs?: Record<string, unknown>[];
  /** Longest wait before outcomes are written (the dispatcher's default is 1 s). */
  settleDelayMs?: number;
}

async function rig(extra: Record<string, unknown> = {}, opts: RigOptions = {}): Promise<Rig> {
  const receiver = new Receiver(WEBHOOK_SECRET);
  await receiver.start();
  cleanups.push(() => receiver.stop());
  if (opts.startReceiver === false) await receiver.stop();
  const dest = testDestination(receiver.url, extra);
  const base = dispatcherRig({
    destinations: { ops: dest },
    cleanups,
    options: {
      logger: opts.logs ? captureLogger(opts.logs) : silentLogger(),
      random: () => 0.5, // no jitter: the schedule is exact
      ...(opts.clockSynced ? { clockSynced: opts.clockSynced } : {}),
      ...(opts.settleDelayMs !== undefined ? { settleDelayMs: opts.settleDelayMs } : {}),
    },
  });
  let seq = 0;
  const r: Rig = {
    ...base,
    receiver,
    dest,
    async commit(series, n, priority = 10) {
      const events: NewEvent[] = [];
      for (let i = 0; i < n; i++) events.push(testEvent(base.clock, { series, priority, data: { series, n: seq++ } }));
      await base.commit(events);
      return events;
    },
  };
  return r;
}

function captureLogger(into: Record<string, unknown>[]) {
  return createLogger("info", {
    write(line: string) {
      into.push(JSON.parse(line) as Record<string, unknown>);
    },
  });
}

function row(r: Rig, eventId: string) {
  const d = r.outbox.show(eventId)?.deliveries[0];
  if (!d) throw new Error(`no delivery for ${eventId}`);
  return d;
}

describe("dispatcher against real receivers", () => {
  it("5xx: counts attempts, retries on the schedule, dead after max_attempts; the series then moves on", async () => {
    const r = await rig({ retry_schedule: ["5s", "30s"], max_attempts: 3 });
    r.receiver.answer = (rec) =>
      (rec.json as { data: { n: number } }).data.n === 0 ? { kind: "status", status: 500 } : { kind: "accept" };
    const [first] = await r.commit("s1", 1);
    const [second] = await r.commit("s1", 1);
    r.dispatcher.start();
    await r.receiver.waitFor(() => r.receiver.requests === 1, "first attempt");
    await r.settle();
    expect(row(r, first!.id)).toMatchObject({ state: "pending", attempts: 1, lastStatus: 500 });
    // The later event of the series waits behind its head.
    expect(r.receiver.arrivals.map((a) => a.id)).toEqual([first!.id]);

    await r.advance(4_999);
    expect(r.receiver.requests).toBe(1);
    await r.advance(1);
    await r.receiver.waitFor(() => r.receiver.requests === 2, "retry after 5 s");
    await r.settle();
    expect(row(r, first!.id)).toMatchObject({ state: "pending", attempts: 2 });

    await r.advance(29_999);
    expect(r.receiver.requests).toBe(2);
    await r.advance(1);
    await r.receiver.waitFor(() => r.receiver.requests >= 3, "third attempt");
    await r.settle();
    expect(row(r, first!.id)).toMatchObject({ state: "dead", attempts: 3 });
    // The series is unblocked: the second event goes out right away.
    await r.receiver.waitFor(() => r.receiver.accepted.length === 1, "second event");
    expect(r.receiver.accepted[0]!.id).toBe(second!.id);
    expect(r.dispatcher.states().ops?.state).toBe("up");
    expect(r.counted("5xx")).toBe(3);
  });

  it("429 with Retry-After: waits exactly that long instead of the schedule", async () => {
    const r = await rig({ retry_schedule: ["5s"] });
    let n = 0;
    r.receiver.answer = () =>
      n++ === 0 ? { kind: "status", status: 429, headers: { "retry-after": "120" } } : { kind: "accept" };
    const [ev] = await r.commit("s1", 1);
    r.dispatcher.start();
    await r.receiver.waitFor(() => r.receiver.requests === 1, "first attempt");
    await r.settle();
    // Nothing is due for two minutes: the dispatcher sleeps instead of polling the outbox.
    const next = r.outbox.next.bind(r.outbox);
    let reads = 0;
    r.outbox.next = (...args) => {
      reads++;
      return next(...args);
    };
    for (let t = 0; t < 119; t++) await r.advance(1_000);
    await r.advance(999);
    expect(reads).toBe(0);
    expect(r.receiver.requests).toBe(1);
    await r.advance(1);
    await r.receiver.waitFor(() => r.receiver.accepted.length === 1, "accepted after Retry-After");
    await r.settle();
    expect(row(r, ev!.id)).toMatchObject({ state: "delivered", attempts: 2 });
  });

  it("a receiver that hangs past response_timeout: an attempt spent, the destination stays up, dead after max_attempts", async () => {
    const r = await rig({ response_timeout: "300ms", max_attempts: 2, retry_schedule: ["5s"] });
    r.receiver.answer = () => ({ kind: "hang" });
    const [ev] = await r.commit("s1", 1);
    const t0 = Date.now();
    r.dispatcher.start();
    await r.receiver.waitFor(() => r.receiver.arrivals.length === 1, "hung request");
    await r.settle();
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    // The request reached the receiver: that is not "unreachable".
    expect(r.dispatcher.states().ops).toMatchObject({ state: "up", inFlight: 0 });
    expect(row(r, ev!.id)).toMatchObject({ state: "pending", attempts: 1 });
    expect(row(r, ev!.id).lastError).toMatch(/response timeout/);
    expect(r.counted("no_response")).toBe(1);
    // Not sent again at once (a slow receiver is not hammered), but on the schedule.
    await r.advance(4_999);
    expect(r.receiver.arrivals).toHaveLength(1);
    await r.advance(1);
    await r.receiver.waitFor(() => r.receiver.arrivals.length === 2, "the retry after 5 s");
    await r.settle();
    expect(row(r, ev!.id)).toMatchObject({ state: "dead", attempts: 2 });
    expect(r.outbox.list({ state: "dead" }).map((d) => d.eventId)).toEqual([ev!.id]);
    expect(r.dispatcher.states().ops?.state).toBe("up");
  });

  it("a receiver that resets the connection after the request: sent again at once, then attempts spent; never offline", async () => {
    const r = await rig({ max_attempts: 2, retry_schedule: ["5s"] });
    r.receiver.answer = () => ({ kind: "reset" });
    const [ev] = await r.commit("s1", 1);
    r.dispatcher.start();
    // The first reset may be a keep-alive connection closed just as it was reused: one
    // resend at once, uncounted.
    await r.receiver.waitFor(() => r.receiver.arrivals.length === 2, "the resend at once");
    await r.settle();
    expect(r.dispatcher.states().ops?.state).toBe("up");
    expect(row(r, ev!.id)).toMatchObject({ state: "pending", attempts: 1 });
    await r.advance(4_999);
    expect(r.receiver.arrivals).toHaveLength(2);
    await r.advance(1);
    await r.receiver.waitFor(() => r.receiver.arrivals.length === 3, "the retry after 5 s");
    await r.settle();
    expect(row(r, ev!.id)).toMatchObject({ state: "dead", attempts: 2 });
    expect(row(r, ev!.id).reason).toMatch(/socket closed|reset/);
    expect(r.counted("offline")).toBe(0);
    expect(r.counted("no_response")).toBe(3);
    expect(r.dispatcher.states().ops?.state).toBe("up");
  });

  it("a receiver that closes a kept-alive connection as it is reused: each webhook goes again at once on a new one, nothing spent", async () => {
    const r = await rig({ concurrency: 1 });
    // What a server's idle timeout racing our next request looks like from here.
    r.receiver.answer = (rec) => (rec.onConnection > 1 ? { kind: "reset" } : { kind: "accept" });
    const events = await r.commit("s1", 5);
    r.dispatcher.start();
    // Logical time stands still: nothing waits for a retry or a probe.
    await r.receiver.waitFor(() => r.receiver.accepted.length === 5, "every webhook");
    await r.settle();
    expect(r.receiver.accepted.map((a) => a.id)).toEqual(events.map((e) => e.id));
    for (const e of events) expect(row(r, e.id)).toMatchObject({ state: "delivered", attempts: 1 });
    expect(r.counted("no_response")).toBeGreaterThanOrEqual(1);
    expect(r.counted("offline")).toBe(0);
    expect(r.dispatcher.states().ops?.state).toBe("up");
  });

  it("one event the receiver resets on holds back only its own series", async () => {
    const r = await rig({ retry_schedule: ["1h"] });
    r.receiver.answer = (rec) =>
      (rec.json as { data: { series: string } }).data.series === "bad" ? { kind: "reset" } : { kind: "accept" };
    const [bad] = await r.commit("bad", 1);
    r.dispatcher.start();
    await r.receiver.waitFor(() => r.receiver.arrivals.length === 2, "the poisoned event, twice");
    await r.settle();
    // Without the clock moving, every other series goes through.
    const good = [...(await r.commit("a", 2)), ...(await r.commit("b", 2)), ...(await r.commit("c", 2))];
    await r.receiver.waitFor(() => r.receiver.accepted.length === good.length, "the other series");
    expect(r.receiver.accepted.map((a) => a.id).sort()).toEqual(good.map((e) => e.id).sort());
    const later = await r.commit("bad", 1);
    await r.settle();
    expect(r.receiver.arrivals.filter((a) => a.id === later[0]!.id)).toHaveLength(0);
    expect(row(r, bad!.id)).toMatchObject({ state: "pending", attempts: 1 });
    expect(r.dispatcher.states().ops?.state).toBe("up");
  });

  it("400 is dead at once after one attempt; the series continues", async () => {
    const r = await rig();
    r.receiver.answer = (rec) =>
      (rec.json as { data: { n: number } }).data.n === 0 ? { kind: "status", status: 400 } : { kind: "accept" };
    const [bad, good] = await r.commit("s1", 2);
    r.dispatcher.start();
    await r.receiver.waitFor(() => r.receiver.accepted.length === 1, "second event");
    await r.settle();
    expect(row(r, bad!.id)).toMatchObject({ state: "dead", attempts: 1, lastStatus: 400 });
    expect(row(r, good!.id).state).toBe("delivered");
    expect(r.receiver.requests).toBe(2);
  });

  it("410 kills the delivery and disables the destination; later events wait until enable", async () => {
    const r = await rig();
    let gone = true;
    r.receiver.answer = () => (gone ? { kind: "status", status: 410 } : { kind: "accept" });
    const [first] = await r.commit("s1", 1);
    r.dispatcher.start();
    await r.receiver.waitFor(() => r.receiver.requests === 1, "410");
    await r.settle();
    expect(row(r, first!.id)).toMatchObject({ state: "dead", attempts: 1 });
    expect(r.dispatcher.states().ops).toMatchObject({ state: "disabled" });
    expect(r.outbox.destinationFlags().ops?.disabled).toBe(true);

    // The flag is in the outbox: a restarted dispatcher starts with the destination disabled.
    const again = new Dispatcher({
      outbox: r.outbox,
      destinations: { ops: r.dest },
      clock: r.clock,
      logger: silentLogger(),
      metrics: r.metrics,
      env: {},
    });
    again.start();
    expect(again.states().ops?.state).toBe("disabled");
    await again.stop(0);

    const later = await r.commit("s2", 3);
    await r.settle();
    await r.advance(3_600_000);
    expect(r.receiver.requests).toBe(1);
    for (const e of later) expect(row(r, e.id).state).toBe("pending");

    gone = false;
    r.dispatcher.enable("ops");
    await r.receiver.waitFor(() => r.receiver.accepted.length === 3, "events after enable");
    expect(r.receiver.accepted.map((a) => a.id)).toEqual(later.map((e) => e.id));
    expect(r.dispatcher.states().ops?.state).toBe("up");
    expect(r.outbox.destinationFlags().ops?.disabled ?? false).toBe(false);
  });

  it("a receiver down for ten minutes: one probe at a time, about one a second, attempts not spent, then everything in order", async () => {
    const r = await rig({ concurrency: 8, max_attempts: 2 }, { startReceiver: false });
    const series = ["a", "b", "c", "d"];
    const committed: NewEvent[] = [];
    for (let i = 0; i < 5; i++) for (const s of series) committed.push(...(await r.commit(s, 1, s === "d" ? 20 : 10)));
    const settle = r.outbox.settle.bind(r.outbox);
    let offlineWrites = 0;
    r.outbox.settle = (list) => {
      offlineWrites += list.filter((st) => st.outcome === "retry" && !st.counted).length;
      settle(list);
    };
    r.dispatcher.start();
    await r.settle();
    expect(r.dispatcher.states().ops?.state).toBe("down");

    let maxInFlight = 0;
    for (let t = 0; t < 600; t++) {
      r.clock.advance(1_000);
      maxInFlight = Math.max(maxInFlight, r.dispatcher.states().ops?.inFlight ?? 0);
      await r.settle();
    }
    expect(maxInFlight).toBe(1);
    // A probe every 0.75 to 1 s, so delivery resumes within a second of the receiver's return.
    const probes = r.counted("offline");
    expect(probes).toBeGreaterThanOrEqual(590);
    expect(probes).toBeLessThanOrEqual(810);
    // Probes change nothing durable: recorded once a minute, not once a second (SD card).
    expect(offlineWrites).toBeLessThanOrEqual(8 + 10);
    for (const e of committed) expect(row(r, e.id)).toMatchObject({ state: "pending", attempts: 0 });
    expect(row(r, committed.find((e) => e.series === "d")!.id).lastError).toMatch(/connection refused/);

    await r.receiver.start();
    await r.advance(1_000);
    await r.receiver.waitFor(() => r.receiver.accepted.length === committed.length, "backlog");
    expect(r.dispatcher.states().ops?.state).toBe("up");
    for (const s of series) {
      const got = r.receiver.accepted.filter((a) => (a.json as { data: { series: string } }).data.series === s);
      expect(got.map((g) => g.id)).toEqual(committed.filter((e) => e.series === s).map((e) => e.id));
    }
    // Priority first after the outage: the probe is the head of the critical series.
    expect((r.receiver.accepted[0]!.json as { data: { series: string } }).data.series).toBe("d");
    // Signed at the time of sending (ten minutes after the events), not at commit time: the
    // receiver's "timestamp too old" check would reject the latter. Logical time is ahead of
    // the receiver's real clock here, so check the signature with the package's sign().
    const wh = new Webhook(WEBHOOK_SECRET);
    const committedAt = Math.floor(committed[0]!.createdAt / 1000);
    for (const a of r.receiver.accepted) {
      expect(a.timestamp).toBeGreaterThanOrEqual(committedAt + 600);
      expect(a.headers["webhook-signature"]).toBe(wh.sign(a.id, new Date(a.timestamp * 1000), a.body));
    }
  });

  it("logs every comeback with the outage's length and the backlog; a receiver in a restart loop is summarised", async () => {
    const logs: Record<string, unknown>[] = [];
    const r = await rig({}, { logs });
    r.dispatcher.start();
    const outage = async (events: number) => {
      await r.receiver.stop();
      const before = r.receiver.accepted.length;
      await r.commit("a", events);
      await r.settle();
      expect(r.dispatcher.states().ops?.state).toBe("down");
      await r.advance(400);
      await r.receiver.start();
      // The next probe is less than a second away.
      await r.advance(600);
      await r.receiver.waitFor(() => r.receiver.accepted.length === before + events, "the backlog");
      await r.settle();
      expect(r.dispatcher.states().ops?.state).toBe("up");
    };
    await outage(3);
    const back = logs.filter((l) => String(l.msg).includes("reachable again"));
    expect(back).toHaveLength(1);
    expect(back[0]).toMatchObject({ level: "info", destination: "ops", backlog: 3 });
    expect(back[0]?.downSeconds).toBeGreaterThan(0.3);
    expect(back[0]?.downSeconds).toBeLessThanOrEqual(1);
    expect(String(back[0]?.msg)).toMatch(/reachable again after [01]\.\d s; sending the 3 webhook\(s\) that waited/);
    const down = logs.find((l) => String(l.msg).includes("unreachable ("));
    expect(down).toMatchObject({ level: "warn", backlog: 3 });

    // Seven more outages within the minute: two more logged line by line, five summarised.
    for (let i = 0; i < 7; i++) {
      await outage(1);
      await r.advance(3_000);
    }
    const count = (text: string) => logs.filter((l) => String(l.msg).includes(text)).length;
    expect(count("unreachable (")).toBe(3);
    expect(count("reachable again")).toBe(3);
    expect(count("flapping")).toBe(0);
    await r.advance(60_000);
    const flapping = logs.filter((l) => String(l.msg).includes("flapping"));
    expect(flapping).toHaveLength(1);
    expect(flapping[0]).toMatchObject({ level: "warn", outages: 5, state: "up", backlog: 0 });
    expect(String(flapping[0]?.msg)).toMatch(/unreachable 5 more time\(s\) in the last/);
  });

  it("writes the 2xx outcomes of events that come a few at a time together, in one transaction, not one each", async () => {
    // Each transaction costs its own WAL frames and fsync on the SD card (issue 15, flash).
    const r = await rig();
    r.dispatcher.start();
    const sent: NewEvent[] = [];
    const before = r.outbox.transactionCount;
    for (let i = 0; i < 5; i++) {
      sent.push(...(await r.commit("s1", 1)));
      await r.receiver.waitFor(() => r.receiver.accepted.length === i + 1, `event ${i + 1}`);
      // The scenario, not a wait for something: events 30 ms apart, as readings that each
      // make one come in (longer than the old 20 ms batching delay).
      await new Promise((res) => setTimeout(res, 30));
    }
    await r.settle();
    for (const e of sent) expect(row(r, e.id).state).toBe("delivered");
    expect(r.receiver.accepted.map((a) => a.id)).toEqual(sent.map((e) => e.id));
    // Five commits, then the outcomes: all in one write (two if the delay ran out in between).
    expect(r.outbox.transactionCount - before - 5).toBeLessThanOrEqual(2);
  });

  it("a delivered outcome waiting to be written goes with the next event's commit, in its transaction", async () => {
    const r = await rig();
    r.dispatcher.start();
    const [first] = await r.commit("s1", 1);
    await waitUntil(() => r.counted("2xx") === 1, "the first event's outcome");
    expect(row(r, first!.id).state).toBe("pending"); // waiting to be written (up to 1 s)
    // The scenario: the next event comes 0.6 s later (an outcome rides once it has waited
    // half the 1 s delay; younger ones wait to share a write with more).
    await new Promise((res) => setTimeout(res, 600));
    const before = r.outbox.transactionCount;
    await r.commit("s2", 1);
    // The commit's own transaction wrote it: no transaction of its own, no wait.
    expect(r.outbox.transactionCount - before).toBe(1);
    expect(row(r, first!.id)).toMatchObject({ state: "delivered", attempts: 1 });
    await r.receiver.waitFor(() => r.receiver.accepted.length === 2, "the second event");
    await r.settle();
    expect(r.outbox.stats()).toEqual([expect.objectContaining({ destination: "ops", pending: 0, delivered: 2 })]);
  });

  it("after a 2xx the next event of the series goes while the outcome waits to be written; after a 5xx it waits", async () => {
    // Outcomes are written only at stop: everything below happens with them unwritten.
    const r = await rig({ retry_schedule: ["5s"] }, { settleDelayMs: 3_600_000 });
    const ok = await r.commit("s1", 5);
    r.dispatcher.start();
    await r.receiver.waitFor(() => r.receiver.accepted.length === 5, "the whole series", 5_000);
    expect(r.receiver.arrivals.map((a) => a.id)).toEqual(ok.map((e) => e.id));
    for (const e of ok) expect(row(r, e.id).state).toBe("pending");

    let fail = true;
    r.receiver.answer = () => (fail ? { kind: "status", status: 503 } : { kind: "accept" });
    const [failing, behind] = await r.commit("s1", 2);
    await r.receiver.waitFor(() => r.receiver.requests === 6, "the failing one");
    // Until its retry time is written, nothing else of the series goes (or is read as due).
    r.clock.advance(60_000);
    await new Promise((res) => setTimeout(res, 100));
    expect(r.receiver.requests).toBe(6);
    expect(r.receiver.arrivals.some((a) => a.id === behind!.id)).toBe(false);
    fail = false;
    await r.dispatcher.stop(0);
    for (const e of ok) expect(row(r, e.id).state).toBe("delivered");
    expect(row(r, failing!.id)).toMatchObject({ state: "pending", attempts: 1 });
    expect(row(r, behind!.id)).toMatchObject({ state: "pending", attempts: 0 });
  });

  it("outcomes that were never written (a crash) are sent again with the same webhook-id; first arrivals stay in order", async () => {
    const r = await rig({}, { settleDelayMs: 3_600_000 });
    const first = await r.commit("s1", 4);
    r.dispatcher.start();
    await r.receiver.waitFor(() => r.receiver.accepted.length === 4, "the series");
    // The process dies before writing: nothing of it reaches the outbox.
    r.outbox.settle = () => {
      throw new Error("killed");
    };
    await r.dispatcher.stop(0);
    for (const e of first) expect(row(r, e.id).state).toBe("pending");
    const second = await r.commit("s1", 2);
    const again = new Dispatcher({
      outbox: r.outbox,
      destinations: { ops: r.dest },
      clock: r.clock,
      logger: silentLogger(),
      metrics: r.metrics,
      env: {},
    });
    again.start();
    await r.receiver.waitFor(() => r.receiver.accepted.length === 10, "the series again, then the new events");
    await again.stop(0);
    const ids = r.receiver.accepted.map((a) => a.id);
    const all = [...first, ...second].map((e) => e.id);
    expect(ids).toEqual([...first.map((e) => e.id), ...all]);
    const firstArrivals = ids.filter((id, i) => ids.indexOf(id) === i);
    expect(firstArrivals).toEqual(all);
  });

  it("outcomes still unwritten at shutdown are logged there, even when the write errors before were rate-limited", async () => {
    const logs: Record<string, unknown>[] = [];
    const r = await rig({}, { logs, settleDelayMs: 20 });
    const events = await r.commit("s1", 2);
    r.outbox.settle = () => {
      throw new Error("disk I/O error");
    };
    r.dispatcher.start();
    await r.receiver.waitFor(() => r.receiver.accepted.length === 2, "the series");
    const failed = () => logs.filter((l) => l.msg === "writing delivery outcomes failed; retrying").length;
    await waitUntil(() => failed() === 1, "the first failed write");
    await r.dispatcher.stop(0);
    // The write at shutdown failed too, and the rate limit kept its error out of the log.
    expect(failed()).toBe(1);
    const shutdown = logs.filter((l) => String(l.msg).startsWith("shutdown: delivery outcomes could not be written"));
    expect(shutdown).toHaveLength(1);
    expect(shutdown[0]).toMatchObject({ unwritten: 2 });
    for (const e of events) expect(row(r, e.id).state).toBe("pending");
  });

  it("keeps order within each series while several series go out concurrently", async () => {
    const r = await rig({ concurrency: 8 });
    r.receiver.answer = () => ({ kind: "accept", delayMs: Math.floor(Math.random() * 15) });
    const committed: NewEvent[] = [];
    for (let i = 0; i < 15; i++)
      for (const s of ["a", "b", "c", "d", "e", "f"]) committed.push(...(await r.commit(s, 1)));
    r.dispatcher.start();
    await r.receiver.waitFor(() => r.receiver.accepted.length === committed.length, "all events", 15_000);
    expect(r.receiver.maxOpen).toBeGreaterThan(1);
    expect(r.receiver.maxOpen).toBeLessThanOrEqual(6);
    for (const s of ["a", "b", "c", "d", "e", "f"]) {
      const got = r.receiver.arrivals.filter((a) => (a.json as { data: { series: string } }).data.series === s);
      expect(got.map((g) => g.id)).toEqual(committed.filter((e) => e.series === s).map((e) => e.id));
    }
  });

  it("signs every attempt afresh: same webhook-id, new timestamp, verified by standardwebhooks", async () => {
    const r = await rig({ retry_schedule: ["5s"], hub_secret: "gh-secret" });
    let n = 0;
    r.receiver.answer = () => (n++ < 2 ? { kind: "status", status: 503 } : { kind: "accept" });
    const [ev] = await r.commit("s1", 1);
    r.dispatcher.start();
    await r.receiver.waitFor(() => r.receiver.requests === 1, "first attempt");
    await r.settle();
    await r.advance(5_000);
    await r.receiver.waitFor(() => r.receiver.requests === 2, "second attempt");
    await r.settle();
    await r.advance(5_000);
    await r.receiver.waitFor(() => r.receiver.accepted.length === 1, "third attempt");
    const all = r.receiver.arrivals;
    expect(all.map((a) => a.id)).toEqual([ev!.id, ev!.id, ev!.id]);
    expect(all.every((a) => a.verified)).toBe(true);
    const ts = all.map((a) => a.timestamp);
    expect(ts[1]! - ts[0]!).toBeGreaterThanOrEqual(5);
    expect(ts[2]! - ts[1]!).toBeGreaterThanOrEqual(5);
    expect(new Set(all.map((a) => a.headers["webhook-signature"])).size).toBe(3);
    expect(all[0]!.headers["x-hub-signature-256"]).toMatch(/^sha256=[0-9a-f]{64}$/);
    expect(all[0]!.headers["user-agent"]).toMatch(/^edgehook\//);
    // The body is the stored bytes, unchanged across attempts.
    expect(new Set(all.map((a) => a.body)).size).toBe(1);
  });

  it("stop(grace) aborts requests still in flight and leaves them pending", async () => {
    const r = await rig({ response_timeout: "30s" });
    r.receiver.answer = () => ({ kind: "hang" });
    const [ev] = await r.commit("s1", 1);
    r.dispatcher.start();
    await r.receiver.waitFor(() => r.receiver.arrivals.length === 1, "hung request");
    const t0 = Date.now();
    const stopped = r.dispatcher.stop(2_000);
    r.clock.advance(2_000);
    await stopped;
    expect(Date.now() - t0).toBeLessThan(1_000);
    expect(row(r, ev!.id)).toMatchObject({ state: "pending", attempts: 0 });
  });

  it("rate_limit spaces the drain on the clock", async () => {
    const r = await rig({ rate_limit: "2/s", concurrency: 8 });
    const committed: NewEvent[] = [];
    for (const s of ["a", "b", "c", "d", "e", "f"]) committed.push(...(await r.commit(s, 1)));
    r.dispatcher.start();
    await r.receiver.waitFor(() => r.receiver.accepted.length === 2, "burst of 2");
    await r.settle();
    expect(r.receiver.requests).toBe(2);
    await r.advance(499);
    expect(r.receiver.requests).toBe(2);
    await r.advance(1);
    await r.receiver.waitFor(() => r.receiver.accepted.length === 3, "one more after 500 ms");
    await r.advance(1_500);
    await r.receiver.waitFor(() => r.receiver.accepted.length === 6, "the rest");
  });

  it("holds webhooks while the system clock is known unsynchronised, and sends them once it is", async () => {
    let synced = false;
    const r = await rig({}, { clockSynced: () => synced });
    const [ev] = await r.commit("s1", 1);
    r.dispatcher.start();
    await r.settle();
    await r.advance(60_000);
    expect(r.receiver.requests).toBe(0);
    expect(r.dispatcher.states().ops).toMatchObject({ state: "down", detail: "clock not synchronised" });
    synced = true;
    await r.advance(5_000);
    await r.receiver.waitFor(() => r.receiver.accepted.length === 1, "held webhook");
    await r.settle();
    expect(row(r, ev!.id).state).toBe("delivered");
    expect(r.dispatcher.states().ops?.state).toBe("up");
  });

  it("logs state changes with the fix for a 410, repeated failures at a slow cadence, and never a secret", async () => {
    const logs: Record<string, unknown>[] = [];
    const r = await rig({ hub_secret: "gh-hub-secret", headers: { authorization: "Bearer tok-123" } }, { logs });
    // A balancer with one dead backend: every other request is reset after it was sent.
    let n = 0;
    r.receiver.answer = () => (n++ % 2 === 0 ? { kind: "reset" } : { kind: "accept" });
    await r.commit("s1", 10);
    r.dispatcher.start();
    for (let i = 0; i < 40 && r.receiver.accepted.length < 10; i++) {
      await r.settle();
      await r.advance(1_000);
    }
    expect(r.receiver.accepted).toHaveLength(10);
    const msgs = logs.map((l) => String(l.msg));
    // Each reset is followed by a resend that gets through: the destination is never down,
    // and ten resets log one line, not ten.
    expect(msgs.filter((m) => m.includes("unreachable")).length).toBe(0);
    expect(msgs.filter((m) => m.includes("closed the connection before answering")).length).toBe(1);

    r.receiver.answer = () => ({ kind: "status", status: 410 });
    await r.commit("s2", 1);
    await r.receiver.waitFor(() => r.receiver.requests === n + 1, "410");
    await r.settle();
    const gone = logs.find((l) => String(l.msg).includes("410"));
    expect(gone?.level).toBe("error");
    expect(String(gone?.msg)).toContain("edgehook destination enable ops");

    const text = JSON.stringify(logs);
    for (const secret of [WEBHOOK_SECRET, WEBHOOK_SECRET.slice(6), "gh-hub-secret", "tok-123"])
      expect(text).not.toContain(secret);
    for (const a of r.receiver.arrivals) {
      expect(text).not.toContain(String(a.headers["webhook-signature"]).slice(3));
      expect(text).not.toContain(String(a.headers["x-hub-signature-256"]));
    }
  });
});
