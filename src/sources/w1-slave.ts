/**
 * The kernel's w1_therm `w1_slave` file, pure. Two lines: the scratchpad with the
 * driver's CRC verdict, then the scratchpad again with the temperature in millidegrees:
 *
 *   72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
 *   72 01 4b 46 7f ff 0e 10 57 t=23125
 *
 * `w1_slave` is read rather than the newer `temperature` attribute: it exists on every
 * kernel, and only it shows the CRC verdict and the raw scratchpad, which the checks
 * below need (`temperature` reports 85.000 after a power-on reset just the same).
 */

/**
 * Probe ids of the temperature families w1_therm reads: 10 DS18S20, 22 DS1822, 28 DS18B20,
 * 3b DS1825/MAX31850, 42 DS28EA00 (family code, a dash, 48-bit serial in hex).
 */
export const W1_PROBE_ID = /^(10|22|28|3b|42)-[0-9a-f]{12}$/;

export type W1Rejection =
  /** The driver's CRC check said NO: bits were lost on the wire (long cable, weak pull-up). */
  | "crc"
  /** 85.000 °C: the value a DS18B20 holds after power-on, before its first conversion (parasite power, brown-out). */
  | "power_on_value"
  /** -127 °C, or a scratchpad of zeros: the probe did not take part (data line held low, loose wire). */
  | "sensor_error"
  /** Not two lines of the form above. */
  | "bad_format";

export type W1Result = { ok: true; celsius: number } | { ok: false; reason: W1Rejection };

const CRC_LINE = /^((?:[0-9a-f]{2} ){9}): crc=[0-9a-f]{2} (YES|NO)$/i;
const T_LINE = /^(?:[0-9a-f]{2} ){9}t=(-?\d+)$/i;

export function parseW1Slave(text: string): W1Result {
  const lines = text.trim().split(/\r?\n/);
  if (lines.length !== 2) return { ok: false, reason: "bad_format" };
  const crc = CRC_LINE.exec(lines[0]!.trim());
  if (!crc) return { ok: false, reason: "bad_format" };
  if (crc[2]!.toUpperCase() !== "YES") return { ok: false, reason: "crc" };
  const t = T_LINE.exec(lines[1]!.trim());
  if (!t) return { ok: false, reason: "bad_format" };
  const milli = Number(t[1]);
  if (milli === 85_000) return { ok: false, reason: "power_on_value" };
  // The CRC of nine zero bytes is zero: the driver says YES to a probe that sent nothing.
  if (milli === -127_000 || /^(00 ){9}$/.test(crc[1]!)) return { ok: false, reason: "sensor_error" };
  return { ok: true, celsius: milli / 1000 };
}
