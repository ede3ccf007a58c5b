/**
 * The NATS JetStream destination's wire: one connection per destination, publish one
 * message with `Nats-Msg-Id` = the event id and wait for the stream's PubAck, and say what
 * happened as the `Outcome` policy.ts decides on. JetStream drops a message whose id it has
 * seen within the stream's duplicate window (default 2 minutes), so a resend after a lost
 * PubAck lands once.
 *
 *   what happened                                     outcome
 *   ------------------------------------------------  -----------------------------------------
 *   PubAck (also `duplicate: true`: stored before)    response 200 (delivered)
 *   no connection: refused, DNS, TLS, bad             error, stage "connect" (offline: pending,
 *     credentials, connect timeout, a credentials       no attempt spent)
 *     file that cannot be read
 *   `stream:` does not exist (and create_stream is    error, stage "connect": nothing can be
 *     false), JetStream not enabled, or no stream       stored until someone creates the stream;
 *     captures the subject (no responders)              events wait, as for an unreachable server
 *   published, the connection closed before the ack   error, stage "request", ECONNRESET
 *   published, no PubAck within response_timeout     error, stage "request", ETIMEDOUT
 *   the stream refused the message (API error):       response 413 (dead) for a message larger
 *     10054 message size exceeds maximum                than the stream takes, 503 (retry) else
 *
 * Why offline for a missing stream: the event is fine and the server is up, but nothing
 * will store it until the stream exists; spending attempts would kill events over an
 * operator's setup step. The log says which stream is missing (EDGEHOOK_NATS_STREAM_MISSING).
 *
 * No automatic reconnect (the outbox is the queue, as for MQTT): a lost connection fails
 * what was in flight on it and the next publish connects again.
 */
import { readFileSync } from "node:fs";
import type { JetStreamClient } from "@nats-io/jetstream";
import type { Authenticator, NatsConnection, NodeConnectionOptions } from "@nats-io/transport-node";
import type { DestinationConfig } from "../config/schema.js";
import { secretFileCandidates } from "../config/secret-file.js";
import { readTlsFiles, type TlsMaterial } from "../config/tls-files.js";
import { EdgehookError } from "../errors.js";
import type { Delivery } from "../store/types.js";
import { AckWaiters } from "./ack-waiters.js";
import { brokerMessage } from "./broker-message.js";
import type { Outcome } from "./policy.js";
import { RenderError } from "./render.js";
import { compileTopic } from "./topic.js";
import type { Attempt, SendOptions, Transport, TransportContext, TransportFactory } from "./transport.js";

/**
 * The NATS client, loaded on the first connect: an agent without a nats:// destination
 * never loads it (about 250 KB of code with nkeys and tweetnacl, kept resident once
 * loaded; issue 15).
 */
interface NatsLibrary {
  transport: typeof import("@nats-io/transport-node");
  jetstream: typeof import("@nats-io/jetstream");
}

let natsLibrary: Promise<NatsLibrary> | undefined;

function loadNats(): Promise<NatsLibrary> {
  natsLibrary ??= Promise.all([import("@nats-io/transport-node"), import("@nats-io/jetstream")]).then(
    ([transport, jetstream]) => ({ transport, jetstream }),
  );
  return natsLibrary;
}

export const natsTransport: TransportFactory = {
  schemes: ["nats:"],
  connectionKey(c: DestinationConfig): string {
    return JSON.stringify([
      new URL(c.url).host,
      c.token,
      c.username,
      c.password,
      c.credentials_file,
      c.nkey_file,
      c.tls,
      c.stream,
      c.create_stream,
      c.subject,
      c.connect_timeout,
      c.response_timeout,
    ]);
  },
  create(config: DestinationConfig, context: TransportContext): Transport {
    // Resolved as every other *_file key: $CREDENTIALS_DIRECTORY first, then beside the config file.
    const read = (file: string | undefined, key: string): string | undefined => {
      if (file === undefined) return undefined;
      const candidates = secretFileCandidates(file, context.baseDir, context.env);
      let cause: unknown;
      for (const path of candidates) {
        try {
          return readFileSync(path, "utf8");
        } catch (err) {
          cause = err;
          if ((err as NodeJS.ErrnoException).code !== "ENOENT") break;
        }
      }
      throw new EdgehookError(
        "EDGEHOOK_CONFIG_UNREADABLE",
        `destination ${key}: cannot read ${file} (looked in ${candidates.join(", ")})`,
        { cause },
      );
    };
    const prefix = config.subject !== undefined ? compileTopic(config.subject, "nats") : undefined;
    return new NatsTransport({
      url: config.url,
      name: `edgehook ${new URL(config.url).host}`,
      token: config.token,
      username: config.username,
      password: config.password,
      credentials: read(config.credentials_file, "credentials_file"),
      nkeySeed: read(config.nkey_file, "nkey_file")?.trim(),
      tls:
        config.tls !== undefined
          ? {
              ...readTlsFiles(config.tls, { baseDir: context.baseDir, label: "destination tls" }),
              rejectUnauthorized: config.tls.reject_unauthorized,
            }
          : undefined,
      connectTimeoutMs: config.connect_timeout,
      ackTimeoutMs: config.response_timeout,
      stream: config.stream,
      createStream: config.create_stream,
      streamSubjects: prefix?.ok ? [`${prefix.topic.prefix.replace(/\.$/, "")}.>`] : undefined,
    });
  },
};

export interface NatsTransportOptions {
  /** nats://host:port */
  url: string;
  /** Connection name the server shows (`nats server report connections`). */
  name: string;
  token?: string | undefined;
  username?: string | undefined;
  password?: string | undefined;
  /** The contents of a .creds file (JWT and nkey seed). */
  credentials?: string | undefined;
  /** An nkey seed (SU...). */
  nkeySeed?: string | undefined;
  /** The file contents (read at start or reload) and whether to verify the server. */
  tls?: (TlsMaterial & { rejectUnauthorized: boolean }) | undefined;
  connectTimeoutMs: number;
  ackTimeoutMs: number;
  /** The stream that must exist; checked on every connect. */
  stream?: string | undefined;
  /** Create `stream` with `streamSubjects` when it does not exist. */
  createStream?: boolean | undefined;
  streamSubjects?: string[] | undefined;
}

export interface NatsMessage {
  subject: string;
  body: Buffer;
  /** Event id: the Nats-Msg-Id. */
  id: string;
  /** webhook-id, webhook-timestamp, webhook-signature, content-type. */
  headers: Record<string, string>;
}

/** An error with a code policy.ts classifies, and words that say what to do. */
export class NatsDeliveryError extends Error {
  constructor(
    message: string,
    readonly code: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "NatsDeliveryError";
  }
}

/** JetStream API error code: "message size exceeds maximum allowed". */
const MESSAGE_TOO_LARGE = 10054;
/** JetStream API error: stream not found. */
const STREAM_NOT_FOUND = 10059;

interface Connected {
  nc: NatsConnection;
  js: JetStreamClient;
  lib: NatsLibrary;
}

export class NatsTransport implements Transport {
  readonly #options: NatsTransportOptions;
  #conn: Connected | undefined;
  #connecting: Promise<Connected> | undefined;
  readonly #acks = new AckWaiters<NatsConnection>();
  #closed = false;

  constructor(options: NatsTransportOptions) {
    this.#options = options;
  }

  get connected(): boolean {
    return this.#conn !== undefined && !this.#conn.nc.isClosed();
  }

  prepare(deliveries: readonly Delivery[], config: DestinationConfig, nowSec: number): Attempt {
    const [d] = deliveries;
    if (d === undefined || deliveries.length !== 1) {
      throw new RenderError(`one event per NATS message (got ${deliveries.length})`);
    }
    const m = brokerMessage(d, config, "nats", nowSec);
    return { id: d.eventId, timestamp: nowSec, deliveries, body: m.body, headers: m.headers, target: m.name };
  }

  send(attempt: Attempt, options: SendOptions): Promise<Outcome> {
    return this.publish(
      { subject: attempt.target, body: attempt.body, id: attempt.id, headers: attempt.headers },
      options.signal,
    );
  }

  /** Publishes one message and resolves when the stream stored it, or why not. Never rejects. */
  async publish(message: NatsMessage, signal?: AbortSignal): Promise<Outcome> {
    if (this.#closed)
      return { kind: "error", error: new NatsDeliveryError("transport closed", "ECONNREFUSED"), stage: "connect" };
    let conn: Connected;
    try {
      conn = await this.#connect();
    } catch (error) {
      return { kind: "error", error, stage: "connect" };
    }
    return this.#publishOn(conn, message, signal);
  }

  #publishOn(conn: Connected, message: NatsMessage, signal: AbortSignal | undefined): Promise<Outcome> {
    const o = this.#options;
    return this.#acks.wait(
      conn.nc,
      (settle) => {
        const h = conn.lib.transport.headers();
        for (const [k, v] of Object.entries(message.headers)) h.set(k, v);
        conn.js
          .publish(message.subject, message.body, {
            msgID: message.id,
            headers: h,
            timeout: o.ackTimeoutMs,
            ...(o.stream !== undefined ? { expect: { streamName: o.stream } } : {}),
          })
          .then(
            () => settle({ kind: "response", status: 200 }),
            (error: unknown) => settle(this.#failed(error, message.subject, conn.lib)),
          );
      },
      {
        signal,
        aborted: () => ({
          kind: "error",
          error: new NatsDeliveryError("aborted while waiting for the PubAck", "ABORT_ERR", { cause: signal?.reason }),
          stage: "request",
        }),
      },
    );
  }

  #failed(error: unknown, subject: string, lib: NatsLibrary): Outcome {
    if (error instanceof Error && error.name === "JetStreamNotEnabled") {
      // No responders on the subject: no stream listens there (or JetStream is off).
      return {
        kind: "error",
        error: new NatsDeliveryError(
          `no JetStream stream captures subject ${subject} (or JetStream is not enabled on the server); create a stream for it`,
          "EDGEHOOK_NATS_NO_STREAM",
          { cause: error },
        ),
        stage: "connect",
      };
    }
    if (error instanceof lib.jetstream.JetStreamApiError) {
      if (error.code === MESSAGE_TOO_LARGE) return { kind: "response", status: 413 };
      return { kind: "response", status: 503 };
    }
    if (error instanceof lib.transport.errors.TimeoutError) {
      return {
        kind: "error",
        error: new NatsDeliveryError(`no PubAck within ${this.#options.ackTimeoutMs} ms`, "ETIMEDOUT", {
          cause: error,
        }),
        stage: "request",
      };
    }
    return {
      kind: "error",
      error: new NatsDeliveryError(`publish failed: ${describe(error)}`, "ECONNRESET", { cause: error }),
      stage: "request",
    };
  }

  #connect(): Promise<Connected> {
    const current = this.#conn;
    if (current && !current.nc.isClosed()) return Promise.resolve(current);
    if (this.#connecting) return this.#connecting;
    const attempt = this.#open().finally(() => {
      if (this.#connecting === attempt) this.#connecting = undefined;
    });
    this.#connecting = attempt;
    return attempt;
  }

  async #open(): Promise<Connected> {
    const o = this.#options;
    const lib = await loadNats();
    const { connect, credsAuthenticator, nkeyAuthenticator } = lib.transport;
    const options: NodeConnectionOptions = {
      servers: o.url.replace(/^nats:\/\//, ""),
      name: o.name,
      timeout: o.connectTimeoutMs,
      reconnect: false,
      // A publish waits for its PubAck at most ackTimeoutMs anyway.
      pingInterval: Math.max(5_000, o.ackTimeoutMs),
      ...(o.token !== undefined ? { token: o.token } : {}),
      ...(o.username !== undefined ? { user: o.username, pass: o.password ?? "" } : {}),
    };
    const encoder = new TextEncoder();
    const auth: Authenticator[] = [];
    if (o.credentials !== undefined) auth.push(credsAuthenticator(encoder.encode(o.credentials)));
    if (o.nkeySeed !== undefined) auth.push(nkeyAuthenticator(encoder.encode(o.nkeySeed)));
    if (auth.length > 0) options.authenticator = auth;
    if (o.tls) {
      options.tls = {
        rejectUnauthorized: o.tls.rejectUnauthorized,
        ...(o.tls.ca ? { ca: o.tls.ca.toString("utf8") } : {}),
        ...(o.tls.cert ? { cert: o.tls.cert.toString("utf8") } : {}),
        ...(o.tls.key ? { key: o.tls.key.toString("utf8") } : {}),
      };
    }
    const nc = await connect(options);
    try {
      if (o.stream !== undefined) await this.#checkStream(nc, o.stream, lib);
    } catch (error) {
      await nc.close().catch(() => undefined);
      throw error;
    }
    if (this.#closed) {
      await nc.close().catch(() => undefined);
      throw new NatsDeliveryError("transport closed", "ECONNREFUSED");
    }
    const conn: Connected = { nc, js: lib.jetstream.jetstream(nc, { timeout: o.ackTimeoutMs }), lib };
    this.#conn = conn;
    void nc.closed().then(() => this.#lost(nc));
    return conn;
  }

  async #checkStream(nc: NatsConnection, stream: string, lib: NatsLibrary): Promise<void> {
    const o = this.#options;
    let jsm: Awaited<ReturnType<NatsLibrary["jetstream"]["jetstreamManager"]>>;
    try {
      jsm = await lib.jetstream.jetstreamManager(nc, { timeout: o.ackTimeoutMs });
    } catch (error) {
      throw new NatsDeliveryError(
        `JetStream is not available on ${o.url}: ${describe(error)}`,
        "EDGEHOOK_NATS_NO_JETSTREAM",
        {
          cause: error,
        },
      );
    }
    try {
      await jsm.streams.info(stream);
      return;
    } catch (error) {
      if (!(error instanceof lib.jetstream.JetStreamApiError && error.code === STREAM_NOT_FOUND)) throw error;
    }
    if (!o.createStream) {
      throw new NatsDeliveryError(
        `stream ${stream} does not exist on ${o.url}; create it (nats stream add ${stream} --subjects '${(o.streamSubjects ?? []).join(",")}') or set create_stream: true`,
        "EDGEHOOK_NATS_STREAM_MISSING",
      );
    }
    await jsm.streams.add({ name: stream, subjects: o.streamSubjects ?? [] });
  }

  #lost(nc: NatsConnection): void {
    if (this.#conn?.nc === nc) this.#conn = undefined;
    this.#acks.lost(nc, () => ({
      kind: "error",
      error: new NatsDeliveryError("connection to the server closed before the PubAck", "ECONNRESET"),
      stage: "request",
    }));
  }

  /** Stops taking attempts, lets those in flight get their PubAck (or time out), then disconnects. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#connecting?.catch(() => undefined);
    await this.#acks.drained(this.#conn?.nc);
    await this.destroy();
  }

  /** Disconnects now; publishes still waiting resolve as failed requests. */
  async destroy(): Promise<void> {
    this.#closed = true;
    await this.#connecting?.catch(() => undefined);
    const conn = this.#conn;
    this.#conn = undefined;
    if (conn) {
      this.#lost(conn.nc);
      await conn.nc.close().catch(() => undefined);
    }
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
