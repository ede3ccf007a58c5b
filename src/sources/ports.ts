/**
 * Finds serial ports and their stable names. SerialPort.list() needs udev, which
 * containers and minimal images lack, so the /dev tree is read directly as well:
 * /dev/serial/by-id (names that survive replugging into another USB socket) and the
 * usual device nodes of USB adapters and the Raspberry Pi UART.
 */
import { readdirSync, realpathSync, statSync } from "node:fs";
import { join } from "node:path";

export interface PortInfo {
  /** The device node, e.g. /dev/ttyUSB0. */
  path: string;
  /** Stable names pointing at it: /dev/serial/by-id/..., /dev/serial0. */
  aliases: string[];
  manufacturer?: string;
  serialNumber?: string;
}

export interface ListOptions {
  /** Root of the device tree; tests point it at a temp directory. Default /dev. */
  devDir?: string;
  /** Ask the serialport library too (udev); off in tests. Default on. */
  native?: boolean;
}

const NODE_PATTERNS = [/^ttyUSB\d+$/, /^ttyACM\d+$/, /^ttyAMA\d+$/, /^ttyS0$/, /^serial\d$/, /^rfcomm\d+$/];

export async function listSerialPorts(options: ListOptions = {}): Promise<PortInfo[]> {
  const devDir = options.devDir ?? "/dev";
  const byPath = new Map<string, PortInfo>();
  const entry = (path: string): PortInfo => {
    let p = byPath.get(path);
    if (!p) {
      p = { path, aliases: [] };
      byPath.set(path, p);
    }
    return p;
  };
  const real = (p: string): string | undefined => {
    try {
      return realpathSync(p);
    } catch {
      return undefined; // a dangling link: the device is gone
    }
  };

  const aliases: [alias: string, target: string][] = [];
  for (const name of safeReaddir(devDir)) {
    if (!NODE_PATTERNS.some((re) => re.test(name))) continue;
    const full = join(devDir, name);
    const target = real(full);
    if (!target) continue;
    if (target !== full) aliases.push([full, target]);
    else if (isDevice(full)) entry(full);
  }
  for (const dir of ["serial/by-id", "serial/by-path"]) {
    for (const name of safeReaddir(join(devDir, dir))) {
      const full = join(devDir, dir, name);
      const target = real(full);
      if (target) aliases.push([full, target]);
    }
  }

  if (options.native ?? true) {
    try {
      // serialport is CommonJS: its exports are the default export's properties, in Node.js and in
      // the bundle alike (which loads it with require(), scripts/bundle.mjs).
      const { SerialPort } = (await import("serialport")).default;
      for (const p of await SerialPort.list()) {
        const e = entry(real(p.path) ?? p.path);
        if (p.manufacturer) e.manufacturer = p.manufacturer;
        if (p.serialNumber) e.serialNumber = p.serialNumber;
      }
    } catch {
      // No udev (containers): the /dev listing above is what there is.
    }
  }

  // by-id first: it is the name to put in the config.
  aliases.sort(([a], [b]) => Number(b.includes("/by-id/")) - Number(a.includes("/by-id/")) || a.localeCompare(b));
  for (const [alias, target] of aliases) {
    const e = entry(target);
    if (!e.aliases.includes(alias)) e.aliases.push(alias);
  }
  return [...byPath.values()].sort((a, b) => a.path.localeCompare(b.path, undefined, { numeric: true }));
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

function isDevice(p: string): boolean {
  try {
    const s = statSync(p);
    // Character devices in production; plain files stand in for them in tests.
    return s.isCharacterDevice() || s.isFile();
  } catch {
    return false;
  }
}
