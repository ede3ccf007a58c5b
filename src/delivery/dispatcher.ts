/**
 * Drains the outbox to the destinations (design invariants 2-5). The dispatcher ties the
 * delivery modules together and owns their lifecycle (start, reload, stop):
 *
 *   lane.ts           per destination: up / down (probed one request at a time) / disabled
 *                     (a 410), requests in flight, series held back, outages, batch pins
 *   pump.ts           one pass over a lane: which due heads go now (concurrency, rate
 *                     limit, batching); sleeps until `outbox.nextDueAt`, no polling loop
 *   send.ts           one attempt: the transport prepares (signs) and sends it; the outcome
 *                     is decided (policy.ts), moves the lane and goes to the settle writer
 *   settle-writer.ts  outcomes written with one `outbox.settle`: delivered ones within 1 s,
 *                     failed and dead ones within 50 ms
 *   transport.ts      the seam to the wire; transports.ts picks one per url scheme
 *
 * Order per series: the outbox returns only the head (earliest pending delivery) of each
 * series, and every series with a request in flight OR a failed outcome not yet written
 * (the retry time is not on disk yet) is passed in `exclude`, so a later event of a series
 * is never sent while an earlier one is in flight or waiting for a retry. Different series
 * go out concurrently. Once a delivery is delivered (or dead) the next event of its series
 * may go while that outcome still waits to be written (settle-writer.ts explains why
 * nothing is lost by it).
 *
 * Only a failure to connect takes a destination down (policy.ts); a request that was sent
 * and then failed spends an attempt of its own delivery and holds back only its series. A
 * reload that changes the url or transport ends an outage and makes waiting retries due
 * (the fix is usually in the config). Here too: the hold while the system clock is not
 * synchronised, and a slow recheck for what other processes change in the outbox
 * (`edgehook queue replay`, `edgehook destination enable`).
 *
 * Time: retry, probe and rate-limit waits run on the injected Clock, so tests can simulate
 * an hour of downtime. The settle batching delay and the pass coalescing (one pass per lane
 * per event-loop turn) use the event loop directly (setTimeout/setImmediate): they group
 * I/O and must keep running even when a test freezes the logical clock. The outbox is seen
 * only through `OutboxReader` and the destination switches (`DispatcherOutbox`).
 */
import type { Clock, TimerHandle } from "../clock.js";
import type { DestinationConfig } from "../config/schema.js";
import { EdgehookError } from "../errors.js";
import { type Logger, RateLimitedLog } from "../ops/logger.js";
import type { Metrics } from "../ops/metrics.js";
import {
  type DestinationStatus,
  type DispatcherOutbox,
  type FlagLike,
  Lane,
  type LaneContext,
  STATES,
} from "./lane.js";
import { TokenBucket } from "./policy.js";
import { type PumpContext, pass } from "./pump.js";
import { type AttemptInfo, Sender } from "./send.js";
import { SETTLE_DELAY_MS, SETTLE_SOON_MS, SettleWriter } from "./settle-writer.js";
import type { Transport } from "./transport.js";
import { TRANSPORTS, type TransportRegistry, transportFor } from "./transports.js";

export type {
  DestinationState,
  DestinationStatus,
  DestinationSwitches,
  DispatcherOutbox,
  FlagLike,
} from "./lane.js";
export type { AttemptInfo } from "./send.js";

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
   * Longest wait before outcomes are written (default: 1 s for delivered ones, 50 ms for
   * failed and dead ones; this sets both). Delivered ones do not hold their series back
   * meanwhile (pipelining), so a longer wait costs nothing but more resends after a crash,
   * and saves transactions (each one an fsync on the SD card).
   */
  settleDelayMs?: number;
  /**
   * Called after every attempt with what the receiver answered (the first bytes of its
   * body) or the error; `edgehook send-test` prints it. When unset, answers are discarded.
   */
  onAttempt?: (info: AttemptInfo) => void;
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
  readonly #sender: Sender;
  readonly #pumpContext: PumpContext;
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
      soonMs: options.settleDelayMs ?? SETTLE_SOON_MS,
      stopping: () => this.#stopping,
      written: (batch) => {
        for (const p of batch) if (!this.#stopping && this.#worthAPass(p.lane)) this.#toPump.add(p.lane);
        this.#schedulePumps();
        this.#resolveIdle();
      },
    });
    this.#sender = new Sender({
      clock: this.#clock,
      log: this.#log,
      metrics: this.#metrics,
      random: this.#random,
      settler: this.#settler,
      onAttempt: options.onAttempt,
      recorded: (lane) => {
        if (this.#worthAPass(lane)) {
          this.#toPump.add(lane);
          this.#schedulePumps();
        }
        this.#resolveIdle();
      },
      idle: () => this.#resolveIdle(),
    });
    this.#pumpContext = {
      outbox: this.#outbox,
      clock: this.#clock,
      log: this.#log,
      quiet: () => this.#quiet,
      send: (lane, deliveries, probe) => this.#sender.send(lane, deliveries, probe),
      flush: () => this.#settler.flush(),
    };
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
    // Outcomes waiting to be written ride on the outbox's next transaction (an event
    // committed), so at a few events a second they cost no transaction of their own.
    this.#outbox.carry?.(this.#settler);
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
    // What could not be written stays pending on disk and is sent again by the next start.
    // Said here once, whatever the rate limit kept of the write errors before it.
    const unwritten = this.#settler.size;
    if (unwritten > 0) {
      this.#log.warn(
        { unwritten },
        "shutdown: delivery outcomes could not be written; those deliveries stay pending and are sent again after the restart",
      );
    }
    this.#outbox.carry?.(undefined);
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
   * Whether a destination that is up has requests in flight: ingest then leaves delivery
   * its share of the thread (sources/mqtt-intake.ts, fair share). A destination that is down
   * (probing) or disabled needs no share.
   */
  sending(): boolean {
    for (const lane of this.#lanes.values()) if (lane.state === "up" && lane.flights.size > 0) return true;
    return false;
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
    pass(lane, this.#pumpContext);
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
