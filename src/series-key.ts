/**
 * Series keys: one series is `(rule, sensor, metric)` (design.md "Series"). The key is
 * the three names joined by U+001F (unit separator); it names a series in the outbox
 * (delivery order per series) and in the stored rule state (`series_state.series`).
 * Its format is stored on disk, so it does not change.
 *
 * Everything that builds a key or reads one back goes through here: the rule engine,
 * `edgehook queue`, `edgehook status` and `send-test`.
 *
 * A name that itself contains U+001F gives a key of more than three parts, which
 * `parseSeriesKey` does not read back (the engine then treats a stored row of it as
 * one that no longer fits its rule).
 */

/** The three names of a series. */
export interface SeriesId {
  readonly rule: string;
  readonly sensor: string;
  readonly metric: string;
}

/** Separates the names in a key (ASCII unit separator). */
export const SERIES_KEY_SEPARATOR = "\u001f";

export function seriesKey(rule: string, sensor: string, metric: string): string {
  return `${rule}${SERIES_KEY_SEPARATOR}${sensor}${SERIES_KEY_SEPARATOR}${metric}`;
}

/** The names of a key built by `seriesKey`; undefined when it does not have exactly three. */
export function parseSeriesKey(key: string): SeriesId | undefined {
  const a = key.indexOf(SERIES_KEY_SEPARATOR);
  if (a < 0) return undefined;
  const b = key.indexOf(SERIES_KEY_SEPARATOR, a + 1);
  if (b < 0 || key.indexOf(SERIES_KEY_SEPARATOR, b + 1) >= 0) return undefined;
  return { rule: key.slice(0, a), sensor: key.slice(a + 1, b), metric: key.slice(b + 1) };
}

/** How the command line shows a key: its parts joined by `/` (`hot/boiler/temp`). */
export function seriesLabel(key: string): string {
  return key.split(SERIES_KEY_SEPARATOR).join("/");
}
