/**
 * `edgehook queue ...` run while an agent process is writing to the same outbox: WAL
 * plus busy_timeout make the two safe together. A real child process commits, drains
 * and settles continuously; this process runs the queue commands against the file.
 *
 * Uses the built code (dist/) for the child: run `npx tsc -p tsconfig.build.json` first.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { destinationCommand, queueCommand } from "../../src/cli/queue.js";
import { type LoadedConfig, parseConfig } from "../../src/config/load.js";

const DIST = resolve("dist");
const url = (p: string) => JSON.stringify(pathToFileURL(join(DIST, p)).href);

const AGENT = `
import { Outbox } from ${url("store/outbox.js")};
import { systemClock } from ${url("clock.js")};
import { newEventId } from ${url("events.js")};
import { silentLogger } from ${url("ops/logger.js")};
import { Metrics } from ${url("ops/metrics.js")};
const outbox = new Outbox({
  file: process.argv[2],
  limits: { max_events: 100_000, max_bytes: 2 ** 40, max_age: 86_400_000, min_free_disk: 1,
            keep_delivered: 86_400_000, commit_delay: 2 },
  clock: systemClock, logger: silentLogger(), metrics: new Metrics(),
});
outbox.open();
let i = 0;
async function producer() {
  for (;;) {
    const events = Array.from({ length: 20 }, () => ({
      id: newEventId(), type: "reading", rule: "r", series: "r:s" + (i++ % 13) + ":m", severity: "info",
      priority: 0, destinations: ["ops"], createdAt: Date.now(),
      body: { type: "reading", timestamp: new Date().toISOString(), data: { i } },
    }));
    await outbox.commit({ events, states: [], removedStates: [] });
  }
}
for (let c = 0; c < 4; c++) producer();
setInterval(() => {
  const got = outbox.next("ops", Date.now(), 10, new Set());
  outbox.settle(got.map((d, j) => j % 3 === 0
    ? { id: d.id, outcome: "dead", attempt: { at: Date.now(), status: 422, durationMs: 1 }, reason: "http 422" }
    : { id: d.id, outcome: "delivered", attempt: { at: Date.now(), status: 200, durationMs: 1 } }));
  if (got.length > 0) process.stdout.write("settled " + got.length + "\\n");
}, 2);
`;

let dir: string;
let agent: ChildProcess | undefined;

beforeAll(() => {
  if (!existsSync(join(DIST, "store/outbox.js"))) {
    throw new Error("dist/ is missing: run `npx tsc -p tsconfig.build.json` before the integration tests");
  }
  dir = mkdtempSync(join(tmpdir(), "edgehook-concurrent-"));
  writeFileSync(join(dir, "agent.mjs"), AGENT);
});

afterAll(() => {
  if (agent && agent.exitCode === null && agent.signalCode === null) agent.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

describe("queue commands beside a running agent process", () => {
  it("read and change the outbox without errors while the agent writes", async () => {
    const loaded: LoadedConfig = parseConfig(
      `version: 1\nagent:\n  id: pi\n  data_dir: ${dir}\ndestinations:\n  ops:\n    url: http://127.0.0.1:9/x\n    signature: none\n`,
      join(dir, "agent.yaml"),
      { env: {} },
    );
    agent = spawn(process.execPath, [join(dir, "agent.mjs"), join(dir, "outbox.db")], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    agent.stderr?.on("data", (d) => {
      stderr += d;
    });
    // Wait until the agent is committing and settling.
    await new Promise<void>((resolvePromise, reject) => {
      agent?.stdout?.once("data", () => resolvePromise());
      agent?.once("exit", () => reject(new Error(`agent exited: ${stderr}`)));
    });

    const run = async (fn: typeof queueCommand, ...args: string[]) => {
      const lines: string[] = [];
      const code = await fn(args, loaded, (l) => lines.push(l));
      return { code, text: lines.join("\n") };
    };
    let replayed = 0;
    let rounds = 0;
    const until = Date.now() + 1500;
    while (Date.now() < until) {
      const stats = await run(queueCommand, "stats", "--json");
      expect(stats.code).toBe(0);
      const [ops] = JSON.parse(stats.text) as { destination: string; pending: number; delivered: number }[];
      expect(ops?.destination).toBe("ops");
      expect((await run(queueCommand, "list", "--state", "dead", "--limit", "5", "--json")).code).toBe(0);
      const replay = await run(queueCommand, "replay", "--destination", "ops", "--dead");
      expect(replay.code).toBe(0);
      replayed += Number(/: (\d+) dead/.exec(replay.text)?.[1] ?? 0);
      expect((await run(queueCommand, "purge", "--older-than", "0s", "--state", "delivered")).code).toBe(0);
      expect((await run(destinationCommand, "enable", "ops")).code).toBe(0);
      rounds++;
    }
    expect(rounds).toBeGreaterThan(3);
    expect(replayed).toBeGreaterThan(0);
    // The agent kept working the whole time.
    expect(agent.exitCode).toBeNull();
    expect(stderr).toBe("");
    agent.kill("SIGKILL");
  });
});
