/**
 * The modbus:, onewire: and files: sections: defaults, and what a wrong file is told.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/load.js";
import { planReads } from "../../src/sources/modbus-registers.js";
import { configProblems } from "../support/config-problems.js";

const HEAD = "version: 1\nagent: { id: pi }\n";

describe("config: polled sources", () => {
  it("accepts the issue's Modbus example and fills in the defaults", () => {
    const { config } = parseConfig(
      `${HEAD}modbus:
  - name: boiler-room
    url: tcp://192.168.1.50:502
    every: 10s
    timeout: 1s
    devices:
      - unit_id: 1
        sensor: boiler
        registers:
          - { metric: temperature, table: holding, address: 0, type: int16, scale: 0.1 }
          - { metric: energy, table: input, address: 10, type: uint32, word_order: little }
          - { metric: pump_on, table: coil, address: 3 }
onewire: { every: 30s }
files:
  - { path: /sys/class/thermal/thermal_zone0/temp, every: 30s, sensor: pi, metric: soc_temperature, scale: 0.001 }
`,
      "agent.yaml",
    );
    const bus = config.modbus[0]!;
    expect(bus).toMatchObject({ every: 10_000, timeout: 1_000, max_gap: 10, reopen_max: 30_000, labels: {} });
    expect(bus.devices[0]!.registers).toEqual([
      {
        metric: "temperature",
        table: "holding",
        address: 0,
        type: "int16",
        word_order: "big",
        byte_order: "big",
        scale: 0.1,
        offset: 0,
        min: undefined,
        max: undefined,
      },
      {
        metric: "energy",
        table: "input",
        address: 10,
        type: "uint32",
        word_order: "little",
        byte_order: "big",
        scale: 1,
        offset: 0,
        min: undefined,
        max: undefined,
      },
      {
        metric: "pump_on",
        table: "coil",
        address: 3,
        type: "uint16",
        word_order: "big",
        byte_order: "big",
        scale: 1,
        offset: 0,
        min: undefined,
        max: undefined,
      },
    ]);
    expect(config.onewire).toEqual({
      every: 30_000,
      root: "/sys/bus/w1/devices",
      metric: "temperature",
      names: {},
      labels: {},
    });
    expect(config.files[0]).toMatchObject({ format: "number", scale: 0.001, offset: 0, max_size: 65_536 });
  });

  it("has no polled source unless configured", () => {
    const { config } = parseConfig(HEAD, "agent.yaml");
    expect([config.modbus, config.onewire, config.files]).toEqual([[], undefined, []]);
  });

  it("reports every mistake with its position", () => {
    expect(
      configProblems(`${HEAD}modbus:
  - name: bus
    url: rtu:///dev/ttyUSB0?parity=mark
    every: 50ms
    devices:
      - unit_id: 0
        sensor: a
        registers:
          - { metric: on, table: coil, address: 1, type: int16 }
          - { metric: big, address: 65535, type: float32 }
          - { metric: big, address: 3, scale: 0 }
      - unit_id: 0
        sensor: b
        registers: []
  - name: bus
    url: modbus://x
    devices: [{ unit_id: 1, sensor: c, registers: [{ metric: v, address: 0 }] }]
onewire: { names: { "28-xyz": boiler }, every: 500ms }
files:
  - { path: /tmp/a, sensor: s, format: csv }
`),
    ).toEqual([
      "5:10: modbus.0.url: parity must be none, even or odd (is 'rtu:///dev/ttyUSB0?parity=mark')",
      "6:12: modbus.0.every: must be at least 100ms (is '50ms')",
      "11:58: modbus.0.devices.0.registers.0.type: only for holding and input registers (coils are on/off) (is 'int16')",
      "12:37: modbus.0.devices.0.registers.1.address: a float32 needs 2 registers from here; the last address is 65535 (is '65535')",
      "13:23: modbus.0.devices.0.registers.2.metric: big is read twice from this device (is 'big')",
      "13:47: modbus.0.devices.0.registers.2.scale: must be a number other than 0 (is '0')",
      "14:18: modbus.0.devices.1.unit_id: unit 0 is listed twice on this bus (is '0')",
      "16:20: modbus.0.devices.1.registers: must list at least one register",
      "17:11: modbus.1.name: another bus is named bus (is 'bus')",
      "18:10: modbus.1.url: must be tcp://host:port or rtu:///dev/... (is 'modbus://x')",
      "20:31: onewire.names.28-xyz: must be a probe id like 28-0316a2795fff (lower case, as under /sys/bus/w1/devices) (is 'boiler')",
      "20:48: onewire.every: must be at least 1s (is '500ms')",
      '22:40: files.0.format: Invalid option: expected one of "number"|"kv"|"json" (is \'csv\')',
    ]);
  });

  it("refuses two devices with one unit id, unit 0 on RTU, one adapter twice and a metric read twice", () => {
    expect(
      configProblems(`${HEAD}modbus:
  - name: a
    url: rtu:///dev/ttyUSB0
    devices:
      - { unit_id: 0, sensor: x, registers: [{ metric: v, address: 0 }, { metric: v, address: 1 }] }
      - { unit_id: 0, sensor: y, registers: [{ metric: v, address: 0 }] }
  - name: b
    url: rtu:///dev/ttyUSB0?baud_rate=19200
    timeout: 20s
    devices: [{ unit_id: 3, sensor: z, registers: [{ metric: v, address: 0 }] }]
`),
    ).toEqual([
      "7:20: modbus.0.devices.0.unit_id: must be 1–247 on an RTU bus (0 is broadcast, nothing answers it) (is '0')",
      "7:83: modbus.0.devices.0.registers.1.metric: v is read twice from this device (is 'v')",
      "8:20: modbus.0.devices.1.unit_id: unit 0 is listed twice on this bus (is '0')",
      "8:20: modbus.0.devices.1.unit_id: must be 1–247 on an RTU bus (0 is broadcast, nothing answers it) (is '0')",
      "10:10: modbus.1.url: /dev/ttyUSB0 is already a bus; list all its devices under one entry (is 'rtu:///dev/ttyUSB0?baud_rate=19200')",
      "11:14: modbus.1.timeout: must be shorter than every (is '20s')",
    ]);
  });

  it("accepts every configuration in docs/sources.md, and the SDM120 example reads each meter in three requests", () => {
    const doc = readFileSync(new URL("../../docs/sources.md", import.meta.url), "utf8");
    const blocks = [...doc.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!);
    expect(blocks.length).toBeGreaterThanOrEqual(6);
    const dest = "destinations:\n  ops: { url: http://127.0.0.1:8080/hooks, signature: none }\n";
    for (const block of blocks) {
      expect(configProblems(`${HEAD}${dest}${block}`)).toEqual([]);
    }
    const sdm = blocks.find((b) => b.includes("SDM") || b.includes("heat-pump"))!;
    const { config } = parseConfig(`${HEAD}${dest}${sdm}`, "agent.yaml");
    const bus = config.modbus[0]!;
    expect(bus.devices.map((d) => planReads(d.registers, bus.max_gap).map((r) => [r.address, r.count]))).toEqual([
      [
        [0, 32],
        [70, 4],
        [342, 2],
      ],
      [
        [0, 32],
        [70, 4],
        [342, 2],
      ],
    ]);
  });
});
