/** The embedded broker (aedes): clients connect, publish and receive; optional auth. */
import mqtt from "mqtt";
import { afterEach, describe, expect, it } from "vitest";
import { systemClock } from "../../src/clock.js";
import { configSchema } from "../../src/config/schema.js";
import { silentLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import { EmbeddedBroker } from "../../src/sources/broker.js";
import { MqttSource } from "../../src/sources/mqtt.js";
import type { Reading } from "../../src/sources/reading.js";

const stops: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const s of stops.splice(0).reverse()) await s().catch(() => {});
});

describe("EmbeddedBroker", () => {
  it("listens on a free loopback port and routes messages between clients", async () => {
    const broker = new EmbeddedBroker({ host: "127.0.0.1", port: 0, logger: silentLogger() });
    const { url } = await broker.start();
    stops.push(() => broker.stop());
    expect(url).toMatch(/^mqtt:\/\/127\.0\.0\.1:\d+$/);
    expect(url).not.toBe("mqtt://127.0.0.1:0");
    const sub = await mqtt.connectAsync(url, { clientId: "sub" });
    stops.push(() => sub.endAsync(true));
    await sub.subscribeAsync("a/+", { qos: 1 });
    const got = new Promise<string>((r) => sub.once("message", (_t, p) => r(p.toString())));
    const pub = await mqtt.connectAsync(url, { clientId: "pub" });
    stops.push(() => pub.endAsync(true));
    await pub.publishAsync("a/b", "hello", { qos: 1 });
    expect(await got).toBe("hello");
  });

  it("refuses a wrong password and accepts the right one", async () => {
    const broker = new EmbeddedBroker({
      host: "127.0.0.1",
      port: 0,
      username: "dev",
      password: "s3cret",
      logger: silentLogger(),
    });
    const { url } = await broker.start();
    stops.push(() => broker.stop());
    await expect(mqtt.connectAsync(url, { username: "dev", password: "wrong", reconnectPeriod: 0 })).rejects.toThrow(
      /Bad username or password|Not authorized/i,
    );
    await expect(mqtt.connectAsync(url, { reconnectPeriod: 0 })).rejects.toThrow();
    const ok = await mqtt.connectAsync(url, { username: "dev", password: "s3cret", reconnectPeriod: 0 });
    stops.push(() => ok.endAsync(true));
    expect(ok.connected).toBe(true);
  });

  it("hosts the broker for an MqttSource configured with url: embedded", async () => {
    const config = configSchema.parse({
      version: 1,
      agent: { id: "emb" },
      mqtt: {
        url: "embedded",
        embedded: { port: 0, username: "u", password: "p" },
        subscriptions: [{ topic: "t/+", metric: "v", format: "number" }],
      },
    }).mqtt!;
    const readings: Reading[] = [];
    const src = new MqttSource({
      config,
      agentId: "emb",
      sink: async (r) => {
        readings.push(...r);
      },
      logger: silentLogger(),
      metrics: new Metrics(),
      clock: systemClock,
    });
    await src.start();
    stops.push(() => src.stop());
    const url = src.brokerUrl;
    expect(url).toBeDefined();
    const pub = await mqtt.connectAsync(url!, { username: "u", password: "p" });
    stops.push(() => pub.endAsync(true));
    const deadline = Date.now() + 5_000;
    while (readings.length === 0 && Date.now() < deadline) {
      await pub.publishAsync("t/x", "3", { qos: 1 });
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(readings[0]).toMatchObject({ sensor: "x", metric: "v", value: 3 });
  });
});
