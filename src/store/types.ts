/**
 * The outbox contract, shared by the store (which implements it) and the
 * dispatcher (which drains it). One delivery row per (event, destination):
 * pending → delivered | dead.
 */
export type DeliveryState = "pending" | "delivered" | "dead";

export interface Delivery {
  /** Row id of the delivery. */
  id: number;
  /** `msg_...`, the webhook-id. */
  eventId: string;
  destination: string;
  series: string;
  type: string;
  priority: number;
  /** Attempts that counted (receiver answers; offline probes do not count). */
  attempts: number;
  /** Agent clock when the event was committed. */
  createdAt: number;
  /** The exact stored body bytes. */
  body: Buffer;
}

export interface AttemptRecord {
  /** When the attempt started (epoch ms). */
  at: number;
  /** HTTP status, or undefined when no answer came. */
  status?: number;
  durationMs: number;
  /** Short error text (never containing a secret). */
  error?: string;
}

export type Settlement =
  | { id: number; outcome: "delivered"; attempt: AttemptRecord }
  | { id: number; outcome: "dead"; attempt: AttemptRecord; reason: string }
  /** Retry later. `counted` is false for offline outcomes, which do not spend attempts. */
  | { id: number; outcome: "retry"; attempt: AttemptRecord; nextAt: number; counted: boolean };

export interface DestinationStats {
  destination: string;
  pending: number;
  delivered: number;
  dead: number;
  /** Age in ms of the oldest pending delivery, or null. */
  oldestPendingAgeMs: number | null;
}

export interface CommitResult {
  /** Events accepted (0 when refused at the disk floor). */
  accepted: number;
  /** Deliveries dropped to stay within limits, by reason. */
  dropped: Record<string, number>;
}

/** What the dispatcher needs from the outbox. */
export interface OutboxReader {
  /**
   * Up to `limit` deliveries of `destination` that are due at `now` and are the
   * head of their series (the earliest pending delivery of that series), highest
   * priority first, then oldest. Deliveries whose id or series is in `exclude`
   * (in flight) are skipped. `after` maps a series to the id of a delivery the caller
   * has settled (delivered or dead) but not written yet: for that series the first
   * pending delivery after it is returned instead, if due. Reads from disk; nothing is
   * cached per delivery.
   */
  next(
    destination: string,
    now: number,
    limit: number,
    exclude: ReadonlySet<string>,
    after?: ReadonlyMap<string, number>,
  ): Delivery[];
  /** Earliest `next_at` among the pending heads of `destination`, or undefined. */
  nextDueAt(destination: string): number | undefined;
  /**
   * Makes every pending delivery of `destination` that waits for a retry due at `now`,
   * keeping its attempts (a reload fixed the destination). Returns how many.
   */
  retryNow(destination: string, now: number): number;
  /** Pending deliveries of `destination` (from the in-memory counters; no scan). */
  pendingCount(destination: string): number;
  /** Records outcomes; batched into one transaction by the caller or the outbox. */
  settle(settlements: Settlement[]): void;
  /**
   * Outcomes waiting to be written ride on the outbox's next write transaction, whatever
   * it is for (an event committed, most often), instead of costing one of their own: each
   * transaction is an fsync and at least a few 4 KiB pages written to the SD card.
   * undefined: none any more (the dispatcher stopped).
   */
  carry?(rider: SettleRider | undefined): void;
}

/** Delivery outcomes that wait to be written (the dispatcher's settle writer). */
export interface SettleRider {
  /** Inside a write transaction: the outcomes to write with it; they are the outbox's until it ends. */
  take(): Settlement[];
  /** That transaction committed: the outcomes taken are on disk. */
  committed(): void;
  /** It failed: nothing of it is on disk; the outcomes taken wait again. */
  rolledBack(): void;
}

// ---------------------------------------------------------------- operator queries (edgehook queue ...)

/** Persisted per-destination flag: a 410 Gone disables a destination until an operator re-enables it. */
export interface DestinationFlag {
  disabled: boolean;
  reason?: string;
  /** Epoch ms when the flag was set. */
  since?: number;
}

/** One delivery as `queue list` shows it (no body). */
export interface DeliveryListing extends Omit<Delivery, "body"> {
  state: DeliveryState;
  /** When the next attempt is due (pending only); 0 when due at once (never tried, or replayed). */
  nextAt: number | null;
  settledAt: number | null;
  lastStatus: number | null;
  lastError: string | null;
  /** Why a delivery is dead (`expired`, `http 400`, ...). */
  reason: string | null;
}

/** `queue show ID`: the event, its body and every delivery with its recent attempts. */
export interface EventDetail {
  id: string;
  type: string;
  rule: string;
  series: string;
  severity: string;
  priority: number;
  createdAt: number;
  /** The stored body bytes as text (exactly what is signed). */
  body: string;
  deliveries: (DeliveryListing & { history: AttemptRecord[] })[];
}

export type ReplayTarget = { eventId: string } | { destination: string; state: "dead" };

export interface PurgeRequest {
  /** Only rows settled longer ago than this. */
  olderThanMs: number;
  states: ("delivered" | "dead")[];
}

/** What one `maintain()` pass did. */
export interface MaintainResult {
  /** Delivered/dead rows removed because they were older than their keep time. */
  pruned: number;
  /** Pending deliveries marked dead because they outlived max_age. */
  expired: number;
  /** Deliveries dropped to get back under max_events / max_bytes, by reason. */
  dropped: Record<string, number>;
  /** True when the pass stopped at its work cap and more remains (call again soon). */
  more: boolean;
}
