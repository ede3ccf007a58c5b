/**
 * The one schema of edgehook's YAML file. It gives the TypeScript types (z.output),
 * the defaults, the validation messages, and is walked by the test that keeps
 * config/agent.example.yaml documenting every key.
 *
 * Conventions: snake_case keys; durations as `30s`/`5m`/`2h` (parsed to ms);
 * rates as `20/s` (parsed to per-second); sizes as `512MB` (parsed to bytes);
 * every object is strict, so a typo is an error instead of a silently ignored key.
 */
import { z } from "zod";
import { formatKeys } from "../delivery/format-schema.js";
import { DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_SCHEDULE } from "../delivery/policy.js";
import { DESTINATION_SCHEMES, transportKeys } from "../delivery/transport-schema.js";
import { isTimeZone } from "../sources/zoned-time.js";
import { duration, rate, size } from "./fields.js";
import { filesSection, modbusSection, onewireSection } from "./sensor-schema.js";
import { subscription } from "./subscription-schema.js";

// zod compiles a parser per object schema (new Function) on its first parse, which pays off
// for schemas parsed many times. A configuration is parsed once per start or reload: without
// that compile it loads about 15 ms of CPU sooner (measured; start to READY, issue 15).
z.config({ jitless: true });

const name = (what: string) =>
  z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, `${what} must be letters, digits, '.', '_' or '-'`);

const labels = z.record(z.string(), z.string());
/** An IANA time zone name Intl knows (Europe/Berlin, UTC, Etc/GMT-1). */
const timeZone = z.string().refine(isTimeZone, "must be an IANA time zone name like Europe/Berlin or UTC");
const severity = z.enum(["info", "warning", "critical"]);
export type Severity = z.output<typeof severity>;

// ---------------------------------------------------------------- agent

const agent = z.strictObject({
  /** Names this device in every webhook body and in the MQTT client id. */
  id: name("agent.id"),
  /** Where the outbox database lives. Relative paths are relative to the config file. */
  data_dir: z.string().min(1).default("./data"),
  log_level: z.enum(["trace", "debug", "info", "warn", "error", "fatal"]).default("info"),
  /** `auto`: JSON under systemd or in a pipe, short readable lines in a terminal. */
  log_format: z.enum(["auto", "json", "pretty"]).default("auto"),
  /** How long SIGTERM waits for in-flight deliveries before closing. */
  shutdown_timeout: duration().default(10_000),
  /**
   * Sign webhooks only while the kernel reports the clock synchronised (NTP).
   * `auto`: hold back only when the kernel says unsynchronised; `never`: always sign.
   */
  require_clock_sync: z.enum(["auto", "never"]).default("auto"),
  /**
   * Readings stamped further than this ahead of the agent's clock are judged with their
   * arrival time instead (counted and logged), so one bad sensor clock cannot make every
   * later reading of its series "late".
   */
  max_future_skew: duration().default(300_000),
  /**
   * Most rule series (rule × sensor × metric) kept in memory, about 1 KB each. At the
   * limit idle series are evicted and, if none can go, new sensors are turned away (logged).
   */
  max_series: z.number().int().positive().default(100_000),
});

// ---------------------------------------------------------------- mqtt

// A subscription, with firmware presets and field selection: subscription-schema.ts.
export type { SubscriptionConfig } from "./subscription-schema.js";

const tls = z.strictObject({
  ca_file: z.string().optional(),
  cert_file: z.string().optional(),
  key_file: z.string().optional(),
  reject_unauthorized: z.boolean().default(true),
});

const embeddedBroker = z.strictObject({
  host: z.string().default("127.0.0.1"),
  port: z.number().int().min(0).max(65535).default(1883),
  username: z.string().optional(),
  password: z.string().optional(),
});

const mqtt = z.strictObject({
  /** `mqtt://host:1883`, `mqtts://`, `ws://`, `wss://`, or `embedded` to host a broker in-process. */
  url: z.string().refine((u) => u === "embedded" || /^(mqtts?|wss?):\/\//.test(u), {
    message: "must be mqtt://, mqtts://, ws://, wss:// or 'embedded'",
  }),
  /** Stable client id for the persistent session. Default: edgehook-<agent.id>. */
  client_id: z.string().min(1).optional(),
  username: z.string().optional(),
  password: z.string().optional(),
  protocol_version: z.union([z.literal(4), z.literal(5)]).default(4),
  keepalive: duration().default(30_000),
  /** false keeps a persistent session so QoS 1 readings sent while edgehook is down are not lost. */
  clean: z.boolean().default(false),
  reconnect_period: duration().default(1_000),
  reconnect_max: duration().default(30_000),
  tls: tls.optional(),
  /** Retained `online`/`offline` (last will) status. Default: edgehook/<agent.id>/status. */
  status_topic: z.string().min(1).optional(),
  embedded: embeddedBroker.optional(),
  subscriptions: z.array(subscription).default([]),
  /** Payloads larger than this are counted and skipped. */
  max_payload: size().default(65_536),
  /** The broker's count of dropped messages, watched (QoS 0) to warn when it rises; false: not watched. */
  broker_drops_topic: z.union([z.string().min(1), z.literal(false)]).default("$SYS/broker/publish/messages/dropped"),
});
export type MqttConfig = z.output<typeof mqtt>;

// ---------------------------------------------------------------- serial

const serialPort = z
  .strictObject({
    /** Name used in readings (`source: serial:<name>`), logs and metrics. Default: the file name of `path`. */
    name: name("serial name").optional(),
    /** Prefer /dev/serial/by-id/... : it survives replugging into another USB port. */
    path: z.string().min(1),
    baud_rate: z.number().int().positive().default(9600),
    data_bits: z.union([z.literal(5), z.literal(6), z.literal(7), z.literal(8)]).default(8),
    parity: z.enum(["none", "even", "odd", "mark", "space"]).default("none"),
    stop_bits: z.union([z.literal(1), z.literal(1.5), z.literal(2)]).default(1),
    delimiter: z.string().min(1).default("\n"),
    encoding: z.enum(["utf8", "latin1", "ascii"]).default("utf8"),
    max_line_length: z.number().int().positive().default(4096),
    format: z.enum(["json", "csv", "kv", "regex", "number"]).default("kv"),
    /** csv: column names in order. */
    columns: z.array(z.string().min(1)).optional(),
    /** regex: a pattern with named groups (value, and optionally sensor, metric, ts). */
    pattern: z.string().optional(),
    /** Sensor name; a field name in braces (`{id}`) takes it from the line. Default: the port name. */
    sensor: z.string().min(1).optional(),
    /** Metric name for single-value formats; a field in braces takes it from the line. */
    metric: z.string().min(1).optional(),
    /** Field holding the value (json dot path, csv column, kv key, regex group). */
    value: z.string().min(1).optional(),
    /** Fields to read as metrics (metric → field); default (or "*") every numeric and boolean field. */
    values: z.union([z.literal("*"), z.record(z.string(), z.string())]).optional(),
    /** Every-field formats: only fields matching these globs / skip fields matching these. */
    include: z.array(z.string().min(1)).optional(),
    exclude: z.array(z.string().min(1)).optional(),
    /** Metric renames, applied last: { "Heat index": heat_index }. */
    rename: z.record(z.string(), z.string().min(1)).optional(),
    timestamp: z.string().min(1).optional(),
    /** IANA zone of ISO times without `Z` or an offset. Default: the agent's own zone. */
    timezone: timeZone.optional(),
    states: z.record(z.string(), z.union([z.number(), z.string(), z.boolean()])).optional(),
    poll: z
      .strictObject({
        /** Written to the port every `every`, e.g. "READ\n". */
        command: z.string().min(1),
        every: duration(),
      })
      .optional(),
    reopen_max: duration().default(30_000),
    labels: labels.default({}),
  })
  .transform((p) => ({ ...p, name: p.name ?? defaultSerialName(p.path) }));
export type SerialPortConfig = z.output<typeof serialPort>;

/** `/dev/serial/by-id/usb-Arduino_Uno_0001-if00` → `usb-Arduino_Uno_0001-if00`; `/dev/ttyUSB0` → `ttyUSB0`. */
export function defaultSerialName(path: string): string {
  const base = path.split("/").filter(Boolean).pop() ?? "serial";
  const clean = base.replace(/[^A-Za-z0-9_.-]/g, "_").replace(/^[^A-Za-z0-9]+/, "");
  return clean || "serial";
}

// ---------------------------------------------------------------- destinations

const destination = z.strictObject({
  /** The scheme decides the kind: http(s):// webhook, mqtt(s):// MQTT broker, nats:// NATS JetStream. */
  url: z.url({
    protocol: DESTINATION_SCHEMES,
    error: "must be an http://, https://, mqtt://, mqtts:// or nats:// URL",
  }),
  /** Standard Webhooks secret(s) `whsec_...`; a list signs with each while rotating keys. */
  secret: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).optional(),
  /** Also send `x-hub-signature-256` (GitHub style) with this secret. */
  hub_secret: z.string().min(1).optional(),
  /** `standard` adds webhook-signature; `none` for receivers that reject unknown headers. */
  signature: z.enum(["standard", "none"]).default("standard"),
  headers: z.record(z.string(), z.string()).default({}),
  connect_timeout: duration().default(10_000),
  response_timeout: duration().default(15_000),
  concurrency: z.number().int().min(1).max(64).default(4),
  rate_limit: rate().optional(),
  /** Counted attempts (answers, and requests sent without an answer) before a delivery is dead. */
  max_attempts: z.number().int().min(1).default(DEFAULT_MAX_ATTEMPTS),
  /** Delay before each retry after a counted attempt; the last entry repeats. ±20 % jitter. See delivery/policy.ts. */
  retry_schedule: z
    .array(duration())
    .min(1)
    .default(() => [...DEFAULT_RETRY_SCHEDULE]),
  /** Pending deliveries older than this are dropped (default: outbox.max_age). */
  max_age: duration().optional(),
  tls: tls.optional(),
  /** Minimum severity sent to this destination. */
  min_severity: severity.optional(),
  /** Only events whose labels include these. */
  match_labels: labels.optional(),
  /** Body format, presets, auth, v1a signing, batching, gzip: src/delivery/format-schema.ts. */
  ...formatKeys,
  /** Keys of MQTT and NATS destinations (topic, subject, stream, ...): src/delivery/transport-schema.ts. */
  ...transportKeys,
});
export type DestinationConfig = z.output<typeof destination>;

// ---------------------------------------------------------------- rules

const window = z.strictObject({
  fn: z.enum(["avg", "min", "max", "count"]),
  over: duration(),
});

const rule = z.strictObject({
  name: name("rule name"),
  /** Which series this rule watches. Globs: `*` any run of characters, `?` one character. */
  match: z
    .strictObject({
      sensor: z.string().min(1, "must not be empty (use * for every sensor)").default("*"),
      metric: z.string().min(1, "must not be empty (use * for every metric)").default("*"),
      /** Every label given must be on the reading with exactly this value. */
      labels: labels.optional(),
    })
    .default({ sensor: "*", metric: "*" }),
  /** Alert while the value is strictly greater than this (30 is not above 30). */
  above: z.number().optional(),
  /** Alert while the value is strictly less than this. */
  below: z.number().optional(),
  /** Alert while low ≤ value ≤ high. */
  between: z.tuple([z.number(), z.number()]).optional(),
  /** Alert while value < low or value > high. */
  outside: z.tuple([z.number(), z.number()]).optional(),
  /** Alert while the value (compared as text) equals this, e.g. OPEN. */
  equals: z.union([z.string(), z.number(), z.boolean()]).optional(),
  /** Hysteresis for above/outside: a firing alert clears only once the value is strictly below this. */
  clear_below: z.number().optional(),
  /** Hysteresis for below/outside: a firing alert clears only once the value is strictly above this. */
  clear_above: z.number().optional(),
  /** The condition must hold this long (agent clock) before the alert fires. */
  for: duration().optional(),
  /** The value must stay clear this long before the alert resolves. */
  clear_for: duration().optional(),
  /** Alert while the value rises faster than this many units per `rate_per`, measured over `rate_window`. */
  rate_above: z.number().optional(),
  /** Alert while the change per `rate_per` is below this (negative: falling faster than). */
  rate_below: z.number().optional(),
  rate_per: z.enum(["s", "m", "h"]).default("s"),
  rate_window: duration().default(60_000),
  /** Compare an aggregate of the readings in a sliding window instead of the raw value (thresholds only). */
  aggregate: window.optional(),
  /**
   * A compound condition in CEL over the latest values of the sensor's metrics, e.g.
   * `temperature > -10 && door_open`; `sensor("outside").temperature` reads another sensor.
   * Replaces above/below/...; `match.sensor` and `match.labels` choose the sensors (README: Compound conditions).
   */
  when: z.string().optional(),
  /** With `when`: a firing alert resolves only once this holds (hysteresis); default: when `when` is false. */
  clear_when: z.string().optional(),
  /** With `when`: a value older than this counts as missing, and a missing value makes the condition unknown. Default 10m. */
  stale_after: duration().optional(),
  /** `sensor.silent` when a matching series (whole sensor if match.metric is *) sends nothing for this long. */
  absent_for: duration().optional(),
  /** While firing, send `alert.repeat` this often. */
  repeat_every: duration().optional(),
  /** After a resolve, a new firing waits at least this long (against flapping). */
  cooldown: duration().optional(),
  /** Send every matching reading as telemetry (`reading` events), or gathered into one `readings` event per `batch_every`. */
  forward: z.union([z.boolean(), z.strictObject({ batch_every: duration() })]).optional(),
  severity: severity.default("warning"),
  /** Higher goes first after an outage. Default from severity: critical 20, warning 10, info 0. */
  priority: z.number().int().optional(),
  /** Added to the reading's labels in the body (the rule's win). */
  labels: labels.default({}),
  /** Extra fields merged into the webhook body's `data`. */
  extra: z.record(z.string(), z.unknown()).default({}),
  notify: z.array(z.string()).min(1, "must name at least one destination"),
});
export type RuleConfig = z.output<typeof rule>;

/** A metric computed from others of the same sensor; its readings are like any other. */
const derived = z.strictObject({
  /** Name of the new metric, e.g. dew_point. */
  metric: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "must be letters, digits and '_', not starting with a digit"),
  /** Sensors it is computed for (glob). */
  sensor: z.string().min(1).default("*"),
  /** A CEL expression giving a number, e.g. `dew_point(temperature, humidity)`. */
  value: z.string(),
  /** Inputs older than this are missing, and nothing is computed. Default 10m. */
  stale_after: duration().optional(),
});
export type DeriveConfig = z.output<typeof derived>;

// ---------------------------------------------------------------- http, outbox

const http = z.strictObject({
  /** `127.0.0.1:9780`; `false` turns the health and metrics server off. */
  listen: z.union([z.string(), z.literal(false)]).default("127.0.0.1:9780"),
  /**
   * Required by the status page (and /api/status, /metrics, /healthz) from other hosts when
   * `listen` is not a loopback address. Prefer token_file.
   */
  token: z.string().min(1).optional(),
});

const outbox = z.strictObject({
  max_events: z.number().int().positive().default(1_000_000),
  max_bytes: size().default(512 * 1024 * 1024),
  max_age: duration().default(7 * 86_400_000),
  /** Refuse new events while free disk is under this floor. */
  min_free_disk: size().default(64 * 1024 * 1024),
  /** Delivered rows are kept this long for `queue list`/`show`, then pruned. */
  keep_delivered: duration().default(86_400_000),
  /** Longest wait to gather rows into one transaction. */
  commit_delay: duration().default(2),
  /**
   * What a full outbox (max_events/max_bytes) does: `drop_oldest` drops the oldest pending
   * deliveries of the lowest priority (counted); `block` stores nothing more and leaves new
   * readings at their source (MQTT messages stay unacknowledged at the broker) until there is room.
   */
  when_full: z.enum(["drop_oldest", "block"]).default("drop_oldest"),
});

// ---------------------------------------------------------------- heartbeat

/** A dead man's switch: `agent.heartbeat` events to push monitors (at most one waits per destination). */
const heartbeat = z.strictObject({
  /** How often a heartbeat is sent (the monitor's period; give its grace on top). */
  every: duration().refine((ms) => ms >= 1000, "must be at least 1s"),
  /** Destinations that get the heartbeats (their min_severity and match_labels do not apply). */
  notify: z.array(z.string()).min(1, "must name at least one destination"),
});
export type HeartbeatConfig = z.output<typeof heartbeat>;

export const configSchema = z.strictObject({
  version: z.literal(1, { error: "must be 1" }),
  agent,
  mqtt: mqtt.optional(),
  serial: z.array(serialPort).default([]),
  /** Polled sources (Modbus RTU/TCP, 1-Wire probes, files): sensor-schema.ts. */
  modbus: modbusSection,
  onewire: onewireSection,
  files: filesSection,
  destinations: z.record(name("destination name"), destination).default({}),
  /** Metrics computed from others of the same sensor (dew point, power, ...), before the rules see them. */
  derive: z.array(derived).default([]),
  rules: z.array(rule).default([]),
  heartbeat: heartbeat.optional(),
  http: http.default({ listen: "127.0.0.1:9780" }),
  outbox: outbox.default({
    max_events: 1_000_000,
    max_bytes: 512 * 1024 * 1024,
    max_age: 7 * 86_400_000,
    min_free_disk: 64 * 1024 * 1024,
    keep_delivered: 86_400_000,
    commit_delay: 2,
    when_full: "drop_oldest",
  }),
});

export type Config = z.output<typeof configSchema>;
export type AgentConfig = Config["agent"];
export type OutboxConfig = Config["outbox"];
export type HttpConfig = Config["http"];
export type { ModbusBusConfig, ModbusDeviceConfig, OnewireConfig, PolledFileConfig } from "./sensor-schema.js";
