import { describe, expect, it } from "vitest";
import { evaluateHealth, Heartbeat, httpStatusOf } from "../../src/ops/health.js";
import { FakeClock } from "../support/fake-clock.js";

const base = {
  agent: "a1",
  uptimeMs: 1_999,
  database: "open" as const,
  loop: { alive: true, idleMs: 0 },
  sources: [],
  destinations: {},
  outbox: { pending: 0, dead: 0, bytes: 0, oldest_pending_s: null },
};

describe("evaluateHealth", () => {
  it.each([
    [{}, "ok", 200, []],
    [{ database: "corrupt" as const }, "failing", 503, ["database is corrupt"]],
    [
      { destinations: { hook: { state: "disabled" as const, pending: 0, dead: 3, oldest_pending_s: null } } },
      "degraded",
      200,
      ["destination hook is disabled"],
    ],
    [
      {
        database: "closed" as const,
        sources: [{ name: "mqtt", kind: "mqtt" as const, status: "down" as const, since: 0 }],
      },
      "failing",
      503,
      ["database is closed", "source mqtt is down"],
    ],
    [{ sources: [{ name: "mqtt", kind: "mqtt" as const, status: "starting" as const, since: 0 }] }, "ok", 200, []],
    [
      {
        sources: [
          {
            name: "modbus:boiler",
            kind: "modbus" as const,
            status: "up" as const,
            since: 0,
            devices: [
              { id: "1", sensor: "meter", status: "up" as const, since: 0 },
              { id: "2", sensor: "pump", status: "down" as const, since: 0, detail: "timeout" },
            ],
          },
        ],
      },
      "degraded",
      200,
      ["device 2 (pump) of modbus:boiler is down: timeout"],
    ],
    [
      {
        sources: [
          {
            name: "onewire",
            kind: "onewire" as const,
            status: "down" as const,
            since: 0,
            detail: "no probe gives a reading",
            devices: [{ id: "28-0316a2795fff", sensor: "boiler-in", status: "down" as const, since: 0, detail: "crc" }],
          },
        ],
      },
      "degraded",
      200,
      ["source onewire is down: no probe gives a reading"],
    ],
    [
      { outbox: { ...base.outbox, refusing: "disk_floor" as const }, refusalDetail: "1.0 MiB free" },
      "degraded",
      200,
      ["outbox refuses new events (disk_floor), sources hold their readings: 1.0 MiB free"],
    ],
  ])("%j → %s", (over, status, http, problems) => {
    const report = evaluateHealth({ ...base, ...over });
    expect(report.status).toBe(status);
    expect(httpStatusOf(report)).toBe(http);
    expect(report.problems).toEqual(problems);
    expect(report.uptime_s).toBe(1);
  });
});

describe("Heartbeat", () => {
  it("is alive while beats come within maxSilenceMs, counting from construction", () => {
    const clock = new FakeClock();
    const hb = new Heartbeat(clock, 30_000);
    expect(hb.alive()).toBe(true);
    clock.advance(30_001);
    expect(hb.alive()).toBe(false);
    hb.beat();
    expect(hb.alive()).toBe(true);
    expect(hb.idleMs()).toBe(0);
    clock.advance(10_000);
    expect(hb.idleMs()).toBe(10_000);
    clock.jumpWall(0); // a wall-clock jump does not matter
    expect(hb.alive()).toBe(true);
  });
});
