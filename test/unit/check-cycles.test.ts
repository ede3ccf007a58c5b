/**
 * scripts/check-cycles.mjs (run by `npm run lint`) fails on an import cycle of any kind
 * (value, type-only, dynamic, re-export) and passes a tree without one. Each case is a
 * tiny tree of .ts files in a temp directory. The cases call the script's functions
 * in-process (the script loads the TypeScript compiler, which takes a while); one case
 * runs it as lint does and checks its exit code and message.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { findCycles, importGraph } from "../../scripts/check-cycles.mjs";

const script = join(import.meta.dirname, "../../scripts/check-cycles.mjs");
const dirs: string[] = [];

afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** Writes the files (path → source) under a fresh directory; returns it. */
function tree(files: Record<string, string>): string {
  const root = mkdtempSync(join(tmpdir(), "edgehook-cycles-"));
  dirs.push(root);
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    writeFileSync(join(root, path), text);
  }
  return root;
}

/** The cycles in the tree, each as "a.ts -> b.ts -> a.ts", with the modules of its group. */
function cycles(files: Record<string, string>): { cycle: string; modules: string[] }[] {
  const root = tree(files);
  return findCycles(importGraph(root)).map((c) => ({
    cycle: c.cycle.map((f) => relative(root, f)).join(" -> "),
    modules: c.modules.map((f) => relative(root, f)),
  }));
}

/** Runs the script on a tree as `npm run lint` does. */
function run(root: string): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [script, root], { cwd: root, encoding: "utf8" });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe("check-cycles", () => {
  it("passes a tree whose imports only go one way", () => {
    const root = tree({
      "cli.ts": 'import { run } from "./cli/run.js";\nimport type { IO } from "./cli/io.js";\nexport { run };\n',
      "cli/run.ts": 'import type { IO } from "./io.js";\nimport { z } from "zod";\nexport const run = (io: IO) => z;\n',
      "cli/io.ts": 'import { readFileSync } from "node:fs";\nexport interface IO { read: typeof readFileSync }\n',
      // An import that only appears in a comment or a string is not an import.
      "notes.ts": '// import { run } from "./cli.js";\nexport const s = \'import("./cli.js")\';\n',
    });
    expect(findCycles(importGraph(root))).toEqual([]);
  });

  it("fails on a cycle of value imports and names it", () => {
    expect(
      cycles({
        "config/schema.ts": 'import { keys } from "../delivery/format.js";\nexport const schema = { ...keys };\n',
        "delivery/format.ts": 'import { schema } from "../config/schema.js";\nexport const keys = {};\nvoid schema;\n',
      }),
    ).toEqual([
      {
        cycle: "config/schema.ts -> delivery/format.ts -> config/schema.ts",
        modules: ["config/schema.ts", "delivery/format.ts"],
      },
    ]);
  });

  it("fails when both sides of the cycle are type-only imports", () => {
    expect(
      cycles({
        "a.ts": 'import type { B } from "./b.js";\nexport type A = { b?: B };\n',
        "b.ts": 'import type { A } from "./a.js";\nexport type B = { a?: A };\n',
      }).map((c) => c.cycle),
    ).toEqual(["a.ts -> b.ts -> a.ts"]);
  });

  it("fails on a cycle closed by a dynamic import and a type import (cli.ts and demo.ts)", () => {
    expect(
      cycles({
        "cli.ts":
          'export interface CliIO { out(line: string): void }\nexport async function run(io: CliIO) {\n  const { demo } = await import("./demo.js");\n  return demo(io);\n}\n',
        "demo.ts": 'import type { CliIO } from "./cli.js";\nexport async function demo(io: CliIO) { io.out("hi"); }\n',
      }).map((c) => c.cycle),
    ).toEqual(["cli.ts -> demo.ts -> cli.ts"]);
  });

  it("finds a longer cycle through a re-export and an index module, and only the modules in it", () => {
    expect(
      cycles({
        "a.ts": 'export * from "./b.js";\n',
        "b.ts": 'import { c } from "./lib/index.js";\nexport const b = c;\n',
        "lib/index.ts":
          'import type { T } from "../a.js";\nexport const c = 1 as unknown as T;\nexport type T = number;\n',
        "unrelated.ts": 'import { b } from "./b.js";\nexport const u = b;\n',
      }),
    ).toEqual([{ cycle: "a.ts -> b.ts -> lib/index.ts -> a.ts", modules: ["a.ts", "b.ts", "lib/index.ts"] }]);
  });

  it("reports each separate cycle, and a cycle group larger than its shortest cycle in full", () => {
    const found = cycles({
      "a.ts": 'import "./b.js";\n',
      "b.ts": 'import "./a.js";\nimport "./c.js";\n',
      "c.ts": 'import "./a.js";\n',
      "x.ts": 'import "./y.js";\n',
      "y.ts": 'import "./x.js";\n',
    });
    expect(found).toEqual([
      { cycle: "a.ts -> b.ts -> a.ts", modules: ["a.ts", "b.ts", "c.ts"] },
      { cycle: "x.ts -> y.ts -> x.ts", modules: ["x.ts", "y.ts"] },
    ]);
  });

  it("exits 1 with the cycle on stderr when run as lint runs it", () => {
    const root = tree({
      "cli.ts": 'const load = () => import("./cli/demo.js");\nexport interface CliIO { pid: number }\nvoid load;\n',
      "cli/demo.ts": 'import type { CliIO } from "../cli.js";\nexport const d = (io: CliIO) => io.pid;\n',
    });
    const r = run(root);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("import cycle: cli.ts -> cli/demo.ts -> cli.ts");
    expect(r.stderr).toContain("1 import cycle(s)");
  });

  it("finds no cycle in src/", () => {
    const src = join(import.meta.dirname, "../../src");
    expect(findCycles(importGraph(src))).toEqual([]);
  });
});
