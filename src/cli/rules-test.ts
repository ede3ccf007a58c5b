/**
 * `edgehook rules test --config FILE --readings FILE.jsonl`: replays recorded readings
 * through the configured rules on simulated time and prints every webhook body that
 * would be sent, one JSON object per line, without touching the outbox or the network.
 *
 * Each line of the readings file is one JSON object:
 *   {"sensor": "greenhouse", "metric": "temp", "value": 31.5, "ts": "2026-01-01T00:00:00Z", "labels": {"room": "a"}}
 * `ts` is epoch milliseconds or ISO 8601 (numbers below 1e11 are read as epoch seconds);
 * `labels` is optional. A line may carry several metrics of one sensor at once, for `when`
 * rules and `derive`: {"sensor": "gh", "values": {"temperature": 21.5, "humidity": 92}, "ts": ...}.
 * When a `when` rule's condition becomes unknown (an input missing or stale) or known
 * again, a line on stderr says so. The clock starts at the first reading and moves to each reading's
 * time, running the time-driven transitions (`for`, `clear_for`, `absent_for`,
 * `repeat_every`, batches) that fall in between, so `for: 5m` behaves as it would live.
 * Nothing is flushed past the last reading's time. A reading older than the clock is
 * handled as the agent handles a late reading.
 */
import { readFile } from "node:fs/promises";
import type { Clock, TimerHandle } from "../clock.js";
import type { LoadedConfig } from "../config/load.js";
import type { CommitBatch } from "../events.js";
import { RuleEngine } from "../rules/engine.js";
import type { Reading, ReadingValue } from "../sources/reading.js";

/** Time that moves only when the replay says so. */
class ReplayClock implements Clock {
  #now: number;
  constructor(start: number) {
    this.#now = start;
  }
  now(): number {
    return this.#now;
  }
  monotonic(): number {
    return this.#now;
  }
  set(to: number): void {
    if (to > this.#now) this.#now = to;
  }
  setTimeout(): TimerHandle {
    // The engine never sets timers; the replay drives tick() itself.
    return {};
  }
  clearTimeout(): void {}
}

export async function rulesTestCommand(
  loaded: LoadedConfig,
  readingsFile: string,
  out: (line: string) => void,
  err: (line: string) => void,
): Promise<number> {
  let text: string;
  try {
    text = await readFile(readingsFile, "utf8");
  } catch (e) {
    err(`${readingsFile}: cannot read the readings file (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
    return 1;
  }

  const readings: { line: number; reading: Reading }[] = [];
  let bad = 0;
  text.split(/\r?\n/).forEach((raw, i) => {
    if (raw.trim() === "") return;
    const parsed = parseLine(raw);
    if (typeof parsed === "string") {
      bad++;
      err(`${readingsFile}:${i + 1}: ${parsed}`);
    } else for (const reading of parsed) readings.push({ line: i + 1, reading });
  });

  const first = readings[0];
  if (first === undefined) {
    err(`rules test: no readings in ${readingsFile}`);
    return bad > 0 ? 1 : 0;
  }
  const clock = new ReplayClock(first.reading.ts);
  const engine = new RuleEngine({
    agentId: loaded.config.agent.id,
    rules: loaded.config.rules,
    derive: loaded.config.derive,
    clock,
  });
  let events = 0;
  const print = (batch: CommitBatch) => {
    for (const e of batch.events) {
      out(JSON.stringify(e.body));
      events++;
    }
  };
  const runDue = (until: number) => {
    for (;;) {
      const due = engine.nextDueAt();
      if (due === undefined || due > until) return;
      clock.set(due);
      print(engine.tick());
    }
  };

  // Why each `when` series is unknown, to say when that changes.
  let unknown = new Map<string, string>();
  const reportUnknown = () => {
    const now = new Map<string, string>();
    for (const u of engine.unknownConditions()) now.set(`${u.rule} ${u.sensor}`, u.reason);
    const at = new Date(clock.now()).toISOString();
    for (const [k, why] of now) {
      if (unknown.get(k) !== why) err(`rules test: ${at} ${k}: when is unknown (${why})`);
    }
    for (const k of unknown.keys()) if (!now.has(k)) err(`rules test: ${at} ${k}: when is known again`);
    unknown = now;
  };

  for (const { reading } of readings) {
    runDue(reading.ts);
    clock.set(reading.ts);
    print(engine.process([reading]));
    reportUnknown();
  }
  runDue(clock.now());

  const { late, nonNumeric, badTime } = engine.stats;
  err(
    `rules test: ${count(readings.length, "reading")}, ${count(events, "event")} up to ${new Date(clock.now()).toISOString()}` +
      (late ? `, ${count(late, "late reading")} ignored` : "") +
      (nonNumeric ? `, ${count(nonNumeric, "non-numeric value")} skipped` : "") +
      (badTime ? `, ${count(badTime, "reading")} with an impossible time skipped` : "") +
      (bad ? `, ${count(bad, "bad line")}` : ""),
  );
  return bad > 0 ? 1 : 0;
}

const count = (n: number, what: string) => `${n} ${what}${n === 1 ? "" : "s"}`;

/** One JSONL line → its readings (one, or one per entry of `values`), or what is wrong with it. */
function parseLine(raw: string): Reading[] | string {
  let o: unknown;
  try {
    o = JSON.parse(raw);
  } catch (e) {
    return `not JSON: ${(e as Error).message}`;
  }
  if (typeof o !== "object" || o === null || Array.isArray(o)) return "must be a JSON object";
  const r = o as Record<string, unknown>;
  if (typeof r.sensor !== "string" || r.sensor === "") return "sensor: must be a non-empty string";
  const values: [string, ReadingValue][] = [];
  if (r.values !== undefined) {
    if (typeof r.values !== "object" || r.values === null || Array.isArray(r.values)) {
      return "values: must be an object of metric: value";
    }
    for (const [m, v] of Object.entries(r.values)) {
      if (!isValue(v)) return `values.${m}: must be a number, a string or true/false`;
      values.push([m, v]);
    }
    if (values.length === 0) return "values: must name at least one metric";
  } else {
    if (typeof r.metric !== "string" || r.metric === "") return "metric: must be a non-empty string";
    if (!isValue(r.value)) return "value: must be a number, a string or true/false";
    values.push([r.metric, r.value]);
  }
  let ts: number;
  if (typeof r.ts === "number" && Number.isFinite(r.ts)) ts = Math.abs(r.ts) < 1e11 ? r.ts * 1000 : r.ts;
  else if (typeof r.ts === "string" && !Number.isNaN(Date.parse(r.ts))) ts = Date.parse(r.ts);
  else return "ts: must be epoch milliseconds or an ISO 8601 time";
  let labels: Record<string, string> = {};
  if (r.labels !== undefined) {
    if (typeof r.labels !== "object" || r.labels === null || Array.isArray(r.labels))
      return "labels: must be an object";
    for (const [k, lv] of Object.entries(r.labels)) {
      if (typeof lv !== "string") return `labels.${k}: must be a string`;
    }
    labels = r.labels as Record<string, string>;
  }
  const sensor = r.sensor;
  return values.map(([metric, value]) => ({ sensor, metric, value, ts, source: "rules-test", labels }));
}

function isValue(v: unknown): v is ReadingValue {
  return typeof v === "string" || typeof v === "boolean" || (typeof v === "number" && Number.isFinite(v));
}
