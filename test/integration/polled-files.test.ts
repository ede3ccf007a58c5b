/**
 * OnewireSource on a sysfs tree the test writes (as the kernel's w1_therm lays it out)
 * and FileSource on real files: probes that appear and disappear, the readings the
 * driver marks bad, files that vanish and come back, content that cannot be decoded.
 */
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { systemClock } from "../../src/clock.js";
import { configSchema } from "../../src/config/schema.js";
import { createLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import { FileSource } from "../../src/sources/files.js";
import { OnewireSource } from "../../src/sources/onewire.js";
import type { Reading, Source } from "../../src/sources/reading.js";
import { tempDir } from "../support/agent-process.js";

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function dir(): string {
  const d = tempDir("edgehook-sysfs-");
  cleanups.push(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

interface Rig<S extends Source> {
  src: S;
  readings: Reading[];
  logs: Record<string, unknown>[];
  metrics: Metrics;
  waitFor(pred: () => boolean, what: string): Promise<void>;
  count(name: string, labels: Record<string, string>): Promise<number>;
}

async function rig<S extends Source>(
  make: (deps: {
    sink: (r: Reading[]) => Promise<void>;
    logger: ReturnType<typeof createLogger>;
    metrics: Metrics;
  }) => S,
): Promise<Rig<S>> {
  const readings: Reading[] = [];
  const logs: Record<string, unknown>[] = [];
  const logger = createLogger("info", { write: (s: string) => logs.push(JSON.parse(s)) });
  const metrics = new Metrics();
  const src = make({
    sink: async (r) => {
      readings.push(...r);
    },
    logger,
    metrics,
  });
  await src.start();
  cleanups.push(() => src.stop());
  return {
    src,
    readings,
    logs,
    metrics,
    async waitFor(pred, what) {
      const deadline = Date.now() + 10_000;
      while (!pred()) {
        if (Date.now() > deadline)
          throw new Error(`timed out waiting for ${what}; state ${JSON.stringify(src.state())}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    async count(name, labels) {
      const m = (await metrics.registry.getMetricsAsJSON()).find((x) => x.name === name);
      const v = m?.values.find((x) => Object.entries(labels).every(([k, val]) => x.labels[k] === val));
      return Number(v?.value ?? 0);
    },
  };
}

// ---------------------------------------------------------------- 1-Wire

const scratch = "72 01 4b 46 7f ff 0e 10 57";
const w1 = (milli: number, crc = "YES") => `${scratch} : crc=57 ${crc}\n${scratch} t=${milli}\n`;

function probe(root: string, id: string, content: string): void {
  mkdirSync(join(root, id), { recursive: true });
  writeFileSync(join(root, id, "w1_slave"), content);
}

async function onewire(root: string, extra: Record<string, unknown> = {}) {
  const config = configSchema.parse({ version: 1, agent: { id: "a" }, onewire: { root, ...extra } }).onewire!;
  // Faster than the schema allows users (1 s): the tree is files, not a bus.
  return rig(
    (deps) => new OnewireSource({ ...deps, config: { ...config, every: 150 }, clock: systemClock, baseDir: "/" }),
  );
}

describe("OnewireSource", () => {
  it("reads every temperature probe, names them from the map, and counts what the driver marks bad", async () => {
    const root = dir();
    probe(root, "28-0316a2795fff", w1(23125));
    probe(root, "28-000005e2fdc2", w1(-10062));
    probe(root, "10-000802b4d5e0", w1(21000, "NO"));
    probe(root, "22-000000a1b2c3", w1(85000));
    probe(root, "3b-000000c0ffee", w1(-127000));
    mkdirSync(join(root, "w1_bus_master1")); // the bus master and other families are not probes
    probe(root, "01-000012345678", "not a thermometer");
    const r = await onewire(root, { names: { "28-0316a2795fff": "boiler-in" }, labels: { site: "cellar" } });
    await r.waitFor(() => r.readings.length >= 6, "three polls");
    const latest = (sensor: string) => r.readings.filter((x) => x.sensor === sensor).at(-1);
    expect(latest("boiler-in")).toMatchObject({
      metric: "temperature",
      value: 23.125,
      source: "onewire",
      labels: { site: "cellar" },
    });
    expect(latest("28-000005e2fdc2")?.value).toBe(-10.062);
    expect(new Set(r.readings.map((x) => x.sensor))).toEqual(new Set(["boiler-in", "28-000005e2fdc2"]));
    const polls = r.readings.length / 2;
    expect(await r.count("edgehook_source_errors_total", { source: "onewire", reason: "crc" })).toBeGreaterThanOrEqual(
      polls,
    );
    expect(
      await r.count("edgehook_decode_errors_total", { source: "onewire", reason: "power_on_value" }),
    ).toBeGreaterThanOrEqual(polls);
    expect(
      await r.count("edgehook_decode_errors_total", { source: "onewire", reason: "sensor_error" }),
    ).toBeGreaterThanOrEqual(polls);
    // At most once a minute per reason, and each probe's failure once.
    const skipped = r.logs.filter((l) => l.msg === "skipped a 1-Wire reading").map((l) => l.reason);
    expect(skipped.sort()).toEqual(["crc", "power_on_value", "sensor_error"]);
    expect(r.logs.filter((l) => l.msg === "1-Wire probe gives no reading")).toHaveLength(3);
    const state = r.src.state();
    expect(state).toMatchObject({ kind: "onewire", status: "up", detail: "3 of 5 probes give no reading" });
    expect(state.devices?.map((d) => [d.id, d.sensor, d.status, d.detail])).toEqual([
      ["28-0316a2795fff", "boiler-in", "up", undefined],
      ["10-000802b4d5e0", "10-000802b4d5e0", "down", "crc"],
      ["22-000000a1b2c3", "22-000000a1b2c3", "down", "power_on_value"],
      ["28-000005e2fdc2", "28-000005e2fdc2", "up", undefined],
      ["3b-000000c0ffee", "3b-000000c0ffee", "down", "sensor_error"],
    ]);
  });

  it("picks up probes that appear, forgets unnamed ones that go, and reports named ones missing", async () => {
    const root = dir();
    probe(root, "28-0316a2795fff", w1(20000));
    probe(root, "28-000005e2fdc2", w1(21000));
    const r = await onewire(root, { names: { "28-0316a2795fff": "boiler-in" } });
    await r.waitFor(() => r.readings.length >= 2, "first poll");
    expect(r.logs.find((l) => l.msg === "1-Wire probes found")?.probes).toEqual([
      { id: "28-000005e2fdc2", sensor: "28-000005e2fdc2" },
      { id: "28-0316a2795fff", sensor: "boiler-in" },
    ]);

    probe(root, "28-00000abcdef0", w1(19500));
    await r.waitFor(() => r.readings.some((x) => x.sensor === "28-00000abcdef0"), "the new probe read");
    expect(r.logs.filter((l) => l.msg === "1-Wire probe appeared")).toEqual([
      expect.objectContaining({ id: "28-00000abcdef0", sensor: "28-00000abcdef0" }),
    ]);

    rmSync(join(root, "28-000005e2fdc2"), { recursive: true });
    rmSync(join(root, "28-0316a2795fff"), { recursive: true });
    await r.waitFor(() => r.src.state().devices?.length === 2, "the unnamed probe forgotten");
    await r.waitFor(() => r.logs.some((l) => l.msg === "1-Wire probe missing"), "the named one reported");
    expect(r.src.state().devices?.map((d) => [d.id, d.status, d.detail])).toEqual([
      ["28-0316a2795fff", "down", "not on the bus"],
      ["28-00000abcdef0", "up", undefined],
    ]);
    expect(r.logs.filter((l) => l.msg === "1-Wire probe disappeared")).toEqual([
      expect.objectContaining({ id: "28-000005e2fdc2" }),
    ]);

    probe(root, "28-0316a2795fff", w1(20500));
    await r.waitFor(() => r.readings.some((x) => x.sensor === "boiler-in" && x.value === 20.5), "the named probe back");
    expect(r.logs.filter((l) => l.msg === "1-Wire probe gives readings again")).toHaveLength(1);
    expect(r.src.state().status).toBe("up");
  });

  it("is down while the bus is not there, and reads once it is", async () => {
    const root = join(dir(), "devices");
    const r = await onewire(root);
    await r.waitFor(() => r.src.state().status === "down", "down");
    expect(r.src.state().detail).toBe("ENOENT");
    await new Promise((res) => setTimeout(res, 400)); // several polls find nothing
    expect(r.logs.filter((l) => l.msg === "1-Wire bus not found; looking again every poll")).toHaveLength(1);
    mkdirSync(root);
    await r.waitFor(() => r.src.state().detail?.startsWith("no temperature probes") === true, "a bus without probes");
    expect(r.src.state().status).toBe("down");
    probe(root, "28-0316a2795fff", w1(20000));
    await r.waitFor(() => r.readings.length > 0, "a reading");
    expect(r.src.state().status).toBe("up");
    expect(r.logs.filter((l) => l.msg === "1-Wire bus is back")).toHaveLength(1);
  });
});

// ---------------------------------------------------------------- files

async function fileSource(entry: Record<string, unknown>, baseDir = "/") {
  const config = configSchema.parse({ version: 1, agent: { id: "a" }, files: [{ every: "100ms", ...entry }] })
    .files[0]!;
  return rig((deps) => new FileSource({ ...deps, config, clock: systemClock, baseDir }));
}

describe("FileSource", () => {
  it("reads a sysfs-style number and scales it", async () => {
    const d = dir();
    mkdirSync(join(d, "thermal_zone0"));
    writeFileSync(join(d, "thermal_zone0/temp"), "52312\n");
    // A path relative to the configuration file's directory.
    const r = await fileSource(
      { path: "thermal_zone0/temp", sensor: "pi", metric: "soc_temperature", scale: 0.001 },
      d,
    );
    await r.waitFor(() => r.readings.length >= 2, "two reads");
    expect(r.readings[0]).toMatchObject({
      sensor: "pi",
      metric: "soc_temperature",
      value: 52.312,
      source: "file:thermal_zone0/temp",
    });
    writeFileSync(join(d, "thermal_zone0/temp"), "61000\n");
    await r.waitFor(() => r.readings.at(-1)?.value === 61, "the new value");
    expect(r.src.state()).toMatchObject({ name: "file:thermal_zone0/temp", kind: "file", status: "up" });
    expect(await r.count("edgehook_readings_total", { source: "file:thermal_zone0/temp" })).toBe(r.readings.length);
  });

  it("reads several metrics from a kv file and a json file", async () => {
    const d = dir();
    writeFileSync(join(d, "ups"), "charge=97 load=12 status=OL\n");
    writeFileSync(join(d, "status.json"), JSON.stringify({ id: "boiler", t: { water: 61.5, flue: 120 } }));
    const kv = await fileSource({ path: join(d, "ups"), name: "ups", sensor: "ups", format: "kv" });
    const js = await fileSource({
      path: join(d, "status.json"),
      sensor: "{id}",
      format: "json",
      values: { water: "t.water", flue: "t.flue" },
      scale: 2,
      offset: 1,
    });
    await kv.waitFor(() => kv.readings.length >= 2, "kv");
    await js.waitFor(() => js.readings.length >= 2, "json");
    expect(kv.readings.slice(0, 2).map((x) => [x.sensor, x.metric, x.value, x.source])).toEqual([
      ["ups", "charge", 97, "file:ups"],
      ["ups", "load", 12, "file:ups"],
    ]);
    expect(js.readings.slice(0, 2).map((x) => [x.sensor, x.metric, x.value])).toEqual([
      ["boiler", "water", 124],
      ["boiler", "flue", 241],
    ]);
  });

  it("is down while the file is missing, logs once each way, and counts content it cannot decode", async () => {
    const d = dir();
    const path = join(d, "value");
    const r = await fileSource({ path, sensor: "s", max_size: 16 });
    await r.waitFor(() => r.src.state().status === "down", "down");
    expect(r.src.state().detail).toBe("ENOENT");
    await new Promise((res) => setTimeout(res, 300));
    expect(r.logs.filter((l) => l.msg === "polled file cannot be read; trying again every poll")).toHaveLength(1);
    expect(
      await r.count("edgehook_source_errors_total", { source: `file:${path}`, reason: "io" }),
    ).toBeGreaterThanOrEqual(2);

    writeFileSync(path, "n/a\n");
    await r.waitFor(() => r.src.state().detail === "bad_number", "bad content seen");
    writeFileSync(path, "1234567890123456789\n");
    await r.waitFor(() => r.src.state().detail === "too_large", "too large seen");
    writeFileSync(path, "42\n");
    await r.waitFor(() => r.readings.length > 0, "a reading");
    expect(r.readings[0]!.value).toBe(42);
    expect(r.src.state()).toMatchObject({ status: "up" });
    expect(
      await r.count("edgehook_decode_errors_total", { source: `file:${path}`, reason: "bad_number" }),
    ).toBeGreaterThanOrEqual(1);
    expect(
      await r.count("edgehook_decode_errors_total", { source: `file:${path}`, reason: "too_large" }),
    ).toBeGreaterThanOrEqual(1);
    expect(r.logs.filter((l) => l.msg === "polled file can be read again")).toHaveLength(1);
    const skipped = r.logs.filter((l) => l.msg === "skipped a file whose content could not be decoded");
    expect(skipped.map((l) => l.reason)).toEqual(["bad_number", "too_large"]);
    expect(skipped[0]!.content).toBe("n/a?");
  });
});
