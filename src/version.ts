import { readFileSync } from "node:fs";

/**
 * The package version, from package.json beside dist/ and src/. Read relative to this
 * module: dist/version.js (tsc), src/version.ts (tests) or a chunk of the bundle in
 * dist/chunks/ (scripts/bundle.mjs), hence two places to look.
 */
export function version(): string {
  for (const path of ["../package.json", "../../package.json"]) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(path, import.meta.url), "utf8")) as {
        name?: string;
        version: string;
      };
      if (pkg.name === "edgehook") return pkg.version;
    } catch {
      // not here
    }
  }
  return "0.0.0";
}
