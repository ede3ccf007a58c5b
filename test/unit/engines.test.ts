/**
 * Devices run Node 20: every production dependency in package-lock.json must accept the
 * oldest Node that package.json's `engines` promises. Catches a transitive bump such as
 * @nats-io/nuid 3.0.0 (node >= 22) before it reaches a device.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";

interface LockPackage {
  dev?: boolean;
  engines?: { node?: string } | string[];
}

type Version = [number, number, number];

function parse(v: string): Version {
  const parts = v.replace(/\.x$/, "").split(".").map(Number);
  return [parts[0] ?? 0, parts[1] ?? 0, parts[2] ?? 0];
}

function cmp(a: Version, b: Version): number {
  for (let i = 0; i < 3; i++) {
    const d = (a[i] ?? 0) - (b[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** The forms found in the lock file: `*`, `>=X[.Y[.Z]]`, `^X[.Y[.Z]]`, `X.x`, joined by `||`. */
function accepts(range: string, version: Version): boolean {
  return range.split("||").some((alt) => {
    const a = alt.trim().replace(/\s+/g, "");
    if (a === "*" || a === "") return true;
    const ge = /^>=(\d+(?:\.\d+|\.x)*)$/.exec(a);
    if (ge?.[1]) return cmp(version, parse(ge[1])) >= 0;
    const caret = /^\^(\d+(?:\.\d+)*)$/.exec(a);
    if (caret?.[1]) {
      const min = parse(caret[1]);
      return version[0] === min[0] && cmp(version, min) >= 0;
    }
    const major = /^(\d+)\.x$/.exec(a);
    if (major?.[1]) return version[0] === Number(major[1]);
    throw new Error(`engines range form not understood: ${range}`);
  });
}

describe("engines", () => {
  it("understands the range forms", () => {
    expect(accepts(">= 22.x", [20, 18, 1])).toBe(false);
    expect(accepts(">=18.0.0", [20, 18, 1])).toBe(true);
    expect(accepts("^18 || ^20 || >= 21", [20, 18, 1])).toBe(true);
    expect(accepts("^12.22 || ^14.13 || >=16", [20, 18, 1])).toBe(true);
    expect(accepts("20.x || 22.x", [20, 18, 1])).toBe(true);
    expect(accepts("22.x || 24.x", [20, 18, 1])).toBe(false);
  });

  it("every production dependency runs on the oldest Node edgehook supports", () => {
    const pkg: { engines: { node: string } } = JSON.parse(readFileSync("package.json", "utf8"));
    const oldest = parse(pkg.engines.node.replace(/^>=\s*/, ""));
    const lock: { packages: Record<string, LockPackage> } = JSON.parse(readFileSync("package-lock.json", "utf8"));
    const refused: string[] = [];
    for (const [path, p] of Object.entries(lock.packages)) {
      if (path === "" || p.dev === true || Array.isArray(p.engines)) continue;
      const range = p.engines?.node;
      if (range !== undefined && !accepts(range, oldest)) refused.push(`${path} (node ${range})`);
    }
    expect(refused).toEqual([]);
  });
});
