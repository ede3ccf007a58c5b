/**
 * SerialSource on real pseudo-terminals from socat: line formats, unplug/replug
 * without restarting the source, a corpus of bad input between good lines, and
 * refused commits (held, offered again, bounded with counted drops).
 */
import { afterEach, describe, expect, it } from "vitest";
import { type Clock, systemClock } from "../../src/clock.js";
import { configSchema } from "../../src/config/schema.js";
import { createLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import type { Reading } from "../../src/sources/reading.js";
import { MAX_HELD, SerialSource } from "../../src/sources/serial.js";
import { SocatPty } from "../support/socat.js";
import { waitUntil } from "../support/wait.js";

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

interface Rig {
  sinkCalls: number;
  sinkBehaviour: (r: Reading[]) => Promise<void>;
  pty: SocatPty;
  src: SerialSource;
  readings: Reading[];
  logs: Record<string, unknown>[];
  metrics: Metrics;
  waitFor(pred: () => boolean, what: string, timeoutMs?: number): Promise<void>;
}

async function rig(
  port: Record<string, unknown>,
  { startPty = true, clock = systemClock }: { startPty?: boolean; clock?: Clock } = {},
): Promise<Rig> {
  const pty = new SocatPty();
  if (startPty) await pty.start();
  cleanups.push(() => pty.stop());
  const config = configSchema.parse({
    version: 1,
    agent: { id: "a" },
    serial: [{ name: "dev", path: pty.devPath, reopen_max: "300ms", ...port }],
  }).serial[0]!;
  const readings: Reading[] = [];
  const logs: Record<string, unknown>[] = [];
  const logger = createLogger("info", { write: (s: string) => logs.push(JSON.parse(s)) });
  const metrics = new Metrics();
  const rigObj = { sinkCalls: 0, sinkBehaviour: async (_r: Reading[]) => {} };
  const src = new SerialSource({
    config,
    sink: async (r) => {
      rigObj.sinkCalls++;
      await rigObj.sinkBehaviour(r);
      readings.push(...r);
    },
    logger,
    metrics,
    clock,
  });
  await src.start();
  cleanups.push(() => src.stop());
  const waitFor = async (pred: () => boolean, what: string, timeoutMs = 8_000) => {
    const deadline = Date.now() + timeoutMs;
    while (!pred()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; have ${readings.length} readings`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  return Object.assign(rigObj, { pty, src, readings, logs, metrics, waitFor });
}

async function metric(metrics: Metrics, name: string, labels: Record<string, string>): Promise<number> {
  const m = (await metrics.registry.getMetricsAsJSON()).find((x) => x.name === name);
  const v = m?.values.find((x) => Object.entries(labels).every(([k, val]) => x.labels[k] === val));
  return Number(v?.value ?? 0);
}

const triples = (rs: Reading[]) => rs.map((r) => [r.sensor, r.metric, r.value]);

describe("SerialSource", () => {
  it.each([
    [
      "kv",
      {},
      "t=21.5 h=40\r\n",
      [
        ["dev", "t", 21.5],
        ["dev", "h", 40],
      ],
    ],
    [
      "csv",
      { format: "csv", columns: ["id", "temp", "hum"], sensor: "{id}" },
      "n1,20.5,55\n",
      [
        ["n1", "temp", 20.5],
        ["n1", "hum", 55],
      ],
    ],
    [
      "json",
      { format: "json", sensor: "{id}", value: "v.t", metric: "temp" },
      '{"id":"j1","v":{"t":3}}\n',
      [["j1", "temp", 3]],
    ],
    [
      "regex",
      { format: "regex", pattern: "^(?<sensor>\\w+):(?<metric>\\w+)=(?<value>[-\\d.]+)$" },
      "boiler:temp=71.5\n",
      [["boiler", "temp", 71.5]],
    ],
  ] as const)("turns %s lines into readings", async (_n, port, line, expected) => {
    const r = await rig(port);
    await r.waitFor(() => r.src.state().status === "up", "port open");
    // The line in two writes, as a slow device sends it.
    await r.pty.write(line.slice(0, 5));
    await new Promise((res) => setTimeout(res, 20));
    await r.pty.write(line.slice(5));
    await r.waitFor(() => r.readings.length >= expected.length, "readings");
    expect(triples(r.readings)).toEqual(expected);
    expect(r.readings[0]!.source).toBe("serial:dev");
  });

  it("survives unplug and replug on the same path without a restart, logging once each way", async () => {
    const r = await rig({});
    await r.waitFor(() => r.src.state().status === "up", "port open");
    await r.pty.write("n=1\n");
    await r.waitFor(() => r.readings.length === 1, "first reading");

    await r.pty.stop(); // unplug
    await r.waitFor(() => r.src.state().status === "down", "down after unplug");
    expect(await metric(r.metrics, "edgehook_serial_port_open", { port: "dev" })).toBe(0);
    await new Promise((res) => setTimeout(res, 1_000)); // several reopen attempts fail meanwhile

    await r.pty.start(); // replug
    await r.waitFor(() => r.src.state().status === "up", "up after replug");
    expect(await metric(r.metrics, "edgehook_serial_port_open", { port: "dev" })).toBe(1);
    await r.pty.write("n=2\n");
    await r.waitFor(() => r.readings.length === 2, "reading after replug");
    expect(r.readings.map((x) => x.value)).toEqual([1, 2]);

    const msgs = r.logs.map((l) => l.msg);
    expect(msgs.filter((m) => m === "serial port went away; reopening when it returns")).toHaveLength(1);
    expect(msgs.filter((m) => m === "serial port is back")).toHaveLength(1);
  });

  it("waits for a port that is absent at start, retrying with a growing delay", async () => {
    // The real clock, with the delays the source asks for written down.
    const delays: number[] = [];
    const clock: Clock = {
      ...systemClock,
      setTimeout: (fn, ms) => {
        delays.push(ms);
        return systemClock.setTimeout(fn, ms);
      },
    };
    const r = await rig({ reopen_max: "1s" }, { startPty: false, clock });
    expect(r.src.state().status).toBe("down");
    await r.waitFor(() => delays.length >= 4, "four retries");
    expect(delays.slice(0, 4)).toEqual([250, 500, 1000, 1000]);
    await r.pty.start();
    await r.waitFor(() => r.src.state().status === "up", "opened once it appeared");
    await r.pty.write("x=5\n");
    await r.waitFor(() => r.readings.length === 1, "reading");
    expect(r.logs.filter((l) => l.msg === "serial port not available; retrying")).toHaveLength(1);
  });

  it("counts a corpus of bad lines and delivers every good line between them", async () => {
    const r = await rig({ format: "csv", columns: ["n", "v"], max_line_length: 1024 });
    await r.waitFor(() => r.src.state().status === "up", "port open");
    const good = (n: number) => `${n},${n * 10}\n`;
    const bad: [string, Buffer][] = [
      ["binary", Buffer.from([0x01, 0x02, 0x03, 0x9c, 0x0a])],
      ["binary", Buffer.from("1,\u0000,2\n")],
      ["encoding", Buffer.from([0x31, 0x2c, 0xff, 0xfe, 0x0a])],
      ["too_long", Buffer.concat([Buffer.alloc(1024 * 1024, 0x35), Buffer.from("\n")])],
      ["columns", Buffer.from("1,2,3\n")],
      ["partly numeric", Buffer.from("99,abc\n")],
    ];
    let n = 0;
    for (const [, b] of bad) {
      await r.pty.write(good(n++));
      await r.pty.write(b);
    }
    await r.pty.write(good(n++));
    const goodN = () => r.readings.filter((x) => x.metric === "n" && x.value !== 99).map((x) => x.value);
    await r.waitFor(() => goodN().length === n, `${n} good lines`, 15_000);
    expect(goodN()).toEqual(Array.from({ length: n }, (_, i) => i));
    const errs = async (reason: string) =>
      metric(r.metrics, "edgehook_decode_errors_total", { source: "serial:dev", reason });
    expect(await errs("binary")).toBe(2);
    expect(await errs("encoding")).toBe(1);
    expect(await errs("too_long")).toBe(1);
    expect(await errs("columns")).toBe(1);
    // "99,abc": n is read, v is not a number and is left out rather than failing the line.
    expect(r.readings.find((x) => x.metric === "n" && x.value === 99)).toBeDefined();
    expect(r.readings.find((x) => x.metric === "v" && x.value === "abc")).toBeUndefined();
    expect(r.src.state().status).toBe("up");
    // Logged at a bounded rate: at most one line per reason in this burst.
    const skipped = r.logs.filter((l) => l.msg === "skipped a line that could not be decoded");
    expect(skipped.length).toBeLessThanOrEqual(4);
  });

  it("keeps reading while a commit is slow, in order, many lines per commit", async () => {
    const r = await rig({});
    await r.waitFor(() => r.src.state().status === "up", "port open");
    r.sinkBehaviour = () => new Promise((res) => setTimeout(res, 100));
    const n = 2000;
    for (let i = 0; i < n; i += 100) {
      await r.pty.write(Array.from({ length: 100 }, (_, j) => `i=${i + j}\n`).join(""));
    }
    await r.waitFor(() => r.readings.length === n, `${n} readings`, 15_000);
    expect(r.readings.map((x) => x.value)).toEqual(Array.from({ length: n }, (_, i) => i));
    expect(r.sinkCalls).toBeLessThan(n / 10);
  });

  it("keeps the readings of a failed commit and offers them again, in order, before newer lines", async () => {
    const r = await rig({});
    await r.waitFor(() => r.src.state().status === "up", "port open");
    let failures = 0;
    r.sinkBehaviour = async (batch) => {
      if (batch.some((x) => x.value === 1) && failures < 2) {
        failures++;
        throw Object.assign(new Error("outbox refuses new events (disk_floor)"), { code: "EDGEHOOK_DISK_FLOOR" });
      }
    };
    await r.pty.write("a=1\n");
    await r.waitFor(() => failures === 1, "the first refusal");
    expect(r.src.state().held).toBe(1);
    await r.pty.write("a=2\n");
    await r.waitFor(() => r.readings.length === 2, "both readings stored");
    expect(r.readings.map((x) => x.value)).toEqual([1, 2]);
    expect(failures).toBe(2);
    expect(r.src.state().held).toBeUndefined();
    const warned = r.logs.filter((l) => String(l.msg).startsWith("outbox refuses new readings: holding"));
    expect(warned).toHaveLength(1); // once per episode, not per retry
    expect(r.logs.some((l) => String(l.msg).startsWith("stored 2 held serial readings"))).toBe(true);
  });

  it("while refused, holds at most MAX_HELD readings: the oldest beyond are dropped, counted and reported", async () => {
    const r = await rig({});
    await r.waitFor(() => r.src.state().status === "up", "port open");
    let refusing = true;
    r.sinkBehaviour = async () => {
      if (refusing)
        throw Object.assign(new Error("outbox refuses new events (full)"), { code: "EDGEHOOK_OUTBOX_FULL" });
    };
    const total = MAX_HELD + 250;
    for (let i = 0; i < total; i += 500) {
      await r.pty.write(Array.from({ length: Math.min(500, total - i) }, (_, j) => `i=${i + j}\n`).join(""));
    }
    const dropped = () =>
      metric(r.metrics, "edgehook_readings_dropped_total", { source: "serial:dev", reason: "held_overflow" });
    await waitUntil(async () => (await dropped()) === total - MAX_HELD, "every overflow counted", 10_000);
    expect(r.src.state().held).toBe(MAX_HELD);
    await r.waitFor(
      () => r.logs.some((l) => l.code === "EDGEHOOK_READINGS_DROPPED"),
      "the first drop reported at once",
    );
    refusing = false;
    await r.waitFor(() => r.readings.length === MAX_HELD, "the held readings stored", 15_000);
    // The newest were kept, in order.
    expect(r.readings.map((x) => x.value)).toEqual(Array.from({ length: MAX_HELD }, (_, i) => total - MAX_HELD + i));
    const reported = r.logs.filter((l) => l.code === "EDGEHOOK_READINGS_DROPPED");
    expect(reported.reduce((n, l) => n + (l.dropped as number), 0)).toBe(total - MAX_HELD);
  });

  it("writes the poll command while open", async () => {
    const r = await rig({ poll: { command: "READ\n", every: "100ms" } });
    await r.waitFor(() => r.src.state().status === "up", "port open");
    const seen: Buffer[] = [];
    r.pty.readDevice((d) => seen.push(d));
    await r.waitFor(
      () =>
        (
          Buffer.concat(seen)
            .toString()
            .match(/READ\n/g) ?? []
        ).length >= 2,
      "two polls",
    );
  });
});
