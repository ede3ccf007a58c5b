/**
 * `key=value` and `Key: value` lines, strict or as Arduino sketches print them:
 *
 *   t=21.5 h=40            t:21.5,h:40            t=21.5;h=40
 *   Temp: 22.5 C, Hum: 40 %
 *   Humidity: 40.00%  Temperature: 22.50°C 72.50°F  Heat index: 22.15°C 71.87°F
 *
 * A key starts at the beginning of the line or after a space or a separator (`,` `;` `&`),
 * does not begin with a digit, sign or dot, and may hold single spaces ("Heat index"); it ends at `=`
 * or `:`. Its value is what follows up to the next key: a number with any unit after it
 * (`22.5 C`, `1013.2hPa`, `40 %`) is that number, and whatever else follows (the °F after
 * the °C) is ignored; anything else is its first word (`OPEN`, an ISO time). Pairs need
 * a separator or two spaces between them when a unit is written apart from its number
 * (`22.5 C Hum: 40` reads the key as `C Hum`). A key given twice keeps its last value.
 */

// Key: starts after start/space/separator, words joined by single spaces.
const KEY = /(?<=^|[\s,;&])([^\s\d=:,;&+.\-%°*][^\s=:,;&]*(?: [^\s\d=:,;&+.\-%°*][^\s=:,;&]*)*) ?[=:]/g;
// A number, then an optional unit (not starting with a digit or a character that continues a number).
const NUMBER_AND_UNIT = /^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?:\s?[^\d\s,;&:=.+-][^\s,;&]*)?(?=$|[\s,;&])/;

/** Parses a line into its pairs, in order. */
export function parseKv(text: string): Map<string, string> {
  const out = new Map<string, string>();
  const marks: { key: string; start: number; end: number }[] = [];
  KEY.lastIndex = 0;
  for (let m = KEY.exec(text); m; m = KEY.exec(text)) {
    marks.push({ key: m[1]!, start: m.index, end: m.index + m[0].length });
  }
  for (let i = 0; i < marks.length; i++) {
    const mark = marks[i]!;
    const next = marks[i + 1];
    const raw = text.slice(mark.end, next ? next.start : text.length).replace(/^\s+/, "");
    const num = NUMBER_AND_UNIT.exec(raw);
    if (num) out.set(mark.key, num[1]!);
    else {
      const word = /^[^\s,;&]*/.exec(raw)![0];
      out.set(mark.key, word);
    }
  }
  return out;
}
