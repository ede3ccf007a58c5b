/**
 * `edgehook ports`: lists serial ports with the stable names to put in the config.
 *
 *   edgehook ports          a table
 *   edgehook ports --json   one JSON array
 */
import { ExitCode } from "../errors.js";
import { type ListOptions, listSerialPorts } from "../sources/ports.js";

export interface Output {
  write(text: string): unknown;
}

const USAGE = "usage: edgehook ports [--json]\n";

export async function portsCommand(args: readonly string[], out: Output, options: ListOptions = {}): Promise<number> {
  let json = false;
  for (const a of args) {
    if (a === "--json") json = true;
    else if (a === "-h" || a === "--help") {
      out.write(USAGE);
      return ExitCode.OK;
    } else {
      out.write(`edgehook ports: unknown argument '${a}'\n${USAGE}`);
      return ExitCode.USAGE;
    }
  }
  const ports = await listSerialPorts(options);
  if (json) {
    out.write(`${JSON.stringify(ports, null, 2)}\n`);
    return ExitCode.OK;
  }
  if (ports.length === 0) {
    out.write("No serial ports found.\n");
    return ExitCode.OK;
  }
  for (const p of ports) {
    const about = [p.manufacturer, p.serialNumber && `serial ${p.serialNumber}`].filter(Boolean).join(", ");
    out.write(`${p.path}${about ? `  (${about})` : ""}\n`);
    for (const a of p.aliases) out.write(`  ${a}\n`);
  }
  if (ports.some((p) => p.aliases.some((a) => a.includes("/by-id/")))) {
    out.write(
      "\nUse the /dev/serial/by-id/... name as serial[].path: it stays the same when the device is replugged.\n",
    );
  }
  return ExitCode.OK;
}
