/**
 * Sensor and metric globs in `match`: `*` is any run of characters (also none),
 * `?` exactly one; everything else is literal. Compiled once per rule, because the
 * engine calls the result for every new (sensor, metric) pair it meets.
 */
export type Matcher = (text: string) => boolean;

const MATCH_ALL: Matcher = () => true;

export function hasWildcard(glob: string): boolean {
  return glob.includes("*") || glob.includes("?");
}

export function compileGlob(glob: string): Matcher {
  if (/^\*+$/.test(glob)) return MATCH_ALL;
  if (!hasWildcard(glob)) return (text) => text === glob;
  let source = "^";
  for (const ch of glob) {
    if (ch === "*") source += "[\\s\\S]*";
    else if (ch === "?") source += "[\\s\\S]";
    else source += ch.replace(/[\\^$.|+()[\]{}]/g, "\\$&");
  }
  const re = new RegExp(`${source}$`, "u");
  return (text) => re.test(text);
}
