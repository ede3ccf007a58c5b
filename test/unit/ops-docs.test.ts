/**
 * docs/operations.md lists every metric /metrics serves, and nothing that does not exist.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { Metrics } from "../../src/ops/metrics.js";

const DOC = readFileSync(new URL("../../docs/operations.md", import.meta.url), "utf8");

describe("docs/operations.md", () => {
  it("documents exactly the metrics edgehook exports", async () => {
    const metrics = new Metrics();
    metrics.enableProcessMetrics();
    const served = new Set((await metrics.registry.getMetricsAsJSON()).map((m) => m.name));
    expect(served.size).toBeGreaterThan(30);
    const section = DOC.slice(DOC.indexOf("## Metrics"));
    const documented = new Set([...section.matchAll(/`(edgehook_[a-z_]+)`/g)].map((m) => m[1]!));
    expect([...served].filter((n) => !documented.has(n))).toEqual([]);
    expect([...documented].filter((n) => !served.has(n))).toEqual([]);
  });
});
