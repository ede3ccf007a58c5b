/**
 * Alerts that always get through: the real agent process, a real mosquitto and real HTTP
 * receivers on 127.0.0.1 that fail the way real ones do. What is asserted is what a user
 * sees: which alerts arrive, in which order, how soon, and what the log says.
 * Here: a receiver that is gone for ten seconds.
 * (The delivery tests are split over delivery-*.test.ts so that they run side by side.)
 */
import { expect, it } from "vitest";
import { data, useDeliveryRig } from "../support/delivery-rig.js";
import type { Received } from "../support/receiver.js";

const { rig } = useDeliveryRig();

it("a receiver gone for 10 s: the backlog resumes within a second of its return, readings after it arrive at once, and the log says so", async () => {
  const r = await rig("outage", "concurrency: 4", { metrics: true });
  const { receiver, agent } = r;
  const outage = async (ms: number) => {
    await receiver.stop();
    const t = Date.now();
    return async () => {
      const left = ms - (Date.now() - t);
      // The outage itself is the scenario: `ms` of nothing listening.
      if (left > 0) await new Promise((res) => setTimeout(res, left));
      await receiver.start();
      return Date.now();
    };
  };

  // 1. A backlog built during the outage goes within a second of the receiver's return,
  //    with no new reading to nudge it.
  const offlineBefore = await r.deliveries("offline");
  const end1 = await outage(10_000);
  for (const s of ["a", "b", "c", "d", "e"]) await r.publish(s, 99);
  await agent.waitForLog((l) => l.msg.includes("unreachable ("), "the destination taken for unreachable");
  const before = receiver.accepted.length;
  const back1 = await end1();
  await receiver.waitFor(() => receiver.accepted.length >= before + 5, "the backlog", 5_000);
  const first = receiver.accepted[before] as Received;
  // Probes go every 0.75 to 1 s; the rest is scheduling slack on a loaded test machine.
  expect(first.receivedAt - back1).toBeLessThan(1_250);
  // While it was down, five series waited with concurrency 4, yet the agent tried one
  // request at a time, about once a second: at most 10 s / 0.75 s + 1, plus the 4 that may
  // have been on their way when the first refusal came back (trying every waiting series
  // each second would be 50). And it kept trying, which is what let it resume at once.
  const tries = (await r.deliveries("offline")) - offlineBefore;
  expect(tries).toBeGreaterThanOrEqual(7);
  expect(tries).toBeLessThanOrEqual(18);
  const line = await agent.waitForLog((l) => l.msg.includes("reachable again"), "the comeback line");
  expect(line).toMatchObject({ level: "info", destination: "ops", backlog: 5 });
  expect(line.downSeconds as number).toBeGreaterThan(8);
  expect(line.downSeconds as number).toBeLessThan(13);

  // 2. A reading published right after the receiver returns does not wait for the next probe
  //    (probes still go every 0.75 to 1 s; three seconds of outage are enough to show it).
  const end2 = await outage(3_000);
  await r.publish("x", 99);
  await agent.waitForLog(
    (l) => l.msg.includes("unreachable (") && agent.logs.filter((m) => m.msg.includes("unreachable (")).length === 2,
    "the second outage noticed",
  );
  await end2();
  const sentAt = Date.now();
  await r.publish("y", 99);
  await receiver.waitFor(() => receiver.accepted.some((a) => data(a).sensor === "y"), "the fresh reading", 5_000);
  const fresh = receiver.accepted.find((a) => data(a).sensor === "y") as Received;
  expect(fresh.receivedAt - sentAt).toBeLessThan(600);
  expect(receiver.accepted.some((a) => data(a).sensor === "x")).toBe(true);
}, 40_000);
