/**
 * The MQTT destination's wire: one connection per destination (its own client id, never the
 * sensor-side source's), publish one message at QoS 1 (or 2) and wait for the broker's
 * PUBACK (PUBCOMP), and say what happened as the `Outcome` policy.ts decides on:
 *
 *   what happened                                     outcome
 *   ------------------------------------------------  -----------------------------------------
 *   PUBACK / PUBCOMP, reason < 0x80 (0x10 "no         response 200 (delivered; 0x10 only says
 *     matching subscribers" included)                   nobody subscribes right now)
 *   no connection: refused, DNS, TLS handshake,       error, stage "connect" (offline: pending,
 *     CONNACK refused (bad credentials, not             no attempt spent)
 *     authorized), connect timeout, a TLS file that
 *     cannot be read
 *   published, then the connection closed before      error, stage "request", ECONNRESET (one free
 *     the ack                                           resend, then counted)
 *   published, no ack within response_timeout         error, stage "request", ETIMEDOUT (counted)
 *   MQTT 5 reason code >= 0x80 on the ack             response with the HTTP status it means:
 *     0x87 not authorized                               403 (dead)
 *     0x90 topic name invalid, 0x99 payload format      400 (dead)
 *       invalid, 0x95 packet too large                  413 (dead)
 *     0x97 quota exceeded, 0x96 message rate too high   429 (retry with backoff)
 *     other (0x80 unspecified, 0x83 implementation      503 (retry with backoff)
 *       specific, ...)
 *
 * The connection uses a clean session and no automatic reconnect: the outbox is the queue,
 * so nothing is left for the client library to resend behind the dispatcher's back. A lost
 * connection fails what was in flight on it, and the next publish connects again.
 */
import mqtt, { type MqttClient } from "mqtt";
import type { DestinationConfig } from "../config/schema.js";
import { readTlsFiles, type TlsMaterial } from "../config/tls-files.js";
import type { Delivery } from "../store/types.js";
import { AckWaiters } from "./ack-waiters.js";
import { brokerMessage } from "./broker-message.js";
import type { Outcome } from "./policy.js";
import { RenderError } from "./render.js";
import type { Attempt, SendOptions, Transport, TransportContext, TransportFactory } from "./transport.js";

export const mqttTransport: TransportFactory = {
  schemes: ["mqtt:", "mqtts:"],
  connectionKey(c: DestinationConfig): string {
    return JSON.stringify([
      new URL(c.url).host,
      c.url.split(":")[0],
      c.client_id,
      c.username,
      c.password,
      c.tls,
      c.protocol_version,
      c.keepalive,
      c.qos,
      c.retain,
      c.connect_timeout,
      c.response_timeout,
    ]);
  },
  create(config: DestinationConfig, context: TransportContext): Transport {
    const tls = config.url.startsWith("mqtts:")
      ? {
          ...readTlsFiles(config.tls, { baseDir: context.baseDir, label: "destination tls" }),
          rejectUnauthorized: config.tls?.reject_unauthorized ?? true,
        }
      : undefined;
    return new MqttTransport({
      url: config.url,
      clientId: config.client_id ?? `edgehook-${new URL(config.url).host}`,
      username: config.username,
      password: config.password,
      tls,
      protocolVersion: config.protocol_version ?? 5,
      keepaliveMs: config.keepalive ?? 30_000,
      connectTimeoutMs: config.connect_timeout,
      ackTimeoutMs: config.response_timeout,
      qos: config.qos ?? 1,
      retain: config.retain ?? false,
    });
  },
};

export interface MqttTransportOptions {
  /** mqtt://host:port or mqtts://host:port. */
  url: string;
  clientId: string;
  username?: string | undefined;
  password?: string | undefined;
  /** mqtts://: the file contents (read at start or reload) and whether to verify the broker. */
  tls?: (TlsMaterial & { rejectUnauthorized: boolean }) | undefined;
  protocolVersion: 4 | 5;
  keepaliveMs: number;
  connectTimeoutMs: number;
  /** How long a published message may wait for its ack. */
  ackTimeoutMs: number;
  qos: 1 | 2;
  retain: boolean;
}

export interface MqttMessage {
  topic: string;
  body: Buffer;
  /** MQTT 5 user properties (webhook-id, webhook-timestamp, webhook-signature); dropped on 3.1.1. */
  userProperties: Record<string, string>;
  contentType: string;
}

/** An error with a code policy.ts classifies, and the broker's words. */
export class MqttDeliveryError extends Error {
  constructor(
    message: string,
    readonly code: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "MqttDeliveryError";
  }
}

/** MQTT 5 PUBACK/PUBCOMP reason codes >= 0x80 as the HTTP status policy.ts reads (see the header). */
export function ackStatus(reasonCode: number): number {
  if (reasonCode < 0x80) return 200;
  switch (reasonCode) {
    case 0x87:
      return 403;
    case 0x90:
    case 0x99:
      return 400;
    case 0x95:
      return 413;
    case 0x96:
    case 0x97:
      return 429;
    default:
      return 503;
  }
}

export class MqttTransport implements Transport {
  readonly #options: MqttTransportOptions;
  #client: MqttClient | undefined;
  #connecting: Promise<MqttClient> | undefined;
  readonly #acks = new AckWaiters<MqttClient>();
  #closed = false;

  constructor(options: MqttTransportOptions) {
    this.#options = options;
  }

  /** True while a connection is up. */
  get connected(): boolean {
    return this.#client?.connected === true;
  }

  prepare(deliveries: readonly Delivery[], config: DestinationConfig, nowSec: number): Attempt {
    const [d] = deliveries;
    if (d === undefined || deliveries.length !== 1) {
      throw new RenderError(`one event per MQTT message (got ${deliveries.length})`);
    }
    const m = brokerMessage(d, config, "mqtt", nowSec);
    return { id: d.eventId, timestamp: nowSec, deliveries, body: m.body, headers: m.headers, target: m.name };
  }

  send(attempt: Attempt, options: SendOptions): Promise<Outcome> {
    const { "content-type": contentType = "application/json", ...userProperties } = attempt.headers;
    return this.publish({ topic: attempt.target, body: attempt.body, userProperties, contentType }, options.signal);
  }

  /** Publishes one message and resolves when the broker acknowledged it, or why not. Never rejects. */
  async publish(message: MqttMessage, signal?: AbortSignal): Promise<Outcome> {
    if (this.#closed)
      return { kind: "error", error: new MqttDeliveryError("transport closed", "ECONNREFUSED"), stage: "connect" };
    let client: MqttClient;
    try {
      client = await this.#connect();
    } catch (error) {
      return { kind: "error", error, stage: "connect" };
    }
    return this.#publishOn(client, message, signal);
  }

  #publishOn(client: MqttClient, message: MqttMessage, signal: AbortSignal | undefined): Promise<Outcome> {
    const o = this.#options;
    return this.#acks.wait(
      client,
      (settle) =>
        client.publish(
          message.topic,
          message.body,
          {
            qos: o.qos,
            retain: o.retain,
            ...(o.protocolVersion === 5 ? { properties: v5Properties(message) } : {}),
          },
          (err) => {
            if (err === undefined || err === null) {
              settle({ kind: "response", status: 200 });
              return;
            }
            const reason = (err as { code?: unknown }).code;
            if (typeof reason === "number") {
              settle({ kind: "response", status: ackStatus(reason) });
              return;
            }
            settle({ kind: "error", error: err, stage: "request" });
          },
        ),
      {
        signal,
        aborted: () => ({
          kind: "error",
          error: new MqttDeliveryError("aborted while waiting for the broker's ack", "ABORT_ERR", {
            cause: signal?.reason,
          }),
          stage: "request",
        }),
        timeoutMs: o.ackTimeoutMs,
        timedOut: () => ({
          kind: "error",
          error: new MqttDeliveryError(
            `no ${o.qos === 2 ? "PUBCOMP" : "PUBACK"} within ${o.ackTimeoutMs} ms`,
            "ETIMEDOUT",
          ),
          stage: "request",
        }),
      },
    );
  }

  #connect(): Promise<MqttClient> {
    const current = this.#client;
    if (current?.connected) return Promise.resolve(current);
    if (this.#connecting) return this.#connecting;
    const attempt = this.#open().finally(() => {
      if (this.#connecting === attempt) this.#connecting = undefined;
    });
    this.#connecting = attempt;
    return attempt;
  }

  #open(): Promise<MqttClient> {
    const o = this.#options;
    return new Promise<MqttClient>((resolve, reject) => {
      const client = mqtt.connect(o.url, {
        clientId: o.clientId,
        protocolVersion: o.protocolVersion,
        keepalive: Math.max(1, Math.round(o.keepaliveMs / 1000)),
        connectTimeout: o.connectTimeoutMs,
        reconnectPeriod: 0,
        clean: true,
        ...(o.username !== undefined ? { username: o.username } : {}),
        ...(o.password !== undefined ? { password: o.password } : {}),
        ...(o.tls ?? {}),
      });
      let done = false;
      const timer = setTimeout(
        () => fail(new MqttDeliveryError(`no CONNACK within ${o.connectTimeoutMs} ms`, "UND_ERR_CONNECT_TIMEOUT")),
        o.connectTimeoutMs + 100,
      );
      const fail = (error: unknown) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        client.end(true);
        reject(error);
      };
      // Without a listener an 'error' event would throw; after connecting, errors end in 'close'.
      client.on("error", (error) => fail(error));
      client.once("close", () => fail(new MqttDeliveryError("connection closed before CONNACK", "ECONNREFUSED")));
      client.once("connect", () => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (this.#closed) {
          client.end(true);
          reject(new MqttDeliveryError("transport closed", "ECONNREFUSED"));
          return;
        }
        this.#client = client;
        client.on("close", () => this.#lost(client));
        resolve(client);
      });
    });
  }

  /** The connection went away: everything in flight on it gets no ack from it. */
  #lost(client: MqttClient): void {
    if (this.#client === client) this.#client = undefined;
    this.#acks.lost(client, () => ({
      kind: "error",
      error: new MqttDeliveryError("connection to the broker closed before the ack", "ECONNRESET"),
      stage: "request",
    }));
    if (!client.disconnecting) client.end(true);
  }

  /** Stops taking attempts, lets those in flight get their ack (or time out), then disconnects. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#connecting?.catch(() => undefined);
    await this.#acks.drained(this.#client);
    await this.destroy();
  }

  /** Disconnects now; publishes still waiting resolve as failed requests. */
  async destroy(): Promise<void> {
    this.#closed = true;
    await this.#connecting?.catch(() => undefined);
    const client = this.#client;
    this.#client = undefined;
    if (client) {
      this.#lost(client);
      await new Promise<void>((r) => client.end(true, {}, () => r()));
    }
  }
}

/**
 * MQTT 5 properties of a message. An empty userProperties object is left out: mqtt.js
 * (5.x) does not put such a PUBLISH on the wire at all, so its ack would never come.
 */
function v5Properties(message: MqttMessage): { contentType: string; userProperties?: Record<string, string> } {
  return Object.keys(message.userProperties).length > 0
    ? { contentType: message.contentType, userProperties: message.userProperties }
    : { contentType: message.contentType };
}
