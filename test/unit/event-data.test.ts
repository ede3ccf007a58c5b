/**
 * Ties the `data` fields the rule engine emits to DATA_FIELDS (src/event-data.ts), which
 * is what destination templates may name and what a rule's `extra` may not replace: every
 * event the engine can emit is produced here, and its keys are compared with the list.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { compileTemplate } from "../../src/delivery/template.js";
import { DATA_FIELD_NAMES, DATA_FIELDS } from "../../src/event-data.js";
import type { NewEvent } from "../../src/events.js";
import type { HealthReport } from "../../src/ops/health.js";
import { heartbeatEvent } from "../../src/ops/heartbeats.js";
import { checkRule } from "../../src/rules/validate.js";
import { Harness, rules, sec } from "./rules-support.js";

const EXTRA = { runbook: "https://wiki.example/rb" };

/** One of every event the engine emits, with every variant of its data. */
function everyRuleEvent(): NewEvent[] {
  const defs = rules(
    { match: { sensor: "a", metric: "t" }, above: 30, repeat_every: "1m", extra: EXTRA },
    { match: { sensor: "b", metric: "t" }, above: 30, aggregate: { fn: "avg", over: "5m" } },
    { match: { sensor: "c", metric: "t" }, rate_above: 1, rate_window: "1m" },
    { match: { sensor: "d", metric: "t" }, absent_for: "1m" },
    { match: { sensor: "e", metric: "t" }, forward: true },
    { match: { sensor: "f", metric: "t" }, forward: { batch_every: "1m" } },
    { match: { sensor: "g" }, when: "t > 30 && u > 1", clear_when: "t < 20" },
  );
  const h = new Harness(defs);
  h.feed("a", "t", 31, sec(0));
  h.feed("b", "t", 31, sec(1));
  h.feed("c", "t", 0, sec(2));
  h.feed("c", "t", 100, sec(3));
  h.feed("d", "t", 1, sec(4));
  h.feed("e", "t", 1, sec(5));
  h.feed("f", "t", 1, sec(6));
  h.feed("g", "u", 2, sec(7));
  h.feed("g", "t", 31, sec(8)); // when rule firing
  h.advanceTo(sec(90)); // repeat, silence, batch
  h.feed("d", "t", 2, sec(91)); // returned
  h.feed("a", "t", 20, sec(92)); // resolved
  h.feed("a", "t", 31, sec(93));
  h.advanceTo(sec(200)); // d silent again
  // Removed while the agent was down: closed from what the stored rows remember.
  h.restart(defs.filter((r) => r.name !== "r0" && r.name !== "r3"));
  h.advanceTo(sec(201));
  return h.events;
}

/** The agent's own event: a heartbeat (src/ops/heartbeats.ts). */
function heartbeat(): NewEvent {
  const health: HealthReport = {
    status: "ok",
    agent: "pi",
    uptime_s: 60,
    database: "open",
    loop_idle_s: 0,
    sources: [{ name: "mqtt", kind: "mqtt", status: "up", since: 0 }],
    destinations: {},
    outbox: { pending: 0, dead: 0, bytes: 4096, oldest_pending_s: null, refusing: null },
    problems: [],
  };
  return heartbeatEvent("pi", "1.0.0", health, 300_000, ["ops"], sec(0));
}

describe("event data fields", () => {
  const events = everyRuleEvent();

  it("the engine emits every rule event type", () => {
    expect(new Set(events.map((e) => e.type))).toEqual(
      new Set([
        "alert.firing",
        "alert.repeat",
        "alert.resolved",
        "sensor.silent",
        "sensor.returned",
        "reading",
        "readings",
      ]),
    );
    // Both kinds of closing: from a live series and from a stored row.
    expect(
      events
        .filter((e) => e.body.data.reason === "rule removed")
        .map((e) => e.type)
        .sort(),
    ).toEqual(["alert.resolved", "sensor.returned"]);
  });

  it("every field the engine emits is in DATA_FIELDS, and every field there is emitted", () => {
    const emitted = new Set<string>();
    for (const e of [...events, heartbeat()]) {
      for (const k of Object.keys(e.body.data)) if (!Object.hasOwn(EXTRA, k)) emitted.add(k);
    }
    expect([...emitted].sort()).toEqual([...DATA_FIELD_NAMES].sort());
  });

  it("every field is a placeholder templates may name, in the shape it has", () => {
    for (const f of DATA_FIELD_NAMES) {
      const r = compileTemplate({ x: `{{ data.${f} }}` }, ["template"], {});
      expect(r.ok, f).toBe(true);
      const deeper = compileTemplate({ x: `{{ data.${f}.inner }}` }, ["template"], {});
      expect(deeper.ok, `${f}.inner`).toBe(DATA_FIELDS[f] !== "value");
    }
    expect(compileTemplate({ x: "{{ data.message }}" }, ["template"], {}).ok).toBe(false);
  });

  it("no rule's extra may replace a field", () => {
    for (const f of DATA_FIELD_NAMES) {
      const [r] = rules({ match: { sensor: "a", metric: "t" }, above: 1, extra: { [f]: 1 } });
      const given = (k: string) => k === "above" || k === "extra";
      expect(checkRule(r!, given), f).toEqual([
        { path: ["extra", f], message: "is a field edgehook sets in the body; choose another name" },
      ]);
    }
    const [ok] = rules({ match: { sensor: "a", metric: "t" }, above: 1, extra: { message: "m", runbook: "r" } });
    expect(checkRule(ok!, (k) => k === "above" || k === "extra")).toEqual([]);
  });

  it("docs/destinations.md names every field", () => {
    const doc = readFileSync(new URL("../../docs/destinations.md", import.meta.url), "utf8");
    for (const f of DATA_FIELD_NAMES) expect(doc, f).toContain(`\`data.${f}`);
  });
});
