/**
 * `edgehook queue ...` and `edgehook destination enable` against a real outbox file,
 * opened by the command as a second connection (as when the agent runs).
 */
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { destinationCommand, queueCommand } from "../../src/cli/queue.js";
import { formatAge } from "../../src/cli/table.js";
import { type LoadedConfig, parseConfig } from "../../src/config/load.js";
import { type NewEvent, newEventId } from "../../src/events.js";
import { silentLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import { Outbox } from "../../src/store/outbox.js";
import { FakeClock } from "../support/fake-clock.js";
import { TERMINAL_CONTROL } from "../support/terminal.js";

let dir: string;
let loaded: LoadedConfig;
let agent: Outbox;
let clock: FakeClock;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "edgehook-queue-cli-"));
  const yaml = `version: 1
agent:
  id: pi-test
  data_dir: ${join(dir, "data")}
http:
  listen: false
destinations:
  ops:
    url: http://127.0.0.1:9/hook
    signature: none
  lake:
    url: http://127.0.0.1:9/lake
    signature: none
`;
  loaded = parseConfig(yaml, join(dir, "agent.yaml"), { env: {} });
  // The agent's clock is the real one here: the command computes ages against Date.now().
  clock = new FakeClock(Date.now() - 60_000);
  agent = new Outbox({
    file: join(loaded.dataDir, "outbox.db"),
    limits: { ...loaded.config.outbox, commit_delay: 0 },
    clock,
    logger: silentLogger(),
    metrics: new Metrics(),
  });
});

afterEach(() => {
  agent.close();
  rmSync(dir, { recursive: true, force: true });
});

function ev(series: string, destinations = ["ops"]): NewEvent {
  return {
    id: newEventId(),
    type: "alert.firing",
    rule: "temp",
    series: `temp\u001f${series}\u001ftemperature`,
    severity: "warning",
    priority: 10,
    destinations,
    createdAt: clock.now(),
    body: { type: "alert.firing", timestamp: new Date(clock.now()).toISOString(), data: { value: 31.5 } },
  };
}

async function run(cmd: "queue" | "destination", ...args: string[]) {
  const lines: string[] = [];
  const fn = cmd === "queue" ? queueCommand : destinationCommand;
  const code = await fn(args, loaded, (l) => lines.push(l));
  return { code, text: lines.join("\n") };
}

describe("edgehook queue", () => {
  it("works before the agent ever ran, without creating the database", async () => {
    const r = await run("queue", "stats");
    expect(r.code).toBe(0);
    expect(r.text).toMatch(/no outbox yet/);
    // Without the running agent, only "disabled" is known.
    expect(r.text).toMatch(/ops\s+unknown \(agent down\)\s+0\s+0\s+0\s+-/);
    expect((await run("queue", "show", "msg_x")).code).toBe(1);
    expect(existsSync(join(loaded.dataDir, "outbox.db"))).toBe(false);
  });

  it("stats, list, show, replay, purge and destination enable while the agent holds the database", async () => {
    agent.open();
    const old = ev("gh1", ["ops", "lake"]);
    await agent.commit({ events: [old], states: [], removedStates: [] });
    clock.advance(1000);
    await agent.commit({ events: [ev("gh2")], states: [], removedStates: [] });
    const [d] = agent.next("lake", clock.now(), 1, new Set());
    agent.settle([
      {
        id: d!.id,
        outcome: "dead",
        attempt: { at: clock.now(), status: 400, durationMs: 30, error: "bad request" },
        reason: "http 400",
      },
    ]);
    agent.setDestinationDisabled("lake", "410 Gone");

    let r = await run("queue", "stats", "--json");
    expect(r.code).toBe(0);
    const stats = JSON.parse(r.text) as { destination: string; pending: number; dead: number; enabled: boolean }[];
    expect(stats.map((s) => [s.destination, s.pending, s.dead, s.enabled])).toEqual([
      ["lake", 0, 1, false],
      ["ops", 2, 0, true],
    ]);
    r = await run("queue", "stats");
    expect(r.text).toMatch(/lake\s+disabled \(410 Gone/);

    r = await run("queue", "list", "--state", "dead", "--json");
    expect(JSON.parse(r.text)).toMatchObject([{ eventId: old.id, destination: "lake", reason: "http 400" }]);
    r = await run("queue", "list", "--destination", "ops");
    expect(r.text.split("\n")).toHaveLength(3);
    expect(r.text).toContain("temp/gh2/temperature");

    r = await run("queue", "show", old.id);
    expect(r.code).toBe(0);
    expect(r.text).toContain(`event     ${old.id}`);
    expect(r.text).toContain('"value": 31.5');
    expect(r.text).toMatch(/delivery {2}lake: dead at .*1 attempt\(s\), reason: http 400/);
    expect(r.text).toMatch(/HTTP 400 {2}30 ms {2}bad request/);
    expect(r.text).not.toContain("whsec_");

    r = await run("queue", "replay", "--destination", "lake", "--dead");
    expect(r).toEqual({ code: 0, text: "lake: 1 dead delivery back to pending" });
    // the running agent sees it
    expect(agent.stats().find((s) => s.destination === "lake")?.pending).toBe(1);
    expect(agent.next("lake", Date.now(), 5, new Set()).map((x) => x.eventId)).toEqual([old.id]);

    r = await run("destination", "enable", "lake");
    expect(r).toEqual({ code: 0, text: "lake: enabled; the running agent resumes deliveries to it" });
    expect(agent.destinationFlags().lake?.disabled).toBe(false);
    expect((await run("destination", "enable", "lake")).text).toMatch(/was not disabled/);

    // deliver everything, then purge it
    for (const dest of ["ops", "lake"]) {
      for (const x of agent.next(dest, Date.now(), 10, new Set())) {
        agent.settle([{ id: x.id, outcome: "delivered", attempt: { at: clock.now(), status: 200, durationMs: 5 } }]);
      }
    }
    r = await run("queue", "purge", "--older-than", "1h");
    expect(r.text).toBe("purged 0 delivered/dead deliveries settled more than 1h ago");
    r = await run("queue", "purge", "--older-than", "10s", "--state", "delivered");
    expect(r.code).toBe(0);
    expect(r.text).toMatch(/^purged [1-3] delivered deliver/);
    expect(agent.totals().events).toBeLessThan(2);
  });

  it("list and show escape control characters from payloads: a sensor name cannot clear the screen or fake a row", async () => {
    agent.open();
    const e = ev("evil\u001b[2J\nmsg_fake ops delivered");
    e.body = {
      type: "alert.firing",
      timestamp: "2026-01-01T00:00:00Z",
      data: { sensor: "evil\u001b[2J\u009b\u202e", note: "line\nbreak" },
    };
    await agent.commit({ events: [e], states: [], removedStates: [] });
    const list = await run("queue", "list");
    const show = await run("queue", "show", e.id);
    for (const r of [list, show]) {
      expect(r.code).toBe(0);
      expect(r.text).not.toMatch(TERMINAL_CONTROL);
    }
    expect(list.text.split("\n")).toHaveLength(2);
    expect(list.text).toContain("temp/evil\\e[2J\\nmsg_fake ops delivered/temperature");
    expect(show.text).toContain("series    temp/evil\\e[2J\\nmsg_fake");
    expect(show.text).toContain("\\u001b[2J\\x9b\\u202e");
  });

  it("replay and show by id report not found with exit 1", async () => {
    agent.open();
    expect(await run("queue", "replay", "msg_nope")).toEqual({
      code: 1,
      text: "edgehook: no event 'msg_nope' in the outbox",
    });
    expect((await run("queue", "replay", "--destination", "nowhere", "--dead")).code).toBe(1);
    expect((await run("destination", "enable", "nowhere")).code).toBe(1);
    const e = ev("x");
    await agent.commit({ events: [e], states: [], removedStates: [] });
    expect((await run("queue", "replay", e.id)).text).toMatch(/nothing to replay/);
  });

  it.each([
    [[]],
    [["frobnicate"]],
    [["list", "--state", "lost"]],
    [["list", "--limit", "0"]],
    [["list", "--bogus"]],
    [["show"]],
    [["replay"]],
    [["replay", "--destination", "ops"]],
    [["purge"]],
    [["purge", "--older-than", "soon"]],
    [["purge", "--older-than", "1d", "--state", "pending"]],
  ])("usage error for queue %j → 64 with a usage line", async (args) => {
    const r = await run("queue", ...args);
    expect(r.code).toBe(64);
    expect(r.text).toMatch(/usage: edgehook (queue|destination)/);
  });

  it("usage error for destination → 64", async () => {
    expect((await run("destination", "disable", "ops")).code).toBe(64);
    expect((await run("destination")).code).toBe(64);
  });

  it("formats ages with the two largest units", () => {
    expect(formatAge(0)).toBe("0s");
    expect(formatAge(75_000)).toBe("1m15s");
    expect(formatAge(3_600_000 * 26 + 5000)).toBe("1d2h");
    expect(formatAge(3_600_000 + 5000)).toBe("1h");
  });
});
