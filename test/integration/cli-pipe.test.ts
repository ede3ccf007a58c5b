/**
 * The command line as a shell uses it: `queue list | head` stops quietly when the reader
 * goes away, and `status --watch` refreshes until Ctrl-C.
 */
import { spawn } from "node:child_process";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { COMMANDS } from "../../src/cli/commands.js";
import { parseConfig } from "../../src/config/load.js";
import { newEventId } from "../../src/events.js";
import { silentLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import { Outbox } from "../../src/store/outbox.js";
import { BIN, edgehookAsync, tempDir, writeConfig } from "../support/agent-process.js";
import { track } from "../support/children.js";

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await Promise.resolve(c()).catch(() => {});
});

async function configWithEvents(n: number): Promise<string> {
  const dir = tempDir("edgehook-pipe-");
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const yaml = `version: 1
agent: { id: pipe-pi, data_dir: ./data }
http: { listen: false }
destinations:
  ops: { url: "http://127.0.0.1:9/h", signature: none }
`;
  const file = writeConfig(dir, yaml);
  const loaded = parseConfig(yaml, file, { env: {} });
  const outbox = new Outbox({
    file: join(loaded.dataDir, "outbox.db"),
    limits: { ...loaded.config.outbox, commit_delay: 0 },
    clock: { now: () => Date.now(), monotonic: () => performance.now(), setTimeout, clearTimeout } as never,
    logger: silentLogger(),
    metrics: new Metrics(),
  });
  outbox.open();
  const now = Date.now();
  await outbox.commit({
    events: Array.from({ length: n }, (_, i) => ({
      id: newEventId(now + i),
      type: "alert.firing",
      rule: "hot",
      series: `hot\u001fsensor-${i}\u001ftemperature`,
      severity: "warning",
      priority: 10,
      destinations: ["ops"],
      createdAt: now,
      body: { type: "alert.firing", timestamp: new Date(now).toISOString(), data: { value: i } },
    })),
    states: [],
    removedStates: [],
  });
  outbox.close();
  return file;
}

function start(args: string[]) {
  const proc = spawn(process.execPath, [BIN, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  track(proc);
  let stderr = "";
  proc.stderr.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    proc.once("exit", (code, signal) => r({ code, signal })),
  );
  return { proc, exited, stderr: () => stderr };
}

describe("the installed binary", () => {
  it("answers --help for every command in the table with exit 0, reading no configuration", async () => {
    const env = { EDGEHOOK_CONFIG: "/nonexistent/agent.yaml" };
    // Three at a time: twenty node processes at once on a loaded 2-core machine take
    // longer than edgehookAsync's 30 s each, which is no answer about --help.
    const queue = [...COMMANDS];
    const results: { name: string; r: Awaited<ReturnType<typeof edgehookAsync>> }[] = [];
    await Promise.all(
      [1, 2, 3].map(async () => {
        for (let c = queue.shift(); c !== undefined; c = queue.shift()) {
          results.push({ name: c.name, r: await edgehookAsync([...c.name.split(" "), "--help"], env) });
        }
      }),
    );
    expect(results).toHaveLength(COMMANDS.length);
    for (const { name, r } of results) {
      expect({ name, code: r.code, stderr: r.stderr }).toEqual({ name, code: 0, stderr: "" });
      expect(r.stdout).toContain(`Usage: edgehook ${name}`);
    }
  });
});

describe("edgehook in a shell pipeline", () => {
  it("queue list | head: exits quietly when the reader closes the pipe", async () => {
    const file = await configWithEvents(2000);
    const { proc, exited, stderr } = start(["queue", "list", "--limit", "2000", "--config", file]);
    // Read one chunk, as `head -1` does, then close the pipe.
    await new Promise<void>((resolve) => proc.stdout.once("data", () => resolve()));
    proc.stdout.destroy();
    const { code } = await exited;
    expect(stderr()).toBe("");
    expect(code).toBe(0);
  });

  it("status --watch refreshes until Ctrl-C, then exits 0", async () => {
    const file = await configWithEvents(3);
    const { proc, exited, stderr } = start(["status", "--watch", "--json", "--config", file]);
    const snapshots: { from: string; destinations: { pending: number }[] }[] = [];
    let buf = "";
    proc.stdout.on("data", (d: Buffer) => {
      buf += d.toString();
      let i = buf.indexOf("\n");
      while (i >= 0) {
        snapshots.push(JSON.parse(buf.slice(0, i)));
        buf = buf.slice(i + 1);
        i = buf.indexOf("\n");
      }
    });
    await expect.poll(() => snapshots.length, { timeout: 15_000, interval: 100 }).toBeGreaterThanOrEqual(2);
    proc.kill("SIGINT");
    const { code } = await exited;
    expect(code).toBe(0);
    expect(stderr()).toBe("");
    expect(snapshots[1]).toMatchObject({ from: "outbox", destinations: [{ pending: 3 }] });
  });
});
