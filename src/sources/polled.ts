/**
 * Builds the polled sources of a configuration (Modbus buses, 1-Wire probes, files).
 * Each kind's module is imported only when configured: Modbus brings modbus-serial and
 * serialport's native binding, which a device without Modbus should not pay for.
 */
import type { Clock } from "../clock.js";
import type { Config } from "../config/schema.js";
import type { Logger } from "../ops/logger.js";
import type { Metrics } from "../ops/metrics.js";
import type { ReadingSink, Source } from "./reading.js";

export interface PolledSourceDeps {
  sink: ReadingSink;
  logger: Logger;
  metrics: Metrics;
  clock: Clock;
  /** Relative paths (1-Wire root, files) are relative to this: the configuration file's directory. */
  baseDir: string;
}

/** True when the configuration has any polled source. */
export function hasPolledSources(config: Config): boolean {
  return config.modbus.length > 0 || config.onewire !== undefined || config.files.length > 0;
}

export async function polledSources(config: Config, deps: PolledSourceDeps): Promise<Source[]> {
  const { sink, logger, metrics, clock, baseDir } = deps;
  const out: Source[] = [];
  if (config.modbus.length > 0) {
    const { ModbusSource } = await import("./modbus.js");
    for (const bus of config.modbus) {
      const log = logger.child({ component: "modbus", bus: bus.name });
      out.push(new ModbusSource({ config: bus, sink, logger: log, metrics, clock }));
    }
  }
  if (config.onewire) {
    const { OnewireSource } = await import("./onewire.js");
    const log = logger.child({ component: "onewire" });
    out.push(new OnewireSource({ config: config.onewire, sink, logger: log, metrics, clock, baseDir }));
  }
  if (config.files.length > 0) {
    const { FileSource } = await import("./files.js");
    for (const file of config.files) {
      const log = logger.child({ component: "files", path: file.path });
      out.push(new FileSource({ config: file, sink, logger: log, metrics, clock, baseDir }));
    }
  }
  return out;
}

/** For `edgehook check`: "1 Modbus bus (2 devices, 14 registers), 1-Wire probes, 1 polled file, " or "". */
export function describePolledSources(config: Config): string {
  const parts: string[] = [];
  if (config.modbus.length > 0) {
    const devices = config.modbus.reduce((n, b) => n + b.devices.length, 0);
    const registers = config.modbus.reduce((n, b) => n + b.devices.reduce((m, d) => m + d.registers.length, 0), 0);
    parts.push(`${config.modbus.length} Modbus bus(es) (${devices} device(s), ${registers} register(s))`);
  }
  if (config.onewire) parts.push("1-Wire probes");
  if (config.files.length > 0) parts.push(`${config.files.length} polled file(s)`);
  return parts.map((p) => `${p}, `).join("");
}
