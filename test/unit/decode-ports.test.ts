/** `edgehook ports` on a fake /dev tree: by-id names, Pi UART alias, dangling links, no udev. */
import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { portsCommand } from "../../src/cli/ports.js";
import { listSerialPorts } from "../../src/sources/ports.js";

function fakeDev(): string {
  const dev = mkdtempSync(join(tmpdir(), "edgehook-dev-"));
  for (const n of ["ttyUSB0", "ttyUSB1", "ttyACM0", "ttyAMA0", "tty1", "null"]) writeFileSync(join(dev, n), "");
  mkdirSync(join(dev, "serial/by-id"), { recursive: true });
  symlinkSync("../../ttyUSB0", join(dev, "serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"));
  symlinkSync("../../ttyACM0", join(dev, "serial/by-id/usb-Arduino_Uno_7543-if00"));
  symlinkSync("../../ttyUSB9", join(dev, "serial/by-id/usb-gone-if00")); // unplugged: dangling
  symlinkSync("ttyAMA0", join(dev, "serial0"));
  return dev;
}

const capture = () => {
  let text = "";
  return { out: { write: (s: string) => (text += s) }, text: () => text };
};

describe("ports", () => {
  it("lists device nodes with their stable names, skipping dangling links and non-serial nodes", async () => {
    const dev = fakeDev();
    const ports = await listSerialPorts({ devDir: dev, native: false });
    expect(ports).toEqual([
      { path: join(dev, "ttyACM0"), aliases: [join(dev, "serial/by-id/usb-Arduino_Uno_7543-if00")] },
      { path: join(dev, "ttyAMA0"), aliases: [join(dev, "serial0")] },
      {
        path: join(dev, "ttyUSB0"),
        aliases: [join(dev, "serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0")],
      },
      { path: join(dev, "ttyUSB1"), aliases: [] },
    ]);
  });

  it("prints a table with the by-id hint", async () => {
    const dev = fakeDev();
    const c = capture();
    expect(await portsCommand([], c.out, { devDir: dev, native: false })).toBe(0);
    expect(c.text()).toContain(
      `${join(dev, "ttyUSB0")}\n  ${join(dev, "serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0")}\n`,
    );
    expect(c.text()).toContain("Use the /dev/serial/by-id/... name");
    expect(c.text()).not.toContain("usb-gone");
  });

  it("prints JSON, says so when there is nothing, and refuses unknown arguments", async () => {
    const c = capture();
    expect(await portsCommand(["--json"], c.out, { devDir: fakeDev(), native: false })).toBe(0);
    expect(JSON.parse(c.text())).toHaveLength(4);
    const empty = capture();
    const none = mkdtempSync(join(tmpdir(), "edgehook-dev-"));
    expect(await portsCommand([], empty.out, { devDir: none, native: false })).toBe(0);
    expect(empty.text()).toBe("No serial ports found.\n");
    const bad = capture();
    expect(await portsCommand(["--bogus"], bad.out, { devDir: none, native: false })).toBe(64);
    expect(bad.text()).toContain("usage: edgehook ports");
  });

  it("works where udev is missing (native listing fails or finds nothing)", async () => {
    const dev = fakeDev();
    const ports = await listSerialPorts({ devDir: dev });
    expect(ports.map((p) => p.path)).toContain(join(dev, "ttyUSB0"));
  });
});
