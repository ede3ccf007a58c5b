/**
 * What rules emit and the outbox keeps. The body is serialised once, at commit, and
 * those exact bytes are what every attempt signs (design invariant 3).
 */
import { monotonicFactory } from "ulid";
import type { Severity } from "./config/schema.js";
import type { DataHeader, EventDataMap, EventType } from "./event-data.js";

export type { EventType } from "./event-data.js";

/**
 * A body as the outbox stores it and the dispatcher sends it. The outbox does not read
 * `data`, so any envelope goes; the bodies edgehook creates are built by `newEvent`.
 */
export interface EventBody {
  type: EventType;
  /** ISO 8601 time of the event itself (the reading's time), not of the attempt. */
  timestamp: string;
  data: Record<string, unknown>;
}

export interface NewEvent {
  /** `msg_` + ULID; becomes the `webhook-id` header and never changes across retries. */
  id: string;
  type: EventType;
  rule: string;
  /** Series key `(rule, sensor, metric)`; order is kept per series per destination. */
  series: string;
  severity: Severity;
  /** Higher is sent first after an outage. */
  priority: number;
  /** Destination names; the outbox creates one delivery per name. */
  destinations: readonly string[];
  /** Agent clock (epoch ms) when the event was created. */
  createdAt: number;
  body: EventBody;
}

/** Persisted rule state of one series, committed in the same transaction as its events. */
export interface SeriesStateRow {
  rule: string;
  series: string;
  /** Hash of the rule definition; a changed rule starts its series fresh. */
  version: string;
  /** JSON-serialisable state. */
  state: unknown;
}

export interface SeriesRef {
  rule: string;
  series: string;
}

/** One unit of work for the outbox: committed atomically. */
export interface CommitBatch {
  events: NewEvent[];
  states: SeriesStateRow[];
  removedStates: SeriesRef[];
  /** Keys of the source messages whose effects this batch holds (see SinkOrigin). */
  messageKeys?: readonly string[];
}

const ulid = monotonicFactory();

/** Who emits an event and who receives it: from the rule, or from a stored state row. */
export interface EventOrigin {
  agent: string;
  rule: string;
  severity: Severity;
  /** Higher is sent first after an outage. */
  priority: number;
  /** Destination names. */
  notify: readonly string[];
}

/** `data` without the header fields newEvent fills in; distributes over the union members. */
export type EventFields<K extends EventType> = EventDataMap[K] extends infer D
  ? D extends unknown
    ? Omit<D, keyof DataHeader>
    : never
  : never;

/**
 * The one place an event and its body envelope are built: `type`, `timestamp` (ISO of
 * `ts`, the event's own time) and `data` = agent, rule, then `fields`, then the rule's
 * `extra`. `now` (agent time) stamps the id and createdAt.
 */
export function newEvent<K extends EventType>(
  type: K,
  origin: EventOrigin,
  series: string,
  ts: number,
  now: number,
  fields: EventFields<K>,
  extra?: Readonly<Record<string, unknown>>,
): NewEvent {
  const data: Record<string, unknown> = { agent: origin.agent, rule: origin.rule, ...fields };
  // Assigned, not spread, as the engine always did (validate.ts keeps extra off the fields above).
  if (extra !== undefined) for (const k in extra) data[k] = extra[k];
  return {
    id: newEventId(now),
    type,
    rule: origin.rule,
    series,
    severity: origin.severity,
    priority: origin.priority,
    destinations: origin.notify,
    createdAt: now,
    body: { type, timestamp: new Date(ts).toISOString(), data },
  };
}

export function newEventId(now: number = Date.now()): string {
  return `msg_${ulid(now)}`;
}

export const SEVERITY_PRIORITY: Record<Severity, number> = { info: 0, warning: 10, critical: 20 };
