/**
 * Drains the outbox to the destinations (design invariants 2-5).
 *
 * One "lane" per destination: an undici Pool (keep-alive) or, behind an HTTP(S) proxy, an
 * EnvHttpProxyAgent; at most `concurrency` requests in flight; an optional token bucket for
 * `rate_limit`; and a state: up, down (no connection can be made: probed one request at a
 * time, every second, sooner when new events come) or disabled (a 410, until `edgehook
 * destination enable NAME`). Only a failure to connect takes a destination down (policy.ts);
 * a request that was sent and then failed spends an attempt of its own delivery and holds
 * back only its series. A reload that changes the url or transport ends an outage and makes
 * waiting retries due (the fix is usually in the config).
 *
 * Order per series: the outbox returns only the head (earliest pending delivery) of each
 * series, and every series with a request in flight OR a failed outcome not yet written
 * (the retry time is not on disk yet) is passed in `exclude`, so a later event of a series
 * is never sent while an earlier one is in flight or waiting for a retry. Different series
 * go out concurrently.
 *
 * Pipelining after a final outcome: once a delivery is delivered (or dead) the next event of
 * its series may go while that outcome still waits to be written (`after`: the outbox then
 * returns the pending delivery after it). Nothing is lost by it: after a crash in between,
 * the earlier one is still pending and is sent again with the same webhook-id, after the
 * later one; the receiver's first arrivals are in order. It is what lets a few busy series
 * use the whole connection instead of waiting for a write per event.
 *
 * Throughput: outcomes are collected and written with one `outbox.settle` call at most
 * every 20 ms (one SQLite transaction instead of one per webhook; at once when the lane has
 * nothing else to do), and passes over a lane
 * are coalesced into one per event-loop turn. When nothing is due the lane sleeps until
 * `outbox.nextDueAt` or a `wake()`; there is no polling loop.
 *
 * Time: retry, probe and rate-limit waits run on the injected Clock, so tests can simulate
 * an hour of downtime. The settle batching delay and the pass coalescing use the event loop
 * directly (setTimeout/setImmediate): they group I/O and must keep running even when a test
 * freezes the logical clock.
 */
import { setMaxListeners } from "node:events";
import type { Clock, TimerHandle } from "../clock.js";
import type { DestinationConfig } from "../config/schema.js";
import { EdgehookError, type ErrorCode } from "../errors.js";
import { type Logger, RateLimitedLog } from "../ops/logger.js";
import type { Metrics } from "../ops/metrics.js";
import type { AttemptRecord, Delivery, OutboxReader, Settlement } from "../store/types.js";
import {
  type Decision,
  decide,
  describeError,
  type FlapSummary,
  OfflineProbe,
  OutageLog,
  type Outcome,
  PROBE_INTERVAL_MS,
  TokenBucket,
  unsendableReason,
} from "./policy.js";
import { batchId } from "./render.js";
import type { Attempt, Transport } from "./transport.js";
import { TRANSPORTS, type TransportRegistry, transportFor } from "./transports.js";

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

export interface DispatcherOptions {
  outbox: DispatcherOutbox;
  destinations: Readonly<Record<string, DestinationConfig>>;
  clock: Clock;
  logger: Logger;
  metrics: Metrics;
  /** False while the system clock is known unsynchronised (see clock-sync.ts); deliveries wait. */
  clockSynced?: () => boolean;
  /** [0, 1) for retry jitter; Math.random by default. */
  random?: () => number;
  /** Proxy variables (HTTP_PROXY, HTTPS_PROXY, NO_PROXY); the agent passes process.env. */
  env?: Readonly<Record<string, string | undefined>>;
  /** Relative tls.*_file paths are resolved against this (the config file's directory). */
  baseDir?: string;
  /** Transports by URL scheme (transports.ts); tests may pass their own. */
  transports?: TransportRegistry;
  /**
   * Longest wait before outcomes are written (default 20 ms). Delivered ones do not hold
   * their series back meanwhile (pipelining), so a longer wait costs nothing but more
   * resends after a crash, and saves transactions (each one an fsync on the SD card).
   */
  settleDelayMs?: number;
  /**
   * Called after every attempt with what the receiver answered (the first bytes of its
   * body) or the error; `edgehook send-test` prints it. When unset, answers are discarded.
   */
  onAttempt?: (info: AttemptInfo) => void;
}

export interface AttemptInfo {
  eventId: string;
  destination: string;
  status?: number;
  headers?: Record<string, string | string[] | undefined>;
  /** Up to the first 4 KiB of the answer. */
  body?: Buffer;
  error?: string;
  /** Set when no request could be built (a template or URL that does not render): retrying cannot help. */
  code?: ErrorCode;
}

const CLOCK_DETAIL = "clock not synchronised";
const SETTLE_BATCH_MAX = 512;
const SETTLE_DELAY_MS = 20;
/** How often a held lane (clock) or a disabled one (enabled from the CLI) is looked at again. */
const RECHECK_MS = 5_000;
const STATES: readonly DestinationState[] = ["up", "down", "disabled"];
/** Most remembered batch memberships per lane; beyond it they are forgotten (ids may change). */
const PIN_MAX = 10_000;
/**
 * Outcomes waiting to be written beyond which a series no longer goes on before its last
 * outcome is written (the outbox cannot keep up, or writes fail: do not run ahead of it).
 */
const PIPELINE_MAX = 4 * SETTLE_BATCH_MAX;
/** While a destination is down, its offline outcomes are written at most this often. */
const OFFLINE_RECORD_MS = 60_000;

interface Flight {
  /** One delivery, or the members of a batch in the order they are in the body. */
  deliveries: Delivery[];
  probe: boolean;
  /** The lane's transport generation when sent; an outcome from an older one says nothing about the current url. */
  generation: number;
  aborted: boolean;
  done: Promise<void>;
}

interface Lane {
  name: string;
  config: DestinationConfig;
  transport: Transport;
  state: DestinationState;
  since: number;
  detail: string | undefined;
  flights: Map<number, Flight>;
  /** One signal per lane aborts every request of it at shutdown (one per request costs at 5k/s). */
  abort: AbortController;
  /** Outcomes of this lane collected but not yet written. */
  unwritten: number;
  /** Series with a delivery in flight or a failed outcome not yet written. */
  exclude: Set<string>;
  /**
   * Series whose last delivery is delivered or dead but not written yet → its id. The
   * series goes on with the delivery after it (outbox.next), not waiting for the write.
   */
  after: Map<string, number>;
  probe: OfflineProbe;
  /** Events were committed since the last probe: while down, one may probe early. */
  newWork: boolean;
  outages: OutageLog;
  /** Incremented when a reload changes the url or transport. */
  generation: number;
  /** Monotonic time an offline outcome was last written (they are written at most once a minute). */
  offlineWrittenAt: number;
  /** Deliveries that had their free resend after a connection closed before answering (in memory, bounded). */
  resent: Set<number>;
  bucket: TokenBucket | undefined;
  timer: TimerHandle | undefined;
  timerAt: number;
  removed: boolean;
  /** Batching: monotonic time since which the lane waits for a partial batch to fill. */
  fillSince: number | undefined;
  /**
   * Batching: delivery id → webhook-id of the batch it failed in. A retry sends the same
   * members together again (same webhook-id) even when other events are waiting by then.
   * In memory only (bounded by PIN_MAX); after a restart batches are formed again in queue order.
   */
  pins: Map<number, string>;
  /**
   * Batching: the earliest retry this lane scheduled (epoch ms). While a partial batch waits
   * to fill, the lane sleeps until the earlier of the two; the outbox's nextDueAt cannot tell
   * (the waiting events are due already).
   */
  retryAt: number | undefined;
}

interface PendingSettle {
  lane: Lane;
  settlement: Settlement;
  series: string;
  /** Delivered or dead: the series went on before this was written (Lane.after). */
  released?: boolean;
}

export class Dispatcher {
  readonly #outbox: DispatcherOutbox;
  #destinations: Readonly<Record<string, DestinationConfig>>;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #metrics: Metrics;
  readonly #clockSynced: (() => boolean) | undefined;
  readonly #random: () => number;
  readonly #onAttempt: ((info: AttemptInfo) => void) | undefined;
  readonly #env: Readonly<Record<string, string | undefined>>;
  readonly #settleDelayMs: number;
  readonly #baseDir: string | undefined;
  readonly #transports: TransportRegistry;
  readonly #lanes = new Map<string, Lane>();
  #quiet!: RateLimitedLog;
  #started = false;
  #stopping = false;
  #toPump = new Set<Lane>();
  #pumpImmediate: NodeJS.Immediate | undefined;
  #pending: PendingSettle[] = [];
  #settleTimer: NodeJS.Timeout | undefined;
  #clockHeld = false;
  #recheck: TimerHandle | undefined;
  #idleWaiters: (() => void)[] = [];
  #stopped: Promise<void> | undefined;
  #dataVersion: number | undefined;

  constructor(options: DispatcherOptions) {
    this.#outbox = options.outbox;
    this.#destinations = options.destinations;
    this.#clock = options.clock;
    this.#log = options.logger;
    this.#metrics = options.metrics;
    this.#clockSynced = options.clockSynced;
    this.#random = options.random ?? Math.random;
    this.#onAttempt = options.onAttempt;
    this.#env = options.env ?? process.env;
    this.#settleDelayMs = options.settleDelayMs ?? SETTLE_DELAY_MS;
    this.#baseDir = options.baseDir;
    this.#transports = options.transports ?? TRANSPORTS;
  }

  start(): void {
    if (this.#started) return;
    // Every TLS file is read before anything starts, so a bad one leaves nothing half-open.
    const transports = new Map<string, Transport>();
    try {
      for (const [name, config] of Object.entries(this.#destinations)) transports.set(name, this.#transport(config));
    } catch (err) {
      for (const t of transports.values()) void t.destroy();
      throw err;
    }
    this.#started = true;
    this.#stopping = false;
    this.#quiet = new RateLimitedLog(60_000, () => this.#clock.now());
    const disabled = this.#disabledFlags();
    for (const [name, config] of Object.entries(this.#destinations)) {
      const transport = transports.get(name);
      if (transport === undefined) continue; // every destination got one above
      const lane = this.#newLane(name, config, transport);
      const flag = disabled.get(name);
      if (flag) {
        lane.state = "disabled";
        lane.since = flag.since;
        lane.detail = flag.reason;
        this.#log.error(
          { destination: name, reason: flag.reason },
          `destination ${name} is disabled (${flag.reason}); fix the receiver, then run: edgehook destination enable ${name}`,
        );
      }
      this.#lanes.set(name, lane);
      this.#gauge(lane);
    }
    this.#dataVersion = this.#outbox.dataVersion?.();
    this.#scheduleRecheck();
    this.wake();
  }

  /** New deliveries were committed: look at every lane soon (coalesced, cheap). */
  wake(): void {
    if (!this.#started || this.#stopping) return;
    for (const lane of this.#lanes.values()) {
      lane.newWork = true;
      this.#toPump.add(lane);
    }
    this.#schedulePumps();
  }

  /**
   * Stops taking new work, lets requests in flight finish for up to `graceMs`, then aborts
   * the rest (they stay pending and are sent again after the restart), writes every
   * collected outcome and closes the connections.
   */
  stop(graceMs: number): Promise<void> {
    if (!this.#started) return Promise.resolve();
    this.#stopped ??= this.#stop(graceMs).finally(() => {
      this.#stopped = undefined;
    });
    return this.#stopped;
  }

  async #stop(graceMs: number): Promise<void> {
    this.#stopping = true;
    if (this.#pumpImmediate) clearImmediate(this.#pumpImmediate);
    this.#pumpImmediate = undefined;
    this.#toPump.clear();
    if (this.#recheck) this.#clock.clearTimeout(this.#recheck);
    this.#recheck = undefined;
    for (const lane of this.#lanes.values()) this.#clearTimer(lane);

    const flights = [...this.#lanes.values()].flatMap((l) => [...l.flights.values()]);
    if (flights.length > 0) {
      let timer: TimerHandle | undefined;
      const grace = new Promise<void>((resolve) => {
        timer = this.#clock.setTimeout(resolve, graceMs);
      });
      await Promise.race([Promise.all(flights.map((f) => f.done)), grace]);
      if (timer) this.#clock.clearTimeout(timer);
      const left = [...this.#lanes.values()].flatMap((l) => [...l.flights.values()]);
      for (const f of left) f.aborted = true;
      for (const lane of this.#lanes.values()) if (lane.flights.size > 0) lane.abort.abort();
      if (left.length > 0) {
        this.#log.warn({ aborted: left.length }, "shutdown: aborted requests still in flight; they stay pending");
      }
      await Promise.all(left.map((f) => f.done));
    }
    this.#flush();
    await Promise.all([...this.#lanes.values()].map((l) => l.transport.destroy()));
    this.#lanes.clear();
    this.#started = false;
    this.#resolveIdle();
  }

  /**
   * Applies a reloaded configuration. Throws (changing nothing) when a TLS file cannot be
   * read, so a bad reload leaves the old destinations running.
   */
  reconfigure(destinations: Readonly<Record<string, DestinationConfig>>): void {
    if (!this.#started) {
      this.#destinations = destinations;
      return;
    }
    const transports = new Map<string, Transport>();
    try {
      for (const [name, config] of Object.entries(destinations)) {
        const lane = this.#lanes.get(name);
        if (!lane || this.#connectionKey(lane.config) !== this.#connectionKey(config)) {
          transports.set(name, this.#transport(config));
        }
      }
    } catch (err) {
      for (const t of transports.values()) void t.destroy();
      throw err;
    }
    this.#destinations = destinations;
    for (const [name, lane] of this.#lanes) {
      if (destinations[name] !== undefined) continue;
      lane.removed = true;
      this.#clearTimer(lane);
      this.#lanes.delete(name);
      for (const s of STATES) this.#metrics.destinationUp.remove({ destination: name, state: s });
      // close() lets the requests in flight finish; their outcomes are still written.
      void lane.transport.close();
      this.#log.info({ destination: name }, "destination removed from the configuration");
    }
    for (const [name, config] of Object.entries(destinations)) {
      const lane = this.#lanes.get(name);
      const transport = transports.get(name);
      if (!lane) {
        if (transport === undefined) continue; // every new destination got one above
        const fresh = this.#newLane(name, config, transport);
        this.#lanes.set(name, fresh);
        this.#gauge(fresh);
        this.#toPump.add(fresh);
        continue;
      }
      const oldRate = lane.config.rate_limit;
      const moved = transport !== undefined || lane.config.url !== config.url;
      // The path may change on the same origin (same connections): requests go to the new
      // one, since every attempt is prepared with the lane's current config.
      lane.config = config;
      if (transport) {
        const old = lane.transport;
        lane.transport = transport;
        void old.close();
      }
      if (oldRate !== config.rate_limit) {
        lane.bucket = config.rate_limit ? new TokenBucket(config.rate_limit, this.#clock) : undefined;
      }
      if (moved) this.#moved(lane);
      this.#toPump.add(lane);
    }
    this.#schedulePumps();
  }

  /**
   * A reload changed where or how a destination is reached: that is usually the fix for why
   * it was down or failing, so its backlog goes at once. The outage ends (outcomes of
   * requests still in flight to the old address no longer change the state), and pending
   * deliveries waiting for a retry are due now, keeping their attempts.
   */
  #moved(lane: Lane): void {
    lane.generation++;
    let due = 0;
    try {
      due = this.#outbox.retryNow(lane.name, this.#clock.now());
    } catch (err) {
      this.#log.error({ err, destination: lane.name }, "could not make the waiting retries due");
    }
    lane.retryAt = undefined;
    const wasDown = lane.state === "down";
    if (wasDown) {
      this.#clearTimer(lane);
      this.#setState(lane, "up", undefined);
    }
    if (wasDown || due > 0) {
      this.#log.info(
        { destination: lane.name, wasDown, retriesDue: due },
        `destination ${lane.name}: url or transport changed by the reload; sending its waiting webhooks now`,
      );
    }
  }

  states(): Record<string, DestinationStatus> {
    const out: Record<string, DestinationStatus> = {};
    for (const lane of this.#lanes.values()) {
      const held = this.#clockHeld && lane.state !== "disabled";
      const status: DestinationStatus = {
        state: held ? "down" : lane.state,
        since: lane.since,
        inFlight: lane.flights.size,
      };
      const detail = held ? CLOCK_DETAIL : lane.detail;
      if (detail !== undefined) status.detail = detail;
      out[lane.name] = status;
    }
    return out;
  }

  /** Re-enables a destination disabled by a 410; its pending deliveries flow again. */
  enable(name: string): void {
    const lane = this.#lanes.get(name);
    if (!lane) throw new EdgehookError("EDGEHOOK_NOT_FOUND", `no destination named ${name}`);
    this.#outbox.enableDestination(name);
    if (lane.state === "disabled") {
      this.#setState(lane, "up", undefined);
      this.#log.info({ destination: name }, `destination ${name} enabled; delivering its pending webhooks`);
    }
    this.#toPump.add(lane);
    this.#schedulePumps();
  }

  /**
   * Resolves once no request is in flight, every outcome is written and no pass is queued:
   * the dispatcher is waiting for time to pass or for new work (tests, benchmarks).
   */
  whenIdle(): Promise<void> {
    if (this.#isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  // ------------------------------------------------------------ lanes

  #newLane(name: string, config: DestinationConfig, transport: Transport): Lane {
    return {
      name,
      config,
      transport,
      state: "up",
      since: this.#clock.now(),
      detail: undefined,
      flights: new Map(),
      abort: laneAbort(),
      unwritten: 0,
      exclude: new Set(),
      after: new Map(),
      probe: new OfflineProbe(this.#clock, this.#random),
      newWork: false,
      outages: new OutageLog(this.#clock),
      generation: 0,
      offlineWrittenAt: Number.NEGATIVE_INFINITY,
      resent: new Set(),
      bucket: config.rate_limit ? new TokenBucket(config.rate_limit, this.#clock) : undefined,
      timer: undefined,
      timerAt: 0,
      removed: false,
      fillSince: undefined,
      pins: new Map(),
      retryAt: undefined,
    };
  }

  /** The transport of one destination. Reads its files now (start or reload). */
  #transport(config: DestinationConfig): Transport {
    return transportFor(config.url, this.#transports).create(config, { baseDir: this.#baseDir, env: this.#env });
  }

  /** Changes when a reload needs a new transport for the destination. */
  #connectionKey(config: DestinationConfig): string {
    const factory = transportFor(config.url, this.#transports);
    return JSON.stringify([factory.schemes, factory.connectionKey(config)]);
  }

  /** Disabled destinations with their reason and since (epoch ms). */
  #disabledFlags(): Map<string, { reason: string; since: number }> {
    const flags = this.#outbox.destinationFlags();
    const entries: [string, FlagLike][] = flags instanceof Map ? [...flags] : Object.entries(flags);
    const out = new Map<string, { reason: string; since: number }>();
    for (const [name, f] of entries) {
      if (f.disabled) out.set(name, { reason: f.reason ?? "disabled", since: f.since ?? this.#clock.now() });
    }
    return out;
  }

  #setState(lane: Lane, state: DestinationState, detail: string | undefined): void {
    lane.state = state;
    lane.since = this.#clock.now();
    lane.detail = detail;
    this.#gauge(lane);
  }

  #gauge(lane: Lane): void {
    const current = this.#clockHeld && lane.state !== "disabled" ? "down" : lane.state;
    for (const s of STATES)
      this.#metrics.destinationUp.set({ destination: lane.name, state: s }, s === current ? 1 : 0);
  }

  // ------------------------------------------------------------ passes

  #schedulePumps(): void {
    if (this.#pumpImmediate || this.#toPump.size === 0) return;
    this.#pumpImmediate = setImmediate(() => {
      this.#pumpImmediate = undefined;
      const lanes = [...this.#toPump];
      this.#toPump.clear();
      for (const lane of lanes) this.#pump(lane);
      this.#resolveIdle();
    });
  }

  #arm(lane: Lane, ms: number): void {
    const at = this.#clock.monotonic() + ms;
    if (lane.timer && lane.timerAt <= at) return;
    this.#clearTimer(lane);
    lane.timerAt = at;
    lane.timer = this.#clock.setTimeout(() => {
      lane.timer = undefined;
      this.#pump(lane);
    }, ms);
  }

  #clearTimer(lane: Lane): void {
    if (lane.timer) this.#clock.clearTimeout(lane.timer);
    lane.timer = undefined;
  }

  #held(): boolean {
    const held = this.#clockSynced !== undefined && !this.#clockSynced();
    if (held !== this.#clockHeld) {
      this.#clockHeld = held;
      if (held) {
        this.#log.warn(
          { code: "EDGEHOOK_CLOCK_UNSYNCED" },
          "system clock is not synchronised: holding webhooks (their signatures would carry a wrong timestamp)",
        );
      } else {
        this.#log.info("system clock synchronised: delivering webhooks");
      }
      for (const lane of this.#lanes.values()) this.#gauge(lane);
    }
    return held;
  }

  /** Looks again, on a slow cadence, at lanes that wait for something outside the dispatcher. */
  #scheduleRecheck(): void {
    if (this.#stopping) return;
    this.#recheck = this.#clock.setTimeout(() => {
      this.#recheck = undefined;
      this.#recheckNow();
      this.#scheduleRecheck();
    }, RECHECK_MS);
    this.#recheck.unref?.();
  }

  #recheckNow(): void {
    for (const lane of this.#lanes.values()) {
      const flaps = lane.outages.due(lane.state === "down");
      if (flaps) this.#logFlaps(lane, flaps);
    }
    const wasHeld = this.#clockHeld;
    if (!this.#held() && wasHeld) this.wake();
    // Deliveries another process put back to pending (`edgehook queue replay`) are due now,
    // but no commit of ours wakes a lane for them and an idle lane has no timer armed.
    try {
      const v = this.#outbox.dataVersion?.();
      if (v !== this.#dataVersion) {
        this.#dataVersion = v;
        this.wake();
      }
    } catch {
      // The outbox is closing; nothing to look at.
    }
    // `edgehook destination enable NAME` from the command line writes the flag in the outbox.
    const disabledLanes = [...this.#lanes.values()].filter((l) => l.state === "disabled");
    if (disabledLanes.length === 0) return;
    let flags: Map<string, { reason: string; since: number }>;
    try {
      flags = this.#disabledFlags();
    } catch {
      return;
    }
    for (const lane of disabledLanes) {
      if (flags.has(lane.name)) continue;
      this.#setState(lane, "up", undefined);
      this.#log.info({ destination: lane.name }, `destination ${lane.name} enabled; delivering its pending webhooks`);
      this.#toPump.add(lane);
    }
    this.#schedulePumps();
  }

  #pump(lane: Lane): void {
    if (this.#stopping || lane.removed || lane.state === "disabled") return;
    if (this.#held()) return; // the recheck cadence wakes every lane once synced
    const now = this.#clock.now();
    const perRequest = lane.config.batch?.max_events ?? 1;
    try {
      if (lane.state === "down") {
        // One request at a time while down: requests sent before the outage was noticed
        // finish (or time out) first; their completion brings us back here.
        if (lane.flights.size > 0) return;
        const wait = lane.probe.waitMs(lane.newWork);
        if (wait === undefined) return; // the one probe is in flight
        if (wait > 0) {
          this.#arm(lane, wait);
          return;
        }
        // A batch lane probes with a whole batch: the backlog is old, there is nothing to wait for.
        const heads = this.#outbox.next(lane.name, now, perRequest, lane.exclude, lane.after);
        if (heads.length === 0) {
          this.#sleepUntilDue(lane, now);
          return;
        }
        const { ready, rest } = this.#group(lane, heads, perRequest);
        lane.probe.begin(lane.newWork);
        lane.newWork = false;
        lane.fillSince = undefined;
        this.#send(lane, ready[0] ?? rest, true);
        return;
      }
      const free = lane.config.concurrency - lane.flights.size;
      if (free <= 0) return; // a completion pumps again
      let limit = free;
      if (lane.bucket) {
        const tokens = lane.bucket.available();
        if (tokens <= 0) {
          this.#arm(lane, lane.bucket.waitMs());
          return;
        }
        limit = Math.min(limit, tokens);
      }
      const rows = this.#outbox.next(lane.name, now, limit * perRequest, lane.exclude, lane.after);
      const { ready, rest } = this.#group(lane, rows, perRequest);
      let sent = 0;
      // Full requests go at once (one delivery each, max_events per batch, or a retried batch).
      for (const group of ready) {
        if (sent >= limit) break;
        lane.bucket?.take(1);
        this.#send(lane, group, false);
        sent++;
      }
      // A new partial batch starts waiting now (the lane-side bound of max_wait).
      if (sent > 0) lane.fillSince = undefined;
      if (rest.length === 0) {
        lane.fillSince = undefined;
      } else if (sent < limit) {
        // A partial batch: wait up to max_wait for it to fill (a wake() on new deliveries or
        // this timer looks again), then send what there is.
        const wait = this.#fillWait(lane, rest, now);
        if (wait <= 0) {
          lane.fillSince = undefined;
          lane.bucket?.take(1);
          this.#send(lane, rest, false);
          sent++;
        } else {
          if (lane.retryAt !== undefined && lane.retryAt <= now) lane.retryAt = undefined;
          this.#arm(lane, lane.retryAt === undefined ? wait : Math.min(wait, lane.retryAt - now));
          return;
        }
      }
      if (rows.length < limit * perRequest) {
        if (lane.unwritten > 0) {
          // Starved: the remaining series only wait for their outcomes to be written. Once
          // the last request is back, write now instead of after the batching delay (this is
          // what limits a few busy series); otherwise the next completion or the delay does.
          // Either way the write schedules the next pass.
          if (lane.flights.size === 0) this.#flush();
          return;
        }
        this.#sleepUntilDue(lane, now);
      } else if (limit < free && lane.bucket) this.#arm(lane, lane.bucket.waitMs());
    } catch (err) {
      const n = this.#quiet.shouldLog(`${lane.name}:outbox`);
      if (n !== undefined) this.#log.error({ err, destination: lane.name, suppressed: n }, "reading the outbox failed");
      this.#arm(lane, 1_000);
    }
  }

  /**
   * Splits due heads (in queue order) into requests. Without batching, one per delivery.
   * With batching: the members of a batch that failed go together again, at once; the
   * others fill batches of `perRequest` in queue order, and a last partial one is `rest`.
   */
  #group(lane: Lane, rows: Delivery[], perRequest: number): { ready: Delivery[][]; rest: Delivery[] } {
    if (lane.config.batch === undefined) return { ready: rows.map((r) => [r]), rest: [] };
    const ready: Delivery[][] = [];
    const fresh: Delivery[] = [];
    const pinned = new Map<string, Delivery[]>();
    for (const r of rows) {
      const key = lane.pins.get(r.id);
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
  #fillWait(lane: Lane, rows: readonly Delivery[], now: number): number {
    const maxWait = lane.config.batch?.max_wait ?? 0;
    if (maxWait <= 0) return 0;
    // A retry goes on its schedule: its batch was formed when it was first sent.
    if (rows.some((r) => r.attempts > 0)) return 0;
    const mono = this.#clock.monotonic();
    lane.fillSince ??= mono;
    let oldest = now;
    for (const r of rows) oldest = Math.min(oldest, r.createdAt);
    return Math.max(0, Math.min(oldest + maxWait - now, lane.fillSince + maxWait - mono));
  }

  /** Nothing more is due now: sleep until the next head is due (or a wake/completion). */
  #sleepUntilDue(lane: Lane, now: number): void {
    const due = this.#outbox.nextDueAt(lane.name);
    if (due === undefined) return;
    if (due > now) {
      this.#arm(lane, due - now);
    } else if (lane.flights.size === 0 && lane.exclude.size === 0) {
      // Due but not returned (e.g. written by another process between the two reads):
      // look again shortly rather than spin or stall.
      this.#arm(lane, 1_000);
    }
  }

  // ------------------------------------------------------------ attempts

  /**
   * One attempt of `deliveries` (a batch on a batch lane, even of one event): prepared
   * (rendered and signed for this attempt's time) by the lane's transport and sent. Anything
   * that cannot be prepared is unsendable; a batch is split so that only its bad members die.
   */
  #send(lane: Lane, deliveries: Delivery[], probe: boolean): void {
    const at = this.#clock.now();
    const started = this.#clock.monotonic();
    const first = deliveries[0] as Delivery;
    const nowSec = Math.floor(at / 1000);
    let attempt: Attempt | undefined;
    let unsendable: unknown;
    try {
      attempt = lane.transport.prepare(deliveries, lane.config, nowSec);
    } catch (error) {
      if (deliveries.length > 1) {
        // Find the member(s) that cannot be rendered: they die alone, the others go on.
        const bad: Delivery[] = [];
        const good: Delivery[] = [];
        for (const d of deliveries) {
          try {
            lane.transport.prepare([d], lane.config, nowSec);
            good.push(d);
          } catch {
            bad.push(d);
          }
        }
        if (bad.length > 0 && good.length > 0) {
          this.#send(lane, bad, false);
          this.#send(lane, good, probe);
          return;
        }
      }
      unsendable = error;
    }
    // Series alone is enough: each in-flight delivery is the head of its series, and the
    // outbox over-fetches by exclude.size, so ids would only double that.
    for (const d of deliveries) lane.exclude.add(d.series);
    const flight: Flight = { deliveries, probe, generation: lane.generation, aborted: false, done: Promise.resolve() };
    lane.flights.set(first.id, flight);
    const attemptId =
      attempt?.id ?? (lane.config.batch !== undefined ? batchId(deliveries.map((d) => d.eventId)) : first.eventId);
    const outcome: Promise<Outcome> =
      attempt === undefined
        ? Promise.resolve({ kind: "unsendable", error: unsendable })
        : lane.transport.send(attempt, { signal: lane.abort.signal, keepAnswer: this.#onAttempt !== undefined });
    flight.done = outcome
      .then((o) => {
        this.#onAttempt?.(attemptInfo(attemptId, lane.name, o));
        this.#onOutcome(lane, flight, o, at, started);
      })
      .catch((err: unknown) => {
        // A bug here must not become an unhandled rejection that kills the agent; the
        // deliveries stay pending and are sent again.
        lane.flights.delete(first.id);
        for (const d of deliveries) lane.exclude.delete(d.series);
        this.#log.error({ err, destination: lane.name }, "internal error while recording a delivery outcome");
        this.#resolveIdle();
      });
  }

  #onOutcome(lane: Lane, flight: Flight, outcome: Outcome, at: number, started: number): void {
    const { deliveries } = flight;
    lane.flights.delete((deliveries[0] as Delivery).id);
    if (flight.aborted) {
      // Shutdown: no outcome to record; the deliveries stay pending as they were.
      for (const d of deliveries) lane.exclude.delete(d.series);
      if (flight.probe) lane.probe.released();
      this.#resolveIdle();
      return;
    }
    const durationMs = Math.round(this.#clock.monotonic() - started);
    const now = this.#clock.now();
    if (outcome.kind === "response") {
      this.#metrics.deliveryLatency.observe({ destination: lane.name }, durationMs / 1000);
    }
    // One jitter draw per request: members of a batch with the same history get the same
    // next try, so the batch is formed again from the same heads.
    const draw = this.#random();
    const policy = { retry_schedule: lane.config.retry_schedule, max_attempts: lane.config.max_attempts };
    const actions = new Set<string>();
    const pinKey =
      lane.config.batch !== undefined && deliveries.length > 1 ? batchId(deliveries.map((d) => d.eventId)) : undefined;
    if (pinKey !== undefined && lane.pins.size + deliveries.length > PIN_MAX) lane.pins.clear();
    const current = flight.generation === lane.generation;
    if (!current && flight.probe) lane.probe.released();
    for (const delivery of deliveries) {
      let decision = decide(outcome, {
        attempts: delivery.attempts,
        policy,
        now,
        random: () => draw,
        resent: lane.resent.has(delivery.id),
      });
      if (!current && decision.action !== "delivered") {
        // Sent to where the destination was before a reload moved it: whatever went wrong
        // there says nothing about the new address. Due again at once, nothing spent.
        decision = {
          action: "retry",
          class: decision.class,
          nextAt: now,
          error: describeStale(decision),
          counted: false,
        };
      }
      this.#metrics.deliveries.inc({ destination: lane.name, class: decision.class });
      const attempt: AttemptRecord = { at, durationMs };
      if (outcome.kind === "response") attempt.status = outcome.status;
      if (decision.action !== "delivered") {
        attempt.error = decision.action === "dead" ? decision.reason : decision.error;
      }
      let settlement: Settlement;
      switch (decision.action) {
        case "delivered":
          settlement = { id: delivery.id, outcome: "delivered", attempt };
          break;
        case "offline":
          settlement = { id: delivery.id, outcome: "retry", attempt, nextAt: now, counted: false };
          break;
        case "retry":
          settlement = {
            id: delivery.id,
            outcome: "retry",
            attempt,
            nextAt: decision.nextAt,
            counted: decision.counted,
          };
          if (lane.config.batch !== undefined)
            lane.retryAt = Math.min(lane.retryAt ?? decision.nextAt, decision.nextAt);
          break;
        case "dead":
          settlement = { id: delivery.id, outcome: "dead", attempt, reason: decision.reason };
          break;
      }
      if (pinKey !== undefined && (decision.action === "retry" || decision.action === "offline")) {
        lane.pins.set(delivery.id, pinKey);
      } else {
        lane.pins.delete(delivery.id);
      }
      if (current && decision.action === "retry" && !decision.counted) {
        if (lane.resent.size >= PIN_MAX) lane.resent.clear();
        lane.resent.add(delivery.id);
      } else if (decision.action !== "retry" && decision.action !== "offline") {
        lane.resent.delete(delivery.id);
      }
      // State changes and logs once per kind of decision, not once per batch member. An
      // outcome from before a reload moved the destination says nothing about it now.
      if (current && !actions.has(decision.action)) {
        actions.add(decision.action);
        this.#transition(lane, flight, decision);
      }
      if (decision.action === "offline" && !this.#recordOffline(lane, actions)) {
        // Nothing durable changes (no attempt spent, still due): while a destination is
        // down its probes are recorded at most once a minute, not once a second.
        lane.exclude.delete(delivery.series);
        continue;
      }
      this.#queueSettle({ lane, settlement, series: delivery.series });
    }
    // Other series can go out while this outcome waits to be written.
    if (this.#worthAPass(lane)) {
      this.#toPump.add(lane);
      this.#schedulePumps();
    }
    this.#resolveIdle();
  }

  /**
   * Whether to write an offline outcome: the first of a request (all members of a batch), then
   * at most one a minute per destination, so `edgehook queue show` tells why a delivery
   * waits without a write a second to the SD card.
   */
  #recordOffline(lane: Lane, actions: Set<string>): boolean {
    if (actions.has("offline-recorded")) return true;
    const mono = this.#clock.monotonic();
    if (mono - lane.offlineWrittenAt < OFFLINE_RECORD_MS) return false;
    lane.offlineWrittenAt = mono;
    actions.add("offline-recorded");
    return true;
  }

  /** Destination state and logging after one outcome. */
  #transition(lane: Lane, flight: Flight, decision: Decision): void {
    const name = lane.name;
    if (decision.class === "unsendable") {
      // Nothing went on the wire: says nothing about the receiver; a probe may go again now.
      if (flight.probe) lane.probe.released();
      const n = this.#quiet.shouldLog(`${name}:unsendable`);
      if (n !== undefined) {
        this.#log.error(
          { destination: name, reason: decision.action === "dead" ? decision.reason : undefined, suppressed: n },
          `destination ${name}: a webhook cannot be built and is dead (${decision.action === "dead" ? decision.reason : ""}); see edgehook queue list`,
        );
      }
      return;
    }
    if (decision.action === "offline") {
      if (lane.state === "up") {
        this.#wentDown(lane, decision.error);
      } else if (flight.probe) {
        lane.probe.failed();
        lane.detail = decision.error;
        const n = this.#quiet.shouldLog(`${name}:down`);
        if (n !== undefined) {
          const downMs = this.#clock.now() - lane.since;
          this.#log.warn(
            {
              destination: name,
              error: decision.error,
              downSince: new Date(lane.since).toISOString(),
              downSeconds: Math.round(downMs / 1000),
              probes: n + 1,
              backlog: this.#backlog(name),
            },
            `destination ${name} still unreachable after ${span(downMs)} (${decision.error}); ${this.#backlog(name)} webhook(s) waiting, probing every second`,
          );
        }
        this.#arm(lane, lane.probe.waitMs(lane.newWork) ?? PROBE_INTERVAL_MS);
      }
      return;
    }
    // Any HTTP answer, or a connection made, means the receiver is reachable.
    if (flight.probe) lane.probe.released();
    if (lane.state === "down") this.#cameBack(lane);
    if (decision.action === "dead") {
      if (decision.disable && lane.state !== "disabled") {
        this.#setState(lane, "disabled", decision.reason);
        try {
          this.#outbox.setDestinationDisabled(name, decision.reason);
        } catch (err) {
          this.#log.error({ err, destination: name }, "could not persist the disabled flag");
        }
        this.#clearTimer(lane);
        this.#log.error(
          { destination: name, code: "EDGEHOOK_DESTINATION_DISABLED" },
          `destination ${name} answered 410 Gone and is disabled; its webhooks stay queued. Fix the receiver or the url, then run: edgehook destination enable ${name}`,
        );
        return;
      }
      const n = this.#quiet.shouldLog(`${name}:dead`);
      if (n !== undefined) {
        this.#log.warn(
          { destination: name, reason: decision.reason, suppressed: n },
          `destination ${name} rejected a webhook for good (${decision.reason}); see edgehook queue list --state dead`,
        );
      }
    } else if (decision.action === "retry") {
      const n = this.#quiet.shouldLog(`${name}:retry`);
      if (n !== undefined) {
        this.#log.warn(
          { destination: name, error: decision.error, suppressed: n },
          decision.counted
            ? `destination ${name} failed a webhook (${decision.error}); retrying it on the schedule, its series waits, other series go on`
            : `destination ${name} closed the connection before answering (${decision.error}); sending the webhook again at once`,
        );
      }
    }
  }

  #wentDown(lane: Lane, error: string): void {
    const name = lane.name;
    this.#setState(lane, "down", error);
    lane.probe.reset();
    lane.newWork = false;
    this.#quiet.reset(`${name}:down`);
    this.#quiet.shouldLog(`${name}:down`);
    const { log, summary } = lane.outages.down();
    if (summary) this.#logFlaps(lane, summary);
    if (log) {
      const backlog = this.#backlog(name);
      this.#log.warn(
        { destination: name, error, backlog },
        `destination ${name} unreachable (${error}); ${backlog} webhook(s) wait in the outbox, probing every second`,
      );
    }
    this.#arm(lane, lane.probe.waitMs() ?? PROBE_INTERVAL_MS);
  }

  #cameBack(lane: Lane): void {
    const downMs = this.#clock.now() - lane.since;
    this.#setState(lane, "up", undefined);
    if (!lane.outages.up(downMs)) return;
    const backlog = this.#backlog(lane.name);
    this.#log.info(
      { destination: lane.name, downSeconds: Math.round(downMs / 100) / 10, backlog },
      `destination ${lane.name} reachable again after ${span(downMs)}; sending the ${backlog} webhook(s) that waited`,
    );
  }

  #logFlaps(lane: Lane, f: FlapSummary): void {
    this.#log.warn(
      {
        destination: lane.name,
        outages: f.outages,
        downSeconds: Math.round(f.downMs / 100) / 10,
        windowSeconds: Math.round(f.windowMs / 1000),
        state: lane.state,
        backlog: this.#backlog(lane.name),
      },
      `destination ${lane.name} flapping: unreachable ${f.outages} more time(s) in the last ${span(f.windowMs)} (${span(f.downMs)} down in all); now ${lane.state}, ${this.#backlog(lane.name)} webhook(s) waiting`,
    );
  }

  /** Pending deliveries of a destination (0 when the outbox cannot say). */
  #backlog(name: string): number {
    try {
      return this.#outbox.pendingCount(name);
    } catch {
      return 0;
    }
  }

  // ------------------------------------------------------------ settling

  #queueSettle(p: PendingSettle): void {
    const { settlement, lane } = p;
    if (settlement.outcome !== "retry" && this.#pending.length < PIPELINE_MAX && lane.state !== "disabled") {
      // Delivered or dead: nothing about it changes any more, so the next event of the
      // series may go while this waits to be written. After a crash in between, this one
      // is sent again (same webhook-id) after the later one; first arrivals stay in order.
      lane.after.set(p.series, settlement.id);
      lane.exclude.delete(p.series);
      p.released = true;
    }
    this.#pending.push(p);
    lane.unwritten++;
    if (this.#pending.length >= SETTLE_BATCH_MAX || this.#stopping) {
      this.#flush();
    } else if (!this.#settleTimer) {
      this.#settleTimer = setTimeout(() => {
        this.#settleTimer = undefined;
        this.#flush();
      }, this.#settleDelayMs);
    }
  }

  #flush(): void {
    if (this.#settleTimer) clearTimeout(this.#settleTimer);
    this.#settleTimer = undefined;
    if (this.#pending.length === 0) return;
    const batch = this.#pending;
    this.#pending = [];
    try {
      this.#outbox.settle(batch.map((p) => p.settlement));
    } catch (err) {
      // Keep the series excluded (or, delivered ones, in `after`) and try again: releasing
      // them would resend deliveries whose outcome is known but not yet written.
      const n = this.#quiet.shouldLog("settle");
      if (n !== undefined) this.#log.error({ err, suppressed: n }, "writing delivery outcomes failed; retrying");
      this.#pending = batch.concat(this.#pending);
      if (!this.#stopping) {
        this.#settleTimer = setTimeout(() => {
          this.#settleTimer = undefined;
          this.#flush();
        }, 1_000);
      }
      return;
    }
    for (const p of batch) {
      p.lane.unwritten--;
      if (!p.released) p.lane.exclude.delete(p.series);
      else if (p.lane.after.get(p.series) === p.settlement.id) p.lane.after.delete(p.series);
      if (!this.#stopping && this.#worthAPass(p.lane)) this.#toPump.add(p.lane);
    }
    this.#schedulePumps();
    this.#resolveIdle();
  }

  /**
   * Refill in chunks (a quarter of the lane) so one outbox read serves several requests; a
   * lane with fewer free slots gets its pass from a later completion, which always comes.
   */
  #worthAPass(lane: Lane): boolean {
    if (lane.state !== "up") return true;
    return lane.config.concurrency - lane.flights.size >= Math.max(1, lane.config.concurrency >> 2);
  }

  #isIdle(): boolean {
    if (this.#pending.length > 0 || this.#pumpImmediate !== undefined) return false;
    for (const lane of this.#lanes.values()) if (lane.flights.size > 0) return false;
    return true;
  }

  #resolveIdle(): void {
    if (this.#idleWaiters.length === 0 || !this.#isIdle()) return;
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const w of waiters) w();
  }
}

function describeStale(d: Decision): string {
  const why = d.action === "dead" ? d.reason : d.action === "delivered" ? "" : d.error;
  return `sent before a reload changed the destination (${why})`;
}

/** What onAttempt reports for one attempt's outcome. */
function attemptInfo(eventId: string, destination: string, outcome: Outcome): AttemptInfo {
  switch (outcome.kind) {
    case "response": {
      const info: AttemptInfo = { eventId, destination, status: outcome.status };
      if (outcome.answer) {
        info.headers = outcome.answer.headers;
        info.body = outcome.answer.body;
      }
      return info;
    }
    case "error":
      return { eventId, destination, error: describeError(outcome.error) };
    case "unsendable":
      // A code to branch on, and the reason.
      return { eventId, destination, code: "EDGEHOOK_REQUEST_UNSENDABLE", error: unsendableReason(outcome.error) };
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
