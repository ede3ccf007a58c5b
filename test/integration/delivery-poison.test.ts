/**
 * Alerts that always get through: the real agent process, a real mosquitto and real HTTP
 * receivers on 127.0.0.1 that fail the way real ones do. What is asserted is what a user
 * sees: which alerts arrive, in which order, how soon, and what the log says.
 * Here: one event the receiver chokes on (reset, hang, slow), and kill -9 during a busy stream.
 * (The delivery tests are split over delivery-*.test.ts so that they run side by side.)
 */
import { describe, expect, it } from "vitest";
import { AgentProcess, edgehook } from "../support/agent-process.js";
import { data, typeOf, useDeliveryRig } from "../support/delivery-rig.js";
import type { Received } from "../support/receiver.js";

const { rig, cleanups } = useDeliveryRig();

describe("one event the receiver cannot take holds back only its own series", () => {
  const what = {
    reset: "resets the connection",
    hang: "hangs past response_timeout",
    // The "answers after 60 s with a 15 s timeout", at a scale a test can wait for.
    slow: "answers 200 only after four times response_timeout",
  } as const;
  for (const how of ["reset", "hang", "slow"] as const) {
    it(`a receiver that ${what[how]} for one sensor: the other sensors' alerts arrive within seconds`, async () => {
      const r = await rig(
        `poison-${how}`,
        // Short so the poisoned alert is dead within the test; the defaults take ~27 h.
        "response_timeout: 500ms, max_attempts: 3, retry_schedule: [200ms]",
      );
      // The receiver cannot take the firing alert of sensor "bad"; everything else is fine.
      r.receiver.answer = (rec) =>
        data(rec).sensor !== "bad" || typeOf(rec) !== "alert.firing"
          ? { kind: "accept" }
          : how === "slow"
            ? { kind: "accept", delayMs: 2_000 }
            : { kind: how };
      await r.publish("bad", 99);
      // Its first attempt has failed (reset, or timed out and closed) before the others come.
      await r.receiver.waitFor(
        () => r.receiver.arrivals.some((a) => data(a).sensor === "bad") && r.receiver.open === 0,
        "the poisoned alert's first attempt",
      );

      const t0 = Date.now();
      const sensors = ["a", "b", "c", "d", "e", "f"];
      for (const s of sensors) await r.publish(s, 99);
      await r.receiver.waitFor(
        () => sensors.every((s) => r.receiver.accepted.some((a) => data(a).sensor === s)),
        "the other sensors' alerts",
        5_000,
      );
      expect(Date.now() - t0).toBeLessThan(5_000);
      // The destination was never taken for unreachable.
      expect(r.agent.logs.filter((l) => l.msg.includes("unreachable"))).toEqual([]);

      // The poisoned alert spent its attempts and is dead, visible to the operator; its
      // series then moves on (the resolve after it is delivered).
      await r.publish("bad", 1);
      await r.receiver.waitFor(
        () => r.receiver.accepted.some((a) => data(a).sensor === "bad" && typeOf(a) === "alert.resolved"),
        "the bad sensor's resolve, once its firing alert is dead",
        10_000,
      );
      const dead = edgehook(["queue", "list", "--state", "dead", "--json", "--config", r.config]);
      expect(dead.code).toBe(0);
      const rows = JSON.parse(dead.stdout) as { series: string; attempts: number; reason: string }[];
      expect(rows).toHaveLength(1);
      expect(rows[0]?.series).toContain("bad");
      expect(rows[0]?.attempts).toBe(3);
      expect(rows[0]?.reason).toMatch(how === "reset" ? /reset|closed/ : /response timeout/);
    });
  }
});

it("kill -9 while delivering a busy stream: every alert arrives, first arrivals in order per series, a repeat is the same webhook", async () => {
  const r = await rig("busy-crash", "concurrency: 8");
  // Answers take a moment, so requests overlap and outcomes wait to be written when the
  // process dies.
  r.receiver.answer = () => ({ kind: "accept", delayMs: 2 });
  const SERIES = 4;
  const TOTAL = 400;
  const value = (k: number) => (Math.floor(k / SERIES) % 2 === 0 ? 1_000 + k : -1 - k);
  const kOf = (v: number) => (v >= 1_000 ? v - 1_000 : -1 - v);
  const stream = (async () => {
    for (let k = 0; k < TOTAL; k++) await r.publish(`s${k % SERIES}`, value(k));
  })();
  await r.receiver.waitFor(() => r.receiver.accepted.length >= 100, "a hundred alerts delivered", 20_000);
  r.agent.kill("SIGKILL");
  await r.agent.exited();
  await stream;
  const again = new AgentProcess(r.config);
  cleanups.push(() => again.stop());
  await again.start();
  const real = () => r.receiver.accepted.filter((a) => data(a).sensor !== "probe");
  await r.receiver.waitFor(() => new Set(real().map((a) => a.id)).size === TOTAL, "every alert", 30_000);
  const seen = new Map<string, Received>();
  for (const a of real()) {
    const earlier = seen.get(a.id);
    // Sent again after the crash: the same webhook, byte for byte.
    if (earlier) expect(a.body).toBe(earlier.body);
    else seen.set(a.id, a);
  }
  for (let s = 0; s < SERIES; s++) {
    const firsts = [...seen.values()].filter((a) => data(a).sensor === `s${s}`).map((a) => kOf(data(a).value));
    expect(firsts).toEqual(Array.from({ length: TOTAL / SERIES }, (_, i) => i * SERIES + s));
  }
});
