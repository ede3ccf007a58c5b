/**
 * Message intake of the MQTT source: decoding into batches, committing them to the sink,
 * the fair-share rest while delivery is busy, holding a batch the outbox refused, and the
 * acknowledgements sent once a batch is committed. mqtt.ts owns the client session.
 *
 * Invariant 1: a QoS 1/2 message is acknowledged only after the sink resolved, i.e.
 * after what its readings caused is committed. MQTT.js acknowledges a QoS 1 publish
 * when `handleMessage`'s callback runs and handles incoming packets strictly one at a
 * time, so holding that callback until each commit would cost one fsync per message.
 * Instead, for QoS 1 the callback is called at once with an error, which makes
 * MQTT.js move on to the next packet without sending the PUBACK
 * (lib/handlers/publish.js: `if (err) return done(err)`), and the PUBACK is sent by
 * us once the batch holding the message is committed. While one commit is in flight
 * the next batch gathers (group commit); when it reaches MAX_PENDING messages the
 * callback is held, which stops reading from the socket (TCP backpressure).
 *
 * Fair share with delivery (issue 15): ingest and delivery share the one thread, and a
 * flood of readings faster than delivery would otherwise take nearly all of it (decoding,
 * rules, commits) while deliveries wait for turns. So while delivery has requests in flight
 * (`yieldTo`), each commit is followed by a rest of REST_RATIO times as long as the commit
 * took (at most MAX_REST_MS) during which no message is read: ingest takes at most about a
 * third of the thread, and what it leaves waits at the broker (backpressure), not in memory.
 * Twice, not once: messages are also decoded while the commit is in flight, and the
 * commit's fsync blocks the thread, so an equal rest left delivery less than half its
 * rate with no ingest. With nothing to
 * deliver, or the destination down, there is no rest.
 *
 * QoS 2: the PUBREC is what makes the broker forget the PUBLISH, and MQTT.js keeps
 * the message until PUBREL only in memory, so the PUBREC itself is deferred through
 * `customHandleAcks` until the commit (one message at a time; QoS 2 is rare for sensors).
 *
 * A PUBACK is sent only on the connection that received the message: after a
 * reconnect the broker redelivers unacknowledged messages and they are committed
 * again (at-least-once; readings carry their payload time), unless they were committed
 * already: see redelivery.ts for how those are recognised without mistaking a new
 * message that reuses a packet id for one of them.
 *
 * Backpressure (design invariant 7): when a commit is refused (the outbox is at its disk
 * floor, or full under `when_full: block`) or fails, the batch is kept, unacknowledged,
 * and offered again every RETRY_MS (a refusal is answered from a cached check, so this
 * is cheap; other failures back off to RETRY_MAX_MS). Meanwhile the next message is
 * parked without being decoded and its MQTT.js callback held, so MQTT.js stops reading
 * the socket and the broker keeps everything else (TCP backpressure; its own queue).
 * Memory stays bounded by the one held batch (≤ MAX_PENDING messages). Not reading means
 * MQTT.js cannot see PINGRESPs, so while holding we send PINGREQs ourselves and keep its
 * keepalive timer from closing the connection. Once the batch is stored it is
 * acknowledged, the parked message goes on, and reading resumes; a restart is never
 * needed. If the connection drops meanwhile, the parked message is forgotten (the
 * broker redelivers it), and so are the held batch's acknowledgements: the broker
 * redelivers those messages too, and once the batch is stored the redelivered copies
 * are recognised (DUP, redelivery.ts) instead of being processed twice.
 */
import type { IPublishPacket, MqttClient } from "mqtt";
import type { Clock, TimerHandle } from "../clock.js";
import type { MqttConfig } from "../config/schema.js";
import type { Logger, RateLimitedLog } from "../ops/logger.js";
import type { Metrics } from "../ops/metrics.js";
import type { MqttRouter } from "./decode.js";
import { messageKey } from "./mqtt-keys.js";
import { callSink, isBackpressure, type Reading, type ReadingSink, type SinkOrigin } from "./reading.js";
import type { ReceivedMessage, RedeliveryTracker } from "./redelivery.js";

/**
 * Messages gathered while a commit is in flight before MQTT.js is made to wait. It bounds
 * what a flood holds in memory (the batch being committed and the one gathering); a few
 * hundred already make the commit's fsync cheap per message.
 */
const MAX_PENDING = 1_000;
/** The rest after a commit while delivery is busy, relative to the commit's duration, and its longest (fair share, see above). */
const REST_RATIO = 2;
const MAX_REST_MS = 200;
/** A batch whose commit was refused is offered again this often (the agent answers from a cached check); after other failures the wait doubles up to RETRY_MAX_MS. */
const RETRY_MS = 250;
const RETRY_MAX_MS = 30_000;

/** Tells MQTT.js to skip its PUBACK: we send it after the commit. */
class AckDeferred extends Error {
  constructor() {
    super("acknowledgement deferred until commit");
  }
}
const ACK_DEFERRED = new AckDeferred();

/** `key`: the message's redelivery key, when it is tracked (persistent session). */
type PendingAck =
  | { kind: "puback"; messageId: number; key?: string; stream: unknown }
  | { kind: "pubrec"; messageId: number; key?: string; send: () => boolean };

interface Batch {
  readings: Reading[];
  acks: PendingAck[];
  messages: number;
  /** The QoS 1/2 messages in the batch whose keys are committed with it (see SinkOrigin). */
  keys: ReceivedMessage[];
  /** Payload fields that gave no reading, and retained messages skipped (counted per batch). */
  ignoredFields: number;
  retainedIgnored: number;
}

const emptyBatch = (): Batch => ({
  readings: [],
  acks: [],
  messages: 0,
  keys: [],
  ignoredFields: 0,
  retainedIgnored: 0,
});

/** What the intake reads of the source it belongs to (read at each use: they change per start and connection). */
export interface IntakeHost {
  config: MqttConfig;
  sink: ReadingSink;
  log: Logger;
  metrics: Metrics;
  clock: Clock;
  errLog: RateLimitedLog;
  yieldTo: (() => boolean) | undefined;
  client(): MqttClient | undefined;
  stopping(): boolean;
  tracker(): RedeliveryTracker;
  /** Tag of the broker session in message keys; undefined with `clean: true`. */
  session(): string | undefined;
  router(): MqttRouter | undefined;
  /** Writes a PINGREQ now, or once the one in flight is answered. */
  ping(client: MqttClient): void;
  /** Hands the keys of messages that can no longer be redelivered to the ledger. */
  releaseKeys(): void;
}

export class MqttIntake {
  readonly #host: IntakeHost;
  readonly #config: MqttConfig;
  readonly #sink: ReadingSink;
  readonly #log: Logger;
  readonly #metrics: Metrics;
  readonly #clock: Clock;
  readonly #errLog: RateLimitedLog;
  readonly #yieldTo: (() => boolean) | undefined;

  #pending: Batch = emptyBatch();
  #inflight: Promise<void> | undefined;
  #flushScheduled = false;
  /** Resting after a commit so delivery gets the thread (fair share); nothing is read meanwhile. */
  #rest: NodeJS.Timeout | undefined;
  /**
   * While delivery is busy, nothing is read from the moment a batch is flushed until the rest
   * after its commit is over: the messages of a batch are then decoded just before it is
   * committed and dropped just after, young enough for V8's cheap young-generation
   * collection, instead of waiting through a commit and a rest and being promoted to the
   * old generation as garbage (which is what made RSS grow under a flood).
   */
  #readPaused = false;
  #held: (() => void) | undefined;
  #idle: (() => void)[] = [];
  /** A batch whose commit was refused or failed: kept unacknowledged and offered again. */
  #unstored: Batch | undefined;
  #unstoredSince = 0;
  #retryTimer: TimerHandle | undefined;
  #retryDelay = RETRY_MS;
  /** The message that arrived while #unstored is set, not yet decoded; its callback is held. */
  #parked: (() => void) | undefined;
  #pingTimer: TimerHandle | undefined;

  constructor(host: IntakeHost) {
    this.#host = host;
    this.#config = host.config;
    this.#sink = host.sink;
    this.#log = host.log;
    this.#metrics = host.metrics;
    this.#clock = host.clock;
    this.#errLog = host.errLog;
    this.#yieldTo = host.yieldTo;
  }

  /** Messages held unacknowledged while a refused batch waits to be stored (for state()), else undefined. */
  held(): number | undefined {
    return this.#unstored ? this.#unstored.messages + this.#pending.messages : undefined;
  }

  /** The connection closed: the parked message was never decoded nor acknowledged, and the broker sends it again on the next connection. */
  connectionClosed(): void {
    this.#parked = undefined;
  }

  /** After the client ended: no more retries or rests; a message MQTT.js was made to wait at goes on (unacknowledged while stopping). */
  stop(): void {
    this.#stopRetrying();
    clearTimeout(this.#rest);
    this.#rest = undefined;
    this.#resumeReading();
    this.#parked = undefined;
  }

  onMessage(packet: IPublishPacket, cb: (err?: Error) => void): void {
    if (packet.qos === 2) {
      // Reached only at PUBREL: the readings were committed before our PUBREC.
      cb();
      return;
    }
    if (this.#host.stopping()) {
      // Not acknowledged: the broker keeps it for the next session.
      cb(packet.qos === 1 ? ACK_DEFERRED : undefined);
      return;
    }
    if (this.#unstored) {
      // Backpressure: left undecoded, its callback held, until the batch before it is stored.
      this.#parked = () => this.onMessage(packet, cb);
      return;
    }
    const client = this.#host.client();
    const key = this.#accept(packet);
    if (packet.qos === 1 && client) {
      this.#pending.acks.push({ kind: "puback", messageId: packet.messageId!, key, stream: client.stream });
    }
    const proceed = () => cb(packet.qos === 1 ? ACK_DEFERRED : undefined);
    if (this.#pending.messages >= MAX_PENDING || this.#rest || this.#readPaused) this.#held = proceed;
    else proceed();
    this.#scheduleFlush();
  }

  onQos2(packet: IPublishPacket, client: MqttClient, sendPubrec: () => void): void {
    if (this.#host.stopping()) return; // no PUBREC: redelivered in the next session
    if (this.#unstored) {
      this.#parked = () => this.onQos2(packet, client, sendPubrec);
      return;
    }
    const key = this.#accept(packet);
    const stream = client.stream;
    this.#pending.acks.push({
      kind: "pubrec",
      messageId: packet.messageId!,
      key,
      send: () => {
        if (client.stream !== stream || !client.connected) return false;
        sendPubrec();
        return true;
      },
    });
    this.#scheduleFlush();
  }

  /**
   * Decodes one message into the pending batch; bad input is counted and skipped.
   * Returns the message's redelivery key when it is tracked (QoS 1/2, persistent session).
   */
  #accept(packet: IPublishPacket): string | undefined {
    this.#pending.messages++;
    const payload = typeof packet.payload === "string" ? Buffer.from(packet.payload) : packet.payload;
    let key: string | undefined;
    const session = this.#host.session();
    if (packet.qos > 0 && session !== undefined) {
      key = messageKey(session, packet, payload);
      const packetId = packet.messageId as number;
      if (this.#host.tracker().arrived(packetId, key, packet.dup)) {
        // Committed before the connection (or the process) died with its acknowledgement:
        // acknowledge, do not repeat.
        this.#metrics.redeliveriesSkipped.inc({ source: "mqtt" });
        this.#log.debug({ topic: packet.topic, messageId: packetId }, "redelivered message already committed");
        return key;
      }
      this.#pending.keys.push({
        packetId,
        key,
        session: this.#host.tracker().session,
        connection: this.#host.tracker().connection,
      });
    }
    const res = this.#host.router()?.decode(packet.topic, payload, this.#clock.now(), packet.retain);
    if (res === undefined) {
      // A persistent session can still carry messages for a subscription a reload or a
      // restart removed: they are acknowledged and gone, so they are counted and logged.
      this.#metrics.decodeErrors.inc({ source: "mqtt", reason: "no_subscription" });
      const suppressed = this.#errLog.shouldLog("decode:no_subscription");
      if (suppressed !== undefined) {
        this.#log.warn(
          { topic: packet.topic, reason: "no_subscription", suppressed },
          "skipped a message on a topic no subscription matches",
        );
      }
      return key;
    }
    if (!res.ok) {
      this.#metrics.decodeErrors.inc({ source: "mqtt", reason: res.reason });
      const suppressed = this.#errLog.shouldLog(`decode:${res.reason}`);
      if (suppressed !== undefined) {
        this.#log.warn(
          { topic: packet.topic, reason: res.reason, bytes: payload.length, suppressed },
          "skipped a payload that could not be decoded",
        );
      }
      return key;
    }
    for (const r of res.readings) this.#pending.readings.push(r);
    if (res.ignored) this.#pending.ignoredFields += res.ignored;
    if (res.retained) {
      this.#pending.retainedIgnored++;
      this.#log.debug({ topic: packet.topic }, "retained message ignored (retained: ignore)");
    }
    return key;
  }

  #scheduleFlush(): void {
    if (this.#flushScheduled || this.#inflight || this.#rest) return;
    this.#flushScheduled = true;
    // After the packets already parsed from this socket read are handled (MQTT.js
    // works through them on process.nextTick), so they share one commit.
    setImmediate(() => {
      this.#flushScheduled = false;
      this.#flush();
    });
  }

  #flush(): void {
    if (this.#inflight || this.#unstored || this.#rest) return;
    const batch = this.#pending;
    if (batch.messages === 0) {
      this.#notifyIdle();
      return;
    }
    this.#pending = emptyBatch();
    // Counted per batch, not per message: a labelled counter costs a hash lookup per call.
    if (batch.readings.length > 0) this.#metrics.readings.inc({ source: "mqtt" }, batch.readings.length);
    if (batch.ignoredFields > 0) this.#metrics.decodeIgnoredFields.inc({ source: "mqtt" }, batch.ignoredFields);
    if (batch.retainedIgnored > 0) this.#metrics.mqttRetainedIgnored.inc(batch.retainedIgnored);
    this.#readPaused = !this.#host.stopping() && this.#yieldTo?.() === true;
    if (!this.#readPaused) this.#resumeReading();
    this.#commit(batch);
  }

  /** Lets MQTT.js go on with the message it was made to wait at. */
  #resumeReading(): void {
    this.#readPaused = false;
    const held = this.#held;
    this.#held = undefined;
    held?.();
  }

  /** Hands the batch to the sink; acknowledges it once stored, or keeps it to offer again. */
  #commit(batch: Batch): void {
    // Deletions of released keys go before the commit that may store the same key again.
    this.#host.releaseKeys();
    const origin: SinkOrigin = { messageKeys: batch.keys.map((m) => m.key) };
    const started = performance.now();
    const commit = batch.readings.length > 0 ? callSink(this.#sink, batch.readings, origin) : Promise.resolve();
    this.#inflight = commit.then(
      () => {
        for (const m of batch.keys) this.#host.tracker().committed(m);
        // One write for the whole batch of acknowledgements instead of one per message.
        // Only on the connection that received them: after a reconnect the broker
        // redelivers those, and they are recognised (redelivery.ts).
        const client = this.#host.client();
        const stream = client?.stream as { cork?: () => void; uncork?: () => void } | undefined;
        stream?.cork?.();
        // The PUBACKs go out as one buffer, not one MQTT.js packet each (an encode of three
        // small writes, an event): per message that was a fair share of the agent's CPU.
        let pubacks: Buffer | undefined;
        let n = 0;
        for (const a of batch.acks) {
          let sent = false;
          if (a.kind === "pubrec") sent = a.send();
          else if (client && client.stream === a.stream && client.connected) {
            pubacks ??= Buffer.allocUnsafe(PUBACK_BYTES * batch.acks.length);
            writePuback(pubacks, PUBACK_BYTES * n++, a.messageId);
            sent = true;
          }
          if (sent && a.key !== undefined) this.#host.tracker().acknowledged(a.messageId, a.key);
        }
        if (pubacks && client)
          client.stream.write(n === batch.acks.length ? pubacks : pubacks.subarray(0, PUBACK_BYTES * n));
        // After the acknowledgements, in the same write: its answer confirms them.
        if (client && this.#host.tracker().unconfirmed > 0) this.#host.ping(client);
        stream?.uncork?.();
        this.#host.releaseKeys();
        if (this.#unstored === batch) this.#stored(batch);
      },
      (err: unknown) => this.#notStored(batch, err),
    );
    void this.#inflight.finally(() => {
      this.#inflight = undefined;
      if (!this.#host.stopping() && !this.#unstored && this.#yieldTo?.()) {
        // Fair share: rest before reading and committing more.
        const rest = Math.min((performance.now() - started) * REST_RATIO, MAX_REST_MS);
        this.#rest = setTimeout(() => {
          this.#rest = undefined;
          this.#readAgain();
        }, rest);
        return;
      }
      if (this.#readPaused) this.#readAgain();
      else this.#flush();
    });
  }

  /**
   * After a pause in reading: read what has arrived, then commit it as one batch (on the
   * next turn, like any batch, so the messages of one socket read share a commit).
   */
  #readAgain(): void {
    this.#resumeReading();
    this.#scheduleFlush();
  }

  /** Nothing of the batch was stored: keep it, stop reading, offer it again. */
  #notStored(batch: Batch, err: unknown): void {
    const refused = isBackpressure(err);
    if (this.#unstored !== batch) {
      this.#unstored = batch;
      this.#unstoredSince = this.#clock.now();
      this.#retryDelay = RETRY_MS;
      const what = `${batch.messages} messages (${batch.readings.length} readings)`;
      if (refused) {
        this.#log.warn(
          { held: batch.messages, reason: (err as Error).message },
          `outbox refuses new readings: holding ${what} unacknowledged and reading nothing more from the broker until they are stored (tried again every ${RETRY_MS / 1000} s)`,
        );
      } else {
        this.#log.error(
          { err, held: batch.messages },
          `could not commit readings: holding ${what} unacknowledged and reading nothing more from the broker until they are stored`,
        );
      }
      this.#keepAlive();
    }
    if (this.#host.stopping() && this.#host.client() === undefined) return;
    const delay = refused ? RETRY_MS : this.#retryDelay;
    if (!refused) this.#retryDelay = Math.min(this.#retryDelay * 2, RETRY_MAX_MS);
    if (this.#retryTimer) this.#clock.clearTimeout(this.#retryTimer);
    this.#retryTimer = this.#clock.setTimeout(() => {
      this.#retryTimer = undefined;
      if (this.#unstored && !this.#inflight) this.#commit(this.#unstored);
    }, delay);
  }

  /** The held batch is stored (and acknowledged): read again, starting with the parked message. */
  #stored(batch: Batch): void {
    this.#unstored = undefined;
    this.#stopRetrying();
    this.#log.info(
      { messages: batch.messages, heldMs: this.#clock.now() - this.#unstoredSince },
      `stored the ${batch.messages} held messages after ${Math.round((this.#clock.now() - this.#unstoredSince) / 1000)} s; reading from the broker again`,
    );
    const parked = this.#parked;
    this.#parked = undefined;
    parked?.();
  }

  /**
   * While the socket is not read MQTT.js sees no PINGRESP and would close the connection
   * after 1.5 × keepalive (losing the held acknowledgements): send PINGREQs ourselves so
   * the broker keeps the session, and restart MQTT.js's keepalive timer.
   */
  #keepAlive(): void {
    const every = Math.max(500, Math.floor(this.#config.keepalive / 2));
    this.#pingTimer = this.#clock.setTimeout(() => {
      this.#pingTimer = undefined;
      if (!this.#unstored) return;
      const client = this.#host.client();
      if (client?.connected) {
        client.sendPing();
        client.reschedulePing(true);
      }
      this.#keepAlive();
    }, every);
    this.#pingTimer.unref?.();
  }

  #stopRetrying(): void {
    if (this.#retryTimer) this.#clock.clearTimeout(this.#retryTimer);
    if (this.#pingTimer) this.#clock.clearTimeout(this.#pingTimer);
    this.#retryTimer = undefined;
    this.#pingTimer = undefined;
  }

  whenIdle(timeoutMs: number): Promise<void> {
    if (!this.#inflight && !this.#unstored && !this.#rest && this.#pending.messages === 0 && !this.#flushScheduled) {
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const timer = this.#clock.setTimeout(() => {
        this.#log.warn("stopping with readings still uncommitted; the broker will redeliver them");
        resolve();
      }, timeoutMs);
      this.#idle.push(() => {
        this.#clock.clearTimeout(timer);
        resolve();
      });
    });
  }

  #notifyIdle(): void {
    const waiters = this.#idle;
    this.#idle = [];
    for (const w of waiters) w();
  }
}

const PUBACK_BYTES = 4;

/**
 * A PUBACK as MQTT.js (mqtt-packet) encodes one with reason code Success: type 4 (0x40),
 * remaining length 2, the packet id. MQTT 3.1.1 §3.4; in MQTT 5 the same four bytes,
 * since a Success reason code without properties may be omitted (5.0 §3.4.2.1).
 */
function writePuback(buf: Buffer, at: number, messageId: number): void {
  buf[at] = 0x40;
  buf[at + 1] = 0x02;
  buf.writeUInt16BE(messageId, at + 2);
}
