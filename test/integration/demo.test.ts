/**
 * `edgehook demo`, the README's main job, run as a user runs it: the receiver goes
 * offline, events wait in the outbox and arrive verified after it returns. The demo's
 * timeline plays at --speed 10 (about 3 s instead of 31 s); the agent runs at its own
 * pace, so the same events must still wait, arrive and verify.
 */
import { spawn } from "node:child_process";
import { describe, expect, it } from "vitest";
import { BIN } from "../support/agent-process.js";

describe("edgehook demo", () => {
  it("shows events waiting while the receiver is offline, then arriving verified", async () => {
    const proc = spawn(process.execPath, [BIN, "demo", "--duration", "31s", "--speed", "10"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    proc.stdout.on("data", (d) => {
      out += String(d);
    });
    proc.stderr.on("data", (d) => {
      out += String(d);
    });
    const code = await new Promise<number | null>((r) => proc.once("exit", (c) => r(c)));
    expect(code, out).toBe(0);
    const lines = out.trim().split("\n");
    const back = lines.findIndex((l) => l.includes("bringing the receiver back"));
    expect(back, out).toBeGreaterThan(0);
    expect(lines.slice(0, back).some((l) => /outbox: [12] event\(s\) pending/.test(l))).toBe(true);
    const afterwards = lines.slice(back).filter((l) => l.startsWith("[receiver]"));
    expect(
      afterwards.some((l) => /alert\.firing greenhouse-3\/temperature=34 .* verified v1 → 200/.test(l)),
      out,
    ).toBe(true);
    expect(
      afterwards.some((l) => /alert\.resolved greenhouse-3\/temperature=24 .* verified v1 → 200/.test(l)),
      out,
    ).toBe(true);
    expect(lines.at(-1)).toBe("[demo] done: the receiver verified 4 webhook(s)");
  }, 120_000);
});
