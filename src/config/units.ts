/** Parsers for the human units used in the YAML: durations, rates and sizes. */

const DURATION_UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};

/** `30s`, `5m`, `2h`, `7d`, `500ms`, `1h30m` → milliseconds; undefined when not a duration. */
export function parseDuration(text: string): number | undefined {
  const s = text.trim();
  if (!/^(\d+(\.\d+)?(ms|s|m|h|d|w))+$/.test(s)) return undefined;
  let total = 0;
  for (const m of s.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h|d|w)/g)) {
    total += Number(m[1]) * (DURATION_UNITS[m[2] as string] as number);
  }
  return total;
}

const RATE_UNITS: Record<string, number> = { s: 1, m: 60, h: 3600 };

/** `20/s`, `100/m`, `1000/h` → events per second; undefined when not a rate. */
export function parseRate(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*\/\s*(s|m|h)\s*$/.exec(text);
  if (!m) return undefined;
  const n = Number(m[1]);
  if (n <= 0) return undefined;
  return n / (RATE_UNITS[m[2] as string] as number);
}

const SIZE_UNITS: Record<string, number> = {
  b: 1,
  kb: 1000,
  mb: 1000 ** 2,
  gb: 1000 ** 3,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
};

/** `512MB`, `64MiB`, `1GB`, `4096` → bytes; undefined when not a size. */
export function parseSize(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*$/i.exec(text);
  if (!m) return undefined;
  const unit = (m[2] ?? "b").toLowerCase();
  const mult = SIZE_UNITS[unit];
  if (mult === undefined) return undefined;
  return Math.round(Number(m[1]) * mult);
}
