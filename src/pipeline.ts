/**
 * The route a reading takes inside the agent once a source has decoded it:
 *
 *   sink (ingest) ─> rule engine ─> outbox.commit (group commit) ─> dispatcher.wake
 *
 * plus the engine's time-driven work (for, absent_for, repeat) on one timer. ingest()
 * resolves only after what a batch of readings caused is durable, which is when an MQTT
 * QoS 1 message may be acknowledged (design invariant 1). When a commit fails, the
 * engine's memory is ahead of the store: it is rebuilt from what is durable and the
 * readings stay unacknowledged (invariant 7).
 *
 * The agent builds one, starts it after the outbox and the dispatcher and stops it after
 * the sources, so no reading arrives while it is not accepting.
 */
import type { Clock, TimerHandle } from "./clock.js";
import type { Config, DestinationConfig } from "./config/schema.js";
import { acceptsEvent } from "./delivery/render.js";
import type { EventTimes } from "./event-time.js";
import type { CommitBatch, NewEvent } from "./events.js";
import type { Logger } from "./ops/logger.js";
import type { Metrics } from "./ops/metrics.js";
import { RuleEngine } from "./rules/engine.js";
import type { Reading, SinkOrigin } from "./sources/reading.js";
import { type Outbox, OutboxRefusedError } from "./store/outbox.js";

/** After a failed commit, what the rebuilt rule engine has due is tried again this much later. */
const TICK_RETRY_MS = 5_000;
/** While the outbox refuses new events, due rule work is offered again this often (a cached check). */
const REFUSED_RETRY_MS = 1_000;

export interface PipelineOptions {
  /** The configuration in force (it changes on reload). */
  config: () => Config;
  outbox: Outbox;
  /** Called after a commit that stored events for at least one destination. */
  wakeDispatcher: () => void;
  /**
   * While the clock is not synchronised, events are marked so that their times can be
   * corrected later (event-time.ts); absent when agent.require_clock_sync is off.
   */
  eventTimes?: { times: EventTimes; synced: () => boolean };
  clock: Clock;
  logger: Logger;
  metrics: Metrics;
}

export class Pipeline {
  readonly #options: PipelineOptions;
  #engine: RuleEngine | undefined;
  #accepting = false;
  #tickTimer: TimerHandle | undefined;
  #tickAt: number | undefined;
  /** Serialises engine work and commits that must follow each other (ticks, reloads). */
  #chain: Promise<unknown> = Promise.resolve();
  #engineStats: Record<string, number> = {};
  /** Bumped whenever the engine is rebuilt from the outbox; batches of an older one are stale. */
  #engineGeneration = 0;

  constructor(options: PipelineOptions) {
    this.#options = options;
  }

  /** Builds the rule engine from the rule state in the outbox and starts taking readings. */
  start(): void {
    this.#engine = this.#newEngine();
    this.#engine.restore(this.#options.outbox.loadStates());
    this.#accepting = true;
  }

  /** Stops taking readings and ticks; resolves when the rule work under way is committed. */
  async stop(): Promise<void> {
    this.#accepting = false;
    this.#cancelTick();
    await this.#chain;
  }

  #newEngine(): RuleEngine {
    const config = this.#options.config();
    return new RuleEngine({
      agentId: config.agent.id,
      rules: config.rules,
      clock: this.#options.clock,
      maxFutureMs: config.agent.max_future_skew,
      maxSeries: config.agent.max_series,
      derive: config.derive,
      logger: this.#options.logger.child({ component: "rules" }),
    });
  }

  /** The sink every source hands readings to. Resolves once what they caused is durable. */
  ingest(readings: Reading[], origin?: SinkOrigin): Promise<void> {
    const engine = this.#engine;
    if (!this.#accepting || !engine) return Promise.reject(new Error("agent is stopping"));
    // Backpressure: what cannot be stored is not processed, so rule state never runs ahead
    // of the outbox; the source keeps the readings unacknowledged and offers them again.
    const refusal = this.#options.outbox.refusal();
    if (refusal) return Promise.reject(new OutboxRefusedError(refusal));
    const batch = engine.process(readings);
    // The message keys go in the same transaction as what the messages caused (a reading
    // that changed nothing writes nothing, keys included: processing it again is harmless).
    if (origin && origin.messageKeys.length > 0) batch.messageKeys = origin.messageKeys;
    return this.#commit(batch);
  }

  /**
   * Applies changed rules and limits after the ingest and tick work already queued; the
   * end events of changed rules are committed like any other batch.
   */
  reconfigure(config: Config): Promise<void> {
    const applied = this.#chain.then(async () => {
      if (this.#engine) {
        const limits = {
          maxFutureMs: config.agent.max_future_skew,
          maxSeries: config.agent.max_series,
          derive: config.derive,
        };
        await this.#commit(this.#engine.reconfigure(config.rules, limits));
      }
    });
    // A rejected link would make every later tick skip its work.
    this.#chain = applied.catch(() => undefined);
    return applied;
  }

  /** Engine counters as deltas into the Prometheus counter (cheap: a few numbers per batch). */
  #exportEngineStats(): void {
    const stats = this.#engine?.stats;
    if (!stats) return;
    const metrics = this.#options.metrics;
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
      if (n > before) metrics.ruleSkips.inc({ reason }, n - before);
    }
    const future = stats.future - (this.#engineStats.future ?? 0);
    if (future > 0) metrics.ruleRestamped.inc(future);
    now.future = stats.future;
    const evicted: Record<string, number> = {
      at_rest: stats.seriesEvicted - stats.seriesEvictedIdle - stats.seriesEvictedOpen,
      idle: stats.seriesEvictedIdle,
      open: stats.seriesEvictedOpen,
    };
    for (const [kind, n] of Object.entries(evicted)) {
      const before = this.#engineStats[`evicted_${kind}`] ?? 0;
      if (n > before) metrics.ruleSeriesEvicted.inc({ kind }, n - before);
      now[`evicted_${kind}`] = n;
    }
    metrics.ruleSeries.set(this.#engine?.seriesCount ?? 0);
    this.#engineStats = now;
  }

  async #commit(batch: CommitBatch): Promise<void> {
    this.#exportEngineStats();
    if (batch.events.length === 0 && batch.states.length === 0 && batch.removedStates.length === 0) {
      this.scheduleTick();
      return;
    }
    const { outbox, metrics, eventTimes } = this.#options;
    const destinations = this.#options.config().destinations;
    const marked = eventTimes && !eventTimes.synced() ? eventTimes.times.mark(batch.events) : batch.events;
    const events = marked.map((e: NewEvent) => {
      metrics.ruleEvents.inc({ rule: e.rule, type: e.type });
      const accepted = e.destinations.filter((name) => {
        const dest: DestinationConfig | undefined = destinations[name];
        return dest !== undefined && acceptsEvent(dest, e);
      });
      return accepted.length === e.destinations.length ? e : { ...e, destinations: accepted };
    });
    const generation = this.#engineGeneration;
    try {
      await outbox.commit({ ...batch, events }, { valid: () => generation === this.#engineGeneration });
    } catch (err) {
      // A batch of an engine already rebuilt: nothing of it was stored, nothing to undo.
      if (generation !== this.#engineGeneration) throw err;
      // The engine's memory is now ahead of the store. The readings are not acknowledged
      // (the source offers them again); rebuild the engine from what is durable.
      if (err instanceof OutboxRefusedError) {
        this.#options.logger.debug(
          { reason: err.refusal.reason },
          "commit refused; rule state reloaded from the outbox",
        );
      } else {
        this.#options.logger.error({ err }, "commit failed; rule state reloaded from the outbox");
      }
      this.#engineGeneration++;
      this.#engine = this.#newEngine();
      this.#engine.restore(outbox.loadStates());
      this.#engineStats = {};
      // Its time-driven work (for, absent_for, repeat, ends of changed rules) needs a tick
      // even if no reading comes; not at once, the store has just failed.
      this.scheduleTick(this.#options.clock.now() + TICK_RETRY_MS);
      throw err;
    }
    if (events.some((e) => e.destinations.length > 0)) this.#options.wakeDispatcher();
    this.scheduleTick();
  }

  /** One timer for the rule engine's next time-driven transition (not before `notBefore`); no polling. */
  scheduleTick(notBefore = Number.NEGATIVE_INFINITY): void {
    const engine = this.#engine;
    if (!engine || !this.#accepting) return;
    const clock = this.#options.clock;
    const next = engine.nextDueAt();
    const due = next === undefined ? undefined : Math.max(next, notBefore);
    if (due === this.#tickAt) return;
    this.#cancelTick();
    this.#tickAt = due;
    if (due === undefined) return;
    this.#tickTimer = clock.setTimeout(
      () => {
        this.#tickTimer = undefined;
        this.#tickAt = undefined;
        this.#chain = this.#chain
          .then(() => {
            if (!this.#accepting || !this.#engine) return undefined;
            // Time-driven events (for, absent_for, repeat) the outbox cannot store now stay
            // due in the engine and are tried again shortly, not lost.
            if (this.#options.outbox.refusal()) {
              this.scheduleTick(clock.now() + REFUSED_RETRY_MS);
              return undefined;
            }
            return this.#commit(this.#engine.tick());
          })
          .catch((err) => {
            if (!(err instanceof OutboxRefusedError)) this.#options.logger.error({ err }, "rule tick failed");
          });
      },
      Math.max(0, due - clock.now()),
    );
  }

  #cancelTick(): void {
    if (this.#tickTimer) this.#options.clock.clearTimeout(this.#tickTimer);
    this.#tickTimer = undefined;
    this.#tickAt = undefined;
  }
}
