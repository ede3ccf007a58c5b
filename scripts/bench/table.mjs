#!/usr/bin/env node
/**
 * The footprint table: runs each bench that measures one of its rows, one at a time (they
 * would disturb each other's figures on a 2-core machine), and prints every figure beside
 * its target and the baseline that bench took in the same run. Each figure is the median
 * of at least 3 runs; each bench says how it takes its runs and its baseline in its header.
 *
 *   npm run bench                                  # build, then every bench and the table
 *   node scripts/bench/table.mjs [bench ...]       # only those benches (e.g. drain flash)
 *   node scripts/bench/table.mjs --from=FILE       # print the table from a saved figures file
 *   node scripts/bench/table.mjs --save=FILE       # also keep the figures (JSON lines)
 *
 * A bench given --json=FILE appends one JSON line per row it measured:
 *   {"row", "value", "unit", "baseline", "baseline_label", "runs": [...], "load", "command"}
 */
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));

/** The benches, in the order they run, with the arguments the table uses. */
const BENCHES = [
  ["footprint", ["20", "--no-load"]],
  ["cpu", []],
  ["flash", []],
  ["drain", []],
  ["overload", ["60", "3"]],
];

/**
 * The rows. `target` is either a fixed figure or a multiple of the row's baseline (the
 * overload rows are judged against the same agent's idle RSS and its delivery rate with no
 * ingest, both taken in the same run).
 */
const ROWS = [
  {
    row: "overload_peak_rss",
    unit: "MiB",
    what: "peak RSS at the maximum ingest rate, slower receiver, 60 s",
    cmp: "<=",
    times: 1.5,
  },
  {
    row: "overload_deliveries",
    unit: "webhooks/s",
    what: "deliveries/s while ingesting at the maximum rate",
    cmp: ">=",
    times: 0.5,
  },
  { row: "idle_rss", unit: "MB", what: "idle RSS (the footprint bench's config)", cmp: "<=", target: 60 },
  { row: "flash_per_event", unit: "KB", what: "bytes written per event, single-event commits", cmp: "<=", target: 8 },
  {
    row: "flash_unchanged",
    unit: "bytes",
    what: "bytes written per reading that changes nothing",
    cmp: "<=",
    target: 0,
  },
  { row: "drain_8_series", unit: "events/s", what: "drain, 8 series, loopback", cmp: ">=", target: 5000 },
  {
    row: "drain_vs_undici",
    unit: "ratio",
    what: "drain vs bare undici at the same concurrency",
    cmp: ">=",
    target: 0.7,
    baselineUnit: "events/s",
  },
  { row: "cpu_per_1000", unit: "ms", what: "CPU per 1,000 readings, realistic mix", cmp: "<=", target: 6 },
  { row: "start_to_ready", unit: "ms", what: "start to READY", cmp: "<=", target: 300 },
];

const args = process.argv.slice(2);
const from = args.find((a) => a.startsWith("--from="))?.slice(7);
const save = args.find((a) => a.startsWith("--save="))?.slice(7);
const wanted = args.filter((a) => !a.startsWith("--"));

let figuresFile = from;
const tmp = from ? undefined : mkdtempSync(join(tmpdir(), "edgehook-bench-table-"));
let failed = 0;
if (!from) {
  figuresFile = join(tmp, "figures.jsonl");
  for (const [name, benchArgs] of BENCHES) {
    if (wanted.length > 0 && !wanted.includes(name)) continue;
    const full = [join(here, `${name}.mjs`), ...benchArgs, `--json=${figuresFile}`];
    console.log(`\n=== node scripts/bench/${name}.mjs ${benchArgs.join(" ")}`);
    const r = spawnSync(process.execPath, full, { stdio: "inherit", timeout: 900_000 });
    if (r.status !== 0) {
      failed++;
      console.log(`=== ${name} failed (${r.status ?? r.signal})`);
    }
  }
}

const figures = new Map();
if (figuresFile && existsSync(figuresFile)) {
  for (const line of readFileSync(figuresFile, "utf8").split("\n")) {
    if (!line.trim()) continue;
    const f = JSON.parse(line);
    figures.set(f.row, f);
  }
}
if (save && figuresFile && existsSync(figuresFile)) copyFileSync(figuresFile, save);
if (tmp) rmSync(tmp, { recursive: true, force: true });

const fmt = (v) =>
  v === null || v === undefined
    ? "–"
    : Math.abs(v) >= 100
      ? Math.round(v).toLocaleString("en-US")
      : Number(v.toPrecision(3)).toString();

console.log("\n| what | figure | target | baseline (same run) | met | runs | load |");
console.log("|---|---|---|---|---|---|---|");
for (const def of ROWS) {
  const f = figures.get(def.row);
  const limit = def.times !== undefined ? (f?.baseline ?? undefined) * def.times : def.target;
  const targetText =
    def.times !== undefined
      ? `${def.cmp === "<=" ? "≤" : "≥"} ${def.times} × baseline${f?.baseline != null ? ` (${fmt(limit)} ${def.unit})` : ""}`
      : `${def.cmp === "<=" ? "≤" : "≥"} ${fmt(def.target)} ${def.unit}`;
  if (!f) {
    console.log(`| ${def.what} | not measured | ${targetText} | | | | |`);
    continue;
  }
  const met = Number.isFinite(limit) ? (def.cmp === "<=" ? f.value <= limit : f.value >= limit) : undefined;
  const baseline =
    f.baseline == null
      ? "–"
      : `${fmt(f.baseline)} ${f.baseline_unit ?? def.baselineUnit ?? f.unit} (${f.baseline_label})`;
  const runs = (f.runs ?? []).map(fmt).join(", ");
  console.log(
    `| ${def.what} | **${fmt(f.value)} ${f.unit}** | ${targetText} | ${baseline} | ${met === undefined ? "?" : met ? "yes" : "no"} | ${runs} | ${f.load ?? ""} |`,
  );
}
process.exitCode = failed > 0 ? 1 : 0;
