/**
 * Drains the outbox to the destinations (design invariants 2-5).
 *
 * One "lane" per destination: an undici Pool (keep-alive) or, behind an HTTP(S) proxy, an
 * EnvHttpProxyAgent; at most `concurrency` requests in flight; an optional token bucket for
 * `rate_limit`; and a state: up, down (unreachable, probed one request at a time with a
 * growing interval) or disabled (a 410, until `edgehook destination enable NAME`).
 *
 * Order per series: the outbox returns only the head (earliest pending delivery) of each
 * series, and every series with a request in flight OR an outcome not yet written to the
 * outbox is passed in `exclude`, so a later event of a series is never sent while an earlier
 * one may still be pending. Different series go out concurrently.
 *
 * Throughput: outcomes are collected and written with one `outbox.settle` call every few
 * milliseconds (one SQLite transaction instead of one per webhook), and passes over a lane
 * are coalesced into one per event-loop turn. When nothing is due the lane sleeps until
 * `outbox.nextDueAt` or a `wake()`; there is no polling loop.
 *
 * Time: retry, probe and rate-limit waits run on the injected Clock, so tests can simulate
 * an hour of downtime. The settle batching delay and the pass coalescing use the event loop
 * directly (setTimeout/setImmediate): they group I/O and must keep running even when a test
 * freezes the logical clock.
 */
import { setMaxListeners } from "node:events";
import { readFileSync } from "node:fs";
import { EnvHttpProxyAgent, type Dispatcher as HttpDispatcher, Pool } from "undici";
import type { Clock, TimerHandle } from "../clock.js";
import type { DestinationConfig } from "../config/schema.js";
import { EdgehookError } from "../errors.js";
import { type Logger, RateLimitedLog } from "../ops/logger.js";
import type { Metrics } from "../ops/metrics.js";
import type { AttemptRecord, Delivery, OutboxReader, Settlement } from "../store/types.js";
import { type Decision, decide, describeError, OfflineProbe, type Outcome, TokenBucket } from "./policy.js";
import { buildRequest } from "./request.js";

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
  /** Longest wait before outcomes are written (default 5 ms). */
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
}

const CLOCK_DETAIL = "clock not synchronised";
const SETTLE_BATCH_MAX = 512;
/** How often a held lane (clock) or a disabled one (enabled from the CLI) is looked at again. */
const RECHECK_MS = 5_000;
const STATES: readonly DestinationState[] = ["up", "down", "disabled"];

interface Flight {
  delivery: Delivery;
  probe: boolean;
  aborted: boolean;
  done: Promise<void>;
}

interface Lane {
  name: string;
  config: DestinationConfig;
  http: HttpDispatcher;
  origin: string;
  path: string;
  state: DestinationState;
  since: number;
  detail: string | undefined;
  flights: Map<number, Flight>;
  /** One signal per lane aborts every request of it at shutdown (one per request costs at 5k/s). */
  abort: AbortController;
  /** Series with a delivery in flight or an outcome not yet written. */
  exclude: Set<string>;
  probe: OfflineProbe;
  bucket: TokenBucket | undefined;
  timer: TimerHandle | undefined;
  timerAt: number;
  removed: boolean;
}

interface PendingSettle {
  lane: Lane;
  settlement: Settlement;
  series: string;
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
    this.#settleDelayMs = options.settleDelayMs ?? 5;
  }

  start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#stopping = false;
    this.#quiet = new RateLimitedLog(60_000, () => this.#clock.now());
    const disabled = this.#disabledFlags();
    for (const [name, config] of Object.entries(this.#destinations)) {
      const lane = this.#newLane(name, config, this.#transport(config));
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
    this.#scheduleRecheck();
    this.wake();
  }

  /** New deliveries were committed: look at every lane soon (coalesced, cheap). */
  wake(): void {
    if (!this.#started || this.#stopping) return;
    for (const lane of this.#lanes.values()) this.#toPump.add(lane);
    this.#schedulePumps();
  }

  /**
   * Stops taking new work, lets requests in flight finish for up to `graceMs`, then aborts
   * the rest (they stay pending and are sent again after the restart), writes every
   * collected outcome and closes the connections.
   */
  async stop(graceMs: number): Promise<void> {
    if (!this.#started) return;
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
    await Promise.all([...this.#lanes.values()].map((l) => l.http.destroy().catch(() => undefined)));
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
    const transports = new Map<string, HttpDispatcher>();
    try {
      for (const [name, config] of Object.entries(destinations)) {
        const lane = this.#lanes.get(name);
        if (!lane || transportKey(lane.config) !== transportKey(config)) {
          transports.set(name, this.#transport(config));
        }
      }
    } catch (err) {
      for (const t of transports.values()) void t.destroy().catch(() => undefined);
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
      void lane.http.close().catch(() => undefined);
      this.#log.info({ destination: name }, "destination removed from the configuration");
    }
    for (const [name, config] of Object.entries(destinations)) {
      const lane = this.#lanes.get(name);
      const transport = transports.get(name);
      if (!lane) {
        const fresh = this.#newLane(name, config, transport as HttpDispatcher);
        this.#lanes.set(name, fresh);
        this.#gauge(fresh);
        this.#toPump.add(fresh);
        continue;
      }
      const oldRate = lane.config.rate_limit;
      lane.config = config;
      if (transport) {
        const old = lane.http;
        lane.http = transport;
        const url = new URL(config.url);
        lane.origin = url.origin;
        lane.path = `${url.pathname}${url.search}`;
        void old.close().catch(() => undefined);
      }
      if (oldRate !== config.rate_limit) {
        lane.bucket = config.rate_limit ? new TokenBucket(config.rate_limit, this.#clock) : undefined;
      }
      this.#toPump.add(lane);
    }
    this.#schedulePumps();
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

  #newLane(name: string, config: DestinationConfig, http: HttpDispatcher): Lane {
    const url = new URL(config.url);
    return {
      name,
      config,
      http,
      origin: url.origin,
      path: `${url.pathname}${url.search}`,
      state: "up",
      since: this.#clock.now(),
      detail: undefined,
      flights: new Map(),
      abort: laneAbort(),
      exclude: new Set(),
      probe: new OfflineProbe(this.#clock),
      bucket: config.rate_limit ? new TokenBucket(config.rate_limit, this.#clock) : undefined,
      timer: undefined,
      timerAt: 0,
      removed: false,
    };
  }

  /** The HTTP client of one destination. Reads the TLS files now (start or reload). */
  #transport(config: DestinationConfig): HttpDispatcher {
    const tls: { ca?: Buffer; cert?: Buffer; key?: Buffer; rejectUnauthorized: boolean } = {
      // Certificate verification stays on unless the config explicitly turns it off.
      rejectUnauthorized: config.tls?.reject_unauthorized ?? true,
    };
    const read = (file: string | undefined, key: string): Buffer | undefined => {
      if (file === undefined) return undefined;
      try {
        return readFileSync(file);
      } catch (err) {
        throw new EdgehookError("EDGEHOOK_CONFIG_UNREADABLE", `destination tls.${key}: cannot read ${file}`, {
          cause: err,
        });
      }
    };
    const ca = read(config.tls?.ca_file, "ca_file");
    const cert = read(config.tls?.cert_file, "cert_file");
    const key = read(config.tls?.key_file, "key_file");
    if (ca) tls.ca = ca;
    if (cert) tls.cert = cert;
    if (key) tls.key = key;
    const common = {
      connections: config.concurrency,
      headersTimeout: config.response_timeout,
      bodyTimeout: config.response_timeout,
      // undici 7 never follows redirects unless the redirect interceptor is composed in,
      // which we do not do: maxRedirections is effectively 0 (a 3xx is a failure, see policy.ts).
    };
    const env = this.#env;
    const httpProxy = env.http_proxy ?? env.HTTP_PROXY;
    const httpsProxy = env.https_proxy ?? env.HTTPS_PROXY;
    if (httpProxy || httpsProxy) {
      const opts: EnvHttpProxyAgent.Options = {
        ...common,
        connect: { timeout: config.connect_timeout, ...tls },
        requestTls: { ...tls, timeout: config.connect_timeout },
      };
      if (httpProxy) opts.httpProxy = httpProxy;
      if (httpsProxy) opts.httpsProxy = httpsProxy;
      const noProxy = env.no_proxy ?? env.NO_PROXY;
      if (noProxy !== undefined) opts.noProxy = noProxy;
      return new EnvHttpProxyAgent(opts);
    }
    return new Pool(new URL(config.url).origin, {
      ...common,
      connect: { timeout: config.connect_timeout, ...tls },
    });
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
    const wasHeld = this.#clockHeld;
    if (!this.#held() && wasHeld) this.wake();
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
    try {
      if (lane.state === "down") {
        const wait = lane.probe.waitMs();
        if (wait === undefined) return; // the one probe is in flight
        if (wait > 0) {
          this.#arm(lane, wait);
          return;
        }
        const [head] = this.#outbox.next(lane.name, now, 1, lane.exclude);
        if (!head) {
          this.#sleepUntilDue(lane, now);
          return;
        }
        lane.probe.begin();
        this.#send(lane, head, true);
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
      const rows = this.#outbox.next(lane.name, now, limit, lane.exclude);
      for (const row of rows) {
        lane.bucket?.take(1);
        this.#send(lane, row, false);
      }
      if (rows.length < limit) this.#sleepUntilDue(lane, now);
      else if (limit < free && lane.bucket) this.#arm(lane, lane.bucket.waitMs());
    } catch (err) {
      const n = this.#quiet.shouldLog(`${lane.name}:outbox`);
      if (n !== undefined) this.#log.error({ err, destination: lane.name, suppressed: n }, "reading the outbox failed");
      this.#arm(lane, 1_000);
    }
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

  #send(lane: Lane, delivery: Delivery, probe: boolean): void {
    const at = this.#clock.now();
    const started = this.#clock.monotonic();
    // Series alone is enough: each in-flight delivery is the head of its series, and the
    // outbox over-fetches by exclude.size, so ids would only double that.
    lane.exclude.add(delivery.series);
    const flight: Flight = { delivery, probe, aborted: false, done: Promise.resolve() };
    lane.flights.set(delivery.id, flight);
    let outcome: Promise<Outcome>;
    try {
      const { headers, body } = buildRequest(delivery, lane.config, Math.floor(at / 1000));
      outcome = lane.http
        .request({
          origin: lane.origin,
          path: lane.path,
          method: "POST",
          headers,
          body,
          signal: lane.abort.signal,
          headersTimeout: lane.config.response_timeout,
          bodyTimeout: lane.config.response_timeout,
        })
        .then(
          async (res): Promise<Outcome> => {
            const ra = res.headers["retry-after"];
            if (this.#onAttempt) {
              const chunks: Buffer[] = [];
              let n = 0;
              for await (const chunk of res.body) {
                if (n < 4096) chunks.push(chunk as Buffer);
                n += (chunk as Buffer).length;
              }
              this.#onAttempt({
                eventId: delivery.eventId,
                destination: lane.name,
                status: res.statusCode,
                headers: res.headers,
                body: Buffer.concat(chunks).subarray(0, 4096),
              });
            } else {
              // Read and discard the answer so the keep-alive connection can be reused.
              await res.body.dump({ limit: 65_536 }).catch(() => undefined);
            }
            return { kind: "response", status: res.statusCode, retryAfter: Array.isArray(ra) ? ra[0] : ra };
          },
          (error: unknown): Outcome => {
            this.#onAttempt?.({ eventId: delivery.eventId, destination: lane.name, error: describeError(error) });
            return { kind: "error", error };
          },
        );
    } catch (error) {
      outcome = Promise.resolve({ kind: "error", error });
    }
    flight.done = outcome.then((o) => this.#onOutcome(lane, flight, o, at, started));
  }

  #onOutcome(lane: Lane, flight: Flight, outcome: Outcome, at: number, started: number): void {
    const { delivery } = flight;
    lane.flights.delete(delivery.id);
    if (flight.aborted) {
      // Shutdown: no outcome to record; the delivery stays pending as it was.
      lane.exclude.delete(delivery.series);
      if (flight.probe) lane.probe.released();
      this.#resolveIdle();
      return;
    }
    const durationMs = Math.round(this.#clock.monotonic() - started);
    const now = this.#clock.now();
    const decision = decide(outcome, {
      attempts: delivery.attempts,
      policy: { retry_schedule: lane.config.retry_schedule, max_attempts: lane.config.max_attempts },
      now,
      random: this.#random,
    });
    this.#metrics.deliveries.inc({ destination: lane.name, class: decision.class });
    const attempt: AttemptRecord = { at, durationMs };
    if (outcome.kind === "response") {
      attempt.status = outcome.status;
      this.#metrics.deliveryLatency.observe({ destination: lane.name }, durationMs / 1000);
    }
    if (decision.action !== "delivered") attempt.error = decision.action === "dead" ? decision.reason : decision.error;

    let settlement: Settlement;
    switch (decision.action) {
      case "delivered":
        settlement = { id: delivery.id, outcome: "delivered", attempt };
        break;
      case "offline":
        settlement = { id: delivery.id, outcome: "retry", attempt, nextAt: now, counted: false };
        break;
      case "retry":
        settlement = { id: delivery.id, outcome: "retry", attempt, nextAt: decision.nextAt, counted: true };
        break;
      case "dead":
        settlement = { id: delivery.id, outcome: "dead", attempt, reason: decision.reason };
        break;
    }
    this.#transition(lane, flight, decision);
    this.#queueSettle({ lane, settlement, series: delivery.series });
    // Slots are free: other series can go out while this outcome waits to be written. Refill
    // in chunks (a quarter of the lane) so one outbox read serves several requests.
    if (lane.config.concurrency - lane.flights.size >= Math.max(1, lane.config.concurrency >> 2)) {
      this.#toPump.add(lane);
      this.#schedulePumps();
    }
  }

  /** Destination state and logging after one outcome. */
  #transition(lane: Lane, flight: Flight, decision: Decision): void {
    const name = lane.name;
    if (decision.action === "offline") {
      if (flight.probe) {
        lane.probe.failed();
        const n = this.#quiet.shouldLog(`${name}:down`);
        if (n !== undefined) {
          this.#log.warn(
            { destination: name, error: decision.error, downSince: new Date(lane.since).toISOString(), probes: n + 1 },
            `destination ${name} still unreachable; next probe in ${Math.round(lane.probe.intervalMs / 1000)} s`,
          );
        }
        this.#arm(lane, lane.probe.waitMs() ?? lane.probe.intervalMs);
      } else if (lane.state === "up") {
        this.#setState(lane, "down", decision.error);
        lane.probe.reset();
        this.#quiet.reset(`${name}:down`);
        this.#quiet.shouldLog(`${name}:down`);
        this.#log.warn(
          { destination: name, error: decision.error },
          `destination ${name} unreachable (${decision.error}); webhooks stay queued, probing one request at a time`,
        );
        this.#arm(lane, lane.probe.waitMs() ?? 1_000);
      }
      return;
    }
    // Any HTTP answer means the receiver is reachable.
    if (flight.probe) lane.probe.released();
    if (lane.state === "down") {
      const downMs = this.#clock.now() - lane.since;
      this.#setState(lane, "up", undefined);
      this.#log.info(
        { destination: name, downSeconds: Math.round(downMs / 1000) },
        `destination ${name} reachable again; sending the backlog`,
      );
    }
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
          `destination ${name} rejected a webhook for good (${decision.reason}); see edgehook queue list`,
        );
      }
    } else if (decision.action === "retry") {
      const n = this.#quiet.shouldLog(`${name}:retry`);
      if (n !== undefined) {
        this.#log.warn(
          { destination: name, error: decision.error, suppressed: n },
          `destination ${name} failed a webhook (${decision.error}); retrying on the schedule`,
        );
      }
    }
  }

  // ------------------------------------------------------------ settling

  #queueSettle(p: PendingSettle): void {
    this.#pending.push(p);
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
      // Keep the series excluded and try again: releasing them would resend deliveries
      // whose outcome is known but not yet written.
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
      p.lane.exclude.delete(p.series);
      if (!this.#stopping) this.#toPump.add(p.lane);
    }
    this.#schedulePumps();
    this.#resolveIdle();
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

function laneAbort(): AbortController {
  const ac = new AbortController();
  // Up to `concurrency` (64) requests listen on it at once; that is not a leak.
  setMaxListeners(0, ac.signal);
  return ac;
}

/** Keys that need a new HTTP client when they change on reload. */
function transportKey(c: DestinationConfig): string {
  return JSON.stringify([new URL(c.url).origin, c.tls, c.connect_timeout, c.response_timeout, c.concurrency]);
}
