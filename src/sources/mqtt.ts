/**
 * Readings from MQTT subscriptions: the client session (connect, subscribe, reconnect
 * back-off, the online/offline status and will, persistent-session checks and the
 * redelivery keys handed to the ledger). The message intake (batching, commits, the
 * fair-share rest, backpressure and the deferred PUBACKs) is in mqtt-intake.ts, the
 * broker's drop counter in mqtt-drops.ts, client options in mqtt-options.ts and message
 * keys in mqtt-keys.ts.
 *
 * What the broker loses is made visible: a reconnect on which the broker no longer has
 * the persistent session (readings published meanwhile are gone) is a warning and
 * `edgehook_mqtt_sessions_lost_total`; a rise of mosquitto's count of dropped messages
 * (`$SYS/broker/publish/messages/dropped`, full queues) is a warning and
 * `edgehook_mqtt_broker_dropped_total`.
 */
import mqtt, { type IPublishPacket, type MqttClient } from "mqtt";
import type { Clock } from "../clock.js";
import type { MqttConfig } from "../config/schema.js";
import type { Logger } from "../ops/logger.js";
import { RateLimitedLog } from "../ops/logger.js";
import type { Metrics } from "../ops/metrics.js";
import type { EmbeddedBroker } from "./broker.js";
import { MqttRouter, mqttDecoder } from "./decode.js";
import { BrokerDrops } from "./mqtt-drops.js";
import { MqttIntake } from "./mqtt-intake.js";
import { parseKey, sessionTag } from "./mqtt-keys.js";
import { clientOptions, redactUrl, withTimeout } from "./mqtt-options.js";
import type { MessageLedger, ReadingSink, SessionRecord, Source, SourceState, SourceStatus } from "./reading.js";
import { RedeliveryTracker } from "./redelivery.js";

export { MOSQUITTO_DROPPED_TOPIC } from "./mqtt-drops.js";
export { messageKey, sessionTag } from "./mqtt-keys.js";

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
   * rest twice as long as it took, so ingest leaves delivery most of the thread (mqtt-intake.ts).
   */
  yieldTo?: () => boolean;
}

const STOP_TIMEOUT_MS = 5_000;

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

  readonly #intake: MqttIntake;
  readonly #drops: BrokerDrops;

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
    this.#intake = new MqttIntake({
      config: this.#config,
      sink: this.#sink,
      log: this.#log,
      metrics: this.#metrics,
      clock: this.#clock,
      errLog: this.#errLog,
      yieldTo: this.#yieldTo,
      client: () => this.#client,
      stopping: () => this.#stopping,
      tracker: () => this.#tracker,
      session: () => this.#session,
      router: () => this.#router,
      ping: (client) => this.#ping(client),
      releaseKeys: () => this.#releaseKeys(),
    });
    this.#drops = new BrokerDrops({
      log: this.#log,
      metrics: this.#metrics,
      clock: this.#clock,
      errLog: this.#errLog,
      remember: () => this.#rememberSession(),
    });
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
    const held = this.#intake.held();
    if (held !== undefined) s.held = held;
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
    const options = clientOptions(cfg, {
      clientId: this.clientId,
      statusTopic: this.statusTopic,
      username,
      password,
      baseDir: this.#baseDir,
    });
    this.#setStatus("starting");
    const client = mqtt.connect(url, options);
    this.#client = client;
    client.handleMessage = (packet, cb) => this.#onMessage(packet, cb);
    // Read per publish by MQTT.js; set after construction because the constructor
    // only keeps it for protocol 5, and the deferred PUBREC is needed for both.
    client.options.customHandleAcks = (_topic, _message, packet, done) => {
      if (packet.qos !== 2) return done(0);
      this.#intake.onQos2(packet, client, () => done(0));
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
    await this.#intake.whenIdle(STOP_TIMEOUT_MS);
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
    this.#intake.stop();
    this.#metrics.mqttConnected.set(0);
    this.#drops.stop();
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
    this.#drops.reset(record?.brokerDropped);
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
    if (this.#dropsTopic !== undefined) this.#drops.watch(client, this.#dropsTopic);
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
      this.#drops.markRemembered(); // nothing to remember it in
      return;
    }
    const record: SessionRecord = {};
    const dropped = this.#drops.count;
    if (dropped !== undefined) record.brokerDropped = dropped;
    try {
      this.#ledger.rememberSession(this.#scope, record);
      this.#drops.markRemembered();
    } catch (err) {
      this.#rateLog("ledger", err, "could not remember the MQTT session");
    }
  }

  #onClose(): void {
    this.#metrics.mqttConnected.set(0);
    // Never decoded nor acknowledged: the broker sends it again on the next connection.
    this.#intake.connectionClosed();
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
      this.#drops.onCount(packet.payload);
      cb();
      return;
    }
    this.#intake.onMessage(packet, cb);
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
