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
   * (in flight) are skipped. Reads from disk; nothing is cached per delivery.
   */
  next(destination: string, now: number, limit: number, exclude: ReadonlySet<string>): Delivery[];
  /** Earliest `next_at` among the pending heads of `destination`, or undefined. */
  nextDueAt(destination: string): number | undefined;
  /** Records outcomes; batched into one transaction by the caller or the outbox. */
  settle(settlements: Settlement[]): void;
}
