/**
 * One pass over a lane: what may go now, given its state, its free slots, its rate limit and
 * batching. Reads the due heads of the lane's series from the outbox (`next`, which skips
 * the series the lane holds back) and hands them to the sender; when nothing more is due it
 * arms the lane's timer for the next due time (`nextDueAt`), so there is no polling loop.
 *
 * Down: one request at a time (the probe), every second or sooner when events were
 * committed since the last one. Up: up to `concurrency` in flight, refilled as requests
 * complete; a partial batch waits up to `batch.max_wait` for more events.
 */
import type { Clock } from "../clock.js";
import type { Logger, RateLimitedLog } from "../ops/logger.js";
import type { Delivery, OutboxReader } from "../store/types.js";
import type { Lane } from "./lane.js";

export interface PumpContext {
  readonly outbox: Pick<OutboxReader, "next" | "nextDueAt">;
  readonly clock: Clock;
  readonly log: Logger;
  quiet(): RateLimitedLog;
  /** Sends one request (send.ts). */
  send(lane: Lane, deliveries: Delivery[], probe: boolean): void;
  /** Writes the collected outcomes now (settle-writer.ts). */
  flush(): void;
}

/** One pass over `lane`, which is up or down (not disabled) and not held. */
export function pass(lane: Lane, c: PumpContext): void {
  const now = c.clock.now();
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
      const heads = c.outbox.next(lane.name, now, perRequest, lane.exclude, lane.after);
      if (heads.length === 0) {
        sleepUntilDue(lane, now, c);
        return;
      }
      const { ready, rest } = lane.group(heads, perRequest);
      lane.probe.begin(lane.newWork);
      lane.newWork = false;
      lane.fillSince = undefined;
      c.send(lane, ready[0] ?? rest, true);
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
    const rows = c.outbox.next(lane.name, now, limit * perRequest, lane.exclude, lane.after);
    const { ready, rest } = lane.group(rows, perRequest);
    let sent = 0;
    // Full requests go at once (one delivery each, max_events per batch, or a retried batch).
    for (const group of ready) {
      if (sent >= limit) break;
      lane.bucket?.take(1);
      c.send(lane, group, false);
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
        c.send(lane, rest, false);
        sent++;
      } else {
        if (lane.retryAt !== undefined && lane.retryAt <= now) lane.retryAt = undefined;
        lane.arm(lane.retryAt === undefined ? wait : Math.min(wait, lane.retryAt - now));
        return;
      }
    }
    if (rows.length < limit * perRequest) {
      if (lane.holding > 0) {
        // Starved: the remaining series only wait for their failed outcomes to be written.
        // Once the last request is back, write now instead of after the batching delay (this
        // is what limits a few busy series); otherwise the next completion or the delay does.
        // Either way the write schedules the next pass.
        if (lane.flights.size === 0) c.flush();
        return;
      }
      // Only delivered or dead outcomes wait: their series already went on (lane.after), so
      // writing them now would free nothing; the delay gathers them into one transaction and
      // its write schedules the next pass. Until then their heads still look due on disk.
      if (lane.unwritten > 0) return;
      sleepUntilDue(lane, now, c);
    } else if (limit < free && lane.bucket) lane.arm(lane.bucket.waitMs());
  } catch (err) {
    const n = c.quiet().shouldLog(`${lane.name}:outbox`);
    if (n !== undefined) c.log.error({ err, destination: lane.name, suppressed: n }, "reading the outbox failed");
    lane.arm(1_000);
  }
}

/** Nothing more is due now: sleep until the next head is due (or a wake/completion). */
function sleepUntilDue(lane: Lane, now: number, c: PumpContext): void {
  const due = c.outbox.nextDueAt(lane.name);
  if (due === undefined) return;
  if (due > now) {
    lane.arm(due - now);
  } else if (lane.flights.size === 0 && lane.exclude.size === 0) {
    // Due but not returned (e.g. written by another process between the two reads):
    // look again shortly rather than spin or stall.
    lane.arm(1_000);
  }
}
