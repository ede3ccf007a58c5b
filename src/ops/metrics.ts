/**
 * Every Prometheus metric edgehook exports, in one place so names stay stable and
 * documented (README "Metrics"). Components receive this object and update it.
 */
// The classes by path, not prom-client's index, which also loads the push gateway client
// (http, https), the cluster aggregator (node:cluster), Summary and the default metrics:
// see prom-client-parts.d.ts.
import Counter from "prom-client/lib/counter.js";
import Gauge from "prom-client/lib/gauge.js";
import Histogram from "prom-client/lib/histogram.js";
import gc from "prom-client/lib/metrics/gc.js";
import heapSizeAndUsed from "prom-client/lib/metrics/heapSizeAndUsed.js";
import heapSpacesSizeAndUsed from "prom-client/lib/metrics/heapSpacesSizeAndUsed.js";
import osMemoryHeap from "prom-client/lib/metrics/osMemoryHeap.js";
import processCpuTotal from "prom-client/lib/metrics/processCpuTotal.js";
import processHandles from "prom-client/lib/metrics/processHandles.js";
import processMaxFileDescriptors from "prom-client/lib/metrics/processMaxFileDescriptors.js";
import processOpenFileDescriptors from "prom-client/lib/metrics/processOpenFileDescriptors.js";
import processRequests from "prom-client/lib/metrics/processRequests.js";
import processResources from "prom-client/lib/metrics/processResources.js";
import processStartTime from "prom-client/lib/metrics/processStartTime.js";
import nodeVersion from "prom-client/lib/metrics/version.js";
import Registry from "prom-client/lib/registry.js";
import type { SourceState } from "../sources/reading.js";

/** Prefix of the Node.js and process metrics, so every series of ours starts with edgehook_. */
export const PROCESS_METRICS_PREFIX = "edgehook_";

/**
 * prom-client's default metrics that cost nothing between scrapes: each reads its value
 * in collect() (or observes GC events as they happen). Left out on purpose: eventLoopLag,
 * whose monitorEventLoopDelay() wakes the process every 10 ms (measured here: 0.4 % of a
 * core while otherwise idle, against a 0.5 % budget for the whole agent). A scrape-time
 * lag gauge replaces it (see enableProcessMetrics).
 *
 * prom-client exposes its default metrics only all together (collectDefaultMetrics); its
 * package has no "exports" map, so the per-metric modules are reachable by path. Imported
 * statically, so the bundle holds them with the one copy of prom-client's Gauge and
 * Histogram they build on (required by path at run time, they loaded a second copy of
 * prom-client's classes and of @opentelemetry/api, about 75 modules; issue 15).
 */
const SCRAPE_TIME_DEFAULT_METRICS = [
  processCpuTotal,
  processStartTime,
  osMemoryHeap,
  processOpenFileDescriptors,
  processMaxFileDescriptors,
  processResources,
  processHandles,
  processRequests,
  heapSizeAndUsed,
  heapSpacesSizeAndUsed,
  nodeVersion,
  gc,
];

export class Metrics {
  readonly registry = new Registry();
  readonly #scrapeHooks: (() => void)[] = [];

  /** Runs `fn` before each scrape, so gauges read from the outbox are current. */
  onScrape(fn: () => void): void {
    this.#scrapeHooks.push(fn);
  }

  readonly readings = new Counter({
    name: "edgehook_readings_total",
    help: "Readings decoded, per source",
    labelNames: ["source"] as const,
    registers: [this.registry],
  });
  readonly decodeErrors = new Counter({
    name: "edgehook_decode_errors_total",
    help: "Input that could not be decoded and was skipped, per source and reason",
    labelNames: ["source", "reason"] as const,
    registers: [this.registry],
  });
  readonly decodeIgnoredFields = new Counter({
    name: "edgehook_decode_ignored_fields_total",
    help: 'Payload fields that gave no reading (not picked by values, or text, null or a list under values: "*"), per source',
    labelNames: ["source"] as const,
    registers: [this.registry],
  });
  readonly mqttRetainedIgnored = new Counter({
    name: "edgehook_mqtt_retained_ignored_total",
    help: "Retained messages the broker replayed on subscribe that a subscription with retained: ignore skipped",
    registers: [this.registry],
  });
  readonly readingsDropped = new Counter({
    name: "edgehook_readings_dropped_total",
    help: "Readings a source dropped before they could be stored, per source and reason (held_overflow: more than a serial port can hold while the outbox refuses; stopped: still held at stop)",
    labelNames: ["source", "reason"] as const,
    registers: [this.registry],
  });
  readonly redeliveriesSkipped = new Counter({
    name: "edgehook_redeliveries_skipped_total",
    help: "Messages the broker redelivered after a crash that were already committed, acknowledged without processing again",
    labelNames: ["source"] as const,
    registers: [this.registry],
  });
  readonly ruleSkips = new Counter({
    name: "edgehook_rule_readings_skipped_total",
    help: "Readings or stored states the rule engine skipped, per reason (late, non_numeric, bad_time, series_limit, stale_state, dropped_batched)",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });
  readonly ruleRestamped = new Counter({
    name: "edgehook_rule_readings_restamped_total",
    help: "Readings stamped more than agent.max_future_skew ahead of the agent's clock, judged with their arrival time instead",
    registers: [this.registry],
  });
  readonly ruleSeries = new Gauge({
    name: "edgehook_rule_series",
    help: "Rule series (rule × sensor × metric) held in memory; at most agent.max_series",
    registers: [this.registry],
  });
  readonly ruleSeriesEvicted = new Counter({
    name: "edgehook_rule_series_evicted_total",
    help: "Rule series evicted at agent.max_series, per kind (at_rest, idle, open)",
    labelNames: ["kind"] as const,
    registers: [this.registry],
  });
  readonly ruleEvents = new Counter({
    name: "edgehook_rule_events_total",
    help: "Events emitted by rules, per rule and type",
    labelNames: ["rule", "type"] as const,
    registers: [this.registry],
  });
  readonly outboxDepth = new Gauge({
    name: "edgehook_outbox_deliveries",
    help: "Deliveries in the outbox per destination and state",
    labelNames: ["destination", "state"] as const,
    registers: [this.registry],
    collect: () => {
      for (const fn of this.#scrapeHooks) fn();
    },
  });
  readonly oldestPendingSeconds = new Gauge({
    name: "edgehook_outbox_oldest_pending_seconds",
    help: "Age of the oldest pending delivery per destination",
    labelNames: ["destination"] as const,
    registers: [this.registry],
  });
  readonly outboxBytes = new Gauge({
    name: "edgehook_outbox_bytes",
    help: "Size of the outbox database files on disk",
    registers: [this.registry],
  });
  readonly drops = new Counter({
    name: "edgehook_outbox_dropped_total",
    help: "Deliveries dropped by the outbox (full outbox, max_age expiry, dead rows pruned), per reason and destination",
    labelNames: ["reason", "destination"] as const,
    registers: [this.registry],
  });
  readonly outboxRefusing = new Gauge({
    name: "edgehook_outbox_refusing",
    help: "1 while the outbox refuses new events, per reason (disk_floor, full); sources hold their readings meanwhile",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });
  readonly deliveries = new Counter({
    name: "edgehook_deliveries_total",
    help: "Delivery attempts per destination and outcome class (2xx, 3xx, 4xx, 5xx, offline, unsendable)",
    labelNames: ["destination", "class"] as const,
    registers: [this.registry],
  });
  readonly deliveryLatency = new Histogram({
    name: "edgehook_delivery_duration_seconds",
    help: "Time from request start to response, per destination",
    labelNames: ["destination"] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15],
    registers: [this.registry],
  });
  readonly destinationUp = new Gauge({
    name: "edgehook_destination_state",
    help: "1 for the destination's current state (up, down, disabled)",
    labelNames: ["destination", "state"] as const,
    registers: [this.registry],
  });
  readonly mqttConnected = new Gauge({
    name: "edgehook_mqtt_connected",
    help: "1 while connected to the MQTT broker",
    registers: [this.registry],
  });
  readonly mqttSessionsLost = new Counter({
    name: "edgehook_mqtt_sessions_lost_total",
    help: "Reconnects on which the MQTT broker no longer had edgehook's persistent session (readings published meanwhile may be lost)",
    registers: [this.registry],
  });
  readonly mqttBrokerDropped = new Counter({
    name: "edgehook_mqtt_broker_dropped_total",
    help: "Messages the MQTT broker reported dropping while edgehook watched (mosquitto $SYS drop counter, all clients)",
    registers: [this.registry],
  });
  readonly serialOpen = new Gauge({
    name: "edgehook_serial_port_open",
    help: "1 while the serial port is open",
    labelNames: ["port"] as const,
    registers: [this.registry],
  });

  // Polled sources (Modbus, 1-Wire, files). Up/down is read from the sources' state()
  // when scraped, so a source removed by a reload leaves no stale series behind.
  #sourceStates: () => SourceState[] = () => [];
  /** Where edgehook_source_up and edgehook_source_device_up read the sources' states. */
  watchSources(states: () => SourceState[]): void {
    this.#sourceStates = states;
  }
  readonly sourceUp = new Gauge({
    name: "edgehook_source_up",
    help: "1 while the source is up (connected, port open, or its last poll gave readings), per source and kind",
    labelNames: ["source", "kind"] as const,
    registers: [this.registry],
    collect: () => {
      this.sourceUp.reset();
      for (const s of this.#sourceStates())
        this.sourceUp.set({ source: s.name, kind: s.kind }, s.status === "up" ? 1 : 0);
    },
  });
  readonly sourceDeviceUp = new Gauge({
    name: "edgehook_source_device_up",
    help: "1 while the device's last poll gave a reading, per source and device (Modbus unit id, 1-Wire probe id)",
    labelNames: ["source", "device"] as const,
    registers: [this.registry],
    collect: () => {
      this.sourceDeviceUp.reset();
      for (const s of this.#sourceStates()) {
        for (const d of s.devices ?? [])
          this.sourceDeviceUp.set({ source: s.name, device: d.id }, d.status === "up" ? 1 : 0);
      }
    },
  });
  readonly sourceErrors = new Counter({
    name: "edgehook_source_errors_total",
    help: "Failed reads and skipped polls of polled sources, per source and reason",
    labelNames: ["source", "reason"] as const,
    registers: [this.registry],
  });
  /** edgehook_source_errors_total summed per source, readable at once (for the sources' state()). */
  readonly #sourceErrorTotals = new Map<string, number>();

  /** A polled source's failed read or skipped poll: edgehook_source_errors_total and the status views. */
  sourceError(source: string, reason: string): void {
    this.sourceErrors.inc({ source, reason });
    this.#sourceErrorTotals.set(source, (this.#sourceErrorTotals.get(source) ?? 0) + 1);
  }

  /** What sourceError counted for this source since the agent started, all reasons. */
  sourceErrorCount(source: string): number {
    return this.#sourceErrorTotals.get(source) ?? 0;
  }
  readonly pollDuration = new Histogram({
    name: "edgehook_source_poll_duration_seconds",
    help: "Time one poll of a polled source took, all its devices together",
    labelNames: ["source"] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });

  #processMetrics = false;

  /**
   * Adds Node.js and process metrics (CPU, memory, heap, file descriptors, handles, GC,
   * event loop lag) under the edgehook_ prefix. They are computed when /metrics is
   * scraped; nothing polls in between. Idempotent.
   */
  enableProcessMetrics(): void {
    if (this.#processMetrics) return;
    this.#processMetrics = true;
    for (const install of SCRAPE_TIME_DEFAULT_METRICS) {
      install(this.registry, { prefix: PROCESS_METRICS_PREFIX });
    }
    new Gauge({
      name: `${PROCESS_METRICS_PREFIX}nodejs_eventloop_lag_seconds`,
      help: "Lag of the event loop in seconds, measured when scraped (time for a setImmediate to run)",
      registers: [this.registry],
      async collect() {
        const start = performance.now();
        await new Promise((resolve) => setImmediate(resolve));
        this.set((performance.now() - start) / 1000);
      },
    });
  }
}
