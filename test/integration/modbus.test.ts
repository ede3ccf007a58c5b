/**
 * ModbusSource against real devices in another process: modbus-serial's ServerTCP on
 * a loopback port, and an RTU slave with two unit ids on a socat pty pair. Register
 * types and orders, request planning, a dead unit beside a live one, bad answers,
 * overruns, a TCP server restart and an RTU adapter unplugged and plugged back.
 */
import { afterEach, describe, expect, it } from "vitest";
import { systemClock } from "../../src/clock.js";
import { configSchema } from "../../src/config/schema.js";
import { createLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import { ModbusSource } from "../../src/sources/modbus.js";
import type { Reading } from "../../src/sources/reading.js";
import { ModbusSlave, words } from "../support/modbus.js";
import { SocatPty } from "../support/socat.js";

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

interface Rig {
  src: ModbusSource;
  readings: Reading[];
  logs: Record<string, unknown>[];
  metrics: Metrics;
  /** Resolves once `pred` holds, checking after each commit and every 20 ms. */
  waitFor(pred: () => boolean, what: string, timeoutMs?: number): Promise<void>;
}

async function rig(bus: Record<string, unknown>): Promise<Rig> {
  const config = configSchema.parse({ version: 1, agent: { id: "a" }, modbus: [{ name: "bus", ...bus }] }).modbus[0]!;
  const readings: Reading[] = [];
  const logs: Record<string, unknown>[] = [];
  const logger = createLogger("debug", { write: (s: string) => logs.push(JSON.parse(s)) });
  const metrics = new Metrics();
  const src = new ModbusSource({
    config,
    sink: async (r) => {
      readings.push(...r);
    },
    logger,
    metrics,
    clock: systemClock,
  });
  await src.start();
  cleanups.push(() => src.stop());
  const waitFor = async (pred: () => boolean, what: string, timeoutMs = 10_000) => {
    const deadline = Date.now() + timeoutMs;
    while (!pred()) {
      if (Date.now() > deadline) {
        throw new Error(
          `timed out waiting for ${what}; state ${JSON.stringify(src.state())}; ${readings.length} readings`,
        );
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  return { src, readings, logs, metrics, waitFor };
}

async function metric(metrics: Metrics, name: string, labels: Record<string, string>): Promise<number> {
  const m = (await metrics.registry.getMetricsAsJSON()).find((x) => x.name === name);
  const v = m?.values.find((x) => Object.entries(labels).every(([k, val]) => x.labels[k] === val));
  return Number(v?.value ?? 0);
}

const latest = (rs: Reading[], sensor: string, metricName: string) =>
  rs.filter((r) => r.sensor === sensor && r.metric === metricName).at(-1)?.value;
const msgs = (r: Rig, msg: string) => r.logs.filter((l) => l.msg === msg);

async function tcpSlave(): Promise<ModbusSlave> {
  const slave = await ModbusSlave.tcp();
  cleanups.push(() => slave.stop());
  return slave;
}

describe("ModbusSource over TCP (ServerTCP process)", () => {
  it("reads every register type in both word orders, byte-swapped, scaled and offset, in as few requests as possible", async () => {
    const slave = await tcpSlave();
    // Holding registers 0..21, packed as a device would; 2 and 3 read as two types (overlap).
    const holding = [
      ...words("int16", -215), // 0: temperature ×0.1
      ...words("uint16", 65_000), // 1
      ...words("int32", -123_456_789), // 2-3 big word order
      ...words("int32", -123_456_789, "little"), // 4-5
      ...words("uint32", 4_000_000_000, "little"), // 6-7
      ...words("float32", 3.5), // 8-9
      ...words("float32", -0.15625, "little", "little"), // 10-11
      ...words("float64", 1234.5678), // 12-15
      ...words("float64", -9.75, "little"), // 16-19
      ...words("uint32", 70_000, "big", "little"), // 20-21
    ];
    await slave.set(1, "holding", 0, holding);
    await slave.set(1, "input", 100, words("uint16", 500));
    await slave.set(1, "coil", 3, [true]);
    await slave.set(1, "discrete", 7, [false, true]);
    const reg = (metric: string, address: number, type: string, extra: Record<string, unknown> = {}) => ({
      metric,
      address,
      type,
      ...extra,
    });
    const r = await rig({
      url: slave.url,
      every: "200ms",
      timeout: "150ms",
      devices: [
        {
          unit_id: 1,
          sensor: "boiler",
          registers: [
            reg("temperature", 0, "int16", { scale: 0.1 }),
            reg("u16", 1, "uint16"),
            reg("i32", 2, "int32"),
            reg("i32_lo", 4, "int32", { word_order: "little" }),
            reg("u32_lo", 6, "uint32", { word_order: "little" }),
            reg("f32", 8, "float32"),
            reg("f32_swapped", 10, "float32", { word_order: "little", byte_order: "little" }),
            reg("f64", 12, "float64"),
            reg("f64_lo", 16, "float64", { word_order: "little" }),
            reg("u32_bytes", 20, "uint32", { byte_order: "little" }),
            reg("first_word", 2, "int16"),
            { metric: "level", table: "input", address: 100, scale: 0.01, offset: -2 },
            { metric: "pump_on", table: "coil", address: 3 },
            { metric: "door_open", table: "discrete", address: 8 },
          ],
        },
      ],
    });
    await r.waitFor(() => r.readings.length >= 14, "one poll's readings");
    const v = (m: string) => latest(r.readings, "boiler", m);
    expect(v("temperature")).toBe(-21.5);
    expect(v("u16")).toBe(65_000);
    expect(v("i32")).toBe(-123_456_789);
    expect(v("i32_lo")).toBe(-123_456_789);
    expect(v("u32_lo")).toBe(4_000_000_000);
    expect(v("f32")).toBe(3.5);
    expect(v("f32_swapped")).toBe(-0.15625);
    expect(v("f64")).toBe(1234.5678);
    expect(v("f64_lo")).toBe(-9.75);
    expect(v("u32_bytes")).toBe(70_000);
    expect(v("first_word")).toBe(words("int32", -123_456_789)[0]! - 65_536);
    expect(v("level")).toBe(3);
    expect(v("pump_on")).toBe(true);
    expect(v("door_open")).toBe(true);
    const first = r.readings[0]!;
    expect(first.source).toBe("modbus:bus");
    expect(first.ts).toBeGreaterThan(Date.now() - 10_000);

    // One request per table for the whole map (holding 0..21 in one read).
    expect(r.src.requestsPerPoll()).toBe(4);
    await slave.served();
    const before = r.readings.length;
    await r.waitFor(() => r.readings.length >= before + 28, "two more polls");
    const served = (await slave.served()).requests;
    const perPoll = served.filter((q) => q.table === "holding").length;
    expect(served.find((q) => q.table === "holding")).toMatchObject({ address: 0, count: 22 });
    expect(served.length).toBe(perPoll * 4);
    expect(await metric(r.metrics, "edgehook_readings_total", { source: "modbus:bus" })).toBe(r.readings.length);
  });

  it("keeps reading a live unit while another does not answer, and logs each change once", async () => {
    const slave = await tcpSlave();
    await slave.units([1, 2]);
    await slave.set(1, "holding", 0, [11]);
    await slave.set(2, "holding", 0, [22]);
    const r = await rig({
      url: slave.url,
      every: "200ms",
      timeout: "100ms",
      devices: [
        { unit_id: 1, sensor: "one", registers: [{ metric: "v", address: 0 }] },
        { unit_id: 2, sensor: "two", registers: [{ metric: "v", address: 0 }] },
      ],
    });
    await r.waitFor(() => r.readings.some((x) => x.sensor === "two"), "unit 2 read");
    await slave.behave(2, { mode: "silent" });
    await r.waitFor(() => r.src.state().devices?.find((d) => d.id === "2")?.status === "down", "unit 2 down");
    const ones = r.readings.filter((x) => x.sensor === "one").length;
    await r.waitFor(() => r.readings.filter((x) => x.sensor === "one").length >= ones + 3, "unit 1 read on");
    const state = r.src.state();
    expect(state.status).toBe("up");
    expect(state.detail).toBe("1 of 2 devices not answering");
    expect(state.devices).toEqual([
      expect.objectContaining({ id: "1", sensor: "one", status: "up" }),
      expect.objectContaining({ id: "2", sensor: "two", status: "down", detail: "timeout" }),
    ]);
    expect(
      await metric(r.metrics, "edgehook_source_errors_total", { source: "modbus:bus", reason: "timeout" }),
    ).toBeGreaterThanOrEqual(3);
    // The live unit is read every poll, not held up behind the dead one's timeouts.
    const times = r.readings
      .filter((x) => x.sensor === "one")
      .slice(-3)
      .map((x) => x.ts);
    expect(times[2]! - times[0]!).toBeLessThan(2 * 200 + 150);

    await slave.behave(1, { mode: "silent" });
    await r.waitFor(() => r.src.state().status === "down", "down once no unit answers");
    expect(r.src.state().detail).toBe("no device gives a reading (timeout)");
    await slave.behave(1, { mode: "ok" });
    await slave.behave(2, { mode: "ok" });
    await r.waitFor(() => r.src.state().devices?.every((d) => d.status === "up") === true, "both units back");
    expect(r.src.state().detail).toBeUndefined();
    expect(msgs(r, "modbus device not answering").map((l) => [l.unit, l.reason])).toEqual([
      [2, "timeout"],
      [1, "timeout"],
    ]);
    expect(
      msgs(r, "modbus device answers again")
        .map((l) => l.unit)
        .sort(),
    ).toEqual([1, 2]);
  });

  it("counts exception answers and values out of range, logs each reason at most once a minute, and goes on", async () => {
    const slave = await tcpSlave();
    await slave.units([1, 2]);
    await slave.set(1, "holding", 0, [...words("int16", 900), ...words("float32", Number.NaN), ...words("uint16", 40)]);
    await slave.behave(2, { mode: "exception", code: 4 });
    const r = await rig({
      url: slave.url,
      every: "100ms",
      timeout: "80ms",
      devices: [
        {
          unit_id: 1,
          sensor: "tank",
          registers: [
            { metric: "level", address: 0, type: "int16", scale: 0.1, min: 0, max: 50 },
            { metric: "flow", address: 1, type: "float32" },
            { metric: "ok", address: 3, min: 0, max: 100 },
          ],
        },
        { unit_id: 2, sensor: "broken", registers: [{ metric: "v", address: 0 }] },
      ],
    });
    const count = (reason: string, name = "edgehook_source_errors_total") =>
      metric(r.metrics, name, { source: "modbus:bus", reason });
    await r.waitFor(() => r.readings.filter((x) => x.metric === "ok").length >= 5, "five polls");
    expect(await count("exception")).toBeGreaterThanOrEqual(5);
    expect(await count("out_of_range", "edgehook_decode_errors_total")).toBeGreaterThanOrEqual(5);
    expect(await count("not_finite", "edgehook_decode_errors_total")).toBeGreaterThanOrEqual(5);
    expect(r.readings.every((x) => x.metric === "ok" && x.value === 40)).toBe(true);
    expect(msgs(r, "modbus request failed")).toHaveLength(1);
    expect(msgs(r, "modbus request failed")[0]).toMatchObject({
      unit: 2,
      reason: "exception",
      detail: "exception 4: server device failure",
    });
    const skipped = msgs(r, "skipped a modbus value").map((l) => l.reason);
    expect(skipped.sort()).toEqual(["not_finite", "out_of_range"]);
    expect(r.src.state().devices?.find((d) => d.id === "2")).toMatchObject({
      status: "down",
      detail: "exception 4: server device failure",
    });
    expect(r.src.state().devices?.find((d) => d.id === "1")?.status).toBe("up");
  });

  it("splits a combined read the device refuses (illegal data address) and keeps reading the registers one by one", async () => {
    const slave = await tcpSlave();
    await slave.strict(1);
    await slave.set(1, "holding", 0, [7]);
    await slave.set(1, "holding", 6, [8]);
    const r = await rig({
      url: slave.url,
      every: "150ms",
      timeout: "100ms",
      devices: [
        {
          unit_id: 1,
          sensor: "m",
          registers: [
            { metric: "a", address: 0 },
            { metric: "b", address: 6 },
          ],
        },
      ],
    });
    await r.waitFor(() => r.readings.filter((x) => x.metric === "b").length >= 3, "three polls of b");
    expect(r.src.requestsPerPoll()).toBe(2);
    expect(latest(r.readings, "m", "a")).toBe(7);
    expect(
      msgs(r, "modbus device refused a combined read (illegal data address); reading those registers one by one"),
    ).toHaveLength(1);
    // The refused combined read was the first request; since then, single reads only.
    const first = (await slave.served()).requests;
    expect(first[0]).toMatchObject({ address: 0, count: 7 });
    expect(first.slice(1).filter((q) => q.count > 1)).toEqual([]);
    const n = r.readings.length;
    await r.waitFor(() => r.readings.length >= n + 4, "two more polls");
    expect((await slave.served()).requests.filter((q) => q.count > 1)).toEqual([]);
  });

  it("skips a poll that would overrun the interval instead of queueing it", async () => {
    const slave = await tcpSlave();
    await slave.units([1, 2]);
    // Two devices answering in 130 ms each: a poll takes ~260 ms, every is 200 ms.
    await slave.behave(1, { mode: "ok", delayMs: 130 });
    await slave.behave(2, { mode: "ok", delayMs: 130 });
    const r = await rig({
      url: slave.url,
      every: "200ms",
      timeout: "190ms",
      devices: [
        { unit_id: 1, sensor: "a", registers: [{ metric: "v", address: 0 }] },
        { unit_id: 2, sensor: "b", registers: [{ metric: "v", address: 0 }] },
      ],
    });
    await r.waitFor(() => r.readings.filter((x) => x.sensor === "b").length >= 4, "four polls");
    const overruns = await metric(r.metrics, "edgehook_source_errors_total", {
      source: "modbus:bus",
      reason: "overrun",
    });
    expect(overruns).toBeGreaterThanOrEqual(3);
    // Skipped, not queued: a poll starts on the schedule (every other tick, 400 ms apart),
    // not as soon as the previous one ends (which would be ~260 ms apart).
    // The median gap, so that one timer fired late on a busy machine does not decide it.
    const as = r.readings.filter((x) => x.sensor === "a").map((x) => x.ts);
    const gaps = as.slice(1).map((t, i) => t - as[i]!);
    gaps.sort((x, y) => x - y);
    expect(gaps.length).toBeGreaterThanOrEqual(3);
    expect(gaps[Math.floor(gaps.length / 2)]).toBeGreaterThanOrEqual(330);
    expect(msgs(r, "a poll was still running when the next was due; skipped it")).toHaveLength(1);
  });

  it("reconnects after the server went away, logging once each way", async () => {
    const slave = await tcpSlave();
    await slave.set(1, "holding", 0, [1]);
    const r = await rig({
      url: slave.url,
      every: "100ms",
      timeout: "80ms",
      reopen_max: "200ms",
      devices: [{ unit_id: 1, sensor: "s", registers: [{ metric: "v", address: 0 }] }],
    });
    await r.waitFor(() => r.readings.length >= 1, "first reading");
    await slave.stop();
    await r.waitFor(() => r.src.state().status === "down", "down");
    await new Promise((res) => setTimeout(res, 600)); // several reconnects are refused meanwhile
    await slave.start();
    await slave.set(1, "holding", 0, [2]);
    await r.waitFor(() => r.readings.at(-1)?.value === 2, "reading after the restart");
    expect(r.src.state().status).toBe("up");
    expect(msgs(r, "modbus bus went away; reopening when it returns")).toHaveLength(1);
    expect(msgs(r, "modbus bus is back")).toHaveLength(1);
  });

  it("waits for a server that is not there at start", async () => {
    const slave = await tcpSlave();
    await slave.stop();
    const r = await rig({
      url: slave.url,
      every: "100ms",
      timeout: "80ms",
      reopen_max: "200ms",
      devices: [{ unit_id: 1, sensor: "s", registers: [{ metric: "v", address: 0 }] }],
    });
    expect(r.src.state()).toMatchObject({ status: "down", detail: "ECONNREFUSED" });
    await slave.start();
    await slave.set(1, "holding", 0, [5]);
    await r.waitFor(() => r.readings.at(-1)?.value === 5, "reading");
    expect(msgs(r, "modbus bus not available; retrying")).toHaveLength(1);
  });
});

describe("ModbusSource over RTU (slave on a socat pty)", () => {
  async function rtuRig(extra: Record<string, unknown> = {}) {
    const pty = new SocatPty();
    await pty.start();
    cleanups.push(() => pty.stop());
    const slave = await ModbusSlave.rtu(pty);
    cleanups.push(() => slave.stop());
    await slave.units([1, 2]);
    await slave.set(1, "holding", 0, words("float32", 230.5));
    await slave.set(2, "input", 10, words("uint32", 123_456, "little"));
    await slave.set(2, "coil", 0, [false, true]);
    const r = await rig({
      url: `rtu://${pty.devPath}?baud_rate=19200&parity=none`,
      every: "400ms",
      timeout: "200ms",
      reopen_max: "300ms",
      devices: [
        { unit_id: 1, sensor: "meter", registers: [{ metric: "voltage", address: 0, type: "float32" }] },
        {
          unit_id: 2,
          sensor: "tank",
          registers: [
            { metric: "energy", table: "input", address: 10, type: "uint32", word_order: "little" },
            { metric: "pump_on", table: "coil", address: 1 },
          ],
        },
      ],
      ...extra,
    });
    return { pty, slave, r };
  }

  it("reads two units on one bus, one request at a time, and goes on when one stops answering", async () => {
    const { slave, r } = await rtuRig();
    await r.waitFor(() => r.readings.length >= 3, "both units read");
    expect(latest(r.readings, "meter", "voltage")).toBe(230.5);
    expect(latest(r.readings, "tank", "energy")).toBe(123_456);
    expect(latest(r.readings, "tank", "pump_on")).toBe(true);
    expect(r.readings[0]!.source).toBe("modbus:bus");

    await slave.behave(1, { mode: "silent" });
    await r.waitFor(() => r.src.state().devices?.find((d) => d.id === "1")?.status === "down", "unit 1 down");
    const n = r.readings.filter((x) => x.sensor === "tank").length;
    await r.waitFor(() => r.readings.filter((x) => x.sensor === "tank").length >= n + 4, "unit 2 read on");
    expect(r.src.state()).toMatchObject({ status: "up", detail: "1 of 2 devices not answering" });
    // The bus is shared: the master never asked while an answer was owed.
    const { maxOwed } = await slave.served();
    expect(maxOwed).toBeLessThanOrEqual(1);
    await slave.behave(1, { mode: "ok" });
    await r.waitFor(() => r.src.state().devices?.every((d) => d.status === "up") === true, "both up");
    expect(msgs(r, "modbus device not answering")).toHaveLength(1);
    expect(msgs(r, "modbus device answers again")).toHaveLength(1);
  });

  it("counts answers with a bad CRC and logs them at most once a minute", async () => {
    const { slave, r } = await rtuRig();
    await r.waitFor(() => r.readings.some((x) => x.sensor === "meter"), "first reading");
    await slave.behave(1, { mode: "bad_crc" });
    const crc = () => metric(r.metrics, "edgehook_source_errors_total", { source: "modbus:bus", reason: "crc" });
    const deadline = Date.now() + 10_000;
    while ((await crc()) < 3 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
    expect(await crc()).toBeGreaterThanOrEqual(3);
    expect(msgs(r, "modbus request failed").filter((l) => l.reason === "crc")).toHaveLength(1);
    expect(r.src.state().devices?.find((d) => d.id === "1")).toMatchObject({ status: "down", detail: "CRC error" });
    const n = r.readings.filter((x) => x.sensor === "meter").length;
    await slave.behave(1, { mode: "ok" });
    await r.waitFor(() => r.readings.filter((x) => x.sensor === "meter").length > n, "readings again");
  });

  it("survives the adapter being unplugged and plugged back, without a restart", async () => {
    const { pty, slave, r } = await rtuRig();
    await r.waitFor(() => r.readings.length >= 3, "first poll");
    await pty.stop(); // unplug
    await r.waitFor(() => r.src.state().status === "down", "down after unplug");
    expect(r.src.state().devices?.map((d) => [d.id, d.status, d.detail])).toEqual([
      ["1", "down", "bus down"],
      ["2", "down", "bus down"],
    ]);
    await new Promise((res) => setTimeout(res, 800)); // reopen attempts fail meanwhile
    await pty.start(); // plug back in
    await slave.attach();
    await slave.set(1, "holding", 0, words("float32", 231));
    await r.waitFor(() => latest(r.readings, "meter", "voltage") === 231, "reading after replug");
    expect(r.src.state().status).toBe("up");
    expect(msgs(r, "modbus bus went away; reopening when it returns")).toHaveLength(1);
    expect(msgs(r, "modbus bus is back")).toHaveLength(1);
    // The bus is logged, not each device on it.
    expect(msgs(r, "modbus device not answering")).toHaveLength(0);
    await r.waitFor(() => r.src.state().devices?.every((d) => d.status === "up") === true, "both units up");
    expect(msgs(r, "modbus device answers again")).toHaveLength(0);
  });
});
