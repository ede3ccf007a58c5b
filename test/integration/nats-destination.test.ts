/**
 * The NATS JetStream destination's transport against a real `nats-server -js`: delivered
 * means PubAck, Nats-Msg-Id = event id lets JetStream drop resends, a missing stream is
 * said clearly (offline) unless create_stream, an unreachable server is offline, and a
 * server killed and restarted mid-stream loses nothing and stores nothing twice.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { configSchema } from "../../src/config/schema.js";
import { NatsTransport, natsTransport } from "../../src/delivery/nats-transport.js";
import { decide } from "../../src/delivery/policy.js";
import type { Transport } from "../../src/delivery/transport.js";
import type { Delivery } from "../../src/store/types.js";
import { NatsServer } from "../support/nats-server.js";
import { freePort } from "../support/ports.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

const server = new NatsServer();
const transports: Transport[] = [];
const signal = new AbortController().signal;
let admin: NatsConnection | undefined;

beforeAll(() => server.start());
afterEach(async () => {
  for (const t of transports.splice(0)) await t.destroy();
  await admin?.close();
  admin = undefined;
});
afterAll(() => server.stop());

function dest(over: Record<string, unknown> = {}) {
  return configSchema.parse({
    version: 1,
    agent: { id: "pi-7" },
    destinations: {
      js: {
        url: server.url,
        subject: "edgehook.{agent}.{type}",
        secret: WEBHOOK_SECRET,
        connect_timeout: "2s",
        response_timeout: "2s",
        ...over,
      },
    },
  }).destinations.js!;
}

function transport(over: Record<string, unknown> = {}): Transport {
  const t = natsTransport.create(dest(over), { env: {} });
  transports.push(t);
  return t;
}

function delivery(n: number): Delivery {
  const body = {
    type: "alert.firing",
    timestamp: new Date(1_700_000_000_000 + n).toISOString(),
    data: { agent: "pi-7", rule: "hot", sensor: "boiler", metric: "temp", value: n },
  };
  return {
    id: n,
    eventId: `msg_${String(n).padStart(26, "0")}`,
    destination: "js",
    series: "hot/boiler/temp",
    type: "alert.firing",
    priority: 10,
    attempts: 0,
    createdAt: 1_700_000_000_000,
    body: Buffer.from(JSON.stringify(body)),
  };
}

async function streamMessages(stream: string): Promise<number> {
  admin ??= await connect({ servers: `127.0.0.1:${server.port}` });
  const jsm = await jetstreamManager(admin);
  return (await jsm.streams.info(stream)).state.messages;
}

async function values(stream: string): Promise<number[]> {
  admin ??= await connect({ servers: `127.0.0.1:${server.port}` });
  const jsm = await jetstreamManager(admin);
  const n = (await jsm.streams.info(stream)).state.last_seq;
  const out: number[] = [];
  for (let seq = 1; seq <= n; seq++) {
    const m = await jsm.streams.getMessage(stream, { seq });
    if (m === null) throw new Error(`no message at ${seq}`);
    out.push((JSON.parse(new TextDecoder().decode(m.data)) as { data: { value: number } }).data.value);
  }
  return out;
}

const policy = { retry_schedule: [1000], max_attempts: 5 };

describe("NatsTransport (JetStream)", () => {
  it("a missing stream is said clearly and is offline; create_stream: true creates it", async () => {
    const missing = await transport({ stream: "ABSENT" }).send(
      transport({ stream: "ABSENT" }).prepare([delivery(1)], dest(), 1),
      {
        signal,
      },
    );
    expect(missing).toMatchObject({ kind: "error", stage: "connect" });
    expect(String((missing as { error: Error }).error.message)).toContain("stream ABSENT does not exist");
    expect(decide(missing, { attempts: 0, policy, now: 0, random: () => 0.5 }).action).toBe("offline");

    const t = transport({ stream: "EDGEHOOK", create_stream: true });
    const outcome = await t.send(t.prepare([delivery(1)], dest(), 1), { signal });
    expect(outcome).toEqual({ kind: "response", status: 200 });
    expect(await streamMessages("EDGEHOOK")).toBe(1);
  });

  it("carries the signature headers and Nats-Msg-Id; a resend of the same event is stored once", async () => {
    const d = dest({ stream: "EDGEHOOK", create_stream: true });
    const t = transport({ stream: "EDGEHOOK", create_stream: true });
    const before = await streamMessages("EDGEHOOK");
    const a = t.prepare([delivery(2)], d, Math.floor(Date.now() / 1000));
    expect(a.target).toBe("edgehook.pi-7.alert.firing");
    expect(a.headers["webhook-id"]).toBe(delivery(2).eventId);
    expect(a.headers["webhook-signature"]).toMatch(/^v1,/);
    expect(await t.send(a, { signal })).toEqual({ kind: "response", status: 200 });
    // The next attempt is signed again (new timestamp), and JetStream drops it as a duplicate.
    expect(await t.send(t.prepare([delivery(2)], d, Math.floor(Date.now() / 1000) + 1), { signal })).toEqual({
      kind: "response",
      status: 200,
    });
    expect(await streamMessages("EDGEHOOK")).toBe(before + 1);
  });

  it("no stream captures the subject: offline with a clear reason, not a spent attempt", async () => {
    const t = transport({ subject: "nowhere.{agent}" });
    const outcome = await t.send(t.prepare([delivery(3)], dest({ subject: "nowhere.{agent}" }), 1), { signal });
    expect(outcome).toMatchObject({ kind: "error", stage: "connect" });
    expect(String((outcome as { error: Error }).error.message)).toContain(
      "no JetStream stream captures subject nowhere.pi-7",
    );
  });

  it("nothing listening: offline (connect stage)", async () => {
    const t = natsTransport.create(dest({ url: `nats://127.0.0.1:${await freePort()}` }), { env: {} });
    transports.push(t);
    const outcome = await t.send(t.prepare([delivery(4)], dest(), 1), { signal });
    expect(outcome).toMatchObject({ kind: "error", stage: "connect" });
    expect(decide(outcome, { attempts: 0, policy, now: 0, random: () => 0.5 }).action).toBe("offline");
  });

  it("server killed and restarted mid-stream: every event is in the stream exactly once, in order", async () => {
    const d = dest({ subject: "kill.{agent}", stream: "KILL", create_stream: true });
    const t = transport({ subject: "kill.{agent}", stream: "KILL", create_stream: true });
    const total = 200;
    // One series, one event at a time, resent until delivered: what the dispatcher does.
    let killed = false;
    let offline = 0;
    for (let n = 1; n <= total; n++) {
      for (;;) {
        if (n === 80 && !killed) {
          killed = true;
          // SIGKILL while the next publish is on its way: its PubAck may or may not come.
          const pending = t.send(t.prepare([delivery(n)], d, 1), { signal });
          await server.stop("SIGKILL");
          const o = await pending;
          if (o.kind === "response") break;
          await server.start();
          continue;
        }
        const o = await t.send(t.prepare([delivery(n)], d, Math.floor(Date.now() / 1000)), { signal });
        if (o.kind === "response" && o.status === 200) break;
        offline++;
      }
    }
    expect(killed).toBe(true);
    expect(await values("KILL")).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    expect(offline).toBeLessThan(50);
  });

  it("a token-protected server: the token authenticates, a wrong one is offline", async () => {
    const guarded = new NatsServer({ token: "s3cret" });
    await guarded.start();
    try {
      const ok = new NatsTransport({
        url: guarded.url,
        name: "t",
        token: "s3cret",
        connectTimeoutMs: 2000,
        ackTimeoutMs: 2000,
        stream: "T",
        createStream: true,
        streamSubjects: ["t.>"],
      });
      transports.push(ok);
      expect(await ok.publish({ subject: "t.x", body: Buffer.from("{}"), id: "msg_t1", headers: {} })).toEqual({
        kind: "response",
        status: 200,
      });
      const bad = new NatsTransport({
        url: guarded.url,
        name: "t",
        token: "nope",
        connectTimeoutMs: 2000,
        ackTimeoutMs: 2000,
      });
      transports.push(bad);
      expect(await bad.publish({ subject: "t.x", body: Buffer.from("{}"), id: "msg_t2", headers: {} })).toMatchObject({
        kind: "error",
        stage: "connect",
      });
    } finally {
      await guarded.stop();
    }
  });
});
