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
//   a proxy; @marcbachmann/cel-js on the first expression), which esbuild leaves as
//   run-time requires.
// - Commands and sources that only some configurations use (status, tap, demo, Modbus,
//   1-Wire, the embedded broker ...) are split into chunks loaded by their import(), so a
//   running agent does not hold their code.
// - Output is ASCII only (charset: "ascii"): V8 stores a script's source as one byte per
//   character only when every character is Latin-1, and keeps the source of every loaded
//   script for the life of the process.
// - The configuration loader (config/load.ts: zod, the schemas, yaml, the expression
//   checker) is a bundle of its own, dist/config-loader.cjs, which the agent requires for a
//   load and then drops (see src/config/load-detached.ts, which stands in for load.ts here).
// - Identifiers are not minified, so stack traces name real functions; dist/edgehook.js.map
//   maps them to src/ (node --enable-source-maps bin/edgehook.js ...).
import { readdirSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = fileURLToPath(new URL("..", import.meta.url));
const dist = join(root, "dist");

// Chunks of an earlier build would be left beside new ones with other hashes.
for (const f of readdirSync(dist)) {
  if (/^(edgehook\.js|config-loader\.cjs)/.test(f) || f === "chunks") rmSync(join(dist, f), { recursive: true });
}

const shared = {
  absWorkingDir: root,
  bundle: true,
  platform: "node",
  target: "node20.19",
  // @nats-io/*: loaded by import() only for a nats:// destination. Bundled, the namespace
  // esbuild builds for its CommonJS build lacked `connect` ("connect is not a function").
  external: ["better-sqlite3", "serialport", "@serialport/*", "@nats-io/*"],
  minifyWhitespace: true,
  minifySyntax: true,
  minifyIdentifiers: false,
  charset: "ascii",
  legalComments: "none",
  sourcemap: "linked",
  sourcesContent: false,
  logLevel: "warning",
  metafile: true,
};

const LOAD = join(root, "src/config/load");

/** In the agent's bundle, config/load.ts is config/load-detached.ts. */
const detachedLoader = {
  name: "detached-config-loader",
  setup(b) {
    b.onResolve({ filter: /\/load\.js$/ }, (args) => {
      if (resolve(args.resolveDir, args.path).replace(/\.js$/, "") !== LOAD) return undefined;
      return { path: `${LOAD}-detached.ts` };
    });
  },
};

/**
 * The native packages, external, are loaded with require() rather than import: Node.js's
 * ES module loader resolves a CommonJS package through its "exports" and lexes its source
 * for named exports, which took about 30 ms more CPU at start than require() (issue 15).
 */
const requireNative = {
  name: "require-native",
  setup(b) {
    b.onResolve({ filter: /^(better-sqlite3|serialport|@serialport\/[^/]+)$/ }, (args) =>
      args.namespace === "native" ? { path: args.path, external: true } : { path: args.path, namespace: "native" },
    );
    b.onLoad({ filter: /.*/, namespace: "native" }, (args) => ({
      contents: `module.exports = require(${JSON.stringify(args.path)});`,
      loader: "js",
    }));
  },
};

const result = await build({
  ...shared,
  entryPoints: { edgehook: "src/main.ts" },
  outdir: "dist",
  splitting: true,
  format: "esm",
  chunkNames: "chunks/[name]-[hash]",
  // CommonJS dependencies call require() for Node's built-ins; an ES module has none.
  banner: {
    js: 'import { createRequire as __edgehookCreateRequire } from "node:module"; const require = __edgehookCreateRequire(import.meta.url);',
  },
  plugins: [detachedLoader, requireNative],
});

await build({
  ...shared,
  entryPoints: ["src/config/load.ts"],
  outfile: "dist/config-loader.cjs",
  format: "cjs",
  // A CommonJS file has no import.meta; the modules that use import.meta.url get its file URL.
  define: { "import.meta.url": "__edgehookModuleUrl" },
  banner: { js: 'const __edgehookModuleUrl = require("node:url").pathToFileURL(__filename).href;' },
});

// --metafile=FILE: what went into which output file (esbuild's metafile), for footprint work.
const metaFile = process.argv.find((a) => a.startsWith("--metafile="))?.slice("--metafile=".length);
if (metaFile) writeFileSync(metaFile, JSON.stringify(result.metafile));
