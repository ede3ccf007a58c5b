/**
 * What the dispatcher tests share: a real SQLite outbox in a temp dir, a FakeClock started at
 * the real time (so receivers still accept the signature timestamps), a Dispatcher over
 * them, and helpers to commit events, let passes finish and move logical time. Each test
 * file keeps its own `rig()` in the shape its tests read best, built on this.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { configSchema, type DestinationConfig } from "../../src/config/schema.js";
import { Dispatcher, type DispatcherOptions } from "../../src/delivery/dispatcher.js";
import { type NewEvent, newEventId } from "../../src/events.js";
import { silentLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import { Outbox } from "../../src/store/outbox.js";
import { FakeClock } from "./fake-clock.js";
import { WEBHOOK_SECRET } from "./secrets.js";

export type Cleanups = (() => Promise<void> | void)[];

/** Destinations as the config loads them (defaults applied), each signed with WEBHOOK_SECRET unless it says otherwise. */
export function testDestinations(d: Record<string, Record<string, unknown>>): Record<string, DestinationConfig> {
  const withSecret = Object.fromEntries(Object.entries(d).map(([k, v]) => [k, { secret: WEBHOOK_SECRET, ...v }]));
  return configSchema.parse({ version: 1, agent: { id: "test" }, destinations: withSecret }).destinations;
}

/** One destination `ops` at `url`. */
export function testDestination(url: string, extra: Record<string, unknown> = {}): DestinationConfig {
  const ops = testDestinations({ ops: { url, ...extra } }).ops;
  if (ops === undefined) throw new Error("no destination ops");
  return ops;
}

/** An event for `destinations` created now on `clock`. */
export function testEvent(
  clock: { now(): number },
  fields: Partial<NewEvent> & { series: string; data?: Record<string, unknown> },
): NewEvent {
  const createdAt = clock.now();
  const { data, ...rest } = fields;
  const type = rest.type ?? "alert.firing";
  return {
    id: newEventId(createdAt),
    type,
    rule: "hot",
    severity: "warning",
    priority: 10,
    destinations: ["ops"],
    createdAt,
    body: { type, timestamp: new Date(createdAt).toISOString(), data: data ?? { series: fields.series } },
    ...rest,
  };
}

export interface DispatcherRig {
  dir: string;
  file: string;
  clock: FakeClock;
  metrics: Metrics;
  outbox: Outbox;
  dispatcher: Dispatcher;
  /** Commits the events (group commit flushed at once) and wakes the dispatcher. */
  commit(events: NewEvent[]): Promise<void>;
  /** Lets every pass, request and write finish (logical time does not move). */
  settle(): Promise<void>;
  /** Moves logical time and lets what became due run. */
  advance(ms: number): Promise<void>;
  /** `edgehook_deliveries_total` summed over destinations for one class. */
  counted(cls: string): number;
}

export interface DispatcherRigOptions {
  destinations: Readonly<Record<string, DestinationConfig>>;
  /** The test file's list, run in reverse after each test. */
  cleanups: Cleanups;
  /** Temp dir name prefix. */
  prefix?: string;
  /** More dispatcher options (random, clockSynced, logger, settleDelayMs, env, ...). */
  options?: Partial<DispatcherOptions>;
}

export function dispatcherRig(o: DispatcherRigOptions): DispatcherRig {
  const dir = mkdtempSync(join(tmpdir(), o.prefix ?? "edgehook-disp-"));
  const file = join(dir, "outbox.db");
  const clock = new FakeClock(Date.now());
  const metrics = new Metrics();
  const outbox = new Outbox({
    file,
    limits: configSchema.parse({ version: 1, agent: { id: "t" } }).outbox,
    clock,
    logger: silentLogger(),
    metrics,
  });
  outbox.open();
  const dispatcher = new Dispatcher({
    outbox,
    destinations: o.destinations,
    clock,
    logger: silentLogger(),
    metrics,
    env: {},
    ...o.options,
  });
  o.cleanups.push(async () => {
    await dispatcher.stop(0);
    outbox.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const r: DispatcherRig = {
    dir,
    file,
    clock,
    metrics,
    outbox,
    dispatcher,
    async commit(events) {
      // The group-commit delay runs on the (fake) clock: flush now instead.
      const done = outbox.commit({ events, states: [], removedStates: [] });
      outbox.flush();
      await done;
      dispatcher.wake();
    },
    async settle() {
      // A pass may start requests whose outcome queues another pass: wait until quiet.
      await new Promise((res) => setImmediate(res));
      await dispatcher.whenIdle();
    },
    async advance(ms) {
      clock.advance(ms);
      await r.settle();
    },
    counted(cls) {
      const m = metrics.deliveries as unknown as {
        hashMap: Record<string, { value: number; labels: Record<string, string> }>;
      };
      return Object.values(m.hashMap)
        .filter((v) => v.labels.class === cls)
        .reduce((a, v) => a + v.value, 0);
    },
  };
  return r;
}
