/**
 * Wall-clock times without a zone ("2026-11-22T13:00:00", as Tasmota sends them) read in
 * a configured IANA time zone. Pure apart from Intl's time zone data (the system's ICU).
 *
 * DST: a local time that happens twice (the hour repeated when clocks go back) is read as
 * the occurrence nearer the arrival time, so a device on local time keeps its readings in
 * order through the change instead of sending an hour of "late" ones. A local time that
 * never happens (the hour skipped when clocks go forward) is read with the offset before
 * the change, i.e. an hour later on the clock, as Temporal's "compatible" disambiguation
 * does (02:30 on the spring-forward night in Europe/Berlin is 03:30 CEST).
 */

/** True when Intl knows the zone (IANA names such as Europe/Berlin, UTC, Etc/GMT-1). */
export function isTimeZone(name: string): boolean {
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: name });
    return true;
  } catch {
    return false;
  }
}

/** The zone the process runs in (TZ, else /etc/localtime), as Intl resolves it. */
export function localTimeZone(): string {
  return Intl.DateTimeFormat().resolvedOptions().timeZone;
}

const ZONELESS = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?$/;
const MINUTE = 60_000;
const DAY = 86_400_000;
/** Candidate instants remembered per local minute; cleared when full (bounded memory). */
const CACHE_LIMIT = 1024;

export class ZonedTime {
  readonly zone: string;
  readonly #fmt: Intl.DateTimeFormat;
  /** Local minute (as if UTC, in minutes) → the offsets (ms) that local minute can have. */
  #cache = new Map<number, readonly number[]>();

  constructor(zone: string) {
    this.zone = zone;
    this.#fmt = new Intl.DateTimeFormat("en-US", {
      timeZone: zone,
      hourCycle: "h23",
      year: "numeric",
      month: "numeric",
      day: "numeric",
      hour: "numeric",
      minute: "numeric",
      second: "numeric",
    });
  }

  /**
   * Epoch ms of a zoneless ISO 8601 date or date-time in this zone; undefined when the
   * text is not one (it has a `Z` or an offset, or is not a valid date).
   * `near` (the arrival time) picks between the two readings of a repeated local time.
   */
  parse(text: string, near?: number): number | undefined {
    const m = ZONELESS.exec(text);
    if (!m) return undefined;
    const [y, mo, d, h = 0, mi = 0, s = 0] = m.slice(1, 7).map((x) => (x === undefined ? undefined : Number(x)));
    const frac = m[7] === undefined ? 0 : Math.floor(Number(`0.${m[7]}`) * 1000);
    if (mo! < 1 || mo! > 12 || h > 23 || mi > 59 || s > 59) return undefined;
    const local = Date.UTC(y!, mo! - 1, d!, h, mi, s, frac);
    // Date.UTC rolls 31 April over to 1 May: refuse what is not a real date.
    if (new Date(local).getUTCDate() !== d || y! < 1000) return undefined;
    const minute = Math.floor(local / MINUTE);
    const offsets = this.#offsetsOf(minute);
    const candidates = offsets.map((o) => local - o);
    if (candidates.length === 1 || near === undefined) return candidates[0];
    const [a, b] = candidates as [number, number];
    return Math.abs(a - near) <= Math.abs(b - near) ? a : b;
  }

  /** Offsets a local minute has: one, two (repeated, earlier instant first) or, in a gap, the one before. */
  #offsetsOf(minute: number): readonly number[] {
    const hit = this.#cache.get(minute);
    if (hit !== undefined) return hit;
    const local = minute * MINUTE;
    const before = this.#offsetAt(local - DAY);
    const after = this.#offsetAt(local + DAY);
    let out: number[];
    if (before === after) out = [before];
    else {
      // Larger offset first: local - offset is then the earlier instant.
      out = [before, after].sort((x, y) => y - x).filter((o) => this.#offsetAt(local - o) === o);
      if (out.length === 0) out = [before];
    }
    if (this.#cache.size >= CACHE_LIMIT) this.#cache.clear();
    this.#cache.set(minute, out);
    return out;
  }

  /** Zone offset (local − UTC, ms) at an instant. */
  #offsetAt(utc: number): number {
    const at = Math.floor(utc / 1000) * 1000;
    const p: Record<string, number> = {};
    for (const part of this.#fmt.formatToParts(at)) {
      if (part.type !== "literal") p[part.type] = Number(part.value);
    }
    const wall = Date.UTC(p.year!, p.month! - 1, p.day!, p.hour!, p.minute!, p.second!);
    return wall - at;
  }
}
