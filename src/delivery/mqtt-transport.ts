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
import { readFileSync } from "node:fs";
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import type { Outcome } from "./policy.js";

export interface MqttTransportOptions {
  /** mqtt://host:port or mqtts://host:port. */
  url: string;
  clientId: string;
  username?: string | undefined;
  password?: string | undefined;
  tls?:
    | {
        ca_file?: string | undefined;
        cert_file?: string | undefined;
        key_file?: string | undefined;
        reject_unauthorized: boolean;
      }
    | undefined;
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

interface Pending {
  settle(outcome: Outcome): void;
}

export class MqttTransport {
  readonly #options: MqttTransportOptions;
  #client: MqttClient | undefined;
  #connecting: Promise<MqttClient> | undefined;
  readonly #pending = new Map<MqttClient, Set<Pending>>();
  #closed = false;

  constructor(options: MqttTransportOptions) {
    this.#options = options;
  }

  /** True while a connection is up. */
  get connected(): boolean {
    return this.#client?.connected === true;
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
    return new Promise<Outcome>((resolve) => {
      let set = this.#pending.get(client);
      if (set === undefined) {
        set = new Set();
        this.#pending.set(client, set);
      }
      const pendingSet = set;
      const entry: Pending = {
        settle: (outcome) => {
          if (!pendingSet.delete(entry)) return;
          clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
          resolve(outcome);
        },
      };
      const onAbort = () =>
        entry.settle({
          kind: "error",
          error: new MqttDeliveryError("aborted while waiting for the broker's ack", "ABORT_ERR", {
            cause: signal?.reason,
          }),
          stage: "request",
        });
      const timer = setTimeout(
        () =>
          entry.settle({
            kind: "error",
            error: new MqttDeliveryError(
              `no ${o.qos === 2 ? "PUBCOMP" : "PUBACK"} within ${o.ackTimeoutMs} ms`,
              "ETIMEDOUT",
            ),
            stage: "request",
          }),
        o.ackTimeoutMs,
      );
      pendingSet.add(entry);
      if (signal?.aborted) {
        onAbort();
        return;
      }
      signal?.addEventListener("abort", onAbort, { once: true });
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
            entry.settle({ kind: "response", status: 200 });
            return;
          }
          const reason = (err as { code?: unknown }).code;
          if (typeof reason === "number") {
            entry.settle({ kind: "response", status: ackStatus(reason) });
            return;
          }
          entry.settle({ kind: "error", error: err, stage: "request" });
        },
      );
    });
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
    let tlsOptions: Pick<IClientOptions, "ca" | "cert" | "key" | "rejectUnauthorized"> = {};
    try {
      if (o.tls) {
        tlsOptions = {
          rejectUnauthorized: o.tls.reject_unauthorized,
          ...(o.tls.ca_file ? { ca: readFileSync(o.tls.ca_file) } : {}),
          ...(o.tls.cert_file ? { cert: readFileSync(o.tls.cert_file) } : {}),
          ...(o.tls.key_file ? { key: readFileSync(o.tls.key_file) } : {}),
        };
      }
    } catch (error) {
      return Promise.reject(
        new MqttDeliveryError(`cannot read a TLS file: ${describe(error)}`, "ERR_TLS_FILE", { cause: error }),
      );
    }
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
        ...tlsOptions,
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
    const set = this.#pending.get(client);
    this.#pending.delete(client);
    for (const p of [...(set ?? [])]) {
      p.settle({
        kind: "error",
        error: new MqttDeliveryError("connection to the broker closed before the ack", "ECONNRESET"),
        stage: "request",
      });
    }
    if (!client.disconnecting) client.end(true);
  }

  /** Closes the connection; publishes still waiting resolve as failed requests. */
  async close(): Promise<void> {
    this.#closed = true;
    const client = this.#client;
    this.#client = undefined;
    await this.#connecting?.catch(() => undefined);
    if (client) {
      // Whatever is still in flight resolves as a failed request (it stays pending in the
      // outbox); then the connection closes without waiting for acks that may never come.
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

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
