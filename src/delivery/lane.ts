/**
 * One lane per destination: its state (up, down: no connection can be made, probed one
 * request at a time; disabled: a 410, until `edgehook destination enable NAME`), the
 * requests it has in flight, the series it holds back, its offline probe, outage log and
 * rate-limit bucket, the batches it pins for their retries, and the logs of its state
 * changes. The dispatcher (dispatcher.ts) decides when a lane sends; the lane remembers
 * what it sent and moves its state on each outcome.
 *
 * A lane touches the outbox only for what its log lines and the 410 switch need
 * (`pendingCount`, `setDestinationDisabled`), and time only through the injected Clock.
 */
import { setMaxListeners } from "node:events";
import type { Clock, TimerHandle } from "../clock.js";
import type { DestinationConfig } from "../config/schema.js";
import type { Logger, RateLimitedLog } from "../ops/logger.js";
import type { Metrics } from "../ops/metrics.js";
import type { Delivery, OutboxReader } from "../store/types.js";
import { type Decision, type FlapSummary, OfflineProbe, OutageLog, PROBE_INTERVAL_MS, TokenBucket } from "./policy.js";
import type { Transport } from "./transport.js";

export type DestinationState = "up" | "down" | "disabled";

export interface DestinationStatus {
  state: DestinationState;
  /** Epoch ms of the last state change. */
  since: number;
  detail?: string;
  inFlight: number;
}

/** The destination switches the outbox persists (a 410 survives a restart). */
export interface DestinationSwitches {
  setDestinationDisabled(name: string, reason: string): void;
  enableDestination(name: string): void;
  /** Persisted flags per destination (the store's DestinationFlag). */
  destinationFlags(): ReadonlyMap<string, FlagLike> | Readonly<Record<string, FlagLike>>;
  /** Changes when another process wrote to the outbox (e.g. `edgehook queue replay`). */
  dataVersion?(): number;
}

/** Structurally the store's `DestinationFlag`. */
export interface FlagLike {
  disabled: boolean;
  reason?: string | undefined;
  since?: number | undefined;
}

export type DispatcherOutbox = OutboxReader & DestinationSwitches;

export const STATES: readonly DestinationState[] = ["up", "down", "disabled"];
/** Most remembered batch memberships per lane; beyond it they are forgotten (ids may change). */
export const PIN_MAX = 10_000;
/** While a destination is down, its offline outcomes are written at most this often. */
const OFFLINE_RECORD_MS = 60_000;

/** What a lane needs from the dispatcher that owns it. */
export interface LaneContext {
  readonly clock: Clock;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly outbox: Pick<DispatcherOutbox, "pendingCount" | "setDestinationDisabled">;
  readonly random: () => number;
  /** The dispatcher's rate-limited log (shared by its lanes, keys start with the lane's name). */
  quiet(): RateLimitedLog;
  /** The system clock is not synchronised: every lane shows as down. */
  clockHeld(): boolean;
  /** A lane's timer fired: look at it again. */
  pump(lane: Lane): void;
}

export interface Flight {
  /** One delivery, or the members of a batch in the order they are in the body. */
  deliveries: Delivery[];
  probe: boolean;
  /** The lane's transport generation when sent; an outcome from an older one says nothing about the current url. */
  generation: number;
  aborted: boolean;
  done: Promise<void>;
}

export class Lane {
  readonly name: string;
  config: DestinationConfig;
  transport: Transport;
  state: DestinationState = "up";
  since: number;
  detail: string | undefined;
  readonly flights = new Map<number, Flight>();
  /** One signal per lane aborts every request of it at shutdown (one per request costs at 5k/s). */
  readonly abort = laneAbort();
  /** Outcomes of this lane collected but not yet written. */
  unwritten = 0;
  /** ... of which hold their series back until written (failed ones: the retry time is not on disk yet). */
  holding = 0;
  /** Series with a delivery in flight or a failed outcome not yet written. */
  readonly exclude = new Set<string>();
  /**
   * Series whose last delivery is delivered or dead but not written yet → its id. The
   * series goes on with the delivery after it (outbox.next), not waiting for the write.
   */
  readonly after = new Map<string, number>();
  readonly probe: OfflineProbe;
  /** Events were committed since the last probe: while down, one may probe early. */
  newWork = false;
  readonly outages: OutageLog;
  /** Incremented when a reload changes the url or transport. */
  generation = 0;
  /** Monotonic time an offline outcome was last written (they are written at most once a minute). */
  offlineWrittenAt = Number.NEGATIVE_INFINITY;
  /** Deliveries that had their free resend after a connection closed before answering (in memory, bounded). */
  readonly resent = new Set<number>();
  bucket: TokenBucket | undefined;
  timer: TimerHandle | undefined;
  timerAt = 0;
  removed = false;
  /** Batching: monotonic time since which the lane waits for a partial batch to fill. */
  fillSince: number | undefined;
  /**
   * Batching: delivery id → webhook-id of the batch it failed in. A retry sends the same
   * members together again (same webhook-id) even when other events are waiting by then.
   * In memory only (bounded by PIN_MAX); after a restart batches are formed again in queue order.
   */
  readonly pins = new Map<number, string>();
  /**
   * Batching: the earliest retry this lane scheduled (epoch ms). While a partial batch waits
   * to fill, the lane sleeps until the earlier of the two; the outbox's nextDueAt cannot tell
   * (the waiting events are due already).
   */
  retryAt: number | undefined;
  readonly #ctx: LaneContext;

  constructor(name: string, config: DestinationConfig, transport: Transport, ctx: LaneContext) {
    this.#ctx = ctx;
    this.name = name;
    this.config = config;
    this.transport = transport;
    this.since = ctx.clock.now();
    this.probe = new OfflineProbe(ctx.clock, ctx.random);
    this.outages = new OutageLog(ctx.clock);
    this.bucket = config.rate_limit ? new TokenBucket(config.rate_limit, ctx.clock) : undefined;
  }

  setState(state: DestinationState, detail: string | undefined): void {
    this.state = state;
    this.since = this.#ctx.clock.now();
    this.detail = detail;
    this.gauge();
  }

  gauge(): void {
    const current = this.#ctx.clockHeld() && this.state !== "disabled" ? "down" : this.state;
    for (const s of STATES)
      this.#ctx.metrics.destinationUp.set({ destination: this.name, state: s }, s === current ? 1 : 0);
  }

  arm(ms: number): void {
    const at = this.#ctx.clock.monotonic() + ms;
    if (this.timer && this.timerAt <= at) return;
    this.clearTimer();
    this.timerAt = at;
    this.timer = this.#ctx.clock.setTimeout(() => {
      this.timer = undefined;
      this.#ctx.pump(this);
    }, ms);
  }

  clearTimer(): void {
    if (this.timer) this.#ctx.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }

  /**
   * Whether to write an offline outcome: the first of a request (all members of a batch), then
   * at most one a minute per destination, so `edgehook queue show` tells why a delivery
   * waits without a write a second to the SD card.
   */
  recordOffline(actions: Set<string>): boolean {
    if (actions.has("offline-recorded")) return true;
    const mono = this.#ctx.clock.monotonic();
    if (mono - this.offlineWrittenAt < OFFLINE_RECORD_MS) return false;
    this.offlineWrittenAt = mono;
    actions.add("offline-recorded");
    return true;
  }

  /** Destination state and logging after one outcome. */
  transition(flight: Flight, decision: Decision): void {
    const name = this.name;
    if (decision.class === "unsendable") {
      // Nothing went on the wire: says nothing about the receiver; a probe may go again now.
      if (flight.probe) this.probe.released();
      const n = this.#ctx.quiet().shouldLog(`${name}:unsendable`);
      if (n !== undefined) {
        this.#ctx.log.error(
          { destination: name, reason: decision.action === "dead" ? decision.reason : undefined, suppressed: n },
          `destination ${name}: a webhook cannot be built and is dead (${decision.action === "dead" ? decision.reason : ""}); see edgehook queue list`,
        );
      }
      return;
    }
    if (decision.action === "offline") {
      if (this.state === "up") {
        this.wentDown(decision.error);
      } else if (flight.probe) {
        this.probe.failed();
        this.detail = decision.error;
        const n = this.#ctx.quiet().shouldLog(`${name}:down`);
        if (n !== undefined) {
          const downMs = this.#ctx.clock.now() - this.since;
          this.#ctx.log.warn(
            {
              destination: name,
              error: decision.error,
              downSince: new Date(this.since).toISOString(),
              downSeconds: Math.round(downMs / 1000),
              probes: n + 1,
              backlog: this.backlog(),
            },
            `destination ${name} still unreachable after ${span(downMs)} (${decision.error}); ${this.backlog()} webhook(s) waiting, probing every second`,
          );
        }
        this.arm(this.probe.waitMs(this.newWork) ?? PROBE_INTERVAL_MS);
      }
      return;
    }
    // Any HTTP answer, or a connection made, means the receiver is reachable.
    if (flight.probe) this.probe.released();
    if (this.state === "down") this.cameBack();
    if (decision.action === "dead") {
      if (decision.disable && this.state !== "disabled") {
        this.setState("disabled", decision.reason);
        try {
          this.#ctx.outbox.setDestinationDisabled(name, decision.reason);
        } catch (err) {
          this.#ctx.log.error({ err, destination: name }, "could not persist the disabled flag");
        }
        this.clearTimer();
        this.#ctx.log.error(
          { destination: name, code: "EDGEHOOK_DESTINATION_DISABLED" },
          `destination ${name} answered 410 Gone and is disabled; its webhooks stay queued. Fix the receiver or the url, then run: edgehook destination enable ${name}`,
        );
        return;
      }
      const n = this.#ctx.quiet().shouldLog(`${name}:dead`);
      if (n !== undefined) {
        this.#ctx.log.warn(
          { destination: name, reason: decision.reason, suppressed: n },
          `destination ${name} rejected a webhook for good (${decision.reason}); see edgehook queue list --state dead`,
        );
      }
    } else if (decision.action === "retry") {
      const n = this.#ctx.quiet().shouldLog(`${name}:retry`);
      if (n !== undefined) {
        this.#ctx.log.warn(
          { destination: name, error: decision.error, suppressed: n },
          decision.counted
            ? `destination ${name} failed a webhook (${decision.error}); retrying it on the schedule, its series waits, other series go on`
            : `destination ${name} closed the connection before answering (${decision.error}); sending the webhook again at once`,
        );
      }
    }
  }

  wentDown(error: string): void {
    const name = this.name;
    this.setState("down", error);
    this.probe.reset();
    this.newWork = false;
    this.#ctx.quiet().reset(`${name}:down`);
    this.#ctx.quiet().shouldLog(`${name}:down`);
    const { log, summary } = this.outages.down();
    if (summary) this.logFlaps(summary);
    if (log) {
      const backlog = this.backlog();
      this.#ctx.log.warn(
        { destination: name, error, backlog },
        `destination ${name} unreachable (${error}); ${backlog} webhook(s) wait in the outbox, probing every second`,
      );
    }
    this.arm(this.probe.waitMs() ?? PROBE_INTERVAL_MS);
  }

  cameBack(): void {
    const downMs = this.#ctx.clock.now() - this.since;
    this.setState("up", undefined);
    if (!this.outages.up(downMs)) return;
    const backlog = this.backlog();
    this.#ctx.log.info(
      { destination: this.name, downSeconds: Math.round(downMs / 100) / 10, backlog },
      `destination ${this.name} reachable again after ${span(downMs)}; sending the ${backlog} webhook(s) that waited`,
    );
  }

  logFlaps(f: FlapSummary): void {
    this.#ctx.log.warn(
      {
        destination: this.name,
        outages: f.outages,
        downSeconds: Math.round(f.downMs / 100) / 10,
        windowSeconds: Math.round(f.windowMs / 1000),
        state: this.state,
        backlog: this.backlog(),
      },
      `destination ${this.name} flapping: unreachable ${f.outages} more time(s) in the last ${span(f.windowMs)} (${span(f.downMs)} down in all); now ${this.state}, ${this.backlog()} webhook(s) waiting`,
    );
  }

  /** Pending deliveries of the destination (0 when the outbox cannot say). */
  backlog(): number {
    try {
      return this.#ctx.outbox.pendingCount(this.name);
    } catch {
      return 0;
    }
  }

  /**
   * After one delivery's decision: the earliest retry of a batch lane, the batch it stays
   * pinned to (`pinKey`, when it was sent in a batch and will be tried again), and whether
   * it had its free resend. `current`: the outcome is from the lane's current transport.
   */
  remember(id: number, decision: Decision, pinKey: string | undefined, current: boolean): void {
    if (decision.action === "retry" && this.config.batch !== undefined) {
      this.retryAt = Math.min(this.retryAt ?? decision.nextAt, decision.nextAt);
    }
    if (pinKey !== undefined && (decision.action === "retry" || decision.action === "offline")) {
      this.pins.set(id, pinKey);
    } else {
      this.pins.delete(id);
    }
    if (current && decision.action === "retry" && !decision.counted) {
      if (this.resent.size >= PIN_MAX) this.resent.clear();
      this.resent.add(id);
    } else if (decision.action !== "retry" && decision.action !== "offline") {
      this.resent.delete(id);
    }
  }

  /**
   * Splits due heads (in queue order) into requests. Without batching, one per delivery.
   * With batching: the members of a batch that failed go together again, at once; the
   * others fill batches of `perRequest` in queue order, and a last partial one is `rest`.
   */
  group(rows: Delivery[], perRequest: number): { ready: Delivery[][]; rest: Delivery[] } {
    if (this.config.batch === undefined) return { ready: rows.map((r) => [r]), rest: [] };
    const ready: Delivery[][] = [];
    const fresh: Delivery[] = [];
    const pinned = new Map<string, Delivery[]>();
    for (const r of rows) {
      const key = this.pins.get(r.id);
      if (key === undefined) {
        fresh.push(r);
        continue;
      }
      let group = pinned.get(key);
      if (group && group.length >= perRequest) {
        // max_events was lowered by a reload: the rest of the old batch goes as new events.
        fresh.push(r);
        continue;
      }
      if (!group) {
        group = [];
        pinned.set(key, group);
        ready.push(group);
      }
      group.push(r);
    }
    let i = 0;
    for (; fresh.length - i >= perRequest; i += perRequest) ready.push(fresh.slice(i, i + perRequest));
    return { ready, rest: fresh.slice(i) };
  }

  /**
   * Ms a partial batch may still wait to fill: until its oldest event is `max_wait` old, or
   * the lane has waited `max_wait` (so a wall clock set back cannot hold it longer). 0 = send.
   */
  fillWait(rows: readonly Delivery[], now: number): number {
    const maxWait = this.config.batch?.max_wait ?? 0;
    if (maxWait <= 0) return 0;
    // A retry goes on its schedule: its batch was formed when it was first sent.
    if (rows.some((r) => r.attempts > 0)) return 0;
    const mono = this.#ctx.clock.monotonic();
    this.fillSince ??= mono;
    let oldest = now;
    for (const r of rows) oldest = Math.min(oldest, r.createdAt);
    return Math.max(0, Math.min(oldest + maxWait - now, this.fillSince + maxWait - mono));
  }
}

function laneAbort(): AbortController {
  const ac = new AbortController();
  // Up to `concurrency` (64) requests listen on it at once; that is not a leak.
  setMaxListeners(0, ac.signal);
  return ac;
}

/** A duration for a log line: 0.4 s, 12 s, 5 min, 3.2 h. */
function span(ms: number): string {
  if (ms < 10_000) return `${(Math.max(0, ms) / 1000).toFixed(1)} s`;
  if (ms < 120_000) return `${Math.round(ms / 1000)} s`;
  if (ms < 7_200_000) return `${Math.round(ms / 60_000)} min`;
  return `${(ms / 3_600_000).toFixed(1)} h`;
}
