/**
 * Where a Modbus bus is: `tcp://host:port` (port 502 when omitted) or
 * `rtu:///dev/serial/by-id/...?baud_rate=9600&parity=even&data_bits=8&stop_bits=1`.
 * Pure; the schema uses it to validate, the source to connect.
 */

export type ModbusEndpoint =
  | { transport: "tcp"; host: string; port: number }
  | {
      transport: "rtu";
      path: string;
      baud_rate: number;
      parity: "none" | "even" | "odd";
      data_bits: 7 | 8;
      stop_bits: 1 | 2;
    };

const RTU_PARAMS = new Set(["baud_rate", "parity", "data_bits", "stop_bits"]);

/** The endpoint, or a message saying what is wrong with the URL. */
export function parseModbusUrl(text: string): ModbusEndpoint | { error: string } {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return { error: "must be tcp://host:port or rtu:///dev/..." };
  }
  if (url.protocol === "tcp:") {
    const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
    if (!host) return { error: "tcp:// needs a host, e.g. tcp://192.168.1.50:502" };
    if (url.pathname !== "" && url.pathname !== "/") return { error: "tcp:// takes no path" };
    if (url.search) return { error: "tcp:// takes no parameters" };
    return { transport: "tcp", host, port: url.port ? Number(url.port) : 502 };
  }
  if (url.protocol === "rtu:") {
    if (url.host) return { error: "rtu:// names a device path: rtu:///dev/ttyUSB0 (three slashes)" };
    const path = decodeURIComponent(url.pathname);
    if (!path.startsWith("/")) return { error: "rtu:// needs an absolute device path, e.g. rtu:///dev/ttyUSB0" };
    for (const key of url.searchParams.keys()) {
      if (!RTU_PARAMS.has(key)) return { error: `unknown parameter ${key} (baud_rate, parity, data_bits, stop_bits)` };
    }
    const q = url.searchParams;
    const baud = Number(q.get("baud_rate") ?? 9600);
    if (!Number.isInteger(baud) || baud <= 0) return { error: "baud_rate must be a positive whole number" };
    const parity = q.get("parity") ?? "none";
    if (parity !== "none" && parity !== "even" && parity !== "odd")
      return { error: "parity must be none, even or odd" };
    const dataBits = Number(q.get("data_bits") ?? 8);
    if (dataBits !== 7 && dataBits !== 8) return { error: "data_bits must be 7 or 8" };
    const stopBits = Number(q.get("stop_bits") ?? 1);
    if (stopBits !== 1 && stopBits !== 2) return { error: "stop_bits must be 1 or 2" };
    return { transport: "rtu", path, baud_rate: baud, parity, data_bits: dataBits, stop_bits: stopBits };
  }
  return { error: "must be tcp://host:port or rtu:///dev/..." };
}

/**
 * The silence Modbus RTU requires between frames: 3.5 character times, and a fixed
 * 1.75 ms above 19200 baud (Modbus over Serial Line v1.02 §2.5.1.1). A character is
 * 11 bits (start, 8 data, parity or second stop, stop).
 */
export function rtuFrameGapMs(baud: number): number {
  return baud > 19_200 ? 1.75 : (3.5 * 11 * 1000) / baud;
}
