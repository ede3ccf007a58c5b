/**
 * What an attempt's outcome means for the delivery and its destination (design invariant 4),
 * plus the two small time machines the dispatcher runs per destination: the offline probe
 * and the rate-limit token bucket. Everything here is pure or driven by an injected Clock.
 *
 *   2xx                         delivered
 *   no answer (refused, reset,  offline: stays pending, attempts NOT spent, destination down;
 *   DNS, timeouts, TLS, closed)   one probe at a time until any HTTP answer comes back
 *   5xx, 408, 429, 3xx          retry on the schedule (Retry-After honoured), dead after max_attempts
 *   410                         dead, and the destination is disabled until `edgehook destination enable`
 *   other 4xx                   dead at once (the receiver says the request itself is wrong)
 *   unsendable                  dead at once, nothing sent: the request cannot be built (the stored
 *                                 body cannot be rendered for this destination); retrying cannot help
 *
 * 3xx counts as a retryable failure: redirects are never followed (a webhook POST must not be
 * replayed to a place the config does not name), and a moved endpoint is usually fixed by
 * someone editing the config, which a retry then picks up.
 */
import type { Clock } from "../clock.js";

export const DEFAULT_RETRY_SCHEDULE: readonly number[] = [5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000];

export const RETRY_AFTER_MIN_MS = 1_000;
export const RETRY_AFTER_MAX_MS = 3_600_000;
export const JITTER = 0.2;

/** The outcome of one attempt as the transport saw it. */
export type Outcome =
  | { kind: "response"; status: number; retryAfter?: string | undefined }
  | { kind: "error"; error: unknown }
  /** The request could not be built (render or sign threw); nothing went on the wire. */
  | { kind: "unsendable"; error: unknown };

/** Label for `edgehook_deliveries_total{class}`. */
export type OutcomeClass = "2xx" | "3xx" | "4xx" | "5xx" | "offline" | "unsendable";

export type Decision =
  | { action: "delivered"; class: OutcomeClass }
  /** Not reachable now: stays pending, attempts not spent, destination goes down. */
  | { action: "offline"; class: OutcomeClass; error: string }
  /** Counted attempt; try again at `nextAt` (epoch ms). */
  | { action: "retry"; class: OutcomeClass; nextAt: number; error: string }
  /** Permanent. `disable` when the receiver said 410 Gone. */
  | { action: "dead"; class: OutcomeClass; reason: string; disable: boolean };

export interface RetryPolicy {
  retry_schedule: readonly number[];
  max_attempts: number;
}

export interface DecideContext {
  /** Counted attempts before this one. */
  attempts: number;
  policy: RetryPolicy;
  /** Wall clock (epoch ms) when the outcome arrived. */
  now: number;
  /** [0, 1); Math.random in production. */
  random: () => number;
}

export function statusClass(status: number): OutcomeClass {
  if (status >= 200 && status < 300) return "2xx";
  if (status >= 300 && status < 400) return "3xx";
  if (status >= 400 && status < 500) return "4xx";
  return "5xx";
}

export function decide(outcome: Outcome, ctx: DecideContext): Decision {
  if (outcome.kind === "unsendable") {
    const why = outcome.error instanceof Error ? outcome.error.message : String(outcome.error);
    return {
      action: "dead",
      class: "unsendable",
      reason: `cannot build the request: ${why.slice(0, 200)}`,
      disable: false,
    };
  }
  if (outcome.kind === "error") {
    return { action: "offline", class: "offline", error: describeError(outcome.error) };
  }
  const { status } = outcome;
  const cls = statusClass(status);
  if (status >= 200 && status < 300) return { action: "delivered", class: cls };
  if (status === 410) {
    return { action: "dead", class: cls, reason: "HTTP 410 Gone: receiver asked to stop", disable: true };
  }
  const retryable = status >= 500 || status === 408 || status === 429 || (status >= 300 && status < 400);
  if (!retryable && status >= 400 && status < 500) {
    return { action: "dead", class: cls, reason: `HTTP ${status}: receiver rejected the request`, disable: false };
  }
  // 1xx that reached us as final, 5xx, 408, 429, 3xx.
  const error =
    status >= 300 && status < 400
      ? `HTTP ${status}: redirect not followed (fix the destination url)`
      : `HTTP ${status}`;
  const counted = ctx.attempts + 1;
  if (counted >= ctx.policy.max_attempts) {
    return { action: "dead", class: cls, reason: `${error} after ${counted} attempts`, disable: false };
  }
  const fromHeader = parseRetryAfter(outcome.retryAfter, ctx.now);
  const delay = fromHeader ?? retryDelay(ctx.policy.retry_schedule, counted, ctx.random);
  return { action: "retry", class: cls, nextAt: ctx.now + delay, error };
}

/**
 * Delay before the next try after `counted` counted attempts (1 → first entry). The last
 * entry repeats. ±20 % jitter so many devices that lost the same receiver do not return
 * in lockstep.
 */
export function retryDelay(schedule: readonly number[], counted: number, random: () => number): number {
  const list = schedule.length > 0 ? schedule : DEFAULT_RETRY_SCHEDULE;
  const base = list[Math.min(Math.max(counted, 1), list.length) - 1] as number;
  const factor = 1 - JITTER + 2 * JITTER * random();
  return Math.max(0, Math.round(base * factor));
}

/**
 * `Retry-After` (RFC 9110 §10.2.3): delay-seconds or an HTTP-date, clamped to [1 s, 1 h] so a
 * receiver can neither make us hammer it nor park a delivery for days. Undefined when absent
 * or unreadable (the schedule applies).
 */
export function parseRetryAfter(value: string | undefined, now: number): number | undefined {
  if (value === undefined) return undefined;
  const v = value.trim();
  if (v === "") return undefined;
  let ms: number;
  if (/^\d+$/.test(v)) {
    ms = Number(v) * 1000;
  } else {
    // HTTP-dates name the month in letters; this keeps Date.parse from reading "-5" as a year.
    if (!/[A-Za-z]{3}/.test(v)) return undefined;
    const at = Date.parse(v);
    if (Number.isNaN(at)) return undefined;
    ms = at - now;
  }
  return Math.min(RETRY_AFTER_MAX_MS, Math.max(RETRY_AFTER_MIN_MS, ms));
}

const OFFLINE_CODES: Record<string, string> = {
  ECONNREFUSED: "connection refused",
  ECONNRESET: "connection reset",
  EPIPE: "connection closed",
  ENOTFOUND: "DNS lookup failed",
  EAI_AGAIN: "DNS lookup failed (temporary)",
  EHOSTUNREACH: "host unreachable",
  ENETUNREACH: "network unreachable",
  ENETDOWN: "network down",
  ETIMEDOUT: "connection timed out",
  UND_ERR_CONNECT_TIMEOUT: "connect timeout",
  UND_ERR_HEADERS_TIMEOUT: "response timeout (no headers)",
  UND_ERR_BODY_TIMEOUT: "response timeout (body)",
  UND_ERR_SOCKET: "socket closed by the other side",
  UND_ERR_CLOSED: "client closed",
  UND_ERR_ABORTED: "aborted",
};

/**
 * A short, secret-free description of a transport error for logs and attempt records.
 * Anything without an HTTP answer is "offline"; TLS and unknown errors too, so a wrong
 * certificate holds events back (visible in logs) instead of killing them.
 */
export function describeError(err: unknown): string {
  const seen = new Set<unknown>();
  let e: unknown = err;
  // undici wraps the socket error in `cause`; the innermost code is the informative one.
  let best: string | undefined;
  while (e && typeof e === "object" && !seen.has(e)) {
    seen.add(e);
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string") {
      const known = OFFLINE_CODES[code];
      best = known ? `${known} (${code})` : code.startsWith("ERR_TLS") || code.includes("CERT") ? `TLS: ${code}` : code;
    }
    e = (e as { cause?: unknown }).cause;
  }
  if (best) return best;
  if (err instanceof Error) return err.message.slice(0, 200);
  return String(err).slice(0, 200);
}

// ---------------------------------------------------------------- offline probing

export const PROBE_FIRST_MS = 1_000;
export const PROBE_MAX_MS = 60_000;

/**
 * While a destination is down, exactly one request (a real delivery, the probe) may be in
 * flight, and probes start 1 s, 2 s, 4 s ... apart, capped at 60 s. Any HTTP answer ends the
 * outage; the backlog then drains at the destination's rate limit.
 */
export class OfflineProbe {
  #interval = PROBE_FIRST_MS;
  #nextAt = 0;
  #inFlight = false;
  readonly #clock: Clock;

  constructor(clock: Clock) {
    this.#clock = clock;
  }

  /** The destination just went down: the first probe is due after 1 s. */
  reset(): void {
    this.#interval = PROBE_FIRST_MS;
    this.#nextAt = this.#clock.monotonic() + this.#interval;
    this.#inFlight = false;
  }

  /** Ms until a probe may start (0 = now), or undefined while one is in flight. */
  waitMs(): number | undefined {
    if (this.#inFlight) return undefined;
    return Math.max(0, this.#nextAt - this.#clock.monotonic());
  }

  /** Claims the single probe slot; false when not due or already taken. */
  begin(): boolean {
    if (this.#inFlight || this.#clock.monotonic() < this.#nextAt) return false;
    this.#inFlight = true;
    return true;
  }

  /** The probe got no answer: wait twice as long (capped) before the next. */
  failed(): void {
    this.#inFlight = false;
    this.#interval = Math.min(this.#interval * 2, PROBE_MAX_MS);
    this.#nextAt = this.#clock.monotonic() + this.#interval;
  }

  /** The probe ended without telling us anything (e.g. shutdown): may probe again at once. */
  released(): void {
    this.#inFlight = false;
  }

  get intervalMs(): number {
    return this.#interval;
  }
  get inFlight(): boolean {
    return this.#inFlight;
  }
}

// ---------------------------------------------------------------- rate limit

/**
 * Token bucket on the monotonic clock: `rate` tokens per second, burst of one second's
 * worth (at least 1), so a backlog drains at the configured rate.
 */
export class TokenBucket {
  readonly #rate: number;
  readonly #burst: number;
  #tokens: number;
  #at: number;
  readonly #clock: Clock;

  constructor(ratePerSec: number, clock: Clock) {
    this.#rate = ratePerSec;
    this.#burst = Math.max(1, ratePerSec);
    this.#clock = clock;
    this.#tokens = this.#burst;
    this.#at = clock.monotonic();
  }

  #refill(): void {
    const now = this.#clock.monotonic();
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#at) * this.#rate) / 1000);
    this.#at = now;
  }

  /** Whole tokens available now. */
  available(): number {
    this.#refill();
    return Math.floor(this.#tokens);
  }

  /** Takes `n` tokens (call after `available()` said they exist). */
  take(n: number): void {
    this.#refill();
    this.#tokens -= n;
  }

  /** Ms until one whole token is available. */
  waitMs(): number {
    this.#refill();
    if (this.#tokens >= 1) return 0;
    return Math.ceil(((1 - this.#tokens) * 1000) / this.#rate);
  }
}
