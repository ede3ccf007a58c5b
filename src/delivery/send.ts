/**
 * One attempt, from the lane's transport to the outbox: `send` has the transport prepare
 * (render and sign for this attempt's time) and send it; the outcome is decided per
 * delivery (policy.ts `decide`), moves the lane's state (lane.ts) and is queued for the
 * settle writer (settle-writer.ts). The dispatcher decides what to send and when.
 *
 * Unsendable, in one place: when the transport cannot prepare an attempt, the deliveries are
 * dead at once with the reason (a batch is split first so that only its bad members die);
 * `onAttempt` and the dead reason word it with policy.ts `unsendableReason`.
 */

import type { Clock } from "../clock.js";
import type { ErrorCode } from "../errors.js";
import type { Logger } from "../ops/logger.js";
import type { Metrics } from "../ops/metrics.js";
import type { AttemptRecord, Delivery } from "../store/types.js";
import { type Flight, type Lane, PIN_MAX } from "./lane.js";
import { type Decision, decide, describeError, type Outcome, unsendableReason } from "./policy.js";
import { batchId } from "./render.js";
import { type SettleWriter, settlementFor } from "./settle-writer.js";
import type { Attempt } from "./transport.js";

/** What `onAttempt` hears after every attempt (`edgehook send-test` prints it). */
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

export interface SenderContext {
  readonly clock: Clock;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly random: () => number;
  readonly settler: SettleWriter;
  /** Called after every attempt with what came back; the transport keeps the answer only when set. */
  readonly onAttempt: ((info: AttemptInfo) => void) | undefined;
  /** An outcome of `lane` was recorded: other series may go out while it waits to be written. */
  recorded(lane: Lane): void;
  /** A request ended without an outcome to record (shutdown, internal error). */
  idle(): void;
}

export class Sender {
  readonly #c: SenderContext;

  constructor(context: SenderContext) {
    this.#c = context;
  }

  /**
   * One attempt of `deliveries` (a batch on a batch lane, even of one event): prepared
   * (rendered and signed for this attempt's time) by the lane's transport and sent. Anything
   * that cannot be prepared is unsendable; a batch is split so that only its bad members die.
   */
  send(lane: Lane, deliveries: Delivery[], probe: boolean): void {
    const at = this.#c.clock.now();
    const started = this.#c.clock.monotonic();
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
          this.send(lane, bad, false);
          this.send(lane, good, probe);
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
        : lane.transport.send(attempt, { signal: lane.abort.signal, keepAnswer: this.#c.onAttempt !== undefined });
    flight.done = outcome
      .then((o) => {
        this.#c.onAttempt?.(attemptInfo(attemptId, lane.name, o));
        this.#onOutcome(lane, flight, o, at, started);
      })
      .catch((err: unknown) => {
        // A bug here must not become an unhandled rejection that kills the agent; the
        // deliveries stay pending and are sent again.
        lane.flights.delete(first.id);
        for (const d of deliveries) lane.exclude.delete(d.series);
        this.#c.log.error({ err, destination: lane.name }, "internal error while recording a delivery outcome");
        this.#c.idle();
      });
  }

  #onOutcome(lane: Lane, flight: Flight, outcome: Outcome, at: number, started: number): void {
    const { deliveries } = flight;
    lane.flights.delete((deliveries[0] as Delivery).id);
    if (flight.aborted) {
      // Shutdown: no outcome to record; the deliveries stay pending as they were.
      for (const d of deliveries) lane.exclude.delete(d.series);
      if (flight.probe) lane.probe.released();
      this.#c.idle();
      return;
    }
    const durationMs = Math.round(this.#c.clock.monotonic() - started);
    const now = this.#c.clock.now();
    if (outcome.kind === "response") {
      this.#c.metrics.deliveryLatency.observe({ destination: lane.name }, durationMs / 1000);
    }
    // One jitter draw per request: members of a batch with the same history get the same
    // next try, so the batch is formed again from the same heads.
    const draw = this.#c.random();
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
      this.#c.metrics.deliveries.inc({ destination: lane.name, class: decision.class });
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
      this.#c.settler.queue({ lane, settlement, series: delivery.series });
    }
    this.#c.recorded(lane);
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
