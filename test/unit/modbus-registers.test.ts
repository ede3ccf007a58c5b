import { describe, expect, it } from "vitest";
import { classifyModbusError } from "../../src/sources/modbus.js";
import {
  decodeSpec,
  MAX_BITS_PER_READ,
  MAX_REGISTERS_PER_READ,
  planReads,
  type RegisterSpec,
  readRaw,
  splitRequest,
} from "../../src/sources/modbus-registers.js";
import { parseModbusUrl, rtuFrameGapMs } from "../../src/sources/modbus-url.js";
import { applyScale } from "../../src/sources/polling.js";

const spec = (over: Partial<RegisterSpec> & { address: number }): RegisterSpec => ({
  metric: `m${over.address}`,
  table: "holding",
  type: "uint16",
  word_order: "big",
  byte_order: "big",
  scale: 1,
  offset: 0,
  ...over,
});

const hex = (s: string) => Uint8Array.from(Buffer.from(s.replace(/ /g, ""), "hex"));

describe("readRaw", () => {
  it.each([
    // type, word order, byte order, register bytes as sent, value
    ["int16", "big", "big", "ff 38", -200],
    ["uint16", "big", "big", "ff 38", 65_336],
    ["int16", "big", "little", "38 ff", -200],
    ["int32", "big", "big", "ff fe 1d c0", -123_456],
    ["int32", "little", "big", "1d c0 ff fe", -123_456],
    ["int32", "big", "little", "fe ff c0 1d", -123_456],
    ["int32", "little", "little", "c0 1d fe ff", -123_456],
    ["uint32", "big", "big", "ee 6b 28 00", 4_000_000_000],
    ["uint32", "little", "big", "28 00 ee 6b", 4_000_000_000],
    ["float32", "big", "big", "43 66 80 00", 230.5], // ABCD
    ["float32", "little", "big", "80 00 43 66", 230.5], // CDAB, the commonest "swapped" meter
    ["float32", "big", "little", "66 43 00 80", 230.5], // BADC
    ["float32", "little", "little", "00 80 66 43", 230.5], // DCBA
    ["float64", "big", "big", "40 93 4a 45 6d 5c fa ad", 1234.5678],
    ["float64", "little", "big", "fa ad 6d 5c 4a 45 40 93", 1234.5678],
    ["float64", "little", "little", "ad fa 5c 6d 45 4a 93 40", 1234.5678],
  ] as const)("%s word %s byte %s: %s → %d", (type, word, byte, bytes, value) => {
    expect(readRaw(hex(bytes), type, word, byte)).toBe(value);
  });
});

describe("decodeSpec", () => {
  it("scales, offsets and rounds away binary noise", () => {
    const s = spec({ address: 0, type: "int16", scale: 0.01 });
    expect(decodeSpec(s, { address: 0 }, { registers: hex("09 0b") })).toEqual({ ok: true, value: 23.15 });
    expect(0x090b * 0.01).toBe(23.150000000000002); // what rounding avoids
    expect(decodeSpec({ ...s, scale: 0.1 }, { address: 0 }, { registers: hex("ff 29") })).toEqual({
      ok: true,
      value: -21.5,
    });
    const o = spec({ address: 2, scale: 0.01, offset: -40 });
    expect(decodeSpec(o, { address: 0 }, { registers: hex("0000 0000 1b58") })).toEqual({ ok: true, value: 30 });
    expect(applyScale(5, 1, 0)).toBe(5);
    expect(applyScale(1234.5678, 1, 0)).toBe(1234.5678);
  });

  it("finds a spec inside a larger read", () => {
    const s = spec({ address: 12, type: "float32" });
    const regs = new Uint8Array(20);
    regs.set(hex("43 66 80 00"), 4);
    expect(decodeSpec(s, { address: 10 }, { registers: regs })).toEqual({ ok: true, value: 230.5 });
  });

  it.each([
    ["NaN", spec({ address: 0, type: "float32" }), "7f c0 00 00", "not_finite"],
    ["+Infinity", spec({ address: 0, type: "float32" }), "7f 80 00 00", "not_finite"],
    ["over max", spec({ address: 0, max: 100 }), "00 65", "out_of_range"],
    ["under min after scale", spec({ address: 0, type: "int16", scale: 0.1, min: -40 }), "fe 6f", "out_of_range"],
    ["short answer", spec({ address: 1, type: "uint32" }), "00 01 00 02", "short_response"],
  ] as const)("rejects %s", (_n, s, bytes, reason) => {
    expect(decodeSpec(s, { address: 0 }, { registers: hex(bytes) })).toEqual({ ok: false, reason });
  });

  it("accepts values on the bounds", () => {
    const s = spec({ address: 0, min: 0, max: 100 });
    expect(decodeSpec(s, { address: 0 }, { registers: hex("00 64") })).toEqual({ ok: true, value: 100 });
  });

  it("reads coils and discrete inputs as booleans", () => {
    const c = spec({ address: 9, table: "coil" });
    const bits = [false, true, false, true];
    expect(decodeSpec(c, { address: 8 }, { bits })).toEqual({ ok: true, value: true });
    expect(decodeSpec({ ...c, address: 10 }, { address: 8 }, { bits })).toEqual({ ok: true, value: false });
    expect(decodeSpec({ ...c, address: 20 }, { address: 8 }, { bits })).toEqual({
      ok: false,
      reason: "short_response",
    });
  });
});

describe("planReads", () => {
  const shape = (specs: RegisterSpec[], gap = 0) =>
    planReads(specs, gap).map((r) => [r.table, r.address, r.count, r.specs.map((s) => s.metric)]);

  it("reads adjacent registers in one request, whatever order they are listed in", () => {
    const specs = [spec({ address: 2, type: "float32" }), spec({ address: 0, type: "int32" }), spec({ address: 4 })];
    expect(shape(specs)).toEqual([["holding", 0, 5, ["m0", "m2", "m4"]]]);
  });

  it("joins across a gap of at most max_gap unused registers", () => {
    const specs = [spec({ address: 0 }), spec({ address: 5 }), spec({ address: 20 })];
    expect(shape(specs, 4)).toEqual([
      ["holding", 0, 6, ["m0", "m5"]],
      ["holding", 20, 1, ["m20"]],
    ]);
    expect(shape(specs, 3)).toHaveLength(3);
    expect(shape(specs, 14)).toEqual([["holding", 0, 21, ["m0", "m5", "m20"]]]);
  });

  it("keeps tables apart (one function code per request)", () => {
    const specs = [
      spec({ address: 0, table: "input" }),
      spec({ address: 1 }),
      spec({ address: 0, table: "discrete" }),
      spec({ address: 2, table: "coil" }),
      spec({ address: 0 }),
    ];
    expect(shape(specs).map((r) => [r[0], r[1], r[2]])).toEqual([
      ["holding", 0, 2],
      ["input", 0, 1],
      ["coil", 2, 1],
      ["discrete", 0, 1],
    ]);
  });

  it("shares a request between overlapping specs", () => {
    const specs = [spec({ address: 0, type: "float64" }), spec({ address: 1, metric: "inner" })];
    expect(shape(specs)).toEqual([["holding", 0, 4, ["m0", "inner"]]]);
  });

  it("respects 125 registers per request", () => {
    const specs = Array.from({ length: 200 }, (_, i) => spec({ address: i }));
    const plan = planReads(specs, 0);
    expect(plan.map((r) => r.count)).toEqual([MAX_REGISTERS_PER_READ, 75]);
    // A wide type never straddles the limit: it starts the next request.
    const wide = [
      ...Array.from({ length: 124 }, (_, i) => spec({ address: i })),
      spec({ address: 124, type: "float32" }),
    ];
    expect(planReads(wide, 0).map((r) => [r.address, r.count])).toEqual([
      [0, 124],
      [124, 2],
    ]);
  });

  it("respects 2000 coils per request", () => {
    const specs = Array.from({ length: 2500 }, (_, i) => spec({ address: i, table: "coil" }));
    expect(planReads(specs, 0).map((r) => r.count)).toEqual([MAX_BITS_PER_READ, 500]);
  });

  it("splits a request into one per spec", () => {
    const [req] = planReads([spec({ address: 0 }), spec({ address: 3, type: "uint32" })], 5);
    expect(splitRequest(req!).map((r) => [r.address, r.count, r.specs.length])).toEqual([
      [0, 1, 1],
      [3, 2, 1],
    ]);
  });
});

describe("parseModbusUrl", () => {
  it.each([
    ["tcp://192.168.1.50:502", { transport: "tcp", host: "192.168.1.50", port: 502 }],
    ["tcp://meter.local", { transport: "tcp", host: "meter.local", port: 502 }],
    ["tcp://[::1]:1502", { transport: "tcp", host: "::1", port: 1502 }],
    [
      "rtu:///dev/serial/by-id/usb-FTDI_FT232R-if00-port0?baud_rate=19200&parity=even",
      {
        transport: "rtu",
        path: "/dev/serial/by-id/usb-FTDI_FT232R-if00-port0",
        baud_rate: 19_200,
        parity: "even",
        data_bits: 8,
        stop_bits: 1,
      },
    ],
    [
      "rtu:///dev/ttyUSB0?stop_bits=2&data_bits=7",
      { transport: "rtu", path: "/dev/ttyUSB0", baud_rate: 9600, parity: "none", data_bits: 7, stop_bits: 2 },
    ],
  ])("%s", (url, want) => {
    expect(parseModbusUrl(url)).toEqual(want);
  });

  it.each([
    ["modbus://x", /tcp:\/\/host:port or rtu/],
    ["tcp://", /needs a host/],
    ["tcp://h:502/x", /no path/],
    ["rtu://dev/ttyUSB0", /three slashes/],
    ["rtu:///dev/ttyUSB0?baud=9600", /unknown parameter baud/],
    ["rtu:///dev/ttyUSB0?parity=mark", /parity must be none, even or odd/],
    ["rtu:///dev/ttyUSB0?baud_rate=fast", /baud_rate/],
  ])("refuses %s", (url, message) => {
    const r = parseModbusUrl(url);
    expect("error" in r && r.error).toMatch(message);
  });

  it("gives the RTU silence between frames", () => {
    expect(rtuFrameGapMs(9600)).toBeCloseTo(4.01, 2);
    expect(rtuFrameGapMs(115_200)).toBe(1.75);
  });
});

describe("classifyModbusError", () => {
  it.each([
    [
      Object.assign(new Error("Modbus exception 2: Illegal data address"), { modbusCode: 2 }),
      "exception",
      "exception 2: illegal data address",
    ],
    [{ name: "TransactionTimedOutError", message: "Timed out", errno: "ETIMEDOUT" }, "timeout", "timeout"],
    [new Error("CRC error"), "crc", "CRC error"],
    [new Error("Data length error, expected 9 got 7"), "bad_response", "Data length error, expected 9 got 7"],
    [{ name: "PortNotOpenError", message: "Port Not Open" }, "disconnected", "Port Not Open"],
  ])("%o → %s", (err, reason, detail) => {
    expect(classifyModbusError(err)).toMatchObject({ reason, detail });
  });
});
