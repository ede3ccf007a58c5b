import { join } from "node:path";
import { afterEach, expect, it } from "vitest";
import { dispatcherRig, testDestinations, testEvent } from "../support/dispatcher-rig.js";
import { Receiver } from "../support/receiver.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const destinations = testDestinations;

it("follows reloads: moved url, added and removed destinations; a bad reload changes nothing", async () => {
  const oldR = new Receiver(WEBHOOK_SECRET);
  const newR = new Receiver(WEBHOOK_SECRET);
  const other = new Receiver(WEBHOOK_SECRET);
  for (const r of [oldR, newR, other]) await r.start();
  cleanups.push(async () => {
    for (const r of [oldR, newR, other]) await r.stop();
  });
  const {
    dir,
    clock,
    dispatcher: d,
    ...rig
  } = dispatcherRig({
    destinations: destinations({ ops: { url: oldR.url } }),
    cleanups,
    prefix: "edgehook-reload-",
  });
  const send = async (dests: string[]) => {
    const event = plainEvent(clock, "s", dests, {});
    await rig.commit([event]);
    return event.id;
  };
  d.start();
  const first = await send(["ops"]);
  await oldR.waitFor(() => oldR.accepted.length === 1, "first event at the old url");
  expect(oldR.accepted[0]?.id).toBe(first);

  // A CA file that cannot be read: the reload is refused and the old destinations keep running.
  expect(() =>
    d.reconfigure(
      destinations({ ops: { url: newR.url }, extra: { url: other.url, tls: { ca_file: join(dir, "missing.pem") } } }),
    ),
  ).toThrow(/ca_file/);
  expect(Object.keys(d.states())).toEqual(["ops"]);
  await send(["ops"]);
  await oldR.waitFor(() => oldR.accepted.length === 2, "second event still at the old url");

  d.reconfigure(destinations({ ops: { url: newR.url }, extra: { url: other.url } }));
  expect(Object.keys(d.states()).sort()).toEqual(["extra", "ops"]);
  const third = await send(["ops", "extra"]);
  await newR.waitFor(() => newR.accepted.length === 1, "third event at the new url");
  await other.waitFor(() => other.accepted.length === 1, "third event at the added destination");
  expect(newR.accepted[0]?.id).toBe(third);
  expect(oldR.accepted).toHaveLength(2);

  d.reconfigure(destinations({ extra: { url: other.url } }));
  expect(Object.keys(d.states())).toEqual(["extra"]);
  await send(["ops", "extra"]);
  await other.waitFor(() => other.accepted.length === 2, "fourth event at the remaining destination");
  await new Promise((r) => setImmediate(r));
  await d.whenIdle();
  expect(newR.accepted).toHaveLength(1);
});

/** An outbox, a FakeClock dispatcher for one destination `ops` at `url`, and a commit helper. */
async function rig(url: string, extra: Record<string, unknown> = {}) {
  const base = dispatcherRig({
    destinations: destinations({ ops: { url, ...extra } }),
    cleanups,
    prefix: "edgehook-reload-",
    options: { random: () => 0.5 },
  });
  const commit = async (series: string) => {
    const event = plainEvent(base.clock, series, ["ops"], { series });
    await base.commit([event]);
    return event.id;
  };
  return { clock: base.clock, outbox: base.outbox, d: base.dispatcher, commit, settle: base.settle };
}

/** A `test` event of `series` for `dests`. */
function plainEvent(clock: { now(): number }, series: string, dests: string[], data: Record<string, unknown>) {
  return testEvent(clock, {
    series,
    type: "test",
    rule: "r",
    severity: "info",
    priority: 0,
    destinations: dests,
    data,
  });
}

it("a reload that fixes the url of a destination that is down sends its backlog at once", async () => {
  const fixed = new Receiver(WEBHOOK_SECRET);
  await fixed.start();
  const gone = new Receiver(WEBHOOK_SECRET);
  await gone.start();
  await gone.stop(); // its port now refuses connections
  cleanups.push(() => fixed.stop());
  const r = await rig(gone.url);
  r.d.start();
  const ids = [await r.commit("a"), await r.commit("b"), await r.commit("c")];
  await r.settle();
  // Down for ten minutes (one probe a second).
  for (let t = 0; t < 600; t++) {
    r.clock.advance(1_000);
    await r.settle();
  }
  expect(r.d.states().ops?.state).toBe("down");

  r.d.reconfigure(destinations({ ops: { url: fixed.url } }));
  expect(r.d.states().ops?.state).toBe("up");
  // Logical time stands still: nothing waits for a probe.
  await fixed.waitFor(() => fixed.accepted.length === 3, "the backlog at the fixed url");
  expect(fixed.accepted.map((a) => a.id).sort()).toEqual([...ids].sort());
});

it("a reload that changes the url makes deliveries waiting for a retry due at once, keeping their attempts", async () => {
  const wrong = new Receiver(WEBHOOK_SECRET);
  const fixed = new Receiver(WEBHOOK_SECRET);
  await wrong.start();
  await fixed.start();
  cleanups.push(() => wrong.stop());
  cleanups.push(() => fixed.stop());
  // The old url answers 503 and asks for an hour's pause.
  wrong.answer = () => ({ kind: "status", status: 503, headers: { "retry-after": "3600" } });
  const r = await rig(wrong.url);
  r.d.start();
  const id = await r.commit("a");
  await wrong.waitFor(() => wrong.requests === 1, "the 503");
  await r.settle();
  r.clock.advance(60_000);
  await r.settle();
  expect(r.outbox.show(id)?.deliveries[0]).toMatchObject({ state: "pending", attempts: 1 });

  // A reload that changes nothing about where it goes leaves the backoff alone.
  r.d.reconfigure(destinations({ ops: { url: wrong.url, max_attempts: 9 } }));
  await r.settle();
  expect(wrong.requests).toBe(1);

  r.d.reconfigure(destinations({ ops: { url: fixed.url } }));
  await fixed.waitFor(() => fixed.accepted.length === 1, "the retry at the fixed url, without waiting the hour");
  await r.settle();
  expect(r.outbox.show(id)?.deliveries[0]).toMatchObject({ state: "delivered", attempts: 2 });
});

it("a request still in flight to the old url when a reload moves the destination spends nothing: it goes to the new url", async () => {
  const old = new Receiver(WEBHOOK_SECRET);
  const fixed = new Receiver(WEBHOOK_SECRET);
  await old.start();
  await fixed.start();
  cleanups.push(() => old.stop());
  cleanups.push(() => fixed.stop());
  old.answer = () => ({ kind: "hang" });
  const r = await rig(old.url, { response_timeout: "1s", retry_schedule: ["1h"] });
  r.d.start();
  const id = await r.commit("a");
  await old.waitFor(() => old.arrivals.length === 1, "the request to the old url");
  r.d.reconfigure(destinations({ ops: { url: fixed.url, response_timeout: "1s", retry_schedule: ["1h"] } }));
  // The old request times out later; that says nothing about the new url.
  await fixed.waitFor(() => fixed.accepted.length === 1, "the webhook at the new url", 10_000);
  await r.settle();
  expect(r.outbox.show(id)?.deliveries[0]).toMatchObject({ state: "delivered", attempts: 1 });
  expect(r.d.states().ops?.state).toBe("up");
});
