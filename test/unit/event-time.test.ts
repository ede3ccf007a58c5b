import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { EventTimes } from "../../src/event-time.js";
import { type NewEvent, newEventId } from "../../src/events.js";
import { silentLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import { Outbox } from "../../src/store/outbox.js";
import { FakeClock } from "../support/fake-clock.js";

// fake-hwclock's last saved time: a day behind the truth.
const BOOT_WALL = Date.parse("2026-03-01T08:00:00Z");
const TRUE_WALL = BOOT_WALL + 86_400_000;

function event(clock: FakeClock, ts: number, since = ts): NewEvent {
  return {
    id: newEventId(),
    type: "alert.firing",
    rule: "hot",
    series: "hot\u001fgh1\u001ftemperature",
    severity: "warning",
    priority: 10,
    destinations: ["ops"],
    createdAt: clock.now(),
    body: {
      type: "alert.firing",
      timestamp: new Date(ts).toISOString(),
      data: { sensor: "gh1", value: 35, since: new Date(since).toISOString() },
    },
  };
}

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function outbox(clock: FakeClock): Outbox {
  const dir = mkdtempSync(join(tmpdir(), "edgehook-evtime-"));
  dirs.push(dir);
  const o = new Outbox({
    file: join(dir, "outbox.db"),
    limits: {
      max_events: 1000,
      max_bytes: 1e8,
      max_age: 7 * 86_400_000,
      min_free_disk: 1,
      keep_delivered: 86_400_000,
      commit_delay: 0,
    },
    clock,
    logger: silentLogger(),
    metrics: new Metrics(),
  });
  o.open();
  return o;
}

const bodyOf = (o: Outbox, id: string) => JSON.parse(String(o.show(id)?.body));

describe("event times on a device whose clock was not synchronised", () => {
  it("marks events, then shifts agent-clock times by the measured jump once the clock syncs", async () => {
    const clock = new FakeClock(BOOT_WALL);
    const times = new EventTimes(clock);
    const o = outbox(clock);

    clock.advance(10_000);
    // An arrival-time reading (agent clock) that has been pending for 5 s...
    const ours = event(clock, clock.now(), clock.now() - 5_000);
    // ...and one whose time came from a sensor with its own good clock.
    const sensors = event(clock, TRUE_WALL + 10_000);
    const marked = times.mark([ours, sensors]);
    expect(marked.map((e) => e.body.data.clock)).toEqual(["unsynchronized", "unsynchronized"]);
    await o.commit({ events: marked, states: [], removedStates: [] });

    // 60 s later NTP steps the wall clock forward by a day; monotonic time does not jump.
    clock.advance(60_000);
    clock.jumpWall(TRUE_WALL + 70_000);
    const n = o.rewriteUnsent(times.corrections((id) => o.unsentBody(id)));
    expect(n).toBe(2);

    const a = bodyOf(o, ours.id);
    expect(a.timestamp).toBe(new Date(TRUE_WALL + 10_000).toISOString());
    expect(a.data).toMatchObject({
      clock: "corrected",
      clock_correction_s: 86_400,
      since: new Date(TRUE_WALL + 5_000).toISOString(),
    });
    const b = bodyOf(o, sensors.id);
    expect(b.timestamp).toBe(new Date(TRUE_WALL + 10_000).toISOString());
    expect(b.data).toMatchObject({ clock: "corrected", clock_correction_s: 0 });
    expect(times.remembered).toBe(0);
    o.close();
  });

  it("never rewrites a body an attempt has already used", async () => {
    const clock = new FakeClock(BOOT_WALL);
    const times = new EventTimes(clock);
    const o = outbox(clock);
    const e = times.mark([event(clock, clock.now())]);
    await o.commit({ events: e, states: [], removedStates: [] });
    const [d] = o.next("ops", clock.now(), 1, new Set());
    o.settle([
      {
        id: d!.id,
        outcome: "retry",
        attempt: { at: clock.now(), durationMs: 5, error: "offline" },
        nextAt: 0,
        counted: false,
      },
    ]);
    clock.jumpWall(TRUE_WALL);
    expect(o.rewriteUnsent(times.corrections((id) => o.unsentBody(id)))).toBe(0);
    expect(bodyOf(o, e[0]!.id).data.clock).toBe("unsynchronized");
    o.close();
  });

  it("remembers a bounded number of events; later ones are marked only", () => {
    const clock = new FakeClock(BOOT_WALL);
    const times = new EventTimes(clock, 2);
    const marked = times.mark([event(clock, 1), event(clock, 2), event(clock, 3)]);
    expect(marked.every((e) => e.body.data.clock === "unsynchronized")).toBe(true);
    expect(times.remembered).toBe(2);
  });
});
