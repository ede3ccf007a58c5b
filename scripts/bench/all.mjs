#!/usr/bin/env node
/**
 * Runs every benchmark in turn (one at a time: they would disturb each other's
 * figures on a 2-core machine) and prints their output. `npm run bench` builds first.
 *   node scripts/bench/all.mjs [name ...]
 */
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const ALL = [
  ["enqueue"],
  ["drain"],
  ["bare-undici"],
  ["drain-formats"],
  ["rules"],
  ["render"],
  ["ingest", "--agent"],
  ["footprint"],
  ["backlog-rss"],
  ["agent-backlog-rss", "1000000", "20", "down"],
  ["refused-rss", "50000", "3"],
  ["modbus"],
];
const wanted = process.argv.slice(2);
let failed = 0;
for (const [name, ...args] of ALL) {
  if (wanted.length > 0 && !wanted.includes(name)) continue;
  console.log(`\n=== ${name} ${args.join(" ")}`);
  const r = spawnSync(process.execPath, [join(here, `${name}.mjs`), ...args], { stdio: "inherit", timeout: 600_000 });
  if (r.status !== 0) {
    failed++;
    console.log(`=== ${name} failed (${r.status ?? r.signal})`);
  }
}
process.exitCode = failed > 0 ? 1 : 0;
