/**
 * What `edgehook status`, the status page (GET /) and its JSON endpoint (GET /api/status)
 * show: one snapshot of the agent, its sources and destinations, what is firing, recent
 * dead letters and deliveries. The running agent builds it (Agent.status()); when the
 * agent is down, `edgehook status` builds the outbox part from the database and says so.
 *
 * Nothing in it is a secret: destination names, never URLs, headers or keys.
 */
import type { Clock, TimerHandle } from "../clock.js";
import type { SeriesStateRow } from "../events.js";
import { parseSeriesKey, seriesLabel } from "../series-key.js";
import type { SourceState } from "../sources/reading.js";
import type { DeliveryListing, DeliveryState, DestinationFlag, DestinationStats } from "../store/types.js";

export interface StatusSnapshot {
  /** `agent`: read from the running agent; `outbox`: the agent did not answer, read from its database. */
  from: "agent" | "outbox";
  /** Epoch ms when the snapshot was taken. */
  at: number;
  agent: {
    id: string;
    version: string;
    /** False when read from the outbox (the agent did not answer). */
    running: boolean;
    /** Epoch ms, null when not running. */
    started_at: number | null;
    /** true/false from the clock monitor; null when not known (not monitored, or agent down). */
    clock_synced: boolean | null;
    /** ok | degraded | failing (see /healthz); null when not running. */
    health: string | null;
    problems: string[];
  };
  sources: SourceStatus[];
  destinations: DestinationStatusRow[];
  outbox: { pending: number; dead: number; bytes: number | null };
  firing: FiringRow[];
  dead_letters: DeliveryRow[];
  /** The newest deliveries, newest first (the page shows 50). */
  recent: DeliveryRow[];
  /** Pending deliveries over the last hour, oldest first (agent only; empty otherwise). */
  history: { at: number; pending: number }[];
}

export interface SourceStatus {
  name: string;
  kind: string;
  /** starting | up | down | stopped */
  status: string;
  since: number;
  detail?: string;
  /** Readings taken in the last minute (null until a minute of samples exists). */
  readings_1m: number | null;
  /** Payloads, lines or values that could not be decoded, since start. */
  decode_errors: number;
  /** Polled sources (modbus, onewire, file): reads that failed and polls skipped, since start; null for others. */
  read_errors: number | null;
  /** Modbus units and 1-Wire probes, each up or down (its last poll gave a reading or not). */
  devices?: DeviceStatus[];
}

export interface DeviceStatus {
  /** Modbus unit id or 1-Wire probe id. */
  id: string;
  sensor: string;
  status: "up" | "down";
  since: number;
  detail?: string;
}

export interface DestinationStatusRow {
  name: string;
  /** up | down | disabled; `unknown` when the agent is not running (only disabled is stored). */
  state: "up" | "down" | "disabled" | "unknown";
  /** Epoch ms of the last state change (down since, disabled since); null when unknown. */
  since: number | null;
  pending: number;
  dead: number;
  delivered: number;
  oldest_pending_s: number | null;
  last_error: string | null;
  configured: boolean;
}

export interface FiringRow {
  rule: string;
  sensor: string;
  metric: string;
  /** firing, clearing (firing, waiting for clear_for) or silent (absent_for). */
  phase: string;
  value: unknown;
  /** Epoch ms since when it fires. */
  since: number | null;
}

export interface DeliveryRow {
  event_id: string;
  destination: string;
  type: string;
  series: string;
  state: DeliveryState;
  attempts: number;
  created_at: number;
  settled_at: number | null;
  last: string | null;
}

/** The outbox's part of a snapshot; the agent and the CLI read it the same way. */
export interface OutboxView {
  stats(): DestinationStats[];
  destinationFlags(): Record<string, DestinationFlag>;
  loadStates(): SeriesStateRow[];
  list(query: { state?: DeliveryState; destination?: string; limit?: number }): DeliveryListing[];
  totals(): { pending: number; bytes: number };
}

export interface LiveDestination {
  state: "up" | "down" | "disabled";
  since: number;
  detail?: string;
}

/**
 * Destinations, firing series, dead letters and recent deliveries from the outbox;
 * `live` (the dispatcher's states) when the agent runs, undefined otherwise.
 */
export function outboxPart(
  outbox: OutboxView,
  configured: readonly string[],
  live: Readonly<Record<string, LiveDestination>> | undefined,
): Pick<StatusSnapshot, "destinations" | "firing" | "dead_letters" | "recent" | "outbox"> {
  const stats = outbox.stats();
  const flags = outbox.destinationFlags();
  const names = [...new Set([...configured, ...stats.map((s) => s.destination)])].sort();
  const destinations = names.map((name): DestinationStatusRow => {
    const s = stats.find((x) => x.destination === name);
    const flag = flags[name];
    const l = live?.[name];
    let state: DestinationStatusRow["state"];
    let since: number | null;
    let lastError: string | null = null;
    if (l) {
      state = l.state;
      since = l.since;
      if (l.state !== "up" && l.detail) lastError = l.detail;
    } else if (flag?.disabled) {
      state = "disabled";
      since = flag.since ?? null;
      lastError = flag.reason ?? null;
    } else {
      state = "unknown";
      since = null;
    }
    if (lastError === null && (s?.pending ?? 0) + (s?.dead ?? 0) > 0) {
      const newest = outbox.list({ destination: name, state: "pending", limit: 1 })[0];
      lastError = newest ? lastOutcome(newest) : null;
    }
    return {
      name,
      state,
      since,
      pending: s?.pending ?? 0,
      dead: s?.dead ?? 0,
      delivered: s?.delivered ?? 0,
      oldest_pending_s: s?.oldestPendingAgeMs == null ? null : Math.round(s.oldestPendingAgeMs / 1000),
      last_error: lastError,
      configured: configured.includes(name),
    };
  });
  const totals = outbox.totals();
  return {
    destinations,
    outbox: { pending: totals.pending, dead: stats.reduce((n, s) => n + s.dead, 0), bytes: totals.bytes },
    firing: firingFromStates(outbox.loadStates()),
    dead_letters: outbox.list({ state: "dead", limit: 10 }).map(deliveryRow),
    recent: outbox.list({ limit: 50 }).map(deliveryRow),
  };
}

/** Series whose persisted rule state is firing, clearing or silent. */
export function firingFromStates(rows: readonly SeriesStateRow[]): FiringRow[] {
  const out: FiringRow[] = [];
  for (const row of rows) {
    const st = row.state as Record<string, unknown> | null;
    if (!st || typeof st !== "object") continue;
    const phase = st.phase;
    if (phase !== "firing" && phase !== "clearing" && phase !== "silent") continue;
    const id = parseSeriesKey(row.series);
    const since = phase === "silent" ? st.since : st.fired_at;
    out.push({
      rule: row.rule,
      sensor: id?.sensor ?? "",
      metric: id?.metric ?? "",
      phase,
      value: st.value ?? null,
      since: typeof since === "number" ? since : null,
    });
  }
  return out.sort((a, b) => (a.since ?? 0) - (b.since ?? 0) || a.rule.localeCompare(b.rule));
}

export function deliveryRow(r: DeliveryListing): DeliveryRow {
  return {
    event_id: r.eventId,
    destination: r.destination,
    type: r.type,
    series: seriesLabel(r.series),
    state: r.state,
    attempts: r.attempts,
    created_at: r.createdAt,
    settled_at: r.settledAt,
    last: lastOutcome(r),
  };
}

function lastOutcome(r: DeliveryListing): string | null {
  if (r.reason) return r.reason;
  if (r.lastStatus !== null) return `HTTP ${r.lastStatus}${r.lastError ? ` ${r.lastError}` : ""}`;
  return r.lastError;
}

interface Sample {
  at: number;
  pending: number;
  readings: Record<string, number>;
}

/**
 * Samples taken every `intervalMs` and kept for an hour: the outbox depth for the page's
 * chart, and reading counts per source for "readings in the last minute".
 */
export class StatusHistory {
  readonly #clock: Clock;
  readonly #intervalMs: number;
  readonly #keepMs: number;
  readonly #samples: Sample[] = [];
  #timer: TimerHandle | undefined;
  #sample: (() => Promise<{ pending: number; readings: Record<string, number> }>) | undefined;

  constructor(clock: Clock, intervalMs = 10_000, keepMs = 3_600_000) {
    this.#clock = clock;
    this.#intervalMs = intervalMs;
    this.#keepMs = keepMs;
  }

  start(sample: () => Promise<{ pending: number; readings: Record<string, number> }>): void {
    this.#sample = sample;
    void this.#take();
  }

  stop(): void {
    if (this.#timer) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#sample = undefined;
  }

  async #take(): Promise<void> {
    const sample = this.#sample;
    if (!sample) return;
    try {
      this.record(await sample());
    } catch {
      // A sample that fails (outbox closing) leaves a gap in the chart.
    }
    if (!this.#sample) return;
    this.#timer = this.#clock.setTimeout(() => void this.#take(), this.#intervalMs);
    this.#timer.unref?.();
  }

  record(s: { pending: number; readings: Record<string, number> }): void {
    const now = this.#clock.now();
    this.#samples.push({ at: now, pending: s.pending, readings: s.readings });
    while (this.#samples.length > 0 && (this.#samples[0]?.at ?? now) < now - this.#keepMs) this.#samples.shift();
  }

  depth(): { at: number; pending: number }[] {
    return this.#samples.map((s) => ({ at: s.at, pending: s.pending }));
  }

  /** Readings of `source` in the last minute (current total minus the sample about a minute old). */
  readingsLastMinute(source: string, total: number): number | null {
    const cutoff = this.#clock.now() - 60_000;
    let base: Sample | undefined;
    for (const s of this.#samples) {
      if (s.at <= cutoff) base = s;
      else break;
    }
    // Fewer than 60 s of samples: the history began with the agent, whose counts began at 0.
    if (!base) return this.#samples.length > 0 ? total : null;
    return Math.max(0, total - (base.readings[source] ?? 0));
  }
}

/** What Agent.status() hands buildStatus(); each part from where it lives. */
export interface AgentStatusInput {
  id: string;
  version: string;
  now: number;
  startedAt: number;
  clockSynced: boolean | null;
  health: {
    status: string;
    problems: string[];
    sources: SourceState[];
  };
  configured: readonly string[];
  live: Readonly<Record<string, LiveDestination>>;
  outbox: OutboxView | undefined;
  readings: Record<string, number>;
  decodeErrors: Record<string, number>;
  history: StatusHistory;
}

export function buildStatus(input: AgentStatusInput): StatusSnapshot {
  const part = input.outbox
    ? outboxPart(input.outbox, input.configured, input.live)
    : {
        destinations: [],
        outbox: { pending: 0, dead: 0, bytes: null },
        firing: [],
        dead_letters: [],
        recent: [],
      };
  return {
    from: "agent",
    at: input.now,
    agent: {
      id: input.id,
      version: input.version,
      running: true,
      started_at: input.startedAt,
      clock_synced: input.clockSynced,
      health: input.health.status,
      problems: input.health.problems,
    },
    sources: input.health.sources.map((s) => sourceStatus(s, input)),
    ...part,
    history: input.history.depth(),
  };
}

function sourceStatus(s: SourceState, input: AgentStatusInput): SourceStatus {
  const out: SourceStatus = {
    name: s.name,
    kind: s.kind,
    status: s.status,
    since: s.since,
    readings_1m: input.history.readingsLastMinute(s.name, input.readings[s.name] ?? 0),
    decode_errors: input.decodeErrors[s.name] ?? 0,
    read_errors: s.errors ?? null,
  };
  if (s.detail) out.detail = s.detail;
  if (s.devices) {
    out.devices = s.devices.map((d) => ({
      id: d.id,
      sensor: d.sensor,
      status: d.status,
      since: d.since,
      ...(d.detail ? { detail: d.detail } : {}),
    }));
  }
  return out;
}

/** Sums a prom-client counter's values by one label. */
export async function sumByLabel(
  counter: { get(): Promise<{ values: { labels: Record<string, string | number>; value: number }[] }> },
  label: string,
): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const v of (await counter.get()).values) {
    const key = String(v.labels[label] ?? "");
    out[key] = (out[key] ?? 0) + v.value;
  }
  return out;
}
