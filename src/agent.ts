/**
 * The composition root: builds every part, starts them in order, stops them in
 * reverse (each stop guarded so one failure does not skip the rest), and reloads.
 *
 *   sources ─> sink ─> rule engine ─> outbox.commit (group commit) ─> dispatcher
 *
 * The sink resolves only after what a batch of readings caused is durable, which is
 * when an MQTT QoS 1 message may be acknowledged (design invariant 1).
 */
import { accessSync, constants, mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { type Clock, systemClock, type TimerHandle } from "./clock.js";
import type { LoadedConfig } from "./config/load.js";
import type { Config, DestinationConfig } from "./config/schema.js";
import { ClockSyncMonitor } from "./delivery/clock-sync.js";
import { Dispatcher } from "./delivery/dispatcher.js";
import { acceptsEvent } from "./delivery/render.js";
import { EdgehookError } from "./errors.js";
import { EventTimes } from "./event-time.js";
import type { CommitBatch, NewEvent } from "./events.js";
import { type DestinationHealth, evaluateHealth, type HealthReport, Heartbeat } from "./ops/health.js";
import { HttpServer } from "./ops/http.js";
import type { Logger } from "./ops/logger.js";
import { Metrics } from "./ops/metrics.js";
import { buildStatus, StatusHistory, type StatusSnapshot, sumByLabel } from "./ops/status.js";
import { RuleEngine } from "./rules/engine.js";
import { MqttSource } from "./sources/mqtt.js";
import { hasPolledSources, polledSources } from "./sources/polled.js";
import type { Reading, SinkOrigin, Source } from "./sources/reading.js";
import { Outbox, OutboxRefusedError } from "./store/outbox.js";
import { version } from "./version.js";

export interface AgentOptions {
  loaded: LoadedConfig;
  logger: Logger;
  clock?: Clock;
  env?: NodeJS.ProcessEnv;
}

/** How often limits, expiry and metrics of the outbox are refreshed. */
const MAINTENANCE_INTERVAL_MS = 30_000;
/** The next pass when one stopped at its work cap (a lowered limit, a long outage expiring). */
const MAINTENANCE_MORE_MS = 1_000;
/** /healthz fails (and the systemd watchdog is withheld) when maintenance stalls this long. */
const MAX_LOOP_SILENCE_MS = 3 * MAINTENANCE_INTERVAL_MS;
/** After a failed commit, what the rebuilt rule engine has due is tried again this much later. */
const TICK_RETRY_MS = 5_000;
/** While the outbox refuses new events, due rule work is offered again this often (a cached check). */
const REFUSED_RETRY_MS = 1_000;

export class Agent {
  readonly metrics = new Metrics();
  #loaded: LoadedConfig;
  readonly #logger: Logger;
  readonly #clock: Clock;
  readonly #env: NodeJS.ProcessEnv;
  readonly #startedAt: number;
  #outbox: Outbox | undefined;
  #engine: RuleEngine | undefined;
  #dispatcher: Dispatcher | undefined;
  #http: HttpServer | undefined;
  #sources: Source[] = [];
  #mqtt: MqttSource | undefined;
  #tickTimer: TimerHandle | undefined;
  #tickAt: number | undefined;
  #maintenanceTimer: TimerHandle | undefined;
  #accepting = false;
  #stopPromise: Promise<void> | undefined;
  /** start() in progress or done; stop() and reload() wait for it. */
  #starting: Promise<void> | undefined;
  /** The last reload (settled or not): reloads run one at a time, and stop() waits for them. */
  #reloading: Promise<void> = Promise.resolve();
  #resolveStopped!: () => void;
  readonly #stopped = new Promise<void>((resolve) => {
    this.#resolveStopped = resolve;
  });
  /** Serialises engine work and commits that must follow each other (ticks, reloads). */
  #chain: Promise<unknown> = Promise.resolve();
  #clockSync: ClockSyncMonitor | undefined;
  #eventTimes: EventTimes | undefined;
  #engineStats: Record<string, number> = {};
  /** Bumped whenever the engine is rebuilt from the outbox; batches of an older one are stale. */
  #engineGeneration = 0;
  readonly #heartbeat: Heartbeat;
  readonly #history: StatusHistory;

  constructor(options: AgentOptions) {
    this.#loaded = options.loaded;
    this.#logger = options.logger;
    this.#clock = options.clock ?? systemClock;
    this.#env = options.env ?? {};
    this.#startedAt = this.#clock.now();
    this.#heartbeat = new Heartbeat(this.#clock, MAX_LOOP_SILENCE_MS);
    this.#history = new StatusHistory(this.#clock);
  }

  get config(): Config {
    return this.#loaded.config;
  }

  /** URL of the MQTT broker in use (the embedded broker's actual address when `url: embedded`). */
  get mqttUrl(): string | undefined {
    return this.#mqtt?.brokerUrl ?? this.config.mqtt?.url;
  }

  get httpPort(): number | undefined {
    return this.#httpPort;
  }
  #httpPort: number | undefined;

  /** Starts every part. A stop() or reload() called meanwhile runs once this settled. */
  start(): Promise<void> {
    this.#starting ??= this.#doStart();
    return this.#starting;
  }

  async #doStart(): Promise<void> {
    const config = this.config;
    const log = this.#logger;
    mkdirSync(this.#loaded.dataDir, { recursive: true });

    this.#outbox = new Outbox({
      file: join(this.#loaded.dataDir, "outbox.db"),
      limits: config.outbox,
      clock: this.#clock,
      logger: log.child({ component: "outbox" }),
      metrics: this.metrics,
      destinationMaxAge: destinationMaxAge(config),
    });
    this.#outbox.open();
    const outbox = this.#outbox;
    this.metrics.watchSources(() => this.#sources.map((s) => s.state()));
    this.metrics.onScrape(() => {
      if (outbox.isOpen) outbox.refreshMetrics();
    });

    this.#engine = this.#newEngine();
    this.#engine.restore(this.#outbox.loadStates());

    if (config.agent.require_clock_sync === "auto") {
      this.#clockSync = new ClockSyncMonitor({ clock: this.#clock, logger: log.child({ component: "clock" }) });
      await this.#clockSync.start();
    }
    const clockSync = this.#clockSync;
    if (clockSync) {
      this.#eventTimes = new EventTimes(this.#clock);
      // Registered before the dispatcher's wake-up: bodies are corrected before any is signed.
      clockSync.onChange(() => this.#correctEventTimes());
    }
    this.#dispatcher = new Dispatcher({
      outbox: this.#outbox,
      destinations: config.destinations,
      clock: this.#clock,
      logger: log.child({ component: "dispatcher" }),
      metrics: this.metrics,
      clockSynced: clockSync ? () => clockSync.synced() : undefined,
      env: this.#env,
      baseDir: dirname(this.#loaded.file),
    });
    this.#dispatcher.start();
    clockSync?.onChange(() => this.#dispatcher?.wake());

    if (config.http.listen !== false) {
      this.#http = new HttpServer({
        listen: config.http.listen,
        metrics: this.metrics,
        health: () => this.health(),
        status: () => this.status(),
        token: config.http.token,
        logger: log.child({ component: "http" }),
      });
      this.#httpPort = (await this.#http.start()).port;
    }

    this.#history.start(async () => ({
      pending: outbox.isOpen ? outbox.totals().pending : 0,
      readings: await sumByLabel(this.metrics.readings, "source"),
    }));
    this.#accepting = true;
    await this.#startSources(config);
    // Time-driven rule transitions due while we were down (for, absent_for, repeat).
    this.#scheduleTick();
    this.#maintain();
  }

  #newEngine(): RuleEngine {
    const config = this.config;
    return new RuleEngine({
      agentId: config.agent.id,
      rules: config.rules,
      clock: this.#clock,
      maxFutureMs: config.agent.max_future_skew,
      maxSeries: config.agent.max_series,
      logger: this.#logger.child({ component: "rules" }),
    });
  }

  async #startSources(config: Config): Promise<void> {
    const log = this.#logger;
    const sink = (readings: Reading[], origin?: SinkOrigin) => this.#ingest(readings, origin);
    this.#mqtt = undefined;
    if (config.mqtt) {
      const outbox = this.#outbox;
      // With `url: embedded` the source hosts the broker itself.
      this.#mqtt = new MqttSource({
        config: config.mqtt,
        agentId: config.agent.id,
        sink,
        logger: log.child({ component: "mqtt" }),
        metrics: this.metrics,
        clock: this.#clock,
        baseDir: dirname(this.#loaded.file),
        // A redelivered message committed before a crash took its PUBACK is not processed twice.
        ledger: outbox && {
          keys: () => (outbox.isOpen ? outbox.messageKeys() : []),
          release: (keys) => outbox.isOpen && outbox.releaseMessageKeys(keys),
          session: (scope) => (outbox.isOpen ? outbox.session(scope) : undefined),
          rememberSession: (scope, record) => outbox.isOpen && outbox.rememberSession(scope, record),
        },
      });
      this.#sources.push(this.#mqtt);
    }
    // serialport's native binding is loaded only when a port is configured (saves memory).
    const { SerialSource } =
      config.serial.length > 0 ? await import("./sources/serial.js") : { SerialSource: undefined };
    for (const port of config.serial) {
      if (!SerialSource) break;
      this.#sources.push(
        new SerialSource({
          config: port,
          sink,
          logger: log.child({ component: "serial", port: port.name }),
          metrics: this.metrics,
          clock: this.#clock,
        }),
      );
    }
    // Modbus, 1-Wire and polled files; their modules load only when configured.
    if (hasPolledSources(config)) {
      const deps = {
        sink,
        logger: log,
        metrics: this.metrics,
        clock: this.#clock,
        baseDir: dirname(this.#loaded.file),
      };
      this.#sources.push(...(await polledSources(config, deps)));
    }
    for (const s of this.#sources) await s.start();
  }

  async #stopSources(): Promise<void> {
    const sources = this.#sources;
    this.#sources = [];
    for (const s of sources.reverse()) await this.#guard(`stop source ${s.name}`, () => s.stop());
  }

  /** The sink every source hands readings to. Resolves once what they caused is durable. */
  #ingest(readings: Reading[], origin?: SinkOrigin): Promise<void> {
    const engine = this.#engine;
    if (!this.#accepting || !engine) return Promise.reject(new Error("agent is stopping"));
    // Backpressure: what cannot be stored is not processed, so rule state never runs ahead
    // of the outbox; the source keeps the readings unacknowledged and offers them again.
    const refusal = this.#outbox?.refusal();
    if (refusal) return Promise.reject(new OutboxRefusedError(refusal));
    const batch = engine.process(readings);
    // The message keys go in the same transaction as what the messages caused (a reading
    // that changed nothing writes nothing, keys included: processing it again is harmless).
    if (origin && origin.messageKeys.length > 0) batch.messageKeys = origin.messageKeys;
    return this.#commit(batch);
  }

  /** Engine counters as deltas into the Prometheus counter (cheap: a few numbers per batch). */
  #exportEngineStats(): void {
    const stats = this.#engine?.stats;
    if (!stats) return;
    const now: Record<string, number> = {
      late: stats.late,
      non_numeric: stats.nonNumeric,
      bad_time: stats.badTime,
      series_limit: stats.seriesLimit,
      stale_state: stats.staleStates,
      dropped_batched: stats.droppedBatched,
    };
    for (const [reason, n] of Object.entries(now)) {
      const before = this.#engineStats[reason] ?? 0;
      if (n > before) this.metrics.ruleSkips.inc({ reason }, n - before);
    }
    const future = stats.future - (this.#engineStats.future ?? 0);
    if (future > 0) this.metrics.ruleRestamped.inc(future);
    now.future = stats.future;
    const evicted: Record<string, number> = {
      at_rest: stats.seriesEvicted - stats.seriesEvictedIdle - stats.seriesEvictedOpen,
      idle: stats.seriesEvictedIdle,
      open: stats.seriesEvictedOpen,
    };
    for (const [kind, n] of Object.entries(evicted)) {
      const before = this.#engineStats[`evicted_${kind}`] ?? 0;
      if (n > before) this.metrics.ruleSeriesEvicted.inc({ kind }, n - before);
      now[`evicted_${kind}`] = n;
    }
    this.metrics.ruleSeries.set(this.#engine?.seriesCount ?? 0);
    this.#engineStats = now;
  }

  async #commit(batch: CommitBatch): Promise<void> {
    this.#exportEngineStats();
    if (batch.events.length === 0 && batch.states.length === 0 && batch.removedStates.length === 0) {
      this.#scheduleTick();
      return;
    }
    const destinations = this.config.destinations;
    const marked =
      this.#eventTimes && this.#clockSync && !this.#clockSync.synced()
        ? this.#eventTimes.mark(batch.events)
        : batch.events;
    const events = marked.map((e: NewEvent) => {
      this.metrics.ruleEvents.inc({ rule: e.rule, type: e.type });
      const accepted = e.destinations.filter((name) => {
        const dest: DestinationConfig | undefined = destinations[name];
        return dest !== undefined && acceptsEvent(dest, e);
      });
      return accepted.length === e.destinations.length ? e : { ...e, destinations: accepted };
    });
    const outbox = this.#outbox;
    if (!outbox) throw new Error("outbox is closed");
    const generation = this.#engineGeneration;
    try {
      await outbox.commit({ ...batch, events }, { valid: () => generation === this.#engineGeneration });
    } catch (err) {
      // A batch of an engine already rebuilt: nothing of it was stored, nothing to undo.
      if (generation !== this.#engineGeneration) throw err;
      // The engine's memory is now ahead of the store. The readings are not acknowledged
      // (the source offers them again); rebuild the engine from what is durable.
      if (err instanceof OutboxRefusedError) {
        this.#logger.debug({ reason: err.refusal.reason }, "commit refused; rule state reloaded from the outbox");
      } else {
        this.#logger.error({ err }, "commit failed; rule state reloaded from the outbox");
      }
      this.#engineGeneration++;
      this.#engine = this.#newEngine();
      this.#engine.restore(outbox.loadStates());
      this.#engineStats = {};
      // Its time-driven work (for, absent_for, repeat, ends of changed rules) needs a tick
      // even if no reading comes; not at once, the store has just failed.
      this.#scheduleTick(this.#clock.now() + TICK_RETRY_MS);
      throw err;
    }
    if (events.some((e) => e.destinations.length > 0)) this.#dispatcher?.wake();
    this.#scheduleTick();
  }

  /** One timer for the rule engine's next time-driven transition (not before `notBefore`); no polling. */
  #scheduleTick(notBefore = Number.NEGATIVE_INFINITY): void {
    const engine = this.#engine;
    if (!engine || !this.#accepting) return;
    const next = engine.nextDueAt();
    const due = next === undefined ? undefined : Math.max(next, notBefore);
    if (due === this.#tickAt) return;
    if (this.#tickTimer) this.#clock.clearTimeout(this.#tickTimer);
    this.#tickTimer = undefined;
    this.#tickAt = due;
    if (due === undefined) return;
    this.#tickTimer = this.#clock.setTimeout(
      () => {
        this.#tickTimer = undefined;
        this.#tickAt = undefined;
        this.#chain = this.#chain
          .then(() => {
            if (!this.#accepting || !this.#engine) return undefined;
            // Time-driven events (for, absent_for, repeat) the outbox cannot store now stay
            // due in the engine and are tried again shortly, not lost.
            if (this.#outbox?.refusal()) {
              this.#scheduleTick(this.#clock.now() + REFUSED_RETRY_MS);
              return undefined;
            }
            return this.#commit(this.#engine.tick());
          })
          .catch((err) => {
            if (!(err instanceof OutboxRefusedError)) this.#logger.error({ err }, "rule tick failed");
          });
      },
      Math.max(0, due - this.#clock.now()),
    );
  }

  /** The clock synchronised: rewrite the times of waiting events created before (event-time.ts). */
  #correctEventTimes(): void {
    const outbox = this.#outbox;
    const times = this.#eventTimes;
    if (!outbox?.isOpen || !times || !this.#clockSync?.synced() || times.remembered === 0) return;
    try {
      const n = outbox.rewriteUnsent(times.corrections((id) => outbox.unsentBody(id)));
      this.#logger.info({ events: n }, "clock synchronised: corrected the times of events created before");
    } catch (err) {
      this.#logger.error({ err }, "correcting event times failed; those events keep clock: unsynchronized");
    }
  }

  #maintain(): void {
    this.#heartbeat.beat();
    let more = false;
    try {
      // A pass is capped (MAINTAIN_MAX_ROWS) so it never blocks for long; the rest follows soon.
      more = this.#outbox?.maintain().more === true;
    } catch (err) {
      this.#logger.error({ err }, "outbox maintenance failed");
    }
    if (this.#accepting) {
      this.#maintenanceTimer = this.#clock.setTimeout(
        () => this.#maintain(),
        more ? MAINTENANCE_MORE_MS : MAINTENANCE_INTERVAL_MS,
      );
      this.#maintenanceTimer.unref?.();
    }
  }

  /**
   * Applies a new configuration. The caller validated it; parts that did not change keep
   * running. Reloads run one at a time (two quick SIGHUPs must not both restart the
   * sources), after start() settled; once stop() was called a reload is refused.
   */
  reload(next: LoadedConfig): Promise<void> {
    const run = Promise.allSettled([this.#starting, this.#reloading]).then(() => {
      if (this.#stopPromise) throw new Error("agent is stopping: reload not applied");
      return this.#doReload(next);
    });
    this.#reloading = run.catch(() => undefined);
    return run;
  }

  async #doReload(next: LoadedConfig): Promise<void> {
    const prev = this.config;
    const config = next.config;
    // TLS files first: one that cannot be read rejects the reload before anything changed.
    if (JSON.stringify(prev.mqtt) !== JSON.stringify(config.mqtt)) checkMqttFiles(config, dirname(next.file));
    this.#dispatcher?.reconfigure(config.destinations);
    if (next.dataDir !== this.#loaded.dataDir) {
      this.#logger.warn("agent.data_dir changed: takes effect after a restart");
    }
    // Built into the running parts (webhook bodies, loggers, the clock monitor) at start.
    for (const key of ["id", "log_level", "require_clock_sync"] as const) {
      if (prev.agent[key] !== config.agent[key]) {
        this.#logger.warn(`agent.${key} changed: takes effect after a restart`);
      }
    }
    this.#loaded = next;
    const rulesApplied = this.#chain.then(async () => {
      if (this.#engine) {
        const limits = { maxFutureMs: config.agent.max_future_skew, maxSeries: config.agent.max_series };
        await this.#commit(this.#engine.reconfigure(config.rules, limits));
      }
    });
    // A rejected link would make every later tick skip its work.
    this.#chain = rulesApplied.catch(() => undefined);
    try {
      await rulesApplied;
    } catch (err) {
      // #commit rebuilt the engine from the outbox with the new rules: they apply, and the
      // end events of changed rules go out with the next tick. Apply the rest as well
      // rather than leave new rules and destinations running beside old sources.
      this.#logger.error({ err }, "reload: committing the rule changes failed; the new rules apply from the outbox");
    }
    this.#outbox?.setDestinationMaxAge(destinationMaxAge(config));
    if (
      JSON.stringify(prev.mqtt) !== JSON.stringify(config.mqtt) ||
      JSON.stringify(prev.serial) !== JSON.stringify(config.serial) ||
      JSON.stringify([prev.modbus, prev.onewire, prev.files]) !==
        JSON.stringify([config.modbus, config.onewire, config.files])
    ) {
      this.#logger.info("sources changed: restarting them");
      await this.#stopSources();
      try {
        await this.#startSources(config);
      } catch (err) {
        // E.g. the new port of the embedded broker is taken: the old sources run again.
        await this.#stopSources();
        await this.#startSources(prev);
        throw err;
      }
    }
    if (
      JSON.stringify(prev.outbox) !== JSON.stringify(config.outbox) ||
      JSON.stringify(prev.http) !== JSON.stringify(config.http)
    ) {
      this.#logger.warn("outbox and http settings take effect after a restart");
    }
  }

  /**
   * Stops taking readings, commits what is in hand, lets in-flight deliveries finish
   * for up to agent.shutdown_timeout, closes the database. Safe to call twice.
   */
  stop(): Promise<void> {
    // A start or reload still under way would otherwise start sources after they were stopped.
    this.#stopPromise ??= Promise.allSettled([this.#starting, this.#reloading])
      .then(() => this.#doStop())
      .finally(() => this.#resolveStopped());
    return this.#stopPromise;
  }

  /** Resolves when the agent has stopped (after stop()). */
  stopped(): Promise<void> {
    return this.#stopped;
  }

  async #doStop(): Promise<void> {
    // The dispatcher's grace for in-flight requests runs while the sources stop and
    // their last commits finish, so shutdown takes the longer of the two, not the sum.
    // Events committed meanwhile stay pending for the next start.
    const d = this.#dispatcher;
    const dispatcherStopped = d
      ? this.#guard("stop dispatcher", () => d.stop(this.config.agent.shutdown_timeout))
      : Promise.resolve();
    await this.#stopSources();
    this.#accepting = false;
    if (this.#tickTimer) this.#clock.clearTimeout(this.#tickTimer);
    if (this.#maintenanceTimer) this.#clock.clearTimeout(this.#maintenanceTimer);
    this.#clockSync?.stop();
    this.#history.stop();
    await this.#guard("finish rule work", () => this.#chain);
    await dispatcherStopped;
    if (this.#http) {
      const h = this.#http;
      await this.#guard("stop http server", () => h.stop());
    }
    if (this.#outbox) {
      const o = this.#outbox;
      await this.#guard("close outbox", () => o.close());
    }
  }

  async #guard(what: string, fn: () => unknown): Promise<void> {
    try {
      await fn();
    } catch (err) {
      this.#logger.error({ err }, `${what} failed`);
    }
  }

  /** True while the agent can do its job; gates the systemd watchdog ping. */
  healthy(): boolean {
    return this.health().status !== "failing";
  }

  /** What `edgehook status` and the status page show (see ops/status.ts). */
  async status(): Promise<StatusSnapshot> {
    const outbox = this.#outbox?.isOpen ? this.#outbox : undefined;
    return buildStatus({
      id: this.config.agent.id,
      version: version(),
      now: this.#clock.now(),
      startedAt: this.#startedAt,
      clockSynced: this.#clockSync ? this.#clockSync.synced() : null,
      health: this.health(),
      configured: Object.keys(this.config.destinations),
      live: this.#dispatcher?.states() ?? {},
      outbox,
      readings: await sumByLabel(this.metrics.readings, "source"),
      decodeErrors: await sumByLabel(this.metrics.decodeErrors, "source"),
      history: this.#history,
    });
  }

  health(): HealthReport {
    const outbox = this.#outbox;
    const open = outbox?.isOpen === true;
    const stats = open ? outbox.stats() : [];
    const totals = open ? outbox.totals() : { pending: 0, bytes: 0, events: 0 };
    const states = this.#dispatcher?.states() ?? {};
    const destinations: Record<string, DestinationHealth> = {};
    for (const name of Object.keys(this.config.destinations)) {
      const s = stats.find((x) => x.destination === name);
      destinations[name] = {
        state: states[name]?.state ?? "down",
        pending: s?.pending ?? 0,
        dead: s?.dead ?? 0,
        oldest_pending_s: s?.oldestPendingAgeMs == null ? null : Math.round(s.oldestPendingAgeMs / 1000),
      };
    }
    const oldest = stats.reduce<number | null>(
      (m, s) => (s.oldestPendingAgeMs == null ? m : Math.max(m ?? 0, s.oldestPendingAgeMs)),
      null,
    );
    const damage = outbox?.damage;
    const refusal = open ? outbox.refusal() : undefined;
    return evaluateHealth({
      agent: this.config.agent.id,
      uptimeMs: this.#clock.now() - this.#startedAt,
      database: damage ? damage.kind : open ? "open" : "closed",
      databaseDetail: damage
        ? `${damage.sqliteCode} (${damage.message}); restart edgehook to salvage the readable rows into a fresh file`
        : undefined,
      loop: { alive: this.#heartbeat.alive(), idleMs: this.#heartbeat.idleMs() },
      sources: this.#sources.map((s) => s.state()),
      destinations,
      outbox: {
        pending: totals.pending,
        dead: stats.reduce((n, s) => n + s.dead, 0),
        bytes: totals.bytes,
        oldest_pending_s: oldest === null ? null : Math.round(oldest / 1000),
        refusing: refusal?.reason ?? null,
      },
      refusalDetail: refusal?.detail,
    });
  }
}

/** Throws EDGEHOOK_CONFIG_UNREADABLE when an mqtt.tls file cannot be read (as MqttSource.start would). */
function checkMqttFiles(config: Config, baseDir: string): void {
  const tls = config.mqtt?.tls;
  for (const key of ["ca_file", "cert_file", "key_file"] as const) {
    const file = tls?.[key];
    if (file === undefined) continue;
    try {
      accessSync(resolve(baseDir, file), constants.R_OK);
    } catch (err) {
      throw new EdgehookError("EDGEHOOK_CONFIG_UNREADABLE", `mqtt.tls.${key}: cannot read ${file}`, { cause: err });
    }
  }
}

/** Destinations whose `max_age` overrides `outbox.max_age`. */
function destinationMaxAge(config: Config): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, d] of Object.entries(config.destinations)) if (d.max_age !== undefined) out[name] = d.max_age;
  return out;
}
