/**
 * Keeps docs/destinations.md honest: every destination example in it loads through
 * the real config loader and renders an event.
 */
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/load.js";
import { render } from "../../src/delivery/render.js";
import { generateSigningKey } from "../../src/delivery/sign-v1a.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";
import { bytes, firing } from "./render-fixtures.js";

const doc = readFileSync(new URL("../../docs/destinations.md", import.meta.url), "utf8");
const blocks = [...doc.matchAll(/```yaml\n([\s\S]*?)```/g)]
  .map((m) => m[1] as string)
  .filter((b) => /^\s*url:/m.test(b));

function configFor(block: string): string {
  const body = block
    .split("\n")
    .filter((l) => l.trim() !== "destinations:")
    .join("\n");
  return `version: 1\nagent: { id: pi }\ndestinations:\n${body}\n`;
}

describe("docs/destinations.md examples", () => {
  it("has destination examples for every preset", () => {
    for (const p of ["slack", "discord", "teams", "ntfy", "homeassistant"]) {
      expect(blocks.some((b) => b.includes(`preset: ${p}`))).toBe(true);
    }
    expect(blocks.length).toBeGreaterThanOrEqual(8);
  });

  it.each(
    blocks.map((b) => [
      b
        .split("\n")
        .find((l) => l.trim())
        ?.trim(),
      b,
    ]),
  )("%s loads and renders", (_n, block) => {
    const dir = mkdtempSync(join(tmpdir(), "edgehook-docs-"));
    for (const m of block.matchAll(/(\w+)_file: (\S+)/g)) {
      const [, key, file] = m as unknown as [string, string, string];
      const content =
        key === "secret" && block.includes("ed25519")
          ? generateSigningKey().secret
          : key === "secret"
            ? WEBHOOK_SECRET
            : "tk_example";
      writeFileSync(join(dir, file), content);
    }
    const env = new Proxy({} as NodeJS.ProcessEnv, {
      get: (_t, name) => (typeof name === "string" && name.endsWith("_URL") ? "https://hooks.example/x/y" : "value"),
    });
    const { config } = parseConfig(configFor(block), join(dir, "agent.yaml"), { env });
    const dests = Object.values(config.destinations);
    expect(dests.length).toBeGreaterThan(0);
    for (const d of dests) {
      const r = render(bytes(firing), d);
      expect(r.body.length).toBeGreaterThan(0);
    }
  });
});
