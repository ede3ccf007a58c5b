/**
 * Readings from MQTT subscriptions.
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
 *
 * What the broker loses is made visible: a reconnect on which the broker no longer has
 * the persistent session (readings published meanwhile are gone) is a warning and
 * `edgehook_mqtt_sessions_lost_total`; a rise of mosquitto's count of dropped messages
 * (`$SYS/broker/publish/messages/dropped`, full queues) is a warning and
 * `edgehook_mqtt_broker_dropped_total`.
 */
import { createHash } from "node:crypto";
import mqtt, { type IClientOptions, type IPublishPacket, type MqttClient } from "mqtt";
import type { Clock, TimerHandle } from "../clock.js";
import type { MqttConfig } from "../config/schema.js";
import { readTlsFiles } from "../config/tls-files.js";
import type { Logger } from "../ops/logger.js";
import { RateLimitedLog } from "../ops/logger.js";
import type { Metrics } from "../ops/metrics.js";
import type { EmbeddedBroker } from "./broker.js";
import { MqttRouter, mqttDecoder } from "./decode.js";
import {
  isBackpressure,
  type MessageLedger,
  type Reading,
  type ReadingSink,
  type SessionRecord,
  type SinkOrigin,
  type Source,
  type SourceState,
  type SourceStatus,
} from "./reading.js";
import { type ReceivedMessage, RedeliveryTracker } from "./redelivery.js";

export interface MqttSourceOptions {
  config: MqttConfig;
  agentId: string;
  sink: ReadingSink;
  logger: Logger;
  metrics: Metrics;
  clock: Clock;
  /** Relative tls.*_file paths are read from here (the config file's directory). Default: the working directory. */
  baseDir?: string;
  /**
   * Keys of committed messages the broker may still redeliver, kept across restarts. A
   * QoS 1/2 message redelivered (DUP) after a crash took its acknowledgement is then
   * recognised and acknowledged without being processed again. Without it, only
   * redeliveries after a reconnect of this process are recognised.
   */
  ledger?: MessageLedger;
  /**
   * Whether delivery has requests in flight right now: then each commit is followed by a
   * rest twice as long as it took, so ingest leaves delivery most of the thread (see above).
   */
  yieldTo?: () => boolean;
}

/**
 * Messages gathered while a commit is in flight before MQTT.js is made to wait. It bounds
 * what a flood holds in memory (the batch being committed and the one gathering); a few
 * hundred already make the commit's fsync cheap per message.
 */
const MAX_PENDING = 1_000;
/** The rest after a commit while delivery is busy, relative to the commit's duration, and its longest (fair share, see above). */
const REST_RATIO = 2;
const MAX_REST_MS = 200;
const STOP_TIMEOUT_MS = 5_000;
/** A batch whose commit was refused is offered again this often (the agent answers from a cached check); after other failures the wait doubles up to RETRY_MAX_MS. */
const RETRY_MS = 250;
const RETRY_MAX_MS = 30_000;
/** At most one warning (and one write) per this long about the broker's drops. */
const DROPS_REPORT_MS = 60_000;

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

/**
 * Session, packet id, topic and payload hash: what identifies a redelivery of the same
 * message. `session` names the broker session (see sessionTag), so keys of another
 * client id are never taken for this one's.
 */
export function messageKey(session: string, packet: IPublishPacket, payload: Buffer): string {
  const hash = createHash("sha1").update(payload).digest("base64url");
  return `mqtt:${session}:${packet.messageId}:${packet.topic}:${hash}`;
}

/** Short tag of a broker session scope (the client id) used in keys. */
export function sessionTag(scope: string): string {
  return createHash("sha1").update(scope).digest("base64url").slice(0, 8);
}

/** The session tag and packet id of a key made by messageKey. */
function parseKey(key: string): { session: string; packetId: number } | undefined {
  const m = /^mqtt:([^:]+):(\d+):/.exec(key);
  return m ? { session: m[1] as string, packetId: Number(m[2]) } : undefined;
}

/** mosquitto's count of messages it dropped since it started (full queues, any client). */
export const MOSQUITTO_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped";

export class MqttSource implements Source {
  readonly name = "mqtt";
  readonly #config: MqttConfig;
  readonly #agentId: string;
  readonly #sink: ReadingSink;
  readonly #ledger: MessageLedger | undefined;
  readonly #log: Logger;
  readonly #metrics: Metrics;
  readonly #clock: Clock;
  readonly #errLog: RateLimitedLog;
  readonly #baseDir: string | undefined;
  readonly #yieldTo: (() => boolean) | undefined;

  #client: MqttClient | undefined;
  #broker: EmbeddedBroker | undefined;
  #brokerUrl: string | undefined;
  #router: MqttRouter | undefined;
  #status: SourceStatus = "stopped";
  #since = 0;
  #detail: string | undefined;
  #stopping = false;
  #reconnectPeriod = 0;
  #lastError: string | undefined;

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

  /** Committed messages the broker may still redeliver (persistent sessions only). */
  #tracker = new RedeliveryTracker();
  /** Tag of the broker session in message keys; undefined with `clean: true` (nothing is redelivered). */
  #session: string | undefined;
  /** Names the session in the ledger (the client id). */
  #scope = "";
  /** A PINGREQ is wanted once the one in flight is answered (acknowledgements were written meanwhile). */
  #pingWanted = false;
  /** Whether the broker ever held a persistent session for us (this process, or remembered by the ledger). */
  #sessionKnown = false;
  #connectedOnce = false;
  #disconnectedAt: number | undefined;
  /** The broker's drop counter topic being watched, if any. */
  #dropsTopic: string | undefined;
  /** The broker's drop count last seen, and last remembered by the ledger. */
  #brokerDropped: number | undefined;
  #droppedRemembered: number | undefined;
  /** Drops counted but not yet logged (see #reportDrops). */
  #dropsUnreported = 0;
  #dropsTimer: TimerHandle | undefined;

  constructor(opts: MqttSourceOptions) {
    this.#config = opts.config;
    this.#agentId = opts.agentId;
    this.#sink = opts.sink;
    // The agent may already have bound the component; pino would repeat the key.
    this.#log = opts.logger.bindings().component ? opts.logger : opts.logger.child({ component: "mqtt" });
    this.#metrics = opts.metrics;
    this.#clock = opts.clock;
    this.#errLog = new RateLimitedLog(60_000, () => opts.clock.now());
    this.#baseDir = opts.baseDir;
    this.#ledger = opts.ledger;
    this.#yieldTo = opts.yieldTo;
  }

  get statusTopic(): string {
    return this.#config.status_topic ?? `edgehook/${this.#agentId}/status`;
  }

  /** The embedded broker's URL when `url: embedded`, once started. */
  get brokerUrl(): string | undefined {
    return this.#brokerUrl;
  }

  get clientId(): string {
    return this.#config.client_id ?? `edgehook-${this.#agentId}`;
  }

  state(): SourceState {
    const s: SourceState = { name: this.name, kind: "mqtt", status: this.#status, since: this.#since };
    if (this.#detail) s.detail = this.#detail;
    if (this.#unstored) s.held = this.#unstored.messages + this.#pending.messages;
    return s;
  }

  async start(): Promise<void> {
    const cfg = this.#config;
    this.#stopping = false;
    this.#router = new MqttRouter(
      cfg.subscriptions.map((s, i) => mqttDecoder(s, "mqtt", i)),
      cfg.max_payload,
    );
    let url = cfg.url;
    let username = cfg.username;
    let password = cfg.password;
    if (url === "embedded") {
      const e = cfg.embedded ?? { host: "127.0.0.1", port: 1883 };
      // aedes is loaded only when a broker is hosted (saves memory on every other device).
      const { EmbeddedBroker } = await import("./broker.js");
      this.#broker = new EmbeddedBroker({ ...e, logger: this.#log });
      url = (await this.#broker.start()).url;
      this.#brokerUrl = url;
      username = e.username ?? username;
      password = e.password ?? password;
    }
    this.#reconnectPeriod = cfg.reconnect_period;
    this.#dropsTopic = this.#broker || cfg.broker_drops_topic === false ? undefined : cfg.broker_drops_topic;
    this.#startSession();
    const options: IClientOptions = {
      clientId: this.clientId,
      protocolVersion: cfg.protocol_version,
      keepalive: Math.max(1, Math.round(cfg.keepalive / 1000)),
      clean: cfg.clean,
      reconnectPeriod: cfg.reconnect_period,
      connectTimeout: 30_000,
      // We subscribe on every connect ourselves (a resumed session keeps them anyway).
      resubscribe: false,
      queueQoSZero: false,
      // mqtt-packet's write cache pre-builds 65,536 small buffers (~5 MB) to save a few
      // allocations per publish; edgehook publishes almost nothing.
      writeCache: false,
      will: { topic: this.statusTopic, payload: Buffer.from("offline"), qos: 1, retain: true },
    };
    if (username !== undefined) options.username = username;
    if (password !== undefined) options.password = password;
    if (cfg.protocol_version === 5 && !cfg.clean) {
      // MQTT 5 ends a session at disconnect unless an expiry is given (§3.1.2.11.2).
      options.properties = { sessionExpiryInterval: 0xffffffff };
    }
    if (cfg.tls) {
      Object.assign(options, readTlsFiles(cfg.tls, { baseDir: this.#baseDir, label: "mqtt.tls", detailed: true }));
      options.rejectUnauthorized = cfg.tls.reject_unauthorized;
    }
    this.#setStatus("starting");
    const client = mqtt.connect(url, options);
    this.#client = client;
    client.handleMessage = (packet, cb) => this.#onMessage(packet, cb);
    // Read per publish by MQTT.js; set after construction because the constructor
    // only keeps it for protocol 5, and the deferred PUBREC is needed for both.
    client.options.customHandleAcks = (_topic, _message, packet, done) => {
      if (packet.qos !== 2) return done(0);
      this.#onQos2(packet, client, () => done(0));
    };
    client.on("connect", (connack) => this.#onConnect(client, connack.sessionPresent));
    client.prependListener("close", () => this.#onClose());
    // Acknowledgement barriers (redelivery.ts): every PINGREQ written, ours or the keep-alive's.
    client.on("packetsend", (packet) => {
      if (packet.cmd === "pingreq") this.#tracker.pingSent();
    });
    client.on("packetreceive", (packet) => {
      if (packet.cmd === "pingresp") this.#onPingresp(client);
    });
    client.on("error", (err) => {
      this.#lastError = err.message;
      if (this.#status !== "up") this.#detail = err.message;
      this.#rateLog("error", err, "MQTT error");
    });
    this.#log.info({ url: redactUrl(url), clientId: this.clientId }, "connecting to MQTT broker");
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    const client = this.#client;
    // Let what was received be committed and acknowledged before disconnecting.
    await this.#whenIdle(STOP_TIMEOUT_MS);
    if (client) {
      if (client.connected) {
        // Its PUBACK also says the broker processed our acknowledgements written before it.
        const acked = this.#tracker.ackSeq;
        await withTimeout(
          client.publishAsync(this.statusTopic, "offline", { qos: 1, retain: true }).then(() => {
            this.#tracker.confirm(acked);
            this.#releaseKeys();
          }),
          STOP_TIMEOUT_MS,
        ).catch((err) => this.#log.warn({ err }, "could not publish offline status"));
      }
      await withTimeout(client.endAsync(false), STOP_TIMEOUT_MS).catch(async () => {
        await client.endAsync(true);
      });
      this.#client = undefined;
    }
    this.#stopRetrying();
    clearTimeout(this.#rest);
    this.#rest = undefined;
    // A message MQTT.js was made to wait at goes on (unacknowledged while stopping).
    this.#resumeReading();
    this.#parked = undefined;
    this.#metrics.mqttConnected.set(0);
    if (this.#dropsTimer) this.#clock.clearTimeout(this.#dropsTimer);
    this.#dropsTimer = undefined;
    this.#writeDropReport();
    this.#setStatus("stopped");
    if (this.#broker) {
      await this.#broker.stop();
      this.#broker = undefined;
    }
  }

  // ---------------------------------------------------------------- connection

  /**
   * Which broker session keys and warnings are about, and takes over the keys a previous
   * run left. A session is the broker's state for our client id; whether the broker
   * still has it is its answer to each connect (sessionPresent), which decides whether
   * old keys mean anything. Not the URL: the same broker may be reached by several.
   */
  #startSession(): void {
    this.#tracker = new RedeliveryTracker();
    this.#pingWanted = false;
    this.#connectedOnce = false;
    this.#disconnectedAt = undefined;
    this.#scope = `mqtt:${this.clientId}`;
    const persistent = !this.#config.clean;
    this.#session = persistent ? sessionTag(this.#scope) : undefined;
    const ledger = this.#ledger;
    const record = persistent ? ledger?.session(this.#scope) : undefined;
    this.#sessionKnown = record !== undefined;
    // Drops counted while edgehook was down are a rise from the count last seen.
    this.#brokerDropped = record?.brokerDropped;
    this.#droppedRemembered = this.#brokerDropped;
    this.#dropsUnreported = 0;
    if (!ledger) return;
    const stale: string[] = [];
    for (const key of ledger.keys()) {
      if (!key.startsWith("mqtt:")) continue;
      const k = parseKey(key);
      // Keys of another broker, client id or of a clean session cannot be redelivered here.
      if (k && k.session === this.#session) this.#tracker.restore(k.packetId, key);
      else stale.push(key);
    }
    if (stale.length > 0) ledger.release(stale);
  }

  #onConnect(client: MqttClient, sessionPresent: boolean): void {
    this.#reconnectPeriod = this.#config.reconnect_period;
    client.options.reconnectPeriod = this.#reconnectPeriod;
    this.#metrics.mqttConnected.set(1);
    this.#errLog.reset("error");
    this.#lastError = undefined;
    this.#tracker.connected(sessionPresent);
    this.#pingWanted = false;
    this.#releaseKeys();
    if (this.#status !== "up") {
      this.#log.info({ sessionPresent }, "connected to MQTT broker");
      this.#setStatus("up");
    }
    this.#checkSession(sessionPresent);
    client.publish(this.statusTopic, "online", { qos: 1, retain: true }, (err) => {
      if (err) this.#rateLog("status", err, "could not publish online status");
    });
    if (this.#dropsTopic !== undefined) this.#watchBrokerDrops(client, this.#dropsTopic);
    // Answered after the broker sent again what it had in flight: then the keys of
    // messages it did not send again can go (redelivery.ts).
    if (sessionPresent) this.#ping(client);
    const subs = this.#config.subscriptions;
    if (subs.length === 0) return;
    const map: Record<string, { qos: 0 | 1 | 2; rh?: number }> = {};
    for (const s of subs) {
      // MQTT 5 retain handling 1: retained messages only for a new subscription,
      // so a reconnect does not replay them as fresh readings.
      for (const topic of s.topics) {
        // The highest QoS when two subscriptions name the same filter.
        const qos = Math.max(s.qos, map[topic]?.qos ?? 0) as 0 | 1 | 2;
        map[topic] = this.#config.protocol_version === 5 ? { qos, rh: 1 } : { qos };
      }
    }
    client.subscribe(map, (err, granted) => {
      if (err) {
        this.#rateLog("subscribe", err, "subscribe failed");
        return;
      }
      let refused = 0;
      for (const g of granted ?? []) {
        if (g.qos === 128) {
          refused++;
          this.#log.error({ topic: g.topic }, "broker refused the subscription");
        }
      }
      this.#log.info({ topics: Object.keys(map).length - refused }, "subscribed to MQTT topics");
    });
  }

  /**
   * A persistent session the broker no longer has means that what it held for us while
   * we were away (readings published while disconnected) is gone: warn and count it.
   */
  #checkSession(sessionPresent: boolean): void {
    if (this.#config.clean) return;
    const first = !this.#connectedOnce;
    this.#connectedOnce = true;
    const known = this.#sessionKnown;
    if (!known) {
      this.#sessionKnown = true;
      this.#rememberSession();
    }
    if (sessionPresent) return;
    if (!known) {
      this.#log.info({ clientId: this.clientId }, "the broker started a persistent session for edgehook");
    } else if (first && this.#broker) {
      // The embedded broker started with this process: nobody could publish to it before.
    } else {
      this.#metrics.mqttSessionsLost.inc();
      this.#log.warn(
        {
          clientId: this.clientId,
          disconnectedAt: this.#disconnectedAt === undefined ? undefined : new Date(this.#disconnectedAt).toISOString(),
          code: "EDGEHOOK_MQTT_SESSION_LOST",
        },
        "the MQTT broker no longer has edgehook's persistent session (restarted without persistence, or the session expired): readings published while edgehook was disconnected may be lost",
      );
    }
  }

  /** One small write, when the session starts or the broker's drop count changed. */
  #rememberSession(): void {
    if (this.#config.clean || !this.#ledger || !this.#sessionKnown) {
      this.#droppedRemembered = this.#brokerDropped; // nothing to remember it in
      return;
    }
    const record: SessionRecord = {};
    if (this.#brokerDropped !== undefined) record.brokerDropped = this.#brokerDropped;
    try {
      this.#ledger.rememberSession(this.#scope, record);
      this.#droppedRemembered = this.#brokerDropped;
    } catch (err) {
      this.#rateLog("ledger", err, "could not remember the MQTT session");
    }
  }

  #onClose(): void {
    this.#metrics.mqttConnected.set(0);
    // Never decoded nor acknowledged: the broker sends it again on the next connection.
    this.#parked = undefined;
    this.#tracker.closed();
    this.#pingWanted = false;
    if (this.#status === "up") this.#disconnectedAt = this.#clock.now();
    const client = this.#client;
    if (client && !this.#stopping) {
      // MQTT.js retries at a fixed period, read when it schedules the retry (this
      // listener runs before its own): wait the current delay, then double it.
      client.options.reconnectPeriod = this.#reconnectPeriod;
      this.#reconnectPeriod = Math.min(this.#reconnectPeriod * 2, this.#config.reconnect_max);
    }
    if (this.#stopping) return;
    if (this.#status === "up") {
      this.#log.warn({ retryMs: client?.options.reconnectPeriod }, "MQTT connection lost; reconnecting");
      this.#setStatus("down", this.#lastError);
    } else if (this.#status === "starting") {
      this.#log.warn({ retryMs: client?.options.reconnectPeriod }, "MQTT broker not reachable; retrying");
      this.#setStatus("down", this.#lastError);
    }
  }

  // ---------------------------------------------------------------- messages

  #onMessage(packet: IPublishPacket, cb: (err?: Error) => void): void {
    if (packet.topic === this.#dropsTopic) {
      this.#onBrokerDrops(packet.payload);
      cb();
      return;
    }
    if (packet.qos === 2) {
      // Reached only at PUBREL: the readings were committed before our PUBREC.
      cb();
      return;
    }
    if (this.#stopping) {
      // Not acknowledged: the broker keeps it for the next session.
      cb(packet.qos === 1 ? ACK_DEFERRED : undefined);
      return;
    }
    if (this.#unstored) {
      // Backpressure: left undecoded, its callback held, until the batch before it is stored.
      this.#parked = () => this.#onMessage(packet, cb);
      return;
    }
    const client = this.#client;
    const key = this.#accept(packet);
    if (packet.qos === 1 && client) {
      this.#pending.acks.push({ kind: "puback", messageId: packet.messageId!, key, stream: client.stream });
    }
    const proceed = () => cb(packet.qos === 1 ? ACK_DEFERRED : undefined);
    if (this.#pending.messages >= MAX_PENDING || this.#rest || this.#readPaused) this.#held = proceed;
    else proceed();
    this.#scheduleFlush();
  }

  #onQos2(packet: IPublishPacket, client: MqttClient, sendPubrec: () => void): void {
    if (this.#stopping) return; // no PUBREC: redelivered in the next session
    if (this.#unstored) {
      this.#parked = () => this.#onQos2(packet, client, sendPubrec);
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
    if (packet.qos > 0 && this.#session !== undefined) {
      key = messageKey(this.#session, packet, payload);
      const packetId = packet.messageId as number;
      if (this.#tracker.arrived(packetId, key, packet.dup)) {
        // Committed before the connection (or the process) died with its acknowledgement:
        // acknowledge, do not repeat.
        this.#metrics.redeliveriesSkipped.inc({ source: "mqtt" });
        this.#log.debug({ topic: packet.topic, messageId: packetId }, "redelivered message already committed");
        return key;
      }
      this.#pending.keys.push({
        packetId,
        key,
        session: this.#tracker.session,
        connection: this.#tracker.connection,
      });
    }
    const res = this.#router?.decode(packet.topic, payload, this.#clock.now(), packet.retain);
    if (res === undefined) {
      this.#log.debug({ topic: packet.topic }, "message on a topic no subscription matches");
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

  // ---------------------------------------------------------------- acknowledgements

  /** Writes a PINGREQ now, or once the one in flight is answered (one at a time). */
  #ping(client: MqttClient): void {
    if (!client.connected || this.#client !== client) return;
    if (this.#tracker.pinging) {
      this.#pingWanted = true;
      return;
    }
    client.sendPing();
  }

  #onPingresp(client: MqttClient): void {
    this.#tracker.pingAnswered();
    if (this.#pingWanted) {
      this.#pingWanted = false;
      if (this.#tracker.unconfirmed > 0) this.#ping(client);
    }
    this.#releaseKeys();
  }

  /** Hands the keys of messages that can no longer be redelivered to the ledger. */
  #releaseKeys(): void {
    const keys = this.#tracker.takeReleased();
    if (keys.length === 0 || !this.#ledger) return;
    try {
      this.#ledger.release(keys);
    } catch (err) {
      this.#rateLog("ledger", err, "could not release redelivery keys");
    }
  }

  // ---------------------------------------------------------------- broker drops

  #watchBrokerDrops(client: MqttClient, topic: string): void {
    // QoS 0: a counter sampled every sys_interval; the next value replaces a lost one.
    client.subscribe(topic, { qos: 0 }, (err, granted) => {
      const refused =
        err !== undefined && err !== null ? err.message : granted?.[0]?.qos === 128 ? "refused" : undefined;
      if (refused !== undefined && this.#errLog.shouldLog("drops-subscribe") !== undefined) {
        this.#log.info(
          { topic, reason: refused },
          "cannot watch the broker's count of dropped messages (set mqtt.broker_drops_topic: false to stop trying)",
        );
      }
    });
  }

  /**
   * mosquitto publishes how many messages it dropped since it started (queues full,
   * `max_queued_messages`), over all clients. A rise may be readings meant for us, which
   * the broker acknowledged to their publisher and then threw away.
   */
  #onBrokerDrops(payload: Buffer | string): void {
    const value = Number(String(payload).trim());
    if (!Number.isSafeInteger(value) || value < 0) return;
    const before = this.#brokerDropped;
    if (value === before) return;
    this.#brokerDropped = value;
    if (before === undefined) {
      // The first count ever seen for this session: nothing to compare it with.
      if (value > 0) this.#log.info({ total: value }, "the MQTT broker reports messages dropped since it started");
    } else {
      // Lower than before: the broker restarted and counts from 0 again.
      const dropped = value >= before ? value - before : value;
      this.#metrics.mqttBrokerDropped.inc(dropped);
      this.#dropsUnreported += dropped;
    }
    this.#reportDrops();
  }

  /**
   * Logs the drops not yet logged and remembers the count (so drops while edgehook is
   * down are a rise at the next start), at most once per DROPS_REPORT_MS: a broker that
   * keeps dropping for another client must not flood the journal or the SD card. The
   * metric counts every drop at once; the log sums what the pause held back.
   */
  #reportDrops(): void {
    if (this.#dropsTimer) return;
    // The pause starts with a warning; a new baseline alone is remembered and that is all.
    if (!this.#writeDropReport()) return;
    this.#dropsTimer = this.#clock.setTimeout(() => {
      this.#dropsTimer = undefined;
      if (this.#dropsUnreported > 0 || this.#brokerDropped !== this.#droppedRemembered) this.#reportDrops();
    }, DROPS_REPORT_MS);
    this.#dropsTimer.unref?.();
  }

  /** Returns whether it logged a warning. */
  #writeDropReport(): boolean {
    const warn = this.#dropsUnreported > 0;
    if (warn) {
      this.#log.warn(
        { dropped: this.#dropsUnreported, total: this.#brokerDropped, code: "EDGEHOOK_MQTT_BROKER_DROPPED" },
        "the MQTT broker dropped messages (its queue for a slow or offline client was full); readings for edgehook may be among them: see max_queued_messages in README (MQTT)",
      );
      this.#dropsUnreported = 0;
    }
    if (this.#brokerDropped !== this.#droppedRemembered) this.#rememberSession();
    return warn;
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
    this.#readPaused = !this.#stopping && this.#yieldTo?.() === true;
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
    this.#releaseKeys();
    const origin: SinkOrigin = { messageKeys: batch.keys.map((m) => m.key) };
    const started = performance.now();
    const commit = batch.readings.length > 0 ? callSink(this.#sink, batch.readings, origin) : Promise.resolve();
    this.#inflight = commit.then(
      () => {
        for (const m of batch.keys) this.#tracker.committed(m);
        // One write for the whole batch of acknowledgements instead of one per message.
        // Only on the connection that received them: after a reconnect the broker
        // redelivers those, and they are recognised (redelivery.ts).
        const client = this.#client;
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
          if (sent && a.key !== undefined) this.#tracker.acknowledged(a.messageId, a.key);
        }
        if (pubacks && client)
          client.stream.write(n === batch.acks.length ? pubacks : pubacks.subarray(0, PUBACK_BYTES * n));
        // After the acknowledgements, in the same write: its answer confirms them.
        if (client && this.#tracker.unconfirmed > 0) this.#ping(client);
        stream?.uncork?.();
        this.#releaseKeys();
        if (this.#unstored === batch) this.#stored(batch);
      },
      (err: unknown) => this.#notStored(batch, err),
    );
    void this.#inflight.finally(() => {
      this.#inflight = undefined;
      if (!this.#stopping && !this.#unstored && this.#yieldTo?.()) {
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
    if (this.#stopping && this.#client === undefined) return;
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
      const client = this.#client;
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

  #whenIdle(timeoutMs: number): Promise<void> {
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

  // ---------------------------------------------------------------- helpers

  #setStatus(status: SourceStatus, detail?: string): void {
    if (this.#status === status) return;
    this.#status = status;
    this.#since = this.#clock.now();
    this.#detail = detail;
  }

  #rateLog(key: string, err: unknown, msg: string): void {
    const suppressed = this.#errLog.shouldLog(key);
    if (suppressed !== undefined) this.#log.warn({ err, suppressed }, msg);
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

/** A sink that throws instead of rejecting must not break the batching loop. */
function callSink(sink: ReadingSink, readings: Reading[], origin: SinkOrigin): Promise<void> {
  try {
    return sink(readings, origin);
  } catch (err) {
    return Promise.reject(err);
  }
}

function redactUrl(u: string): string {
  try {
    const url = new URL(u);
    if (url.password) url.password = "redacted";
    return url.toString();
  } catch {
    return u;
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}
