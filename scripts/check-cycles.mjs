#!/usr/bin/env node
// Fails when the TypeScript modules under a directory (default: src) import each other in a
// cycle. Every kind of import counts: value imports, `import type`, `export ... from`, dynamic
// `import()` and `import("./x.js").T` in type positions. A type-only cycle costs nothing at run
// time, but it still means neither module can be understood, moved or tested without the other,
// which is what this check is for.
//
// Uses the TypeScript compiler's own import scanner (ts.preProcessFile, already a dev
// dependency) rather than regular expressions, so imports in comments and strings are ignored.
// Only relative specifiers are followed; packages and node: built-ins cannot close a cycle.
//
// Usage: node scripts/check-cycles.mjs [dir]   (exit 0: no cycle; exit 1: prints each cycle)
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import ts from "typescript";

/** Every .ts file under dir (declaration files excluded), as absolute paths. */
function sourceFiles(dir) {
  const out = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...sourceFiles(path));
    else if (entry.name.endsWith(".ts") && !entry.name.endsWith(".d.ts")) out.push(path);
  }
  return out;
}

/** The file a relative specifier names, following NodeNext's `.js` → `.ts` mapping; undefined outside the tree. */
function resolveSpecifier(from, specifier) {
  if (!specifier.startsWith("./") && !specifier.startsWith("../")) return undefined;
  const base = resolve(dirname(from), specifier);
  const candidates = [base.replace(/\.(m|c)?js$/, ".$1ts"), `${base}.ts`, join(base, "index.ts"), base];
  return candidates.find((c) => c.endsWith(".ts") && existsSync(c) && statSync(c).isFile());
}

/** Module graph: file → files it imports (within the tree). */
export function importGraph(root) {
  const files = sourceFiles(root);
  const known = new Set(files);
  const graph = new Map();
  for (const file of files) {
    const info = ts.preProcessFile(readFileSync(file, "utf8"), true, true);
    const deps = new Set();
    for (const { fileName } of info.importedFiles) {
      const target = resolveSpecifier(file, fileName);
      if (target !== undefined && known.has(target) && target !== file) deps.add(target);
    }
    graph.set(file, [...deps].sort());
  }
  return graph;
}

/**
 * The strongly connected components with more than one module (Tarjan): every module in each,
 * and one concrete cycle through it so that the message names imports to break.
 */
export function findCycles(graph) {
  let next = 0;
  const index = new Map();
  const low = new Map();
  const stack = [];
  const onStack = new Set();
  const components = [];
  const visit = (v) => {
    index.set(v, next);
    low.set(v, next);
    next++;
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v), low.get(w)));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v), index.get(w)));
      }
    }
    if (low.get(v) === index.get(v)) {
      const component = [];
      let w;
      do {
        w = stack.pop();
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1) components.push(component);
    }
  };
  for (const v of [...graph.keys()].sort()) if (!index.has(v)) visit(v);
  return components.map((component) => ({
    modules: [...component].sort(),
    cycle: cycleThrough(graph, new Set(component)),
  }));
}

/** A shortest cycle from the component's first module back to itself (breadth-first). */
function cycleThrough(graph, members) {
  const start = [...members].sort()[0];
  const previous = new Map([[start, undefined]]);
  const queue = [start];
  while (queue.length > 0) {
    const v = queue.shift();
    for (const w of graph.get(v) ?? []) {
      if (!members.has(w)) continue;
      if (w === start) {
        const path = [start];
        for (let u = v; u !== start; u = previous.get(u)) path.splice(1, 0, u);
        return [...path, start];
      }
      if (!previous.has(w)) {
        previous.set(w, v);
        queue.push(w);
      }
    }
  }
  return [start, start];
}

const isMain = process.argv[1] !== undefined && resolve(process.argv[1]) === new URL(import.meta.url).pathname;
if (isMain) {
  const root = resolve(process.argv[2] ?? "src");
  const cycles = findCycles(importGraph(root));
  if (cycles.length === 0) {
    console.log(`check-cycles: no import cycle in ${relative(process.cwd(), root) || "."}`);
  } else {
    const name = (f) => relative(process.cwd(), f);
    for (const { modules, cycle } of cycles) {
      console.error(`import cycle: ${cycle.map(name).join(" -> ")}`);
      if (modules.length > cycle.length - 1)
        console.error(`  (modules in this cycle group: ${modules.map(name).join(", ")})`);
    }
    console.error(
      `check-cycles: ${cycles.length} import cycle(s); break each by moving the shared part to its own module`,
    );
    process.exitCode = 1;
  }
}
