/**
 * The composition root: builds every part, keeps them in one list in the order they
 * start, stops them in reverse (each stop guarded so one failure does not skip the
 * rest), and reloads.
 *
 *   sources ─> pipeline (rule engine ─> outbox.commit) ─> dispatcher
 *
 * What a reading goes through once a source has it is in pipeline.ts.
 */
import { accessSync, constants, mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { type Clock, systemClock, type TimerHandle } from "./clock.js";
import type { LoadedConfig } from "./config/load.js";
import type { Config } from "./config/schema.js";
import { ClockSyncMonitor } from "./delivery/clock-sync.js";
import { Dispatcher } from "./delivery/dispatcher.js";
import { EdgehookError } from "./errors.js";
import { EventTimes } from "./event-time.js";
import { type DestinationHealth, evaluateHealth, type HealthReport, Heartbeat } from "./ops/health.js";
import { Heartbeats } from "./ops/heartbeats.js";
import { HttpServer } from "./ops/http.js";
import type { Logger } from "./ops/logger.js";
import { Metrics } from "./ops/metrics.js";
import { buildStatus, StatusHistory, type StatusSnapshot, sumByLabel } from "./ops/status.js";
import { Pipeline } from "./pipeline.js";
import { MqttSource } from "./sources/mqtt.js";
import { hasPolledSources, polledSources } from "./sources/polled.js";
import type { Reading, SinkOrigin, Source } from "./sources/reading.js";
import { Outbox } from "./store/outbox.js";
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

/** A part the agent starts and stops; the list is started in order and stopped in reverse. */
interface Component {
  /** For the log line when its stop fails ("stop <name> failed"). */
  readonly name: string;
  start(): unknown;
  stop(): unknown;
  /**
   * Called on every started component before any is stopped: the dispatcher's grace for
   * in-flight requests runs while the sources stop and their last commits finish, so
   * shutdown takes the longer of the two, not the sum.
   */
  beginStop?(): void;
}

/** The parts, built once per start (constructors only assign). */
interface Parts {
  outbox: Outbox;
  clockSync: ClockSyncMonitor | undefined;
  dispatcher: Dispatcher;
  http: HttpServer | undefined;
  pipeline: Pipeline;
  /** `heartbeat:` events to push monitors (ops/heartbeats.ts). */
  heartbeats: Heartbeats;
}

export class Agent {
  readonly metrics = new Metrics();
  #loaded: LoadedConfig;
  readonly #logger: Logger;
  readonly #clock: Clock;
  readonly #env: NodeJS.ProcessEnv;
  readonly #startedAt: number;
  #parts: Parts | undefined;
  /** What started, in order; stop() goes through it in reverse. */
  #started: Component[] = [];
  #sources: Source[] = [];
  #mqtt: MqttSource | undefined;
  #maintenanceTimer: TimerHandle | undefined;
  #maintaining = false;
  #stopPromise: Promise<void> | undefined;
  /** start() in progress or done; stop() and reload() wait for it. */
  #starting: Promise<void> | undefined;
  /** The last reload (settled or not): reloads run one at a time, and stop() waits for them. */
  #reloading: Promise<void> = Promise.resolve();
  #resolveStopped!: () => void;
  readonly #stopped = new Promise<void>((resolve) => {
    this.#resolveStopped = resolve;
  });
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
    mkdirSync(this.#loaded.dataDir, { recursive: true });
    const parts = this.#build();
    this.#parts = parts;
    const { outbox, clockSync, dispatcher, http, pipeline, heartbeats } = parts;
    const history = this.#history;
    // In start order; stop() runs the list backwards.
    const components: Component[] = [
      {
        name: "outbox",
        start: () => outbox.open(),
        stop: () => outbox.close(),
      },
      ...(clockSync ? [{ name: "clock monitor", start: () => clockSync.start(), stop: () => clockSync.stop() }] : []),
      ...(http
        ? [
            {
              name: "http server",
              start: async () => {
                this.#httpPort = (await http.start()).port;
              },
              stop: () => http.stop(),
            },
          ]
        : []),
      dispatcherComponent(dispatcher, () => this.config.agent.shutdown_timeout),
      {
        name: "status history",
        start: () =>
          history.start(async () => ({
            pending: outbox.isOpen ? outbox.totals().pending : 0,
            readings: await sumByLabel(this.metrics.readings, "source"),
          })),
        stop: () => history.stop(),
      },
      // After the outbox and the dispatcher, before the sources: no reading arrives while it is not accepting.
      { name: "rule pipeline", start: () => pipeline.start(), stop: () => pipeline.stop() },
      { name: "sources", start: () => this.#startSources(this.config), stop: () => this.#stopSources() },
      {
        name: "timers",
        start: () => {
          // Time-driven rule transitions due while we were down (for, absent_for, repeat).
          pipeline.scheduleTick();
          this.#maintaining = true;
          this.#maintain();
        },
        stop: () => {
          this.#maintaining = false;
          if (this.#maintenanceTimer) this.#clock.clearTimeout(this.#maintenanceTimer);
        },
      },
      // Last: its first beat reports the sources as started.
      {
        name: "heartbeats",
        start: () => heartbeats.configure(this.config.heartbeat),
        stop: () => heartbeats.stop(),
      },
    ];
    for (const c of components) {
      // Listed before it starts: one that fails half-way (some sources up) is stopped too.
      this.#started.push(c);
      await c.start();
    }
  }

  /** Builds every part; nothing is opened, started or listening yet. */
  #build(): Parts {
    const config = this.config;
    const log = this.#logger;
    const outbox = new Outbox({
      file: join(this.#loaded.dataDir, "outbox.db"),
      limits: config.outbox,
      clock: this.#clock,
      logger: log.child({ component: "outbox" }),
      metrics: this.metrics,
      destinationMaxAge: destinationMaxAge(config),
    });
    this.metrics.watchSources(() => this.#sources.map((s) => s.state()));
    this.metrics.onScrape(() => {
      if (outbox.isOpen) outbox.refreshMetrics();
    });
    const clockSync =
      config.agent.require_clock_sync === "auto"
        ? new ClockSyncMonitor({ clock: this.#clock, logger: log.child({ component: "clock" }) })
        : undefined;
    const dispatcher = new Dispatcher({
      outbox,
      destinations: config.destinations,
      clock: this.#clock,
      logger: log.child({ component: "dispatcher" }),
      metrics: this.metrics,
      clockSynced: clockSync ? () => clockSync.synced() : undefined,
      env: this.#env,
      baseDir: dirname(this.#loaded.file),
    });
    const eventTimes = clockSync ? new EventTimes(this.#clock) : undefined;
    const pipeline = new Pipeline({
      config: () => this.config,
      outbox,
      wakeDispatcher: () => dispatcher.wake(),
      eventTimes: clockSync && eventTimes ? { times: eventTimes, synced: () => clockSync.synced() } : undefined,
      clock: this.#clock,
      logger: log,
      metrics: this.metrics,
    });
    if (clockSync && eventTimes) {
      // Registered before the dispatcher's wake-up: bodies are corrected before any is signed.
      clockSync.onChange(() => this.#correctEventTimes(outbox, clockSync, eventTimes));
      clockSync.onChange(() => dispatcher.wake());
    }
    const heartbeats = new Heartbeats({
      clock: this.#clock,
      logger: log.child({ component: "heartbeat" }),
      agentId: config.agent.id,
      agentVersion: version(),
      health: () => this.health(),
      outbox: {
        hasPending: (destination, series) => outbox.isOpen && outbox.hasPending(destination, series),
        refusing: () => !outbox.isOpen || outbox.refusal() !== undefined,
        commit: async (event) => {
          await outbox.commit({ events: [event], states: [], removedStates: [] });
          this.metrics.ruleEvents.inc({ rule: event.rule, type: event.type });
          dispatcher.wake();
        },
      },
    });
    const http =
      config.http.listen !== false
        ? new HttpServer({
            listen: config.http.listen,
            metrics: this.metrics,
            health: () => this.health(),
            status: () => this.status(),
            token: config.http.token,
            logger: log.child({ component: "http" }),
          })
        : undefined;
    return { outbox, clockSync, dispatcher, http, pipeline, heartbeats };
  }

  async #startSources(config: Config): Promise<void> {
    const log = this.#logger;
    const parts = this.#parts;
    if (!parts) throw new Error("agent not started");
    const sink = (readings: Reading[], origin?: SinkOrigin) => parts.pipeline.ingest(readings, origin);
    this.#mqtt = undefined;
    if (config.mqtt) {
      const outbox = parts.outbox;
      // With `url: embedded` the source hosts the broker itself.
      this.#mqtt = new MqttSource({
        config: config.mqtt,
        agentId: config.agent.id,
        sink,
        logger: log.child({ component: "mqtt" }),
        metrics: this.metrics,
        clock: this.#clock,
        baseDir: dirname(this.#loaded.file),
        // Fair share: a flood of readings leaves delivery about half the thread.
        yieldTo: () => parts.dispatcher.sending(),
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

  /** The clock synchronised: rewrite the times of waiting events created before (event-time.ts). */
  #correctEventTimes(outbox: Outbox, clockSync: ClockSyncMonitor, times: EventTimes): void {
    if (!outbox.isOpen || !clockSync.synced() || times.remembered === 0) return;
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
      more = this.#parts?.outbox.maintain().more === true;
    } catch (err) {
      this.#logger.error({ err }, "outbox maintenance failed");
    }
    if (this.#maintaining) {
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
    this.#parts?.dispatcher.reconfigure(config.destinations);
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
    try {
      await this.#parts?.pipeline.reconfigure(config);
    } catch (err) {
      // The pipeline rebuilt the engine from the outbox with the new rules: they apply, and the
      // end events of changed rules go out with the next tick. Apply the rest as well
      // rather than leave new rules and destinations running beside old sources.
      this.#logger.error({ err }, "reload: committing the rule changes failed; the new rules apply from the outbox");
    }
    this.#parts?.outbox.setDestinationMaxAge(destinationMaxAge(config));
    this.#parts?.heartbeats.configure(config.heartbeat);
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
    const started = this.#started.reverse();
    this.#started = [];
    for (const c of started) c.beginStop?.();
    // Events committed while this runs stay pending for the next start.
    for (const c of started) await this.#guard(`stop ${c.name}`, () => c.stop());
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
    const outbox = this.#parts?.outbox.isOpen ? this.#parts.outbox : undefined;
    return buildStatus({
      id: this.config.agent.id,
      version: version(),
      now: this.#clock.now(),
      startedAt: this.#startedAt,
      clockSynced: this.#parts?.clockSync ? this.#parts.clockSync.synced() : null,
      health: this.health(),
      configured: Object.keys(this.config.destinations),
      live: this.#parts?.dispatcher.states() ?? {},
      outbox,
      readings: await sumByLabel(this.metrics.readings, "source"),
      decodeErrors: await sumByLabel(this.metrics.decodeErrors, "source"),
      history: this.#history,
    });
  }

  health(): HealthReport {
    const outbox = this.#parts?.outbox;
    const open = outbox?.isOpen === true;
    const stats = open ? outbox.stats() : [];
    const totals = open ? outbox.totals() : { pending: 0, bytes: 0, events: 0 };
    const states = this.#parts?.dispatcher.states() ?? {};
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

/**
 * The dispatcher as a component: its stop begins first (beginStop), so that in-flight
 * deliveries get agent.shutdown_timeout while the sources stop, and is awaited in turn.
 */
function dispatcherComponent(dispatcher: Dispatcher, graceMs: () => number): Component {
  let stopping: Promise<void> | undefined;
  return {
    name: "dispatcher",
    start: () => dispatcher.start(),
    beginStop: () => {
      stopping = dispatcher.stop(graceMs());
      // Awaited (and a failure logged) in stop(); not an unhandled rejection meanwhile.
      stopping.catch(() => undefined);
    },
    stop: () => stopping ?? dispatcher.stop(graceMs()),
  };
}
