/**
 * The bundled program (npm run build -> dist/edgehook.js, scripts/bundle.mjs) as bin/edgehook.js
 * runs it: what a running agent loads stays free of the configuration validator (zod lives in
 * dist/config-loader.cjs, required per load and dropped), and configurations load through that
 * separate file with the same results and error classes as the per-module build.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BIN } from "../support/agent-process.js";

const DIST = resolve(import.meta.dirname, "../../dist");
let tmp: string;

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), "edgehook-bundle-"));
  expect(existsSync(join(DIST, "edgehook.js")), "dist/edgehook.js is missing: npm run build").toBe(true);
});

afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

/** dist/edgehook.js and every chunk it imports statically: what `edgehook run` holds before any import(). */
function staticClosure(entry: string): Map<string, string> {
  const seen = new Map<string, string>();
  const visit = (file: string) => {
    if (seen.has(file)) return;
    const text = readFileSync(file, "utf8");
    seen.set(file, text);
    // esbuild writes static imports of chunks as `import{...}from"./chunks/x.js"` (and `import"./x.js"`).
    for (const m of text.matchAll(
      /(?:^|[;}\s])(?:import|export)\s*(?:[^;"'()]*?\bfrom\s*)?["'](\.{1,2}\/[^"']+)["']/g,
    )) {
      visit(resolve(dirname(file), m[1] as string));
    }
  };
  visit(entry);
  return seen;
}

function cli(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    encoding: "utf8",
    timeout: 30_000,
    env: { ...process.env, ...env },
  });
  return { status: r.status, out: r.stdout + r.stderr };
}

describe("the bundle", () => {
  it("keeps zod out of what the agent loads, and in config-loader.cjs", () => {
    const closure = staticClosure(join(DIST, "edgehook.js"));
    expect(closure.size).toBeGreaterThan(1);
    for (const [file, text] of closure) {
      expect(text.includes("$ZodObject"), `${file} holds zod`).toBe(false);
    }
    expect(readFileSync(join(DIST, "config-loader.cjs"), "utf8")).toContain("$ZodObject");
  });

  it("loads a configuration through config-loader.cjs: valid, invalid (exit 78, file:line:col), unreadable", () => {
    const good = join(tmp, "good.yaml");
    writeFileSync(
      good,
      `version: 1
agent:
  id: bundle-test
  data_dir: ${join(tmp, "data")}
destinations:
  sink:
    url: http://127.0.0.1:9/hook
    secret: \${SINK_SECRET}
rules:
  - name: dew
    match: { sensor: s1 }
    when: "temperature - dew_point(temperature, humidity) < 2"
    severity: warning
    notify: [sink]
`,
      { mode: 0o600 },
    );
    const ok = cli(["check", "--config", good], { SINK_SECRET: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" });
    expect(ok.out).toMatch(/good\.yaml: ok/);
    expect(ok.status, ok.out).toBe(0);

    const bad = join(tmp, "bad.yaml");
    writeFileSync(bad, readFileSync(good, "utf8").replace("  id: bundle-test\n", "  id: bundle-test\n  bogus: 1\n"));
    const invalid = cli(["check", "--config", bad], { SINK_SECRET: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" });
    expect(invalid.status, invalid.out).toBe(78);
    expect(invalid.out).toMatch(/bad\.yaml:4:3: agent\.bogus: unknown key/);

    // A CEL syntax error is found by the loader's own copy of the expression checker.
    const badWhen = join(tmp, "bad-when.yaml");
    writeFileSync(badWhen, readFileSync(good, "utf8").replace("< 2", "<< 2"));
    const when = cli(["check", "--config", badWhen], { SINK_SECRET: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" });
    expect(when.status, when.out).toBe(78);
    expect(when.out).toMatch(/bad-when\.yaml:12:\d+: rules\.0\.when: /);

    const missing = cli(["run", "--config", join(tmp, "nope.yaml")]);
    expect(missing.status, missing.out).toBe(78);
    expect(missing.out).toMatch(/EDGEHOOK_CONFIG_UNREADABLE/);
  });
});
