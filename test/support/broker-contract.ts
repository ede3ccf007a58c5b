/**
 * The delivery contract, run against the real server of each broker kind (one test file per
 * kind, test/integration/broker-contract-*.test.ts, so they run side by side): mosquitto for
 * mqtt://, nats-server -js for nats://. A real agent process reads sensor readings from its
 * own input broker (never restarted) and delivers rule events to the destination.
 *
 * - offline is not failure: with the destination's server down and max_attempts: 1, events
 *   wait (nothing dies), survive a SIGKILL of the agent, and all arrive once it is up,
 *   in order per series;
 * - a server restarted mid-stream loses nothing and keeps the order per series (NATS:
 *   every event exactly once in the stream, by Nats-Msg-Id);
 * - sent but not acknowledged (the server frozen with SIGSTOP) spends attempts: dead after
 *   max_attempts, listed by `edgehook queue list --state dead`.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import mqtt, { type MqttClient } from "mqtt";
import { Webhook } from "standardwebhooks";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentProcess, edgehookAsync, tempDir, writeConfig } from "./agent-process.js";
import { Mosquitto } from "./mosquitto.js";
import { NatsServer } from "./nats-server.js";
import { WEBHOOK_SECRET } from "./secrets.js";
import { waitUntil } from "./wait.js";

const SENSORS = ["a", "b", "c"];
const wh = new Webhook(WEBHOOK_SECRET);

/** Reading k of a sensor alternates above 50 and below 0, so each one is a crossing; the value identifies k. */
const readingValue = (k: number) => (k % 2 === 0 ? 100 + k : -k);
const kOf = (value: number) => (value >= 100 ? value - 100 : -value);

interface Got {
  id: string;
  sensor: string;
  k: number;
  verified: boolean;
}

export interface Sink {
  readonly kind: string;
  start(): Promise<void>;
  stop(): Promise<void>;
  restart(): Promise<void>;
  freeze(): void;
  thaw(): void;
  destination(extra: string): string;
  /** Everything the consumer has seen so far, in arrival order. */
  received(): Promise<Got[]>;
  close(): Promise<void>;
}

function parse(id: string, body: string, ts: string, sig: string): Got {
  const env = JSON.parse(body) as { data: { sensor: string; value: number } };
  let verified = false;
  try {
    wh.verify(body, { "webhook-id": id, "webhook-timestamp": ts, "webhook-signature": sig });
    verified = true;
  } catch {
    verified = false;
  }
  return { id, sensor: env.data.sensor, k: kOf(env.data.value), verified };
}

export class MqttSink implements Sink {
  readonly kind = "mqtt";
  readonly broker = new Mosquitto();
  readonly got: Got[] = [];
  #sub: MqttClient | undefined;
  #topic = `out${Math.random().toString(36).slice(2, 8)}`;

  async start() {
    await this.broker.start();
    if (!this.#sub) {
      // A persistent session: what the broker holds for it survives its restarts.
      this.#sub = await mqtt.connectAsync(this.broker.url, {
        protocolVersion: 5,
        clientId: `consumer-${this.#topic}`,
        clean: false,
        properties: { sessionExpiryInterval: 3600 },
        reconnectPeriod: 100,
      });
      this.#sub.on("message", (_t, payload, packet) => {
        const p = (packet.properties?.userProperties ?? {}) as Record<string, string>;
        this.got.push(
          parse(p["webhook-id"] ?? "", payload.toString(), p["webhook-timestamp"] ?? "", p["webhook-signature"] ?? ""),
        );
      });
      await this.#sub.subscribeAsync(`${this.#topic}/#`, { qos: 1 });
    }
  }
  stop() {
    return this.broker.stop();
  }
  restart() {
    return this.broker.restart();
  }
  freeze() {
    this.broker.signal("SIGSTOP");
  }
  thaw() {
    this.broker.signal("SIGCONT");
  }
  destination(extra: string) {
    return `{ url: "${this.broker.url}", topic: "${this.#topic}/{agent}/{sensor}", secret: ${WEBHOOK_SECRET}, ${extra} }`;
  }
  async received() {
    return this.got;
  }
  async close() {
    await this.#sub?.endAsync(true);
    await this.broker.stop();
  }
}

export class NatsSink implements Sink {
  readonly kind = "nats";
  readonly server = new NatsServer();
  readonly #stream = `S${Math.random().toString(36).slice(2, 8).toUpperCase()}`;

  start() {
    return this.server.start();
  }
  stop() {
    return this.server.stop();
  }
  // SIGKILL: what JetStream acknowledged is on disk.
  restart() {
    return this.server.restart("SIGKILL");
  }
  freeze() {
    this.server.signal("SIGSTOP");
  }
  thaw() {
    this.server.signal("SIGCONT");
  }
  destination(extra: string) {
    return `{ url: "${this.server.url}", subject: "${this.#stream.toLowerCase()}.{agent}.{sensor}", stream: ${this.#stream}, create_stream: true, secret: ${WEBHOOK_SECRET}, ${extra} }`;
  }
  async received(): Promise<Got[]> {
    const nc = await connect({ servers: `127.0.0.1:${this.server.port}` });
    try {
      const jsm = await jetstreamManager(nc);
      let last = 0;
      try {
        last = (await jsm.streams.info(this.#stream)).state.last_seq;
      } catch {
        return [];
      }
      const out: Got[] = [];
      for (let seq = 1; seq <= last; seq++) {
        const m = await jsm.streams.getMessage(this.#stream, { seq });
        if (m === null) continue;
        const h = (k: string) => m.header.get(k);
        out.push(
          parse(h("webhook-id"), new TextDecoder().decode(m.data), h("webhook-timestamp"), h("webhook-signature")),
        );
      }
      return out;
    } finally {
      await nc.close();
    }
  }
  async close() {
    await this.server.stop();
  }
}

/** Registers the contract's tests for the sink `make` builds (call at a test file's top level). */
export function deliveryContract(make: () => Sink): void {
  describe("delivery contract", () => {
    const input = new Mosquitto();
    const sink = make();
    let agent: AgentProcess | undefined;
    let publisher: MqttClient | undefined;
    let n = 0;

    beforeAll(async () => {
      await input.start();
      publisher = await mqtt.connectAsync(input.url, { clientId: `publisher-${sink.kind}` });
    });
    afterAll(async () => {
      await agent?.stop();
      await publisher?.endAsync();
      await sink.close();
      await input.stop();
    });

    function config(extra: string): string {
      n++;
      return writeConfig(
        tempDir(),
        `version: 1
agent: { id: pi-${sink.kind}-${n}, data_dir: ./data, require_clock_sync: never }
mqtt:
  url: ${input.url}
  client_id: contract-agent-${sink.kind}-${n}
  subscriptions:
    - { topic: "s${n}/+/v", sensor: "{1}", metric: level, format: json, value: v, qos: 1 }
destinations:
  out: ${sink.destination(`connect_timeout: 1s, ${extra}`)}
rules:
  - { name: crossing, match: { metric: level }, above: 50, clear_below: 0, notify: [out] }
http: { listen: false }
`,
      );
    }

    /** Starts an agent and waits until it subscribed to its readings (they are not lost before). */
    async function startAgent(file: string): Promise<AgentProcess> {
      const a = new AgentProcess(file);
      await a.start();
      await a.waitForLog((l) => l.msg === "subscribed to MQTT topics", "the agent subscribed to its readings");
      return a;
    }

    async function publish(from: number, to: number, paceMs = 0): Promise<void> {
      for (let k = from; k < to; k++) {
        await Promise.all(
          SENSORS.map((s) =>
            publisher?.publishAsync(`s${n}/${s}/v`, JSON.stringify({ v: readingValue(k) }), { qos: 1 }),
          ),
        );
        if (paceMs > 0) await new Promise((r) => setTimeout(r, paceMs));
      }
    }

    function checkOrder(got: Got[], perSensor: number): void {
      for (const s of SENSORS) {
        const ks = got.filter((g) => g.sensor === s).map((g) => g.k);
        const firsts = ks.filter((k, i) => ks.indexOf(k) === i);
        expect(firsts, `sensor ${s}: every event, first arrivals in order`).toEqual(
          Array.from({ length: perSensor }, (_, i) => i),
        );
      }
      expect(got.every((g) => g.verified)).toBe(true);
    }

    it(`${sink.kind}: server down is offline, not failure (max_attempts: 1); a backlog survives SIGKILL of the agent and arrives in order`, async () => {
      await sink.start();
      await sink.stop();
      const file = config("max_attempts: 1");
      agent = await startAgent(file);
      await publish(0, 20);
      // The backlog is in the outbox (committed, pending) when the agent is killed.
      await waitUntil(
        async () => {
          const r = await edgehookAsync([
            "queue",
            "list",
            "--state",
            "pending",
            "--limit",
            "1000",
            "--json",
            "--config",
            file,
          ]);
          return r.code === 0 && (JSON.parse(r.stdout) as unknown[]).length === 20 * SENSORS.length;
        },
        "20 readings per sensor pending in the outbox",
        20_000,
        200,
      );
      agent.kill("SIGKILL");
      await agent.exited();
      agent = await startAgent(file);
      await publish(20, 40);
      await sink.start();
      await waitUntil(
        async () => new Set((await sink.received()).map((g) => g.id)).size >= 40 * SENSORS.length,
        "every event at the consumer",
        30_000,
        200,
      );
      const got = await sink.received();
      checkOrder(got, 40);
      const dead = await edgehookAsync(["queue", "list", "--state", "dead", "--json", "--config", file]);
      expect(dead.code).toBe(0);
      expect(JSON.parse(dead.stdout)).toEqual([]);
      await agent.stop();
      agent = undefined;
    }, 90_000);

    it(`${sink.kind}: a server restarted mid-stream loses nothing and keeps the order per series`, async () => {
      const before = (await sink.received()).length;
      const file = config("max_attempts: 14");
      agent = await startAgent(file);
      const publishing = publish(0, 60, 20);
      await waitUntil(async () => (await sink.received()).length >= before + 30, "some events delivered", 30_000, 100);
      await sink.restart();
      await publishing;
      await waitUntil(
        async () => new Set((await sink.received()).slice(before).map((g) => g.id)).size >= 60 * SENSORS.length,
        "every event",
        30_000,
        200,
      );
      const got = (await sink.received()).slice(before);
      checkOrder(got, 60);
      if (sink.kind === "nats") {
        // Nats-Msg-Id: a resend after the restart is dropped by JetStream's duplicate window.
        expect(got.length).toBe(60 * SENSORS.length);
      }
      await agent.stop();
      agent = undefined;
    }, 90_000);

    it(`${sink.kind}: sent but never acknowledged spends attempts: dead after max_attempts`, async () => {
      const file = config('max_attempts: 2, retry_schedule: ["200ms"], response_timeout: 500ms');
      agent = await startAgent(file);
      const before = (await sink.received()).length;
      await publish(0, 1);
      // Connected and delivering first.
      await waitUntil(
        async () => (await sink.received()).length >= before + SENSORS.length,
        "the first events",
        20_000,
        100,
      );
      sink.freeze();
      try {
        await publish(1, 2);
        await waitUntil(
          async () => {
            const r = await edgehookAsync(["queue", "list", "--state", "dead", "--json", "--config", file]);
            return r.code === 0 && (JSON.parse(r.stdout) as unknown[]).length === SENSORS.length;
          },
          "the unacknowledged events dead",
          20_000,
          300,
        );
      } finally {
        sink.thaw();
      }
      const dead = JSON.parse(
        (await edgehookAsync(["queue", "list", "--state", "dead", "--json", "--config", file])).stdout,
      ) as {
        attempts: number;
      }[];
      expect(dead.map((d) => d.attempts)).toEqual([2, 2, 2]);
      await agent.stop();
      agent = undefined;
    }, 90_000);
  });
}
