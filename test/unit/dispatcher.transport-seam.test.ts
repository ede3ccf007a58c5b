/**
 * The Transport seam (src/delivery/transport.ts) as a transport author relies on it, with the
 * in-memory outbox and a scripted transport: prepare is called once per attempt with that
 * attempt's time (signing per attempt), a connect-stage error is offline and spends nothing,
 * a request-stage error spends an attempt, a prepare that throws is unsendable, answers are
 * kept only for onAttempt, and a reload that changes the connection closes the old transport.
 */
import { describe, expect, it } from "vitest";
import { configSchema, type DestinationConfig } from "../../src/config/schema.js";
import { Dispatcher } from "../../src/delivery/dispatcher.js";
import type { Outcome } from "../../src/delivery/policy.js";
import type { Attempt, SendOptions, Transport, TransportFactory } from "../../src/delivery/transport.js";
import { transportFor } from "../../src/delivery/transports.js";
import { type NewEvent, newEventId } from "../../src/events.js";
import { silentLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import type { Delivery } from "../../src/store/types.js";
import { FakeClock } from "../support/fake-clock.js";
import { MemoryOutbox } from "../support/memory-outbox.js";

interface Sent {
  attempt: Attempt;
  options: SendOptions;
}

/** Answers each send with the next scripted outcome (200 once the script is used up). */
class ScriptedTransport implements Transport {
  readonly prepared: { ids: string[]; nowSec: number }[] = [];
  readonly sent: Sent[] = [];
  closed = 0;
  destroyed = 0;
  constructor(
    readonly script: Outcome[],
    readonly refuse: (d: Delivery) => boolean = () => false,
  ) {}
  prepare(deliveries: readonly Delivery[], _config: DestinationConfig, nowSec: number): Attempt {
    const first = deliveries[0];
    if (first === undefined) throw new Error("no delivery");
    if (deliveries.some(this.refuse)) throw new Error("topic template does not render");
    this.prepared.push({ ids: deliveries.map((d) => d.eventId), nowSec });
    return {
      id: first.eventId,
      timestamp: nowSec,
      deliveries,
      body: first.body,
      headers: { "webhook-id": first.eventId, "webhook-timestamp": String(nowSec) },
      target: "edgehook/test",
    };
  }
  send(attempt: Attempt, options: SendOptions): Promise<Outcome> {
    this.sent.push({ attempt, options });
    const next = this.script.shift() ?? { kind: "response", status: 200 };
    if (options.keepAnswer && next.kind === "response") {
      return Promise.resolve({ ...next, answer: { headers: { "x-ack": "1" }, body: Buffer.from("acked") } });
    }
    return Promise.resolve(next);
  }
  close(): Promise<void> {
    this.closed++;
    return Promise.resolve();
  }
  destroy(): Promise<void> {
    this.destroyed++;
    return Promise.resolve();
  }
}

function destinations(extra: Record<string, unknown> = {}): Record<string, DestinationConfig> {
  return configSchema.parse({
    version: 1,
    agent: { id: "t" },
    destinations: { ops: { url: "http://127.0.0.1:9/hooks", max_attempts: 3, retry_schedule: ["1s"], ...extra } },
  }).destinations;
}

function rig(transports: ScriptedTransport[], extra: Record<string, unknown> = {}, onAttempt?: (i: unknown) => void) {
  const clock = new FakeClock(Date.parse("2026-03-01T12:00:00.500Z"));
  const outbox = new MemoryOutbox(() => clock.now());
  const created: ScriptedTransport[] = [];
  const factory: TransportFactory = {
    schemes: ["http:"],
    connectionKey: (c) => JSON.stringify([c.url, c.connect_timeout]),
    create: () => {
      const t = transports.shift();
      if (t === undefined) throw new Error("no more transports");
      created.push(t);
      return t;
    },
  };
  const dispatcher = new Dispatcher({
    outbox,
    destinations: destinations(extra),
    clock,
    logger: silentLogger(),
    metrics: new Metrics(),
    random: () => 0.5,
    env: {},
    transports: new Map([["http:", factory]]),
    settleDelayMs: 0,
    ...(onAttempt ? { onAttempt } : {}),
  });
  const settle = async () => {
    await new Promise((r) => setImmediate(r));
    await dispatcher.whenIdle();
  };
  const commit = async (series = "s") => {
    const createdAt = clock.now();
    const event: NewEvent = {
      id: newEventId(createdAt),
      type: "alert.firing",
      rule: "hot",
      series,
      severity: "warning",
      priority: 10,
      destinations: ["ops"],
      createdAt,
      body: { type: "alert.firing", timestamp: new Date(createdAt).toISOString(), data: { series } },
    };
    outbox.enqueue([event]);
    dispatcher.wake();
    await settle();
    return event.id;
  };
  return { clock, outbox, dispatcher, created, settle, commit };
}

describe("the Transport seam", () => {
  it("prepares every attempt afresh at its own time, with the same id; connect is offline, request spends", async () => {
    const t = new ScriptedTransport([
      { kind: "error", error: new Error("broker unreachable"), stage: "connect" },
      { kind: "error", error: Object.assign(new Error("no PUBACK in time"), { code: "ETIMEDOUT" }), stage: "request" },
    ]);
    const r = rig([t]);
    r.dispatcher.start();
    const id = await r.commit();
    expect(r.dispatcher.states().ops?.state).toBe("down");
    expect(r.outbox.deliveries()[0]).toMatchObject({ state: "pending", attempts: 0 });

    r.clock.advance(1_000); // the probe
    await r.settle();
    expect(r.dispatcher.states().ops?.state).toBe("up");
    expect(r.outbox.deliveries()[0]).toMatchObject({ state: "pending", attempts: 1 });

    r.clock.advance(5_000); // the retry
    await r.settle();
    expect(r.outbox.deliveries()[0]).toMatchObject({ state: "delivered", attempts: 2 });
    expect(t.prepared.map((p) => p.ids)).toEqual([[id], [id], [id]]);
    const times = t.prepared.map((p) => p.nowSec);
    expect(times[1]).toBeGreaterThan(times[0] ?? Number.POSITIVE_INFINITY);
    expect(times[2]).toBeGreaterThan(times[1] ?? Number.POSITIVE_INFINITY);
    expect(t.sent.map((s) => s.attempt.headers["webhook-timestamp"])).toEqual(times.map(String));
    // No onAttempt hook: the transport is not asked to keep answers.
    expect(t.sent.every((s) => s.options.keepAnswer === false)).toBe(true);
    await r.dispatcher.stop(0);
    expect(t.destroyed).toBe(1);
  });

  it("a prepare that throws makes that delivery dead, without a send; the next event goes on", async () => {
    const infos: unknown[] = [];
    const t = new ScriptedTransport([], (d) => d.series === "bad");
    const r = rig([t], {}, (i) => infos.push(i));
    r.dispatcher.start();
    const bad = await r.commit("bad");
    const good = await r.commit("good");
    const rows = r.outbox.deliveries();
    expect(rows.find((d) => d.eventId === bad)).toMatchObject({
      state: "dead",
      reason: "cannot build the request: topic template does not render",
    });
    expect(rows.find((d) => d.eventId === good)?.state).toBe("delivered");
    expect(t.sent.map((s) => s.attempt.id)).toEqual([good]);
    expect(infos).toEqual([
      {
        eventId: bad,
        destination: "ops",
        code: "EDGEHOOK_REQUEST_UNSENDABLE",
        error: "cannot build the request: topic template does not render",
      },
      { eventId: good, destination: "ops", status: 200, headers: { "x-ack": "1" }, body: Buffer.from("acked") },
    ]);
    await r.dispatcher.stop(0);
  });

  it("a reload that changes the connection gets a new transport and closes the old one", async () => {
    const first = new ScriptedTransport([]);
    const second = new ScriptedTransport([]);
    const r = rig([first, second]);
    r.dispatcher.start();
    await r.commit();
    r.dispatcher.reconfigure(destinations({ retry_schedule: ["2s"] })); // same connection
    expect(r.created).toEqual([first]);
    r.dispatcher.reconfigure(destinations({ connect_timeout: "3s" }));
    expect(r.created).toEqual([first, second]);
    expect(first.closed).toBe(1);
    await r.commit();
    expect(second.sent).toHaveLength(1);
    await r.dispatcher.stop(0);
    expect(second.destroyed).toBe(1);
  });

  it("a url scheme no transport serves is a config error naming it and the schemes that are served", () => {
    expect(transportFor("https://example.org/x").schemes).toEqual(["http:", "https:"]);
    expect(() => transportFor("ftp://files.example.org/x")).toThrow(
      /url scheme ftp:\/\/ is not supported \(use .*https:\/\//,
    );
  });
});
