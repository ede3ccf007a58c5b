#!/usr/bin/env node
// Bundles src/ and its pure-JavaScript dependencies into dist/edgehook.js, the file
// bin/edgehook.js loads (`npm run build` runs tsc first, then this).
//
// Why (issue 15): a process that loads hundreds of small modules keeps each one's source
// text, module record and scope alive, and resolving and reading them is most of the
// start-up time. One tree-shaken, minified file is smaller in memory and quicker to load.
// The per-module build from tsc stays in dist/ for the tests that import modules directly.
//
// - Native modules (better-sqlite3, serialport and its bindings) stay in node_modules:
//   their .node binaries are found relative to their own package. So do the packages the
//   agent loads only on some paths with createRequire (modbus-serial; undici's index behind
//   a proxy), which esbuild leaves as run-time requires.
// - Commands and sources that only some configurations use (status, tap, demo, Modbus,
//   1-Wire, the embedded broker ...) are split into chunks loaded by their import(), so a
//   running agent does not hold their code.
// - Output is ASCII only (charset: "ascii"): V8 stores a script's source as one byte per
//   character only when every character is Latin-1, and keeps the source of every loaded
//   script for the life of the process.
// - Identifiers are not minified, so stack traces name real functions; dist/edgehook.js.map
//   maps them to src/ (node --enable-source-maps bin/edgehook.js ...).
import { readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = fileURLToPath(new URL("..", import.meta.url));
const dist = join(root, "dist");

// Chunks of an earlier build would be left beside new ones with other hashes.
for (const f of readdirSync(dist)) {
  if (/^edgehook\.js/.test(f) || f === "chunks") rmSync(join(dist, f), { recursive: true });
}

const result = await build({
  absWorkingDir: root,
  entryPoints: { edgehook: "src/main.ts" },
  outdir: "dist",
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "node",
  target: "node20.19",
  chunkNames: "chunks/[name]-[hash]",
  external: ["better-sqlite3", "serialport", "@serialport/*"],
  // CommonJS dependencies call require() for Node's built-ins; an ES module has none.
  banner: {
    js: 'import { createRequire as __edgehookCreateRequire } from "node:module"; const require = __edgehookCreateRequire(import.meta.url);',
  },
  minifyWhitespace: true,
  minifySyntax: true,
  minifyIdentifiers: false,
  charset: "ascii",
  legalComments: "none",
  sourcemap: "linked",
  sourcesContent: false,
  logLevel: "warning",
  metafile: true,
});

if (process.argv.includes("--analyze")) {
  const { analyzeMetafile } = await import("esbuild");
  console.log(await analyzeMetafile(result.metafile, { verbose: false }));
}
