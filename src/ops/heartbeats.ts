/**
 * Heartbeats, a dead man's switch (`heartbeat: { every, notify }`): every `every` the agent
 * enqueues one `agent.heartbeat` event carrying its health, outbox depth, oldest pending age,
 * sources and version, for push monitors (healthchecks.io, Uptime Kuma push, a watchdog).
 *
 * Coalesced: while a heartbeat still waits in the outbox for a destination (the receiver
 * is down), no new one is enqueued for it, so an outage leaves at most one per destination,
 * delivered on recovery; the next one follows `every` later. Nothing is dropped or replaced,
 * so no drop is counted, and a waiting heartbeat keeps its id across attempts like any event.
 * The first heartbeat goes out at start. The outbox refusing new events (disk floor, full)
 * skips a beat: heartbeats never take room readings need.
 */
import type { Clock, TimerHandle } from "../clock.js";
import type { HeartbeatConfig } from "../config/schema.js";
import type { HeartbeatSource } from "../event-data.js";
import { type NewEvent, newEvent } from "../events.js";
import { seriesKey } from "../series-key.js";
import type { HealthReport } from "./health.js";
import type { Logger } from "./logger.js";

/** One series per agent: heartbeats to one destination go in order, one waiting at most. */
export const HEARTBEAT_SERIES = seriesKey("heartbeat", "agent", "heartbeat");

export function heartbeatEvent(
  agentId: string,
  agentVersion: string,
  health: HealthReport,
  every: number,
  notify: readonly string[],
  now: number,
): NewEvent {
  const sources: HeartbeatSource[] = health.sources.map((s) => ({
    name: s.name,
    kind: s.kind,
    status: s.status,
    ...(s.detail === undefined ? {} : { detail: s.detail }),
  }));
  return newEvent(
    "agent.heartbeat",
    { agent: agentId, rule: "heartbeat", severity: "info", priority: 0, notify },
    HEARTBEAT_SERIES,
    now,
    now,
    {
      health: health.status,
      problems: health.problems,
      agent_version: agentVersion,
      uptime_s: health.uptime_s,
      every_s: Math.round(every / 1000),
      outbox: health.outbox,
      sources,
    },
  );
}

export interface HeartbeatOutbox {
  /** True when a delivery of `series` waits for `destination`. */
  hasPending(destination: string, series: string): boolean;
  /** Why nothing new can be stored now, if so. */
  refusing(): boolean;
  commit(event: NewEvent): Promise<void>;
}

export interface HeartbeatsOptions {
  clock: Clock;
  logger: Logger;
  agentId: string;
  agentVersion: string;
  health: () => HealthReport;
  outbox: HeartbeatOutbox;
}

export class Heartbeats {
  readonly #o: HeartbeatsOptions;
  #config: HeartbeatConfig | undefined;
  #timer: TimerHandle | undefined;
  #running = false;
  #beating: Promise<void> = Promise.resolve();

  constructor(options: HeartbeatsOptions) {
    this.#o = options;
  }

  /** Starts (or restarts, on a changed section) the beat; undefined stops it. */
  configure(config: HeartbeatConfig | undefined): void {
    const same = JSON.stringify(config) === JSON.stringify(this.#config);
    this.#config = config;
    if (same && this.#running) return;
    this.#clear();
    this.#running = config !== undefined;
    if (config) this.#schedule(0);
  }

  async stop(): Promise<void> {
    this.#running = false;
    this.#clear();
    await this.#beating;
  }

  #clear(): void {
    if (this.#timer) this.#o.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #schedule(delay: number): void {
    this.#timer = this.#o.clock.setTimeout(() => {
      this.#timer = undefined;
      this.#beating = this.#beat().finally(() => {
        if (this.#running && this.#config && !this.#timer) this.#schedule(this.#config.every);
      });
    }, delay);
  }

  async #beat(): Promise<void> {
    const config = this.#config;
    if (!config || !this.#running) return;
    const o = this.#o;
    try {
      if (o.outbox.refusing()) {
        o.logger.debug("heartbeat skipped: the outbox refuses new events");
        return;
      }
      const due = config.notify.filter((d) => !o.outbox.hasPending(d, HEARTBEAT_SERIES));
      if (due.length < config.notify.length) {
        o.logger.debug(
          { waiting: config.notify.filter((d) => !due.includes(d)) },
          "heartbeat not enqueued where one still waits",
        );
      }
      if (due.length === 0) return;
      const now = o.clock.now();
      await o.outbox.commit(heartbeatEvent(o.agentId, o.agentVersion, o.health(), config.every, due, now));
    } catch (err) {
      o.logger.warn({ err }, "heartbeat not enqueued");
    }
  }
}
