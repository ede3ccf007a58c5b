/**
 * How a delivery row is written down, shared by every part of the outbox: its state codes,
 * "due now", the attempt history kept for `queue show`, and the (destination, series) pairs
 * a transaction touched. Pure: no database, no clock.
 */
import type { AttemptRecord, DeliveryState } from "./types.js";

export const PENDING = 0;
export const DELIVERED = 1;
export const DEAD = 2;
export const STATE_NAMES: readonly DeliveryState[] = ["pending", "delivered", "dead"];
export const STATE_CODES: Record<DeliveryState, number> = { pending: PENDING, delivered: DELIVERED, dead: DEAD };

/**
 * next_at of a delivery that has not been tried yet: due whatever the wall clock says,
 * so a clock stepped backwards (NTP after a boot without RTC) never holds back new events.
 */
export const DUE_NOW = 0;

/** Attempts kept per delivery for `queue show`. */
export const HISTORY_LENGTH = 10;

/** Rows handled per transaction by maintenance, replay and purge. */
export const BATCH_ROWS = 5000;

/** The key of one (destination, series) in maps and sets. */
export function seriesKey(destination: string, series: string): string {
  return `${destination}\u0000${series}`;
}

/** The (destination, series) pairs a transaction touched, each once: their heads are fixed after. */
export class SeriesSet {
  readonly #pairs = new Map<string, [string, string]>();
  add(destination: string, series: string): void {
    this.#pairs.set(seriesKey(destination, series), [destination, series]);
  }
  [Symbol.iterator](): IterableIterator<[string, string]> {
    return this.#pairs.values();
  }
}

export function appendHistory(json: string | null, attempt: AttemptRecord): string {
  const history = parseHistory(json);
  const entry: AttemptRecord = { at: attempt.at, durationMs: Math.round(attempt.durationMs) };
  if (attempt.status !== undefined) entry.status = attempt.status;
  if (attempt.error !== undefined) entry.error = clip(attempt.error);
  history.push(entry);
  return JSON.stringify(history.slice(-HISTORY_LENGTH));
}

export function parseHistory(json: string | null): AttemptRecord[] {
  if (!json) return [];
  try {
    const parsed: unknown = JSON.parse(json);
    return Array.isArray(parsed) ? (parsed as AttemptRecord[]) : [];
  } catch {
    return []; // history is informational; a damaged one starts over
  }
}

/** Error and reason texts are stored at most 300 characters long. */
export function clip(text: string): string {
  return text.length > 300 ? `${text.slice(0, 297)}...` : text;
}

/** Bytes as MiB with one decimal, for log lines. */
export function mib(bytes: number): string {
  return `${(bytes / 1048576).toFixed(1)} MiB`;
}
