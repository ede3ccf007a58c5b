import type { Clock, TimerHandle } from "../clock.js";
import type { DestinationConfig } from "../config/schema.js";
import { EdgehookError, type ErrorCode } from "../errors.js";
import { type Logger, RateLimitedLog } from "../ops/logger.js";
import type { Metrics } from "../ops/metrics.js";
import type { AttemptRecord, Delivery } from "../store/types.js";
import {
  type DestinationStatus,
  type DispatcherOutbox,
  type FlagLike,
  type Flight,
  Lane,
  type LaneContext,
  PIN_MAX,
  STATES,
} from "./lane.js";
import { type Decision, decide, describeError, type Outcome, TokenBucket, unsendableReason } from "./policy.js";
import { batchId } from "./render.js";
import { SETTLE_DELAY_MS, SettleWriter, settlementFor } from "./settle-writer.js";
import type { Attempt, Transport } from "./transport.js";
import { TRANSPORTS, type TransportRegistry, transportFor } from "./transports.js";

export type {
  DestinationState,
  DestinationStatus,
  DestinationSwitches,
  DispatcherOutbox,
  FlagLike,
} from "./lane.js";

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
/** How often a held lane (clock) or a disabled one (enabled from the CLI) is looked at again. */
const RECHECK_MS = 5_000;

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
  readonly #baseDir: string | undefined;
  readonly #transports: TransportRegistry;
  readonly #laneContext: LaneContext;
  readonly #lanes = new Map<string, Lane>();
  #quiet!: RateLimitedLog;
  #started = false;
  #stopping = false;
  #toPump = new Set<Lane>();
  #pumpImmediate: NodeJS.Immediate | undefined;
  readonly #settler: SettleWriter;
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
    this.#baseDir = options.baseDir;
    this.#transports = options.transports ?? TRANSPORTS;
    this.#laneContext = {
      clock: this.#clock,
      log: this.#log,
      metrics: this.#metrics,
      outbox: this.#outbox,
      random: this.#random,
      quiet: () => this.#quiet,
      clockHeld: () => this.#clockHeld,
      pump: (lane) => this.#pump(lane),
    };
    this.#settler = new SettleWriter({
      outbox: this.#outbox,
      log: this.#log,
      quiet: () => this.#quiet,
      delayMs: options.settleDelayMs ?? SETTLE_DELAY_MS,
      stopping: () => this.#stopping,
      written: (batch) => {
        for (const p of batch) if (!this.#stopping && this.#worthAPass(p.lane)) this.#toPump.add(p.lane);
        this.#schedulePumps();
        this.#resolveIdle();
      },
    });
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
      const lane = new Lane(name, config, transport, this.#laneContext);
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
      lane.gauge();
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
    for (const lane of this.#lanes.values()) lane.clearTimer();

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
    this.#settler.flush();
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
      lane.clearTimer();
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
        const fresh = new Lane(name, config, transport, this.#laneContext);
        this.#lanes.set(name, fresh);
        fresh.gauge();
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
      lane.clearTimer();
      lane.setState("up", undefined);
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
      lane.setState("up", undefined);
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
      for (const lane of this.#lanes.values()) lane.gauge();
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
      if (flaps) lane.logFlaps(flaps);
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
      lane.setState("up", undefined);
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
          lane.arm(wait);
          return;
        }
        // A batch lane probes with a whole batch: the backlog is old, there is nothing to wait for.
        const heads = this.#outbox.next(lane.name, now, perRequest, lane.exclude, lane.after);
        if (heads.length === 0) {
          this.#sleepUntilDue(lane, now);
          return;
        }
        const { ready, rest } = lane.group(heads, perRequest);
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
          lane.arm(lane.bucket.waitMs());
          return;
        }
        limit = Math.min(limit, tokens);
      }
      const rows = this.#outbox.next(lane.name, now, limit * perRequest, lane.exclude, lane.after);
      const { ready, rest } = lane.group(rows, perRequest);
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
        const wait = lane.fillWait(rest, now);
        if (wait <= 0) {
          lane.fillSince = undefined;
          lane.bucket?.take(1);
          this.#send(lane, rest, false);
          sent++;
        } else {
          if (lane.retryAt !== undefined && lane.retryAt <= now) lane.retryAt = undefined;
          lane.arm(lane.retryAt === undefined ? wait : Math.min(wait, lane.retryAt - now));
          return;
        }
      }
      if (rows.length < limit * perRequest) {
        if (lane.unwritten > 0) {
          // Starved: the remaining series only wait for their outcomes to be written. Once
          // the last request is back, write now instead of after the batching delay (this is
          // what limits a few busy series); otherwise the next completion or the delay does.
          // Either way the write schedules the next pass.
          if (lane.flights.size === 0) this.#settler.flush();
          return;
        }
        this.#sleepUntilDue(lane, now);
      } else if (limit < free && lane.bucket) lane.arm(lane.bucket.waitMs());
    } catch (err) {
      const n = this.#quiet.shouldLog(`${lane.name}:outbox`);
      if (n !== undefined) this.#log.error({ err, destination: lane.name, suppressed: n }, "reading the outbox failed");
      lane.arm(1_000);
    }
  }

  /** Nothing more is due now: sleep until the next head is due (or a wake/completion). */
  #sleepUntilDue(lane: Lane, now: number): void {
    const due = this.#outbox.nextDueAt(lane.name);
    if (due === undefined) return;
    if (due > now) {
      lane.arm(due - now);
    } else if (lane.flights.size === 0 && lane.exclude.size === 0) {
      // Due but not returned (e.g. written by another process between the two reads):
      // look again shortly rather than spin or stall.
      lane.arm(1_000);
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
      const settlement = settlementFor(delivery.id, decision, attempt, now);
      lane.remember(delivery.id, decision, pinKey, current);
      // State changes and logs once per kind of decision, not once per batch member. An
      // outcome from before a reload moved the destination says nothing about it now.
      if (current && !actions.has(decision.action)) {
        actions.add(decision.action);
        lane.transition(flight, decision);
      }
      if (decision.action === "offline" && !lane.recordOffline(actions)) {
        // Nothing durable changes (no attempt spent, still due): while a destination is
        // down its probes are recorded at most once a minute, not once a second.
        lane.exclude.delete(delivery.series);
        continue;
      }
      this.#settler.queue({ lane, settlement, series: delivery.series });
    }
    // Other series can go out while this outcome waits to be written.
    if (this.#worthAPass(lane)) {
      this.#toPump.add(lane);
      this.#schedulePumps();
    }
    this.#resolveIdle();
  }

  // ------------------------------------------------------------ settling

  /**
   * Refill in chunks (a quarter of the lane) so one outbox read serves several requests; a
   * lane with fewer free slots gets its pass from a later completion, which always comes.
   */
  #worthAPass(lane: Lane): boolean {
    if (lane.state !== "up") return true;
    return lane.config.concurrency - lane.flights.size >= Math.max(1, lane.config.concurrency >> 2);
  }

  #isIdle(): boolean {
    if (this.#settler.size > 0 || this.#pumpImmediate !== undefined) return false;
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
