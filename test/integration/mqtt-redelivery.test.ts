/**
 * A QoS 1 message whose readings were committed but whose PUBACK never reached the
 * broker (the connection or the process died in between) is redelivered with the DUP
 * flag. It is recognised and acknowledged without being handed to the sink again: no
 * second event for one reading. After a reconnect the source remembers it; after a
 * crash, the restarted source finds its key in the outbox (the ledger).
 *
 * Real mosquitto, a real SQLite outbox as the sink's store, and a TCP relay between
 * source and broker that holds the PUBACK back and then drops the connection.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import mqtt from "mqtt";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { systemClock } from "../../src/clock.js";
import { configSchema } from "../../src/config/schema.js";
import { silentLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import { MqttSource } from "../../src/sources/mqtt.js";
import type { MessageLedger, Reading, SinkOrigin } from "../../src/sources/reading.js";
import { Outbox } from "../../src/store/outbox.js";
import { metricValue } from "../support/metrics.js";
import { Mosquitto } from "../support/mosquitto.js";
import { TcpProxy } from "../support/tcp-proxy.js";
import { waitUntil } from "../support/wait.js";

/** A PUBACK is 4 bytes. */
const PUBACK_BYTES = 4;

describe("redelivery after commit, before PUBACK", () => {
  const broker = new Mosquitto();
  const cleanups: (() => Promise<unknown> | unknown)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  beforeAll(() => broker.start());
  afterAll(() => broker.stop());

  /** The agent's store: readings and the message keys committed together. */
  function store() {
    const dir = mkdtempSync(join(tmpdir(), "edgehook-redeliver-"));
    const outbox = new Outbox({
      file: join(dir, "outbox.db"),
      limits: configSchema.parse({ version: 1, agent: { id: "t" } }).outbox,
      clock: systemClock,
      logger: silentLogger(),
      metrics: new Metrics(),
    });
    outbox.open();
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    cleanups.push(() => outbox.close());
    const ledger: MessageLedger = {
      keys: () => outbox.messageKeys(),
      release: (keys) => outbox.releaseMessageKeys(keys),
      session: (scope) => outbox.session(scope),
      rememberSession: (scope, record) => outbox.rememberSession(scope, record),
    };
    return { outbox, ledger };
  }

  function source(
    url: string,
    clientId: string,
    sink: (readings: Reading[], origin?: SinkOrigin) => Promise<void>,
    ledger: MessageLedger | undefined,
    metrics: Metrics,
  ): MqttSource {
    const config = configSchema.parse({
      version: 1,
      agent: { id: "redeliver" },
      mqtt: {
        url,
        client_id: clientId,
        reconnect_period: "50ms",
        reconnect_max: "200ms",
        subscriptions: [{ topic: "t/+", metric: "temperature", format: "number" }],
      },
    }).mqtt!;
    const s = new MqttSource({
      config,
      agentId: "redeliver",
      sink,
      logger: silentLogger(),
      metrics,
      clock: systemClock,
      ...(ledger ? { ledger } : {}),
    });
    cleanups.push(() => s.stop());
    return s;
  }

  /**
   * A sink that stores what it is given (keys included, in one transaction, as the
   * agent does) and, for the first real reading, holds the relay's client → broker
   * direction: the PUBACK written after the commit never reaches the broker.
   */
  function recordingSink(outbox: Outbox, proxy: TcpProxy) {
    const calls: Reading[][] = [];
    let probed!: () => void;
    const subscribed = new Promise<void>((r) => {
      probed = r;
    });
    const sink = async (readings: Reading[], origin?: SinkOrigin) => {
      const real = readings.filter((r) => r.sensor !== "probe");
      if (real.length < readings.length) probed();
      if (real.length === 0) return;
      calls.push(real);
      if (calls.length === 1) proxy.hold("up");
      await outbox.commit({
        events: [],
        states: [{ rule: "r", series: `s${calls.length}`, version: "1", state: real.length }],
        removedStates: [],
        messageKeys: origin?.messageKeys ?? [],
      });
    };
    return { sink, calls, subscribed };
  }

  async function publishOnce(subscribed: Promise<void>, clientId: string): Promise<void> {
    const pub = await mqtt.connectAsync(broker.url, { clientId });
    // Publish only once the subscription is in place: probe until a probe arrives.
    const probing = setInterval(() => void pub.publishAsync("t/probe", "1", { qos: 1 }).catch(() => {}), 100);
    await subscribed;
    clearInterval(probing);
    await pub.publishAsync("t/gh1", "35", { qos: 1 });
    await pub.endAsync();
  }

  it("after a reconnect, is acknowledged without a second commit", async () => {
    const proxy = new TcpProxy(broker.port);
    await proxy.start();
    cleanups.push(() => proxy.stop());
    const { outbox } = store();
    const { sink, calls, subscribed } = recordingSink(outbox, proxy);
    const metrics = new Metrics();
    const s = source(proxy.url, "redeliver-reconnect", sink, undefined, metrics);
    await s.start();
    await publishOnce(subscribed, "pub-reconnect");

    // Committed, its PUBACK held in the relay: now the connection dies.
    await waitUntil(() => proxy.heldBytes("up") >= PUBACK_BYTES, "the PUBACK written");
    proxy.cut();
    await waitUntil(
      async () => (await metricValue(metrics, "edgehook_redeliveries_skipped_total", { source: "mqtt" })) === 1,
      "the redelivery recognised",
    );
    expect(calls.map((c) => c[0]?.value)).toEqual([35]);
  });

  for (const withLedger of [true, false]) {
    it(
      withLedger
        ? "after a crash, is recognised from the outbox by the restarted source"
        : "after a crash, is committed twice without the ledger",
      async () => {
        const { outbox, ledger } = store();
        const clientId = `redeliver-crash-${withLedger}`;
        // The source that "crashes": its relay stops, so it never reaches the broker again.
        const first = new TcpProxy(broker.port);
        await first.start();
        cleanups.push(() => first.stop());
        const { sink, calls, subscribed } = recordingSink(outbox, first);
        const crashed = source(first.url, clientId, sink, withLedger ? ledger : undefined, new Metrics());
        await crashed.start();
        await publishOnce(subscribed, `pub-crash-${withLedger}`);
        await waitUntil(() => first.heldBytes("up") >= PUBACK_BYTES, "the PUBACK written");
        await first.stop();

        // The restarted agent: same client id, same outbox.
        const second = new TcpProxy(broker.port);
        await second.start();
        cleanups.push(() => second.stop());
        const metrics = new Metrics();
        const restarted = source(second.url, clientId, sink, withLedger ? ledger : undefined, metrics);
        await restarted.start();
        if (withLedger) {
          await waitUntil(
            async () => (await metricValue(metrics, "edgehook_redeliveries_skipped_total", { source: "mqtt" })) === 1,
            "the redelivery recognised",
          );
          expect(calls.map((c) => c[0]?.value)).toEqual([35]);
        } else {
          // The control: without the ledger the same reading reaches the sink twice.
          await waitUntil(() => calls.length === 2, "the redelivery committed again");
          expect(calls.map((c) => c[0]?.value)).toEqual([35, 35]);
        }
      },
    );
  }
});
