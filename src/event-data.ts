/**
 * The `data` of each event type: what receivers parse and what destination templates
 * may name (`{{ data.sensor }}`).
 *
 * The types below are the truth. `DATA_FIELDS` lists every field a rule event can carry,
 * and the compiler holds it to the types (`satisfies Record<DataField, …>`: a field
 * added to a type and missing here, or listed here and in no type, does not compile).
 * The template checker (src/delivery/template.ts) accepts exactly these fields as
 * placeholders, and the rule validator (src/rules/validate.ts) keeps a rule's `extra`
 * from replacing them; test/unit/event-data.test.ts runs the engine through every event
 * it emits and compares the keys with this list.
 *
 * Fields appear in the body in the order written in each type (JSON key order is part of
 * the bytes receivers get), followed by the rule's `extra` keys.
 */
import type { RuleConfig, Severity } from "./config/schema.js";
import type { HealthStatus, OutboxHealth } from "./ops/health.js";
import type { ReadingValue } from "./sources/reading.js";

export type Labels = Readonly<Record<string, string>>;

/** A value as the body carries it: a reading's value, or null when there is none. */
export type DataValue = ReadingValue | null;

/** How a rule compares; the body's `condition` (absent_for rules say "absent_for"). */
export type ConditionName = "above" | "below" | "between" | "outside" | "equals" | "rate_above" | "rate_below" | "when";

/** The rule's limit as written: a number, a `[lo, hi]` range, or an `equals` state. */
export type Threshold = number | string | boolean | readonly [number, number];

export type AggregateFn = NonNullable<RuleConfig["aggregate"]>["fn"];

/** Why an alert resolved or a silence ended. */
export type CloseReason = "cleared" | "reading received" | "rule removed" | "rule changed" | "series limit";

/** Every rule event names the agent and the rule (built by newEvent in src/events.ts). */
export type DataHeader = {
  agent: string;
  rule: string;
};

/** The series an alert or silence is about, and what it says about it. */
type SeriesFields = {
  sensor: string;
  metric: string;
  value: DataValue;
};

/** An aggregate or rate alert says how its value was computed, and the reading behind it. */
type Computed =
  | Record<never, never>
  | { aggregate: { fn: AggregateFn; over_s: number }; reading_value: DataValue }
  | { rate_per: RuleConfig["rate_per"]; rate_window_s: number; reading_value: DataValue }
  /** A `when` rule: its expressions and the latest value of each input it read, by how the expression names it. */
  | { expression: string; clear_when: string | null; values: Record<string, DataValue> };

/** alert.firing, and the start of alert.repeat / alert.resolved. */
export type AlertData = DataHeader &
  SeriesFields & {
    threshold: Threshold;
    condition: ConditionName;
    severity: Severity;
    labels: Labels;
    /** Time of the reading that started the condition. */
    since: string;
  } & Computed;

/** sensor.silent, and the start of sensor.returned. */
export type SilentData = DataHeader &
  SeriesFields & {
    /** absent_for in seconds. */
    threshold: number;
    condition: "absent_for";
    severity: Severity;
    labels: Labels;
    since: string;
    last_seen: string | null;
    absent_for_s: number;
  };

/**
 * What a stored state row remembers of an open alert or silence whose rule was removed or
 * changed while the agent was down: enough to close it for its receivers.
 */
export type StoredSeriesData = DataHeader &
  SeriesFields & {
    severity: Severity;
    labels: Labels;
    since: string;
  };

type Repeat = {
  /** 1 for the first repeat. */
  repeat: number;
  firing_for_s: number;
};

type Closed = {
  duration_s: number;
  reason: CloseReason;
};

/** `reading`: one forwarded reading. */
export type ReadingData = DataHeader &
  SeriesFields & {
    labels: Labels;
    source: string;
  };

export type BatchedReading = {
  sensor: string;
  metric: string;
  value: ReadingValue;
  ts: string;
  labels: Labels;
};

/** `readings`: a forward rule's batch. */
export type ReadingsData = DataHeader & {
  count: number;
  readings: BatchedReading[];
};

/** `test` (edgehook send-test): shaped like an alert, plus a message. Not a rule event. */
export type TestData = DataHeader &
  SeriesFields & {
    threshold: number;
    severity: Severity;
    labels: Labels;
    since: string;
    message: string;
  };

/** One source as a heartbeat reports it. */
export type HeartbeatSource = {
  name: string;
  kind: string;
  /** `up`, `down`, ... as /healthz says. */
  status: string;
  detail?: string;
};

/**
 * `agent.heartbeat` (the `heartbeat:` section): the agent is alive, and how it is. Not a
 * rule event; `rule` is `heartbeat`.
 */
export type HeartbeatData = DataHeader & {
  /** /healthz status: ok, degraded or failing. */
  health: HealthStatus;
  /** Why the health is not ok (empty when ok). */
  problems: string[];
  agent_version: string;
  uptime_s: number;
  /** heartbeat.every in seconds: when the next one is due. */
  every_s: number;
  /** Outbox depth (pending, dead), oldest pending age in seconds, and any refusal. */
  outbox: OutboxHealth;
  sources: HeartbeatSource[];
};

export interface EventDataMap {
  "alert.firing": AlertData;
  "alert.repeat": AlertData & Repeat;
  "alert.resolved": (AlertData | StoredSeriesData) & Closed;
  "sensor.silent": SilentData;
  "sensor.returned": (SilentData | StoredSeriesData) & Closed;
  reading: ReadingData;
  readings: ReadingsData;
  test: TestData;
  "agent.heartbeat": HeartbeatData;
}

export type EventType = keyof EventDataMap;

/** The events a running agent emits: the rules' and its heartbeats (everything but send-test's). */
export type RuleEventType = Exclude<EventType, "test">;

type KeysOfUnion<T> = T extends unknown ? keyof T : never;

/** A field of `data` some rule event (or heartbeat) carries. */
export type DataField = KeysOfUnion<EventDataMap[RuleEventType]>;

/**
 * How a template may name a field: `value` only as itself (`data.value`), `labels` also
 * one level down (`data.labels.room`), `open` at any depth (`data.aggregate.fn`).
 */
export type DataFieldShape = "value" | "labels" | "open";

/**
 * Every `data` field of a rule event, in the order `edgehook check` lists them: the ones
 * every alert carries, then those of some event types, then object and list fields.
 */
export const DATA_FIELDS = {
  agent: "value",
  rule: "value",
  sensor: "value",
  metric: "value",
  value: "value",
  threshold: "value",
  severity: "value",
  labels: "labels",
  since: "value",
  condition: "value",
  reason: "value",
  repeat: "value",
  firing_for_s: "value",
  duration_s: "value",
  last_seen: "value",
  absent_for_s: "value",
  reading_value: "value",
  rate_per: "value",
  rate_window_s: "value",
  source: "value",
  count: "value",
  health: "value",
  agent_version: "value",
  uptime_s: "value",
  every_s: "value",
  expression: "value",
  clear_when: "value",
  aggregate: "open",
  values: "open",
  readings: "open",
  problems: "open",
  outbox: "open",
  sources: "open",
} as const satisfies Record<DataField, DataFieldShape>;

export const DATA_FIELD_NAMES: readonly DataField[] = Object.keys(DATA_FIELDS) as DataField[];

export function isDataField(name: string): name is DataField {
  return Object.hasOwn(DATA_FIELDS, name);
}
