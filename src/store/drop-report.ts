/**
 * Every drop is seen (invariant 7). Each delivery the outbox drops on purpose (limits.ts:
 * expired, max_events, max_bytes, dead_pruned) is counted at once in
 * edgehook_outbox_dropped_total{reason, destination} and logged: the first after a quiet spell at
 * once, then one summary a minute ("dropped N since the last report", by reason and
 * destination, saying what to do) and the rest at close; no count is lost to a rate limit.
 */
import type { Clock } from "../clock.js";
import { type DropSummary, DropTally, describeDrops } from "../ops/drops.js";
import type { Logger } from "../ops/logger.js";
import type { Metrics } from "../ops/metrics.js";
import type { Delta } from "./counters.js";
import type { OutboxLimits } from "./limits.js";

/** Drops are logged as one summary at most this often ("dropped N since the last report"). */
export const DROP_REPORT_MS = 60_000;

export class DropReport {
  readonly #tally: DropTally;
  readonly #metrics: Metrics;
  readonly #log: Logger;
  readonly #limits: OutboxLimits;

  constructor(options: { clock: Clock; logger: Logger; metrics: Metrics; limits: OutboxLimits }) {
    this.#metrics = options.metrics;
    this.#log = options.logger;
    this.#limits = options.limits;
    this.#tally = new DropTally(
      DROP_REPORT_MS,
      () => options.clock.monotonic(),
      (s) => this.#logDrops(s),
    );
  }

  /** Counts the drops of a committed transaction (metric now, log in the next summary). */
  count(delta: Delta): void {
    for (const [key, n] of delta.dropsAt) {
      const [reason = "", destination = ""] = key.split("\u0000");
      this.#metrics.drops.inc({ reason, destination }, n);
      this.#tally.add(reason, destination, n);
    }
  }

  /** Logs the summary if one is due. */
  poll(): void {
    this.#tally.poll();
  }

  /** Logs what is not reported yet (at close). */
  flush(): void {
    this.#tally.flush();
  }

  #logDrops(s: DropSummary): void {
    const advice = Object.keys(s.reasons).map((reason) => dropAdvice(reason, this.#limits));
    this.#log.warn(
      {
        code: "EDGEHOOK_OUTBOX_DROPPED",
        dropped: s.dropped,
        reasons: s.reasons,
        destinations: s.by,
        periodS: s.periodS,
      },
      `outbox dropped ${s.dropped} deliveries since the last report (${describeDrops(s)}); ${advice.join("; ")}`,
    );
  }
}

function dropAdvice(reason: string, limits: OutboxLimits): string {
  switch (reason) {
    case "expired":
      return "expired: pending deliveries outlived max_age without being accepted; check that the destination is reachable, or raise max_age";
    case "dead_pruned":
      return "dead_pruned: the outbox was full and dead deliveries were removed to make room (they can no longer be replayed); purge or replay dead deliveries sooner, or raise outbox.max_events/max_bytes";
    default:
      return `${reason}: the outbox was full (max_events=${limits.max_events}, max_bytes=${limits.max_bytes}) and pending deliveries were dropped, lowest priority and oldest first; receivers are not keeping up or are unreachable: fix the destination, or raise outbox.${reason}`;
  }
}
