import { describe, expect, it } from "vitest";
import { ClockSyncMonitor, type ClockSyncProbe, checkClockSync, SANE_EPOCH_MS } from "../../src/delivery/clock-sync.js";
import { silentLogger } from "../../src/ops/logger.js";
import { FakeClock } from "../support/fake-clock.js";

const NOW = Date.parse("2026-06-01T00:00:00Z");

function probe(marker: boolean, out: string | undefined, calls = { n: 0 }): ClockSyncProbe {
  return {
    markerExists: () => marker,
    timedatectl: async () => {
      calls.n++;
      return out;
    },
  };
}

describe("checkClockSync", () => {
  it.each([
    [true, undefined, "synced"],
    [false, "yes", "synced"],
    [false, "no", "unsynced"],
    [false, "n/a", "unknown"],
    [false, undefined, "unknown"],
  ] as const)("marker %s, timedatectl %j → %s", async (marker, out, answer) => {
    expect(await checkClockSync(probe(marker, out), NOW)).toBe(answer);
  });

  it("the marker file answers without running timedatectl", async () => {
    const calls = { n: 0 };
    await checkClockSync(probe(true, "no", calls), NOW);
    expect(calls.n).toBe(0);
  });

  it("a wall clock before 2025 is unsynchronised whatever the tools say", async () => {
    expect(await checkClockSync(probe(true, "yes"), SANE_EPOCH_MS - 1)).toBe("unsynced");
    expect(await checkClockSync(probe(true, "yes"), 0)).toBe("unsynced");
  });
});

describe("ClockSyncMonitor", () => {
  it("treats unknown as synced, notices sync on its cadence and tells listeners", async () => {
    const clock = new FakeClock(NOW);
    let out: string | undefined = "no";
    const p: ClockSyncProbe = { markerExists: () => false, timedatectl: async () => out };
    const m = new ClockSyncMonitor({ clock, logger: silentLogger(), probe: p, intervalMs: 30_000 });
    let changes = 0;
    m.onChange(() => changes++);
    await m.start();
    expect(m.synced()).toBe(false);
    out = "yes";
    clock.advance(29_999);
    await new Promise((r) => setImmediate(r));
    expect(m.synced()).toBe(false);
    clock.advance(1);
    await new Promise((r) => setImmediate(r));
    expect(m.synced()).toBe(true);
    expect(changes).toBe(2);
    out = undefined;
    clock.advance(30_000);
    await new Promise((r) => setImmediate(r));
    expect(m.answer).toBe("unknown");
    expect(m.synced()).toBe(true);
    m.stop();
    expect(clock.pendingTimers()).toBe(0);
  });
});
