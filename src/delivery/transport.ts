/**
 * The seam between the delivery core and the wire. Everything above it (lanes, the pump,
 * batching, the retry policy, the settle writer, the outbox) is the same for every kind of
 * destination; a transport is the only thing that differs. Destinations are chosen by the
 * scheme of their `url` (transports.ts): `http(s)://` is a webhook (http-transport.ts);
 * an MQTT or NATS JetStream transport implements the same interface.
 *
 * For a transport author, the contract:
 *
 * - **One attempt, one `send`.** The dispatcher calls `prepare` and then `send` once per
 *   attempt. A transport never retries on its own and never queues an attempt for later
 *   (no offline buffer: MQTT.js's must be off). Retries, backoff, the free resend after a
 *   closed connection, dead letters and the destination's up/down state are decided above,
 *   from the `Outcome` (policy.ts `decide`).
 *
 * - **Signing is per attempt, in `prepare`.** `prepare(deliveries, config, nowSec)` renders
 *   the stored body bytes for this destination and signs them with `nowSec`, the time of
 *   THIS attempt (design invariant 3: receivers reject old timestamps, and an event may wait
 *   hours). The id is the event id, or for a batch `batchId` of the member ids, the same on
 *   every retry (invariant 2). A prepared attempt is sent once and never kept: the next
 *   attempt calls `prepare` again. `prepare` is synchronous and pure apart from reading
 *   `config`; anything it throws makes the attempt unsendable (the deliveries are dead at
 *   once, nothing went on the wire) and the dispatcher reports it. A batch that cannot be
 *   prepared is split by the dispatcher so that only the bad members die.
 *
 * - **`send` resolves, never rejects,** with one `Outcome`:
 *   - `response`: the receiver took a position on this attempt. `status` is on the HTTP
 *     scale, because the policy reads it: a webhook passes the HTTP status; a broker
 *     acknowledgement (MQTT PUBACK, JetStream PubAck) is 200; a refusal a later try may get
 *     past (quota exceeded, server busy) is 503 or 429; a refusal no retry can fix (not
 *     authorised for the topic, payload format invalid) is a 4xx, which makes the delivery
 *     dead. A transport whose answers have no HTTP meaning says so in its docs.
 *   - `error` with `stage: "connect"`: nothing of this attempt can have reached the
 *     receiver, because no connection could be made: TCP connect refused or timed out,
 *     DNS, TLS handshake (bad certificate), proxy tunnel, an MQTT broker that cannot be
 *     reached or refuses CONNECT, a NATS server not connected. This is "offline": the
 *     delivery stays pending without spending an attempt and the destination goes down
 *     (probed once a second). When in doubt whether bytes were written, it is not connect.
 *   - `error` with `stage: "request"`: the connection was there and the attempt was (or
 *     may have been) written, then no answer came: reset, closed, no PUBACK/PubAck or HTTP
 *     answer in time. It spends an attempt of this delivery and holds back only its series.
 *     Give the error a `code` (policy.ts `errorKind` reads the `cause` chain): a timeout
 *     (ETIMEDOUT) is retried on the schedule; a connection closed or reset before the
 *     answer (ECONNRESET, or no code) first gets one free resend at once, as a keep-alive
 *     connection the server closed just as it was reused would.
 *   - `unsendable`: the transport refused the prepared attempt before anything went on the
 *     wire, and no retry can change that (undici rejects a header value with a newline).
 * - **Answers are read only when asked.** `keepAnswer` is set only by `edgehook send-test`
 *   (through the dispatcher's `onAttempt`); otherwise a transport does not copy the
 *   receiver's answer (an HTTP transport drains it so the keep-alive connection is reused).
 * - **Aborting.** `options.signal` fires only at shutdown, after the grace period; the
 *   outcome is then ignored and the deliveries stay pending, so settle promptly.
 * - **Lifecycle.** A transport is created at start or reload; its factory reads every file
 *   it needs then (TLS, credentials), throwing EDGEHOOK_CONFIG_UNREADABLE so that a bad
 *   reload changes nothing, and connects lazily or in the background (a destination that
 *   cannot be reached at start is offline, not a start failure). `close()` stops taking
 *   attempts, lets those in flight finish (their outcomes are still recorded) and then
 *   releases connections; it is used when a reload replaces or removes the destination.
 *   `destroy()` ends everything at once (shutdown, after in-flight attempts finished or
 *   were aborted). Both resolve when done and must not reject.
 * - **Credentials and logs.** A transport logs nothing per attempt and never puts a secret
 *   into an error it returns: error text reaches logs and `edgehook queue show` through
 *   `describeError`.
 */
import type { DestinationConfig } from "../config/schema.js";
import type { Delivery } from "../store/types.js";
import type { Outcome } from "./policy.js";

/** One attempt, ready to go: rendered, signed for this attempt's time. */
export interface Attempt {
  /** The idempotency id (`webhook-id`): event id, or `batchId` of a batch's members. */
  id: string;
  /** Epoch seconds of this attempt: what `webhook-timestamp` and the signatures carry. */
  timestamp: number;
  /** What the attempt carries: one delivery, or a batch's members in body order. */
  deliveries: readonly Delivery[];
  /** The bytes to send. */
  body: Buffer;
  /**
   * Metadata that travels with the body, lower-case names: HTTP headers for a webhook
   * (webhook-id, webhook-timestamp, webhook-signature, content-type, ...); MQTT 5 user
   * properties or NATS message headers for the others.
   */
  headers: Record<string, string>;
  /** Where inside the destination: the HTTP path and query; an MQTT topic; a NATS subject. */
  target: string;
}

export interface SendOptions {
  /** Fires at shutdown only (see the contract above). */
  signal: AbortSignal;
  /** Keep the receiver's answer in the outcome (`response.answer`); for `edgehook send-test`. */
  keepAnswer?: boolean;
}

export interface Transport {
  /**
   * Renders and signs `deliveries` for one attempt at `nowSec`. `config` is the
   * destination's current config (a reload that does not change the connection settings
   * keeps the transport and passes the new config). Throws when no attempt can be built.
   */
  prepare(deliveries: readonly Delivery[], config: DestinationConfig, nowSec: number): Attempt;
  /** Sends one prepared attempt; resolves with what happened, never rejects. */
  send(attempt: Attempt, options: SendOptions): Promise<Outcome>;
  /** Lets attempts in flight finish, then releases the connections. */
  close(): Promise<void>;
  /** Ends every connection and attempt now. */
  destroy(): Promise<void>;
}

/** What a transport may take from its surroundings (never `process` directly). */
export interface TransportContext {
  /** Relative `*_file` paths resolve against this (the config file's directory). */
  baseDir?: string | undefined;
  /** Proxy and similar variables; the agent passes process.env. */
  env: Readonly<Record<string, string | undefined>>;
}

/** Makes the transports of one kind of destination; registered by URL scheme in transports.ts. */
export interface TransportFactory {
  /** URL schemes served, with the colon as `URL.protocol` has it: `https:`. */
  readonly schemes: readonly string[];
  /**
   * The settings whose change on reload needs a new transport (where to connect, TLS,
   * timeouts, connection count). Anything else changes through `prepare`'s `config`.
   */
  connectionKey(config: DestinationConfig): string;
  /** Reads the files the destination names (throws EDGEHOOK_CONFIG_UNREADABLE) and returns the transport. */
  create(config: DestinationConfig, context: TransportContext): Transport;
}
