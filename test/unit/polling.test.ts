import { describe, expect, it } from "vitest";
import { createLogger } from "../../src/ops/logger.js";
import { DeviceBook, Poller, SinkQueue } from "../../src/sources/polling.js";
import type { Reading } from "../../src/sources/reading.js";
import { parseW1Slave } from "../../src/sources/w1-slave.js";
import { FakeClock } from "../support/fake-clock.js";

const flush = () => new Promise((r) => setImmediate(r));

/** A poll that finishes when the test says so. */
function controllable() {
  const starts: number[] = [];
  let finish: (() => void) | undefined;
  return {
    starts,
    run: (clock: FakeClock) => () => {
      starts.push(clock.monotonic());
      return new Promise<void>((r) => {
        finish = r;
      });
    },
    async finish() {
      finish?.();
      finish = undefined;
      await flush();
    },
  };
}

describe("Poller", () => {
  it("polls at start and then at a fixed rate", async () => {
    const clock = new FakeClock();
    const c = controllable();
    const p = new Poller({ clock, every: 1000, run: c.run(clock), onOverrun: () => {}, onError: () => {} });
    p.start();
    expect(c.starts).toEqual([0]);
    clock.advance(300);
    await c.finish(); // the poll took 300 ms: the next still starts at 1000, not 1300
    clock.advance(700);
    expect(c.starts).toEqual([0, 1000]);
    await c.finish();
    clock.advance(1000);
    expect(c.starts).toEqual([0, 1000, 2000]);
    await c.finish();
    await p.stop();
  });

  it("skips and counts a poll that is due while the previous one runs, and never queues it", async () => {
    const clock = new FakeClock();
    const c = controllable();
    let overruns = 0;
    const p = new Poller({ clock, every: 1000, run: c.run(clock), onOverrun: () => overruns++, onError: () => {} });
    p.start();
    clock.advance(2500); // the first poll hangs over two due times
    expect(overruns).toBe(2);
    expect(c.starts).toEqual([0]);
    await c.finish(); // finishing does not start the skipped ones
    expect(c.starts).toEqual([0]);
    clock.advance(500);
    expect(c.starts).toEqual([0, 3000]);
    await c.finish();
    await p.stop();
  });

  it("stop waits for the running poll and starts no other", async () => {
    const clock = new FakeClock();
    const c = controllable();
    const p = new Poller({ clock, every: 1000, run: c.run(clock), onOverrun: () => {}, onError: () => {} });
    p.start();
    let stopped = false;
    const stopping = p.stop().then(() => {
      stopped = true;
    });
    await flush();
    expect(stopped).toBe(false);
    await c.finish();
    await stopping;
    clock.advance(5000);
    expect(c.starts).toEqual([0]);
    expect(clock.pendingTimers()).toBe(0);
  });

  it("passes a failed poll to onError and goes on", async () => {
    const clock = new FakeClock();
    const errors: unknown[] = [];
    let n = 0;
    const p = new Poller({
      clock,
      every: 100,
      run: async () => {
        n++;
        throw new Error("boom");
      },
      onOverrun: () => {},
      onError: (e) => errors.push(e),
    });
    p.start();
    await flush();
    clock.advance(100);
    await flush();
    expect(n).toBe(2);
    expect(errors).toHaveLength(2);
    await p.stop();
  });
});

const reading = (value: number): Reading => ({ sensor: "s", metric: "m", value, ts: 0, source: "x", labels: {} });

describe("SinkQueue", () => {
  const make = (sink: (rs: Reading[]) => Promise<void>) => {
    const logs: Record<string, unknown>[] = [];
    const dropped: number[] = [];
    const logger = createLogger("info", { write: (l: string) => logs.push(JSON.parse(l)) });
    const q = new SinkQueue({
      sink,
      logger,
      clock: new FakeClock(),
      what: "test readings",
      onDropped: (n) => dropped.push(n),
    });
    return { q, logs, dropped };
  };

  it("keeps one commit in flight and gathers what comes meanwhile into the next", async () => {
    const calls: number[][] = [];
    const releases: (() => void)[] = [];
    const { q } = make((rs) => {
      calls.push(rs.map((r) => r.value as number));
      return new Promise((r) => releases.push(r));
    });
    q.push([reading(1)]);
    expect(q.backlogged).toBe(false);
    q.push([reading(2)]);
    q.push([reading(3)]);
    expect(q.backlogged).toBe(true);
    expect(calls).toEqual([[1]]);
    releases.shift()!();
    await flush();
    expect(calls).toEqual([[1], [2, 3]]);
    expect(q.backlogged).toBe(false);
    const closed = q.close();
    releases.shift()!();
    await closed;
  });

  it("holds readings the outbox refuses, offers them again when asked, and says so once each way", async () => {
    let refuse = true;
    const committed: number[] = [];
    const { q, logs } = make(async (rs) => {
      if (refuse) throw Object.assign(new Error("free disk is under the floor"), { code: "EDGEHOOK_DISK_FLOOR" });
      committed.push(...rs.map((r) => r.value as number));
    });
    q.push([reading(1), reading(2)]);
    await flush();
    expect(q.backlogged).toBe(true); // the source skips polls now
    q.retry();
    await flush();
    q.retry();
    await flush();
    expect(committed).toEqual([]);
    refuse = false;
    q.retry();
    await flush();
    expect(committed).toEqual([1, 2]);
    expect(q.backlogged).toBe(false);
    expect(logs.map((l) => [l.level, l.msg])).toEqual([
      ["warn", "outbox refuses new readings: holding 2 test readings and skipping polls until they can be stored"],
      ["info", "stored 2 held test readings after 0 s; polling again"],
    ]);
  });

  it("logs other commit failures as errors, and drops and counts what is still held at stop", async () => {
    const { q, logs, dropped } = make(async () => {
      throw new Error("database is locked");
    });
    q.push([reading(1)]);
    await flush();
    expect(logs[0]).toMatchObject({
      level: "error",
      msg: "could not commit test readings: holding 1 test readings and skipping polls until they can be stored",
    });
    await q.close();
    expect(dropped).toEqual([1]);
    expect(logs.at(-1)).toMatchObject({ level: "warn", code: "EDGEHOOK_READINGS_DROPPED", dropped: 1 });
  });
});

describe("DeviceBook", () => {
  it("says when a device fails and when it recovers, once each", () => {
    const clock = new FakeClock();
    const b = new DeviceBook(clock);
    b.add("1", "meter");
    expect(b.list()).toEqual([
      { id: "1", sensor: "meter", status: "down", since: clock.now(), detail: "not read yet" },
    ]);
    expect(b.ok("1")).toBeUndefined(); // first reading: nothing to announce
    clock.advance(1000);
    expect(b.fail("1", "timeout")).toBe("failed");
    expect(b.fail("1", "timeout")).toBeUndefined();
    expect(b.list()[0]).toMatchObject({ status: "down", detail: "timeout", since: clock.now() });
    expect(b.upCount()).toBe(0);
    clock.advance(1000);
    expect(b.ok("1")).toBe("recovered");
    expect(b.ok("1")).toBeUndefined();
    expect(b.list()[0]).toEqual({
      id: "1",
      sensor: "meter",
      status: "up",
      since: clock.now(),
      last_reading: clock.now(),
    });
  });

  it("marks every device down when their bus goes, and lets them come back without announcing each", () => {
    const clock = new FakeClock();
    const b = new DeviceBook(clock);
    b.add("1", "a");
    b.add("2", "b");
    b.ok("1");
    expect(b.fail("2", "timeout")).toBe("failed");
    b.markAllDown("bus down");
    expect(b.list().map((d) => [d.id, d.status, d.detail])).toEqual([
      ["1", "down", "bus down"],
      ["2", "down", "bus down"],
    ]);
    expect(b.ok("1")).toBeUndefined(); // never announced down on its own
    expect(b.ok("2")).toBe("recovered"); // it had been
  });
});

describe("parseW1Slave", () => {
  const ok = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n";
  it.each([
    ["a DS18B20 reading", ok, { ok: true, celsius: 23.125 }],
    [
      "a negative one",
      "5e ff 4b 46 7f ff 02 10 1c : crc=1c YES\n5e ff 4b 46 7f ff 02 10 1c t=-10125\n",
      { ok: true, celsius: -10.125 },
    ],
    ["a CRC failure", ok.replace("YES", "NO"), { ok: false, reason: "crc" }],
    [
      "the power-on value",
      "50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n50 05 4b 46 7f ff 0c 10 1c t=85000\n",
      { ok: false, reason: "power_on_value" },
    ],
    [
      "the error value",
      "ff ff ff ff ff ff ff ff ff : crc=c9 YES\nff ff ff ff ff ff ff ff ff t=-127000\n",
      { ok: false, reason: "sensor_error" },
    ],
    [
      "a scratchpad of zeros",
      "00 00 00 00 00 00 00 00 00 : crc=00 YES\n00 00 00 00 00 00 00 00 00 t=0\n",
      { ok: false, reason: "sensor_error" },
    ],
    ["one line", "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n", { ok: false, reason: "bad_format" }],
    ["garbage", "hello\nworld\n", { ok: false, reason: "bad_format" }],
    ["empty", "", { ok: false, reason: "bad_format" }],
  ])("%s", (_n, text, want) => {
    expect(parseW1Slave(text)).toEqual(want);
  });
});
