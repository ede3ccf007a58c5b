/**
 * The one shape every source produces. Nothing after the sources knows where a
 * reading came from except through `source` and `labels`.
 */
export type ReadingValue = number | string | boolean;

export interface Reading {
  sensor: string;
  metric: string;
  value: ReadingValue;
  /** Time of the measurement, epoch milliseconds (from the payload, or arrival time). */
  ts: number;
  /** Name of the source, e.g. "mqtt" or "serial:arduino". */
  source: string;
  labels: Readonly<Record<string, string>>;
}

/**
 * Where sources hand readings. The promise resolves once everything the readings
 * caused (events, rule state) is committed to the outbox; only then may an MQTT
 * QoS 1/2 message be acknowledged (design invariant 1).
 */
export type ReadingSink = (readings: Reading[], origin?: SinkOrigin) => Promise<void>;

/**
 * A sink rejection meaning "cannot store now, nothing of it was stored" (the outbox is at
 * its disk floor, full under `when_full: block`, or its file failed while running and
 * waits for a restart to be salvaged): backpressure, not a fault. Sources
 * keep the readings (MQTT: unacknowledged) and offer them again on a short cadence.
 */
export function isBackpressure(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code;
  return code === "EDGEHOOK_DISK_FLOOR" || code === "EDGEHOOK_OUTBOX_FULL" || code === "EDGEHOOK_DB_CORRUPT";
}

/**
 * Calls a sink; one that throws instead of rejecting must not break a source's batching
 * loop, so a throw becomes a rejection. The arguments are passed on as given.
 */
export function callSink(sink: ReadingSink, ...args: Parameters<ReadingSink>): Promise<void> {
  try {
    return sink(...args);
  } catch (err) {
    return Promise.reject(err);
  }
}

/**
 * Where a batch of readings came from. `messageKeys` name the source messages (for
 * MQTT: session, packet id, topic and payload hash); they are committed with what the
 * readings caused, so that a message redelivered after a crash between the commit and
 * its acknowledgement is recognised (`MessageLedger`) and not processed twice.
 */
export interface SinkOrigin {
  messageKeys: string[];
}

/**
 * The durable side of redelivery detection: the keys committed with their readings
 * (SinkOrigin) that the broker may still send again. Only those are kept; a source
 * releases a key as soon as its message can no longer come back.
 */
export interface MessageLedger {
  /** Keys committed and not released (read when a source starts, e.g. after a crash). */
  keys(): string[];
  /** Forgets these keys: deleted with the next write to the store, or batched shortly after. */
  release(keys: readonly string[]): void;
  /** What is remembered of a persistent session (`scope`, e.g. `mqtt:<client id>`); undefined: never had one. */
  session(scope: string): SessionRecord | undefined;
  /** Remembers the session (a small write: call it when something changed). */
  rememberSession(scope: string, record: SessionRecord): void;
}

/** What a source remembers about its broker session across restarts. */
export interface SessionRecord {
  /** The broker's count of dropped messages when last seen (mosquitto's $SYS), if watched. */
  brokerDropped?: number;
}

export type SourceStatus = "starting" | "up" | "down" | "stopped";

export interface SourceState {
  name: string;
  kind: "mqtt" | "serial" | "modbus" | "onewire" | "file";
  status: SourceStatus;
  since: number;
  detail?: string;
  /** Messages (MQTT) or readings (serial) received and not yet stored because a commit was refused or failed. */
  held?: number;
  /** Polled sources: the devices they read (Modbus units, 1-Wire probes), each up or down. */
  devices?: DeviceState[];
  /** Polled sources: epoch ms of the last reading. */
  last_reading?: number;
  /**
   * Polled sources: reads that failed and polls skipped since the agent started, every
   * reason (edgehook_source_errors_total of this source). Values read but rejected are
   * decode errors (edgehook_decode_errors_total).
   */
  errors?: number;
}

/** One device behind a source. `down`: its last poll gave no reading (detail says why). */
export interface DeviceState {
  /** Modbus unit id or 1-Wire probe id. */
  id: string;
  sensor: string;
  status: "up" | "down";
  since: number;
  detail?: string;
  last_reading?: number;
}

export interface Source {
  readonly name: string;
  start(): Promise<void>;
  /** Stop taking input; resolves when no more readings will reach the sink. */
  stop(): Promise<void>;
  state(): SourceState;
}
