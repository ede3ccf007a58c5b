import Database from "better-sqlite3";
import { afterEach, describe, expect, it } from "vitest";
import { configSchema, type DestinationConfig } from "../../src/config/schema.js";
import { batchId } from "../../src/delivery/render.js";
import type { NewEvent } from "../../src/events.js";
import { bodyCrc } from "../../src/store/body-check.js";
import { dispatcherRig, testDestination, testEvent } from "../support/dispatcher-rig.js";
import { type Received, Receiver } from "../support/receiver.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

interface BatchBody {
  type: string;
  data: { events: { id: string; type: string; data: { series: string; n: number } }[] };
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function rig(extra: Record<string, unknown>, path = "/hooks", inflate = false) {
  const receiver = new Receiver(WEBHOOK_SECRET, { inflate });
  await receiver.start();
  cleanups.push(() => receiver.stop());
  const dest = testDestination(`http://127.0.0.1:${receiver.port}${path}`, extra);
  const base = dispatcherRig({
    destinations: { ops: dest },
    cleanups,
    prefix: "edgehook-batch-",
    options: { random: () => 0.5 },
  });
  const { clock, outbox, file } = base;
  let seq = 0;
  const r = {
    ...base,
    receiver,
    /** One event per series named, committed together. */
    async commit(series: string[], priority = 10): Promise<NewEvent[]> {
      const events = series.map((s) => testEvent(clock, { series: s, priority, data: { series: s, n: seq++ } }));
      await base.commit(events);
      return events;
    },
    state(eventId: string) {
      return outbox.show(eventId)?.deliveries[0];
    },
    /**
     * Stores a body that cannot be rendered (another connection, WAL), with its checksum:
     * intact on disk, so the outbox hands it out and the dispatcher must find it unsendable
     * (a body that fails its checksum is disk damage, which the outbox never hands out).
     */
    corrupt(eventId: string, bytes: Buffer) {
      const db = new Database(file);
      db.prepare("UPDATE events SET body = ?, body_crc = ? WHERE id = ?").run(bytes, bodyCrc(bytes), eventId);
      db.close();
    },
  };
  return r;
}

const idsOf = (rec: Received) => (rec.json as BatchBody).data.events.map((e) => e.id);

describe("batching in the dispatcher", () => {
  it("waits up to max_wait for a batch to fill, sends a full one at once, each event once", async () => {
    const r = await rig({ batch: { max_events: 5, max_wait: "10s" } });
    r.dispatcher.start();
    const first = await r.commit(["a", "b", "c"]);
    await r.settle();
    // Waiting is a timer, not polling: the outbox is not read again while the batch fills.
    const next = r.outbox.next.bind(r.outbox);
    let reads = 0;
    r.outbox.next = (...args) => {
      reads++;
      return next(...args);
    };
    for (let s = 0; s < 9; s++) await r.advance(1_000);
    expect(reads).toBe(0);
    expect(r.receiver.requests).toBe(0); // still filling
    const more = await r.commit(["d", "e", "f"]);
    await r.receiver.waitFor(() => r.receiver.accepted.length === 1, "a full batch");
    await r.settle();
    const full = r.receiver.accepted[0] as Received;
    expect(full.verified).toBe(true);
    expect(full.json).toMatchObject({ type: "batch" });
    expect(idsOf(full)).toEqual([...first, ...more].slice(0, 5).map((e) => e.id));
    expect(full.id).toBe(batchId(idsOf(full)));
    // The sixth waits for its own max_wait, measured from its creation.
    await r.advance(9_999);
    expect(r.receiver.requests).toBe(1);
    await r.advance(1);
    await r.receiver.waitFor(() => r.receiver.accepted.length === 2, "the partial batch after max_wait");
    expect(idsOf(r.receiver.accepted[1] as Received)).toEqual([more[2]?.id]);
    await r.settle();
    for (const e of [...first, ...more]) expect(r.state(e.id)?.state).toBe("delivered");
    expect(r.counted("2xx")).toBe(6);
  });

  it("one head per series per batch; a series' next event waits until its head is settled", async () => {
    const r = await rig({ batch: { max_events: 10, max_wait: "0s" } });
    const a1 = await r.commit(["a", "b"]);
    const a2 = await r.commit(["a", "b"]);
    r.dispatcher.start();
    await r.receiver.waitFor(() => r.receiver.accepted.length === 2, "two batches");
    const [one, two] = r.receiver.accepted.map(idsOf);
    expect(one).toEqual(a1.map((e) => e.id));
    expect(two).toEqual(a2.map((e) => e.id));
  });

  it("a failed batch is retried as the same batch (same members, same webhook-id), each member settled", async () => {
    // max_wait does not hold a retry back: it goes on the retry schedule.
    const r = await rig({ batch: { max_events: 4, max_wait: "30s" }, retry_schedule: ["5s"] });
    let n = 0;
    r.receiver.answer = () => (n++ === 0 ? { kind: "status", status: 503 } : { kind: "accept" });
    const events = await r.commit(["a", "b", "c"]);
    r.dispatcher.start();
    await r.advance(30_000); // a partial batch: sent after max_wait
    await r.receiver.waitFor(() => r.receiver.requests === 1, "first attempt");
    await r.settle();
    for (const e of events) expect(r.state(e.id)).toMatchObject({ state: "pending", attempts: 1, lastStatus: 503 });
    await r.advance(4_999);
    expect(r.receiver.requests).toBe(1);
    await r.advance(1);
    await r.receiver.waitFor(() => r.receiver.accepted.length === 1, "the retry");
    await r.settle();
    const [failed, retried] = r.receiver.arrivals;
    expect(retried?.id).toBe(failed?.id);
    expect(idsOf(retried as Received)).toEqual(idsOf(failed as Received));
    expect(retried?.timestamp).toBeGreaterThan(failed?.timestamp ?? 0); // signed afresh
    expect(retried?.verified).toBe(true);
    for (const e of events) expect(r.state(e.id)).toMatchObject({ state: "delivered", attempts: 2 });
  });

  it("a member that cannot be rendered dies alone; the rest of the batch goes out", async () => {
    const r = await rig({ batch: { max_events: 3, max_wait: "0s" } });
    const events = await r.commit(["a", "b", "c"]);
    r.corrupt(events[1]?.id as string, Buffer.from([0xff, 0x00, 0x7b]));
    r.dispatcher.start();
    await r.receiver.waitFor(() => r.receiver.accepted.length === 1, "the good members");
    await r.settle();
    expect(idsOf(r.receiver.accepted[0] as Received)).toEqual([events[0]?.id, events[2]?.id]);
    expect(r.state(events[1]?.id as string)).toMatchObject({ state: "dead" });
    expect(r.state(events[1]?.id as string)?.reason).toMatch(/cannot build the request: .*JSON/);
    expect(r.dispatcher.states().ops?.state).toBe("up");
    expect(r.counted("unsendable")).toBe(1);
  });
});

describe("rendered requests", () => {
  it("a reload that changes only the URL path sends to the new path", async () => {
    const r = await rig({}, "/old");
    await r.commit(["a"]);
    r.dispatcher.start();
    await r.receiver.waitFor(() => r.receiver.accepted.length === 1, "the first webhook");
    await r.settle();
    const cfg = configSchema.parse({
      version: 1,
      agent: { id: "test" },
      destinations: { ops: { url: `http://127.0.0.1:${r.receiver.port}/new?v=2`, secret: WEBHOOK_SECRET } },
    });
    r.dispatcher.reconfigure(cfg.destinations as Record<string, DestinationConfig>);
    await r.commit(["b"]);
    await r.receiver.waitFor(() => r.receiver.accepted.length === 2, "the second webhook");
    expect(r.receiver.accepted.map((a) => a.path)).toEqual(["/old", "/new?v=2"]);
  });

  it("a large batch is gzipped, and verifies once inflated", async () => {
    const r = await rig({ batch: { max_events: 20, max_wait: "0s" }, gzip_above: "1KB" }, "/hooks", true);
    const events = await r.commit(Array.from({ length: 20 }, (_, i) => `series-${i}`));
    r.dispatcher.start();
    await r.receiver.waitFor(() => r.receiver.accepted.length === 1, "one gzipped batch");
    const got = r.receiver.accepted[0] as Received;
    expect(got.headers["content-encoding"]).toBe("gzip");
    expect(Number(got.headers["content-length"])).toBeLessThan(got.body.length);
    expect(got.verified).toBe(true);
    expect(idsOf(got)).toEqual(events.map((e) => e.id));
  });

  it("ntfy posts to the server root under the destination's path prefix, topic in the body", async () => {
    const r = await rig({ preset: "ntfy" }, "/ntfy/cellar-alerts");
    const [ev] = await r.commit(["a"]);
    r.dispatcher.start();
    await r.receiver.waitFor(() => r.receiver.accepted.length === 1, "the ntfy message");
    const got = r.receiver.accepted[0] as Received;
    expect(got.path).toBe("/ntfy/");
    expect(got.json).toMatchObject({ topic: "cellar-alerts", title: expect.stringContaining("WARNING") });
    expect(got.verified).toBe(true); // a secret was given, so it is signed over the rendered body
    await r.settle();
    expect(r.state(ev?.id as string)?.state).toBe("delivered");
  });
});

describe("unbuildable requests", () => {
  it("a request undici refuses (a header value with a newline) is dead with the reason, not offline", async () => {
    const r = await rig({ headers: { "X-Site": "north\nsouth" } });
    const [ev] = await r.commit(["a"]);
    r.dispatcher.start();
    await r.settle();
    expect(r.receiver.requests).toBe(0);
    expect(r.state(ev?.id as string)).toMatchObject({ state: "dead" });
    expect(r.state(ev?.id as string)?.reason).toMatch(/^cannot build the request: invalid x-site header/);
    expect(r.dispatcher.states().ops?.state).toBe("up");
    expect(r.counted("offline")).toBe(0);
    expect(r.counted("unsendable")).toBe(1);
  });

  it("a body a preset cannot render is dead at once, the destination stays up, the series moves on", async () => {
    const r = await rig({ preset: "slack" });
    const [bad] = await r.commit(["a"]);
    const [next] = await r.commit(["a"]);
    r.corrupt(bad?.id as string, Buffer.from("not json {"));
    r.dispatcher.start();
    await r.receiver.waitFor(() => r.receiver.accepted.length === 1, "the next event of the series");
    await r.settle();
    expect(r.state(bad?.id as string)).toMatchObject({ state: "dead", attempts: 1 });
    expect(r.state(bad?.id as string)?.reason).toBe("cannot build the request: the stored body is not JSON");
    expect(r.receiver.requests).toBe(1); // nothing was sent for the bad one
    expect((r.receiver.accepted[0] as Received).json).toMatchObject({ text: expect.stringContaining("WARNING") });
    expect(r.state(next?.id as string)?.state).toBe("delivered");
    expect(r.dispatcher.states().ops?.state).toBe("up");
  });
});

describe("batch membership across retries", () => {
  it("a retried batch keeps its members and webhook-id while a newer event waits for its own batch", async () => {
    const r = await rig({ batch: { max_events: 4, max_wait: "30s" }, retry_schedule: ["5s"] });
    let n = 0;
    r.receiver.answer = () => (n++ === 0 ? { kind: "status", status: 500 } : { kind: "accept" });
    const first = await r.commit(["a", "b", "c"]);
    r.dispatcher.start();
    await r.advance(30_000);
    await r.receiver.waitFor(() => r.receiver.requests === 1, "the first batch");
    await r.settle();
    await r.advance(2_000);
    const [late] = await r.commit(["d"]); // would fill the batch to 4 if it were formed again
    await r.settle();
    await r.advance(3_000); // the retry is due 5 s after the failure
    await r.receiver.waitFor(() => r.receiver.accepted.length === 1, "the retried batch");
    const [failed, retried] = r.receiver.arrivals as [Received, Received];
    expect(retried.id).toBe(failed.id);
    expect(idsOf(retried)).toEqual(first.map((e) => e.id));
    // The newer event keeps waiting for its own max_wait.
    await r.advance(26_999);
    expect(r.receiver.requests).toBe(2);
    await r.advance(1);
    await r.receiver.waitFor(() => r.receiver.accepted.length === 2, "the newer event's batch");
    expect(idsOf(r.receiver.accepted[1] as Received)).toEqual([late?.id]);
  });

  it("a retry comes on time even while a partial batch is waiting to fill", async () => {
    const r = await rig({ batch: { max_events: 3, max_wait: "30s" }, retry_schedule: ["5s"] });
    let n = 0;
    r.receiver.answer = () => (n++ === 0 ? { kind: "status", status: 500 } : { kind: "accept" });
    r.dispatcher.start();
    const [waiting] = await r.commit(["d"]); // starts filling a batch (due to go at 30 s)
    await r.settle();
    await r.advance(1_000);
    const urgent = await r.commit(["a", "b", "c"], 20); // a full batch, ahead in the queue
    await r.receiver.waitFor(() => r.receiver.requests === 1, "the full batch");
    await r.settle();
    await r.advance(4_999);
    expect(r.receiver.requests).toBe(1);
    await r.advance(1);
    await r.receiver.waitFor(() => r.receiver.accepted.length === 1, "the retry 5 s after the failure");
    expect(idsOf(r.receiver.accepted[0] as Received)).toEqual(urgent.map((e) => e.id));
    await r.advance(24_000);
    await r.receiver.waitFor(() => r.receiver.accepted.length === 2, "the partial batch at 30 s");
    expect(idsOf(r.receiver.accepted[1] as Received)).toEqual([waiting?.id]);
  });
});
