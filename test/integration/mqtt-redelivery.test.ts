/**
 * A QoS 1 message whose readings were committed but whose PUBACK never left (the
 * process died in between) is redelivered by the broker with the DUP flag. The source
 * recognises it from the ledger of committed message keys and acknowledges it without
 * handing it to the sink again: no second event for one reading.
 */
import mqtt from "mqtt";
import { afterAll, describe, expect, it } from "vitest";
import { systemClock } from "../../src/clock.js";
import { configSchema } from "../../src/config/schema.js";
import { silentLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import { MqttSource } from "../../src/sources/mqtt.js";
import type { Reading, SinkOrigin } from "../../src/sources/reading.js";
import { Mosquitto } from "../support/mosquitto.js";

describe("redelivery after commit, before PUBACK", () => {
  const broker = new Mosquitto();
  afterAll(() => broker.stop());

  for (const withLedger of [true, false]) {
    it(withLedger ? "is acknowledged without a second commit" : "is committed twice without the ledger", async () => {
      await broker.start();
      const config = configSchema.parse({
        version: 1,
        agent: { id: "redeliver" },
        mqtt: {
          url: broker.url,
          client_id: `redeliver-${withLedger}`,
          reconnect_period: "50ms",
          reconnect_max: "200ms",
          subscriptions: [{ topic: "t/+", metric: "temperature", format: "number" }],
        },
      }).mqtt!;
      const committed = new Set<string>();
      const calls: Reading[][] = [];
      let crashAfterCommit = true;
      let skipped!: () => void;
      const redeliverySkipped = new Promise<void>((r) => {
        skipped = r;
      });
      let secondCall!: () => void;
      const committedAgain = new Promise<void>((r) => {
        secondCall = r;
      });
      let probed!: () => void;
      const subscribed = new Promise<void>((r) => {
        probed = r;
      });
      const sink = async (readings: Reading[], origin?: SinkOrigin) => {
        const real = readings.filter((r) => r.sensor !== "probe");
        if (real.length < readings.length) probed();
        if (real.length === 0) return;
        calls.push(real);
        for (const k of origin?.messageKeys ?? []) committed.add(k);
        if (calls.length === 2) secondCall();
        if (crashAfterCommit) {
          // Committed; now the connection dies before the PUBACK is sent (as in a crash).
          crashAfterCommit = false;
          await broker.restart();
        }
      };
      const source = new MqttSource({
        config,
        agentId: "redeliver",
        sink,
        logger: silentLogger(),
        metrics: new Metrics(),
        clock: systemClock,
        ledger: withLedger
          ? (key) => {
              const seen = committed.has(key);
              if (seen) skipped();
              return seen;
            }
          : undefined,
      });
      await source.start();
      const pub = await mqtt.connectAsync(broker.url, { clientId: `pub-${withLedger}` });
      // Publish only once the subscription is in place: probe until a probe arrives.
      const probing = setInterval(() => void pub.publishAsync("t/probe", "1", { qos: 1 }).catch(() => {}), 100);
      await subscribed;
      clearInterval(probing);
      await pub.publishAsync("t/gh1", "35", { qos: 1 });
      await pub.endAsync();

      if (withLedger) {
        await redeliverySkipped;
        expect(calls.length).toBe(1);
      } else {
        // The control: without the ledger the same reading reaches the sink twice.
        await committedAgain;
        expect(calls.map((c) => c[0]?.value)).toEqual([35, 35]);
      }
      await source.stop();
      await broker.stop();
    });
  }
});
