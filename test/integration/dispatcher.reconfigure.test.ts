/**
 * Config reload while running: a moved receiver, an added and a removed destination, and a
 * bad reload (unreadable CA file) that leaves the running destinations untouched.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, expect, it } from "vitest";
import { configSchema, type DestinationConfig } from "../../src/config/schema.js";
import { Dispatcher } from "../../src/delivery/dispatcher.js";
import { newEventId } from "../../src/events.js";
import { silentLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import { Outbox } from "../../src/store/outbox.js";
import { FakeClock } from "../support/fake-clock.js";
import { Receiver } from "../support/receiver.js";

const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function destinations(d: Record<string, Record<string, unknown>>): Record<string, DestinationConfig> {
  const withSecret = Object.fromEntries(Object.entries(d).map(([k, v]) => [k, { secret: SECRET, ...v }]));
  return configSchema.parse({ version: 1, agent: { id: "t" }, destinations: withSecret }).destinations;
}

it("follows reloads: moved url, added and removed destinations; a bad reload changes nothing", async () => {
  const dir = mkdtempSync(join(tmpdir(), "edgehook-reload-"));
  const clock = new FakeClock(Date.now());
  const metrics = new Metrics();
  const outbox = new Outbox({
    file: join(dir, "outbox.db"),
    limits: configSchema.parse({ version: 1, agent: { id: "t" } }).outbox,
    clock,
    logger: silentLogger(),
    metrics,
  });
  outbox.open();
  const oldR = new Receiver(SECRET);
  const newR = new Receiver(SECRET);
  const other = new Receiver(SECRET);
  for (const r of [oldR, newR, other]) await r.start();
  const d = new Dispatcher({
    outbox,
    destinations: destinations({ ops: { url: oldR.url } }),
    clock,
    logger: silentLogger(),
    metrics,
    env: {},
  });
  cleanups.push(async () => {
    await d.stop(0);
    for (const r of [oldR, newR, other]) await r.stop();
    outbox.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const send = async (dests: string[]) => {
    const id = newEventId();
    const done = outbox.commit({
      events: [
        {
          id,
          type: "test",
          rule: "r",
          series: "s",
          severity: "info",
          priority: 0,
          destinations: dests,
          createdAt: clock.now(),
          body: { type: "test", timestamp: new Date().toISOString(), data: {} },
        },
      ],
      states: [],
      removedStates: [],
    });
    outbox.flush();
    await done;
    d.wake();
    return id;
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
