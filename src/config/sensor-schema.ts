/**
 * The `modbus:`, `onewire:` and `files:` sections of the one schema (schema.ts puts them
 * in place). Polled sources: each reads its devices every `every` and produces the
 * same Readings as MQTT and serial.
 */
import { z } from "zod";
import { isBitTable, type RegisterSpec, TYPE_WORDS } from "../sources/modbus-registers.js";
import { parseModbusUrl } from "../sources/modbus-url.js";
import { W1_PROBE_ID } from "../sources/w1-slave.js";
import { duration, size } from "./fields.js";

const sourceName = (what: string) =>
  z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, `${what} must be letters, digits, '.', '_' or '-'`);
const labels = z.record(z.string(), z.string());

/** A duration with a floor: polling faster than this only loads the bus. */
const interval = (minMs: number, dflt: number) =>
  duration()
    .refine((ms) => ms >= minMs, `must be at least ${minMs >= 1000 ? `${minMs / 1000}s` : `${minMs}ms`}`)
    .default(dflt);

// ---------------------------------------------------------------- modbus

const register = z
  .strictObject({
    /** Metric name of the reading. */
    metric: z.string().min(1),
    /** holding (FC 3), input (FC 4), coil (FC 1) or discrete (FC 2) inputs. */
    table: z.enum(["holding", "input", "coil", "discrete"]).default("holding"),
    /** Protocol address, from 0 (register 40001 of a manual is holding address 0). */
    address: z.number().int().min(0).max(65535),
    /** Registers only: int16 | uint16 | int32 | uint32 | float32 | float64 (default uint16). */
    type: z.enum(["int16", "uint16", "int32", "uint32", "float32", "float64"]).optional(),
    /** Registers only, types over 16 bits: big = high word first (ABCD), little = low word first (CDAB). */
    word_order: z.enum(["big", "little"]).optional(),
    /** Registers only: little swaps the two bytes of every register (BADC). */
    byte_order: z.enum(["big", "little"]).optional(),
    /** Registers only: value = raw × scale + offset. */
    scale: z.number().optional(),
    offset: z.number().optional(),
    /** Values outside [min, max] (after scale and offset) are counted and skipped. */
    min: z.number().optional(),
    max: z.number().optional(),
  })
  .superRefine((r, ctx) => {
    if (isBitTable(r.table)) {
      for (const key of ["type", "word_order", "byte_order", "scale", "offset", "min", "max"] as const) {
        if (r[key] !== undefined) {
          ctx.addIssue({
            code: "custom",
            path: [key],
            message: `only for holding and input registers (${r.table}s are on/off)`,
          });
        }
      }
      return;
    }
    const words = TYPE_WORDS[r.type ?? "uint16"];
    if (r.address + words - 1 > 65535) {
      ctx.addIssue({
        code: "custom",
        path: ["address"],
        message: `a ${r.type} needs ${words} registers from here; the last address is 65535`,
      });
    }
    if (r.scale !== undefined && (r.scale === 0 || !Number.isFinite(r.scale))) {
      ctx.addIssue({ code: "custom", path: ["scale"], message: "must be a number other than 0" });
    }
    if (r.min !== undefined && r.max !== undefined && r.min > r.max) {
      ctx.addIssue({ code: "custom", path: ["min"], message: "must not be above max" });
    }
  })
  .transform(
    (r): RegisterSpec => ({
      metric: r.metric,
      table: r.table,
      address: r.address,
      type: r.type ?? "uint16",
      word_order: r.word_order ?? "big",
      byte_order: r.byte_order ?? "big",
      scale: r.scale ?? 1,
      offset: r.offset ?? 0,
      min: r.min,
      max: r.max,
    }),
  );

const modbusDevice = z
  .strictObject({
    /** Modbus unit (slave) id: 1–247 on an RTU bus; a TCP device often answers to any. */
    unit_id: z.number().int().min(0).max(255),
    /** Sensor name of every reading from this device. */
    sensor: z.string().min(1),
    registers: z.array(register).min(1, "must list at least one register"),
    labels: labels.default({}),
  })
  .superRefine((d, ctx) => {
    const seen = new Set<string>();
    d.registers.forEach((r, i) => {
      if (seen.has(r.metric))
        ctx.addIssue({
          code: "custom",
          path: ["registers", i, "metric"],
          message: `${r.metric} is read twice from this device`,
        });
      seen.add(r.metric);
    });
  });

const modbusBus = z
  .strictObject({
    /** Names the bus in readings (`source: modbus:<name>`), logs and metrics. */
    name: sourceName("modbus name"),
    /** `tcp://host:502` or `rtu:///dev/serial/by-id/...?baud_rate=9600&parity=even&data_bits=8&stop_bits=1`. */
    url: z.string().superRefine((u, ctx) => {
      const e = parseModbusUrl(u);
      if ("error" in e) ctx.addIssue({ code: "custom", message: e.error });
    }),
    /** Every device is read once per `every`; a poll still running when the next is due skips it (counted). */
    every: interval(100, 10_000),
    /** How long one request waits for its answer. */
    timeout: duration().default(1_000),
    /** Unused registers (or coils) a request may read to join two reads into one. */
    max_gap: z.number().int().min(0).max(124).default(10),
    /** Longest wait between reconnect attempts after the adapter or connection went away. */
    reopen_max: duration().default(30_000),
    devices: z.array(modbusDevice).min(1, "must list at least one device"),
    labels: labels.default({}),
  })
  .superRefine((b, ctx) => {
    const e = parseModbusUrl(b.url);
    const units = new Set<number>();
    b.devices.forEach((d, i) => {
      if (units.has(d.unit_id))
        ctx.addIssue({
          code: "custom",
          path: ["devices", i, "unit_id"],
          message: `unit ${d.unit_id} is listed twice on this bus`,
        });
      units.add(d.unit_id);
      if ("transport" in e && e.transport === "rtu" && (d.unit_id < 1 || d.unit_id > 247)) {
        ctx.addIssue({
          code: "custom",
          path: ["devices", i, "unit_id"],
          message: "must be 1–247 on an RTU bus (0 is broadcast, nothing answers it)",
        });
      }
    });
    // (An `every` under its floor is reported on its own.)
    if (b.every >= 100 && b.timeout >= b.every) {
      ctx.addIssue({ code: "custom", path: ["timeout"], message: "must be shorter than every" });
    }
  });
export type ModbusBusConfig = z.output<typeof modbusBus>;
export type ModbusDeviceConfig = z.output<typeof modbusDevice>;

export const modbusSection = z
  .array(modbusBus)
  .superRefine((buses, ctx) => {
    const names = new Set<string>();
    const paths = new Set<string>();
    buses.forEach((b, i) => {
      if (names.has(b.name))
        ctx.addIssue({ code: "custom", path: [i, "name"], message: `another bus is named ${b.name}` });
      names.add(b.name);
      const e = parseModbusUrl(b.url);
      if ("transport" in e && e.transport === "rtu") {
        // One RTU adapter is one bus: two entries would fight over the port.
        if (paths.has(e.path))
          ctx.addIssue({
            code: "custom",
            path: [i, "url"],
            message: `${e.path} is already a bus; list all its devices under one entry`,
          });
        paths.add(e.path);
      }
    });
  })
  .default([]);

// ---------------------------------------------------------------- 1-Wire

export const onewireSection = z
  .strictObject({
    every: interval(1_000, 30_000),
    /** Where the kernel lists 1-Wire devices (w1-gpio overlay). Relative paths are relative to this file. */
    root: z.string().min(1).default("/sys/bus/w1/devices"),
    /** Metric of every reading (°C). */
    metric: z.string().min(1).default("temperature"),
    /** Probe id → sensor name; other probes are named by their id. */
    names: z
      .record(z.string(), z.string().min(1))
      .superRefine((names, ctx) => {
        for (const id of Object.keys(names)) {
          if (!W1_PROBE_ID.test(id)) {
            const message = "must be a probe id like 28-0316a2795fff (lower case, as under /sys/bus/w1/devices)";
            ctx.addIssue({ code: "custom", path: [id], message });
          }
        }
      })
      .default({}),
    labels: labels.default({}),
  })
  .optional();
export type OnewireConfig = NonNullable<z.output<typeof onewireSection>>;

// ---------------------------------------------------------------- polled files

const polledFile = z
  .strictObject({
    /** The file read every `every`, e.g. /sys/class/thermal/thermal_zone0/temp. Relative to this file. */
    path: z.string().min(1),
    /** Names the source (`file:<name>`) in readings, logs and metrics. Default: the path. */
    name: sourceName("files name").optional(),
    every: interval(100, 30_000),
    /** Sensor name; `{field}` takes it from a kv or json file. */
    sensor: z.string().min(1),
    /** Metric name for `number` (default `value`); for kv/json with `value`. */
    metric: z.string().min(1).optional(),
    /** What the file holds: number | kv | json (decoded as a serial line is). */
    format: z.enum(["number", "kv", "json"]).default("number"),
    value: z.string().min(1).optional(),
    values: z.record(z.string(), z.string()).optional(),
    timestamp: z.string().min(1).optional(),
    /** Numbers read are value × scale + offset (sysfs often gives millidegrees: scale 0.001). */
    scale: z.number().default(1),
    offset: z.number().default(0),
    /** A file larger than this is counted (too_large) and not decoded. */
    max_size: size().default(65_536),
    labels: labels.default({}),
  })
  .superRefine((f, ctx) => {
    if (f.scale === 0 || !Number.isFinite(f.scale))
      ctx.addIssue({ code: "custom", path: ["scale"], message: "must be a number other than 0" });
  });
export type PolledFileConfig = z.output<typeof polledFile>;

export const filesSection = z
  .array(polledFile)
  .superRefine((files, ctx) => {
    const names = new Set<string>();
    files.forEach((f, i) => {
      const n = f.name ?? f.path;
      if (names.has(n))
        ctx.addIssue({
          code: "custom",
          path: [i, f.name ? "name" : "path"],
          message: `another entry is named ${n}; give each a name`,
        });
      names.add(n);
    });
  })
  .default([]);
