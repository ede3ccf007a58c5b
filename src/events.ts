/**
 * What rules emit and the outbox keeps. The body is serialised once, at commit, and
 * those exact bytes are what every attempt signs (design invariant 3).
 */
import { monotonicFactory } from "ulid";
import type { Severity } from "./config/schema.js";

export type EventType =
  | "alert.firing"
  | "alert.resolved"
  | "alert.repeat"
  | "sensor.silent"
  | "sensor.returned"
  | "reading"
  | "readings"
  | "test";

/** The JSON body receivers parse: `{ type, timestamp, data }`. */
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

export function newEventId(now: number = Date.now()): string {
  return `msg_${ulid(now)}`;
}

export const SEVERITY_PRIORITY: Record<Severity, number> = { info: 0, warning: 10, critical: 20 };
