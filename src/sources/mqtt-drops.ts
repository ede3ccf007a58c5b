/**
 * Watching the broker's count of dropped messages: a rise of mosquitto's
 * `$SYS/broker/publish/messages/dropped` (full queues) is a warning and
 * `edgehook_mqtt_broker_dropped_total`.
 */
import type { MqttClient } from "mqtt";
import type { Clock, TimerHandle } from "../clock.js";
import type { Logger, RateLimitedLog } from "../ops/logger.js";
import type { Metrics } from "../ops/metrics.js";

/** mosquitto's count of messages it dropped since it started (full queues, any client). */
export const MOSQUITTO_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped";

/** At most one warning (and one write) per this long about the broker's drops. */
const DROPS_REPORT_MS = 60_000;

export interface BrokerDropsOptions {
  log: Logger;
  metrics: Metrics;
  clock: Clock;
  errLog: RateLimitedLog;
  /** Writes the session record (with `count`) to the ledger; calls markRemembered. */
  remember: () => void;
}

export class BrokerDrops {
  readonly #log: Logger;
  readonly #metrics: Metrics;
  readonly #clock: Clock;
  readonly #errLog: RateLimitedLog;
  readonly #remember: () => void;
  /** The broker's drop count last seen, and last remembered by the ledger. */
  #brokerDropped: number | undefined;
  #droppedRemembered: number | undefined;
  /** Drops counted but not yet logged (see #reportDrops). */
  #dropsUnreported = 0;
  #dropsTimer: TimerHandle | undefined;

  constructor(o: BrokerDropsOptions) {
    this.#log = o.log;
    this.#metrics = o.metrics;
    this.#clock = o.clock;
    this.#errLog = o.errLog;
    this.#remember = o.remember;
  }

  /** The broker's drop count last seen. */
  get count(): number | undefined {
    return this.#brokerDropped;
  }

  /** The count last seen is now remembered by the ledger (or there is nothing to remember it in). */
  markRemembered(): void {
    this.#droppedRemembered = this.#brokerDropped;
  }

  /** A new session: drops counted while edgehook was down are a rise from `baseline`, the count last seen. */
  reset(baseline: number | undefined): void {
    this.#brokerDropped = baseline;
    this.#droppedRemembered = this.#brokerDropped;
    this.#dropsUnreported = 0;
  }

  watch(client: MqttClient, topic: string): void {
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
  onCount(payload: Buffer | string): void {
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

  /** Stopping: no more pauses; logs and remembers what is left. */
  stop(): void {
    if (this.#dropsTimer) this.#clock.clearTimeout(this.#dropsTimer);
    this.#dropsTimer = undefined;
    this.#writeDropReport();
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
    if (this.#brokerDropped !== this.#droppedRemembered) this.#remember();
    return warn;
  }
}
