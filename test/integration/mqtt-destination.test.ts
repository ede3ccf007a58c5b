/**
 * The MQTT destination's transport against a real mosquitto that requires mutual TLS:
 * delivered means PUBACK, an unreachable or untrusting broker is "connect" (offline), a
 * broker that goes away with a message in flight is "request", and the MQTT 5 user
 * properties carry a Standard Webhooks signature the `standardwebhooks` package verifies.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import mqtt, { type MqttClient } from "mqtt";
import { Webhook } from "standardwebhooks";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { configSchema } from "../../src/config/schema.js";
import { MqttTransport, type MqttTransportOptions } from "../../src/delivery/mqtt-transport.js";
import { decide } from "../../src/delivery/policy.js";
import type { Delivery } from "../../src/store/types.js";
import { makeCerts, type TestCerts } from "../support/certs.js";
import { Mosquitto } from "../support/mosquitto.js";
import { freePort } from "../support/ports.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";
import { waitUntil } from "../support/wait.js";

let certs: TestCerts;
let broker: Mosquitto;
const transports: MqttTransport[] = [];
const subscribers: MqttClient[] = [];

beforeAll(async () => {
  certs = makeCerts();
  const acl = join(certs.dir, "acl");
  // Anonymous TLS clients may publish anywhere except under denied/.
  writeFileSync(acl, "pattern readwrite #\npattern deny denied/#\n");
  broker = new Mosquitto({
    persistence: false,
    tls: { ca: certs.ca, cert: certs.serverCert, key: certs.serverKey },
    extra: [`acl_file ${acl}`],
  });
  await broker.start();
});

afterEach(async () => {
  for (const t of transports.splice(0)) await t.close();
  for (const s of subscribers.splice(0)) await s.endAsync(true);
});

afterAll(async () => {
  await broker.stop();
});

function transport(over: Partial<MqttTransportOptions> = {}): MqttTransport {
  const t = new MqttTransport({
    url: broker.url,
    clientId: `edgehook-test-${transports.length}-${Date.now()}`,
    tls: {
      ca: readFileSync(certs.ca),
      cert: readFileSync(certs.clientCert),
      key: readFileSync(certs.clientKey),
      rejectUnauthorized: true,
    },
    protocolVersion: 5,
    keepaliveMs: 30_000,
    connectTimeoutMs: 2_000,
    ackTimeoutMs: 2_000,
    qos: 1,
    retain: false,
    ...over,
  });
  transports.push(t);
  return t;
}

async function subscribe(topic: string) {
  const got: { topic: string; body: string; props: Record<string, string | string[]> }[] = [];
  const client = await mqtt.connectAsync(broker.url, {
    protocolVersion: 5,
    ca: [readFileSync(certs.ca)],
    cert: readFileSync(certs.clientCert),
    key: readFileSync(certs.clientKey),
    reconnectPeriod: 0,
  });
  subscribers.push(client);
  client.on("message", (t, payload, packet) => {
    got.push({ topic: t, body: payload.toString(), props: packet.properties?.userProperties ?? {} });
  });
  await client.subscribeAsync(topic, { qos: 1 });
  return got;
}

const dest = configSchema.parse({
  version: 1,
  agent: { id: "pi-7" },
  destinations: {
    bus: { url: "mqtts://127.0.0.1:1", topic: "edgehook/{agent}/{type}/{sensor}", secret: WEBHOOK_SECRET },
  },
}).destinations.bus!;

function delivery(n: number, sensor = "boiler"): Delivery {
  const body = {
    type: "alert.firing",
    timestamp: new Date(1_700_000_000_000 + n).toISOString(),
    data: { agent: "pi-7", rule: "hot", sensor, metric: "temp", value: 80 + n },
  };
  return {
    id: n,
    eventId: `msg_${String(n).padStart(26, "0")}`,
    destination: "bus",
    series: `hot/${sensor}/temp`,
    type: "alert.firing",
    priority: 10,
    attempts: 0,
    createdAt: 1_700_000_000_000,
    body: Buffer.from(JSON.stringify(body)),
  };
}

describe("MqttTransport (mqtts with client certificates)", () => {
  it("publishes the signed envelope; the consumer verifies the user properties with standardwebhooks", async () => {
    const got = await subscribe("edgehook/#");
    const t = transport();
    const d = delivery(1, "hall/left+1");
    const attempt = t.prepare([d], dest, Math.floor(Date.now() / 1000));
    const outcome = await t.send(attempt, { signal: new AbortController().signal });
    expect(outcome).toEqual({ kind: "response", status: 200 });
    await waitUntil(() => got.length === 1, "the message at the subscriber");
    const m = got[0]!;
    // A value's separator stays a level; a wildcard character does not reach the topic.
    expect(m.topic).toBe("edgehook/pi-7/alert.firing/hall/left_1");
    const props = m.props as Record<string, string>;
    expect(props["webhook-id"]).toBe(d.eventId);
    const verified = new Webhook(WEBHOOK_SECRET).verify(m.body, {
      "webhook-id": props["webhook-id"]!,
      "webhook-timestamp": props["webhook-timestamp"]!,
      "webhook-signature": props["webhook-signature"]!,
    });
    expect(verified).toMatchObject({ type: "alert.firing", data: { sensor: "hall/left+1", value: 81 } });
  });

  it("MQTT 3.1.1: the consumer gets the envelope as the payload and nothing else", async () => {
    const got = await subscribe("plain/#");
    const t = transport({ protocolVersion: 4 });
    const outcome = await t.publish({
      topic: "plain/x",
      body: Buffer.from('{"type":"t"}'),
      userProperties: { "webhook-id": "msg_1" },
      contentType: "application/json",
    });
    expect(outcome).toEqual({ kind: "response", status: 200 });
    await waitUntil(() => got.length === 1, "the message");
    expect(got[0]).toEqual({ topic: "plain/x", body: '{"type":"t"}', props: {} });
  });

  it("a broker that refuses the topic (MQTT 5 PUBACK 0x87) is a 403: dead at once, not offline", async () => {
    const t = transport();
    const outcome = await t.publish({
      topic: "denied/x",
      body: Buffer.from("{}"),
      userProperties: {},
      contentType: "application/json",
    });
    expect(outcome).toEqual({ kind: "response", status: 403 });
    const d = decide(outcome, {
      attempts: 0,
      policy: { retry_schedule: [1000], max_attempts: 5 },
      now: 0,
      random: () => 0.5,
    });
    expect(d.action).toBe("dead");
  });

  it("nothing listening: offline (connect stage), no attempt spent", async () => {
    const t = transport({ url: `mqtts://127.0.0.1:${await freePort()}` });
    const outcome = await t.publish({
      topic: "x",
      body: Buffer.from("{}"),
      userProperties: {},
      contentType: "application/json",
    });
    expect(outcome).toMatchObject({ kind: "error", stage: "connect" });
    const d = decide(outcome, {
      attempts: 0,
      policy: { retry_schedule: [1000], max_attempts: 5 },
      now: 0,
      random: () => 0.5,
    });
    expect(d.action).toBe("offline");
  });

  it("without a client certificate the broker refuses the handshake: offline, not a spent attempt", async () => {
    const t = transport({ tls: { ca: readFileSync(certs.ca), rejectUnauthorized: true } });
    const outcome = await t.publish({
      topic: "x",
      body: Buffer.from("{}"),
      userProperties: {},
      contentType: "application/json",
    });
    expect(outcome).toMatchObject({ kind: "error", stage: "connect" });
  });

  it("a broker we do not trust (no ca_file): offline", async () => {
    const t = transport({
      tls: { cert: readFileSync(certs.clientCert), key: readFileSync(certs.clientKey), rejectUnauthorized: true },
    });
    const outcome = await t.publish({
      topic: "x",
      body: Buffer.from("{}"),
      userProperties: {},
      contentType: "application/json",
    });
    expect(outcome).toMatchObject({ kind: "error", stage: "connect" });
  });

  it("across a broker restart: offline while it is down, delivered on the new connection after", async () => {
    const t = transport();
    const publish = () =>
      t.publish({ topic: "r/x", body: Buffer.from("{}"), userProperties: {}, contentType: "application/json" });
    expect(await publish()).toEqual({ kind: "response", status: 200 });
    expect(t.connected).toBe(true);
    await broker.stop();
    await waitUntil(() => !t.connected, "the transport to notice the broker is gone");
    expect(await publish()).toMatchObject({ kind: "error", stage: "connect" });
    await broker.start();
    expect(await publish()).toEqual({ kind: "response", status: 200 });
  });

  it("its own client id: a second connection with another id does not take over the session", async () => {
    const a = transport({ clientId: "edgehook-pi-7-bus" });
    const b = transport({ clientId: "edgehook-pi-7" });
    const m = { topic: "id/x", body: Buffer.from("{}"), userProperties: {}, contentType: "application/json" };
    expect(await a.publish(m)).toEqual({ kind: "response", status: 200 });
    expect(await b.publish(m)).toEqual({ kind: "response", status: 200 });
    expect(a.connected && b.connected).toBe(true);
  });
});
