/**
 * Modbus register maps, pure: which read requests cover a device's registers (as few
 * as the protocol allows), and how the bytes of a response become values. No IO, so
 * every type, word order and request plan is tested with plain buffers.
 *
 * Register values travel big-endian, one 16-bit word per register (Modbus Application
 * Protocol v1.1b3 §4.2). Types wider than a word span consecutive registers; devices
 * disagree on the order of those words ("word swap", CDAB) and sometimes of the bytes
 * inside each word, hence `word_order` and `byte_order`.
 */
import { applyScale } from "./polling.js";

export type RegisterTable = "holding" | "input" | "coil" | "discrete";
export type RegisterType = "int16" | "uint16" | "int32" | "uint32" | "float32" | "float64";
export type Endian = "big" | "little";

/** One configured register (after the schema filled in the defaults). */
export interface RegisterSpec {
  metric: string;
  table: RegisterTable;
  address: number;
  /** Registers only; coils and discrete inputs are booleans. */
  type: RegisterType;
  word_order: Endian;
  byte_order: Endian;
  scale: number;
  offset: number;
  /** Values (after scale and offset) outside [min, max] are rejected as out_of_range. */
  min?: number | undefined;
  max?: number | undefined;
}

/** Registers each type spans. */
export const TYPE_WORDS: Readonly<Record<RegisterType, number>> = {
  int16: 1,
  uint16: 1,
  int32: 2,
  uint32: 2,
  float32: 2,
  float64: 4,
};

/** Protocol limits per request: 125 registers (FC 3/4), 2000 coils or inputs (FC 1/2). */
export const MAX_REGISTERS_PER_READ = 125;
export const MAX_BITS_PER_READ = 2000;

export const isBitTable = (t: RegisterTable): boolean => t === "coil" || t === "discrete";

/** Items (registers or bits) a spec occupies in its table. */
export function specWidth(spec: Pick<RegisterSpec, "table" | "type">): number {
  return isBitTable(spec.table) ? 1 : TYPE_WORDS[spec.type];
}

/** One read request: `count` items of `table` from `address`, covering `specs`. */
export interface ReadRequest {
  table: RegisterTable;
  address: number;
  count: number;
  specs: RegisterSpec[];
}

const TABLE_ORDER: readonly RegisterTable[] = ["holding", "input", "coil", "discrete"];

/**
 * The fewest requests that read every spec: per table, sorted by address, a spec joins
 * the current request when at most `maxGap` unused items lie between them and the
 * request stays within the protocol limit. Overlapping specs (one register read as two
 * types) share a request.
 */
export function planReads(specs: readonly RegisterSpec[], maxGap: number): ReadRequest[] {
  const out: ReadRequest[] = [];
  for (const table of TABLE_ORDER) {
    const limit = isBitTable(table) ? MAX_BITS_PER_READ : MAX_REGISTERS_PER_READ;
    const mine = specs
      .filter((s) => s.table === table)
      .sort((a, b) => a.address - b.address || specWidth(b) - specWidth(a));
    let cur: ReadRequest | undefined;
    for (const s of mine) {
      const end = s.address + specWidth(s);
      if (cur) {
        const curEnd = cur.address + cur.count;
        const newCount = Math.max(curEnd, end) - cur.address;
        if (s.address - curEnd <= maxGap && newCount <= limit) {
          cur.count = newCount;
          cur.specs.push(s);
          continue;
        }
      }
      cur = { table, address: s.address, count: end - s.address, specs: [s] };
      out.push(cur);
    }
  }
  return out;
}

/** One request per spec: for a device that refuses reads spanning registers it does not have. */
export function splitRequest(req: ReadRequest): ReadRequest[] {
  return req.specs.map((s) => ({ table: s.table, address: s.address, count: specWidth(s), specs: [s] }));
}

export type ValueRejection =
  /** A float register holding NaN or ±Infinity. */
  | "not_finite"
  /** Outside the configured min/max. */
  | "out_of_range"
  /** The response was shorter than the request (a device or gateway bug). */
  | "short_response";

export type DecodedValue = { ok: true; value: number | boolean } | { ok: false; reason: ValueRejection };

/**
 * The value of `spec` in a response to `req`. `registers` is the response's data bytes
 * as sent (2 per register, big-endian); `bits` the coil or input states from `req.address`.
 */
export function decodeSpec(
  spec: RegisterSpec,
  req: Pick<ReadRequest, "address">,
  response: { registers?: Uint8Array | undefined; bits?: readonly boolean[] | undefined },
): DecodedValue {
  const index = spec.address - req.address;
  if (isBitTable(spec.table)) {
    const bit = response.bits?.[index];
    return bit === undefined ? { ok: false, reason: "short_response" } : { ok: true, value: bit };
  }
  const words = TYPE_WORDS[spec.type];
  const bytes = response.registers;
  if (!bytes || bytes.length < (index + words) * 2) return { ok: false, reason: "short_response" };
  const raw = readRaw(bytes.subarray(index * 2, (index + words) * 2), spec.type, spec.word_order, spec.byte_order);
  if (!Number.isFinite(raw)) return { ok: false, reason: "not_finite" };
  const value = applyScale(raw, spec.scale, spec.offset);
  if ((spec.min !== undefined && value < spec.min) || (spec.max !== undefined && value > spec.max)) {
    return { ok: false, reason: "out_of_range" };
  }
  return { ok: true, value };
}

/** Reorders the register bytes to plain big-endian and reads them as `type`. */
export function readRaw(bytes: Uint8Array, type: RegisterType, wordOrder: Endian, byteOrder: Endian): number {
  const words = TYPE_WORDS[type];
  const be = new Uint8Array(words * 2);
  for (let w = 0; w < words; w++) {
    // Word w of the value (most significant first) is register w, or words-1-w when low word first.
    const src = (wordOrder === "big" ? w : words - 1 - w) * 2;
    const hi = byteOrder === "big" ? bytes[src]! : bytes[src + 1]!;
    const lo = byteOrder === "big" ? bytes[src + 1]! : bytes[src]!;
    be[w * 2] = hi;
    be[w * 2 + 1] = lo;
  }
  const view = new DataView(be.buffer);
  switch (type) {
    case "int16":
      return view.getInt16(0);
    case "uint16":
      return view.getUint16(0);
    case "int32":
      return view.getInt32(0);
    case "uint32":
      return view.getUint32(0);
    case "float32":
      return view.getFloat32(0);
    case "float64":
      return view.getFloat64(0);
  }
}
