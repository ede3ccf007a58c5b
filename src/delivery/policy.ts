/**
 * What an attempt's outcome means for the delivery and its destination (design invariant 4),
 * plus the small time machines the dispatcher runs per destination: the offline probe, the
 * outage log and the rate-limit token bucket. Everything here is pure or driven by an
 * injected Clock.
 *
 * The line that matters is whether the request reached the receiver. A connection that
 * could not be made says the destination is unreachable, and says nothing about the event;
 * a request that was sent and then failed may be the event's fault (a receiver that chokes
 * on one body), so it spends an attempt and backs off alone, and the destination stays up.
 *
 *   outcome                                        delivery                 destination
 *   ---------------------------------------------  -----------------------  ----------------------
 *   2xx                                            delivered                up
 *   cannot connect: connection refused, DNS        offline: pending, no     down: one probe at a
 *     failure (ENOTFOUND, EAI_AGAIN), connect        attempt spent (expires   time, every second
 *     timeout, host/network unreachable, TLS         only by max_age)         (sooner on new events)
 *     handshake failure (bad certificate, reset
 *     or closed during the handshake), proxy
 *     tunnel refused
 *   sent, no answer in response_timeout            attempt spent, retry     up
 *     (UND_ERR_HEADERS_TIMEOUT, _BODY_TIMEOUT,       on the schedule
 *     ETIMEDOUT after connecting)
 *   sent, connection closed or reset before an     first time: sent again   up
 *     answer (UND_ERR_SOCKET "other side closed",    at once, not counted;
 *     ECONNRESET, EPIPE after connecting, or any     then attempt spent,
 *     other error once connected)                    retry on the schedule
 *   5xx, 408, 429, 3xx                             attempt spent, retry     up
 *                                                    (Retry-After honoured)
 *   after max_attempts counted attempts            dead (edgehook queue     up
 *                                                    list --state dead)
 *   410                                            dead                     disabled until
 *                                                                             `edgehook destination enable`
 *   other 4xx                                      dead at once (the receiver says the request is wrong)
 *   unsendable                                     dead at once, nothing sent: the request cannot be
 *                                                    built (the stored body cannot be rendered for
 *                                                    this destination); retrying cannot help
 *
 * Which side of the line an error is on: undici reports every failure to establish a
 * connection (TCP connect, TLS handshake, proxy CONNECT) on its `undici:client:connectError`
 * diagnostics channel before it fails the request with the same error object, so the
 * dispatcher knows the stage exactly (see connect-errors.ts) and passes it in the outcome.
 * Codes that only connecting produces (refused, DNS, connect timeout, unreachable, TLS
 * certificate errors) count as "cannot connect" whatever the stage says.
 *
 * Why one free resend: a keep-alive connection the receiver closed just as we reused it (a
 * server's idle timeout racing our next request) fails exactly like a receiver that resets
 * on one event: "other side closed" / ECONNRESET after the request was written. Sending once
 * more at once, on a fresh connection, delivers the first without spending an attempt; the
 * second fails again and backs off.
 *
 * 3xx counts as a retryable failure: redirects are never followed (a webhook POST must not be
 * replayed to a place the config does not name), and a moved endpoint is usually fixed by
 * someone editing the config, which a retry then picks up.
 *
 * The retry schedule (DEFAULT_RETRY_SCHEDULE, with DEFAULT_MAX_ATTEMPTS): six quick tries in
 * the first 20 s (0.25 s, 0.5 s, 1 s, 2 s, 5 s, 10 s), then 30 s, then 5 m, 30 m, 2 h, 5 h,
 * 10 h, 10 h: dead about 27½ hours after the first try, as with the schedule before it
 * (5 s, 5 m, 30 m, 2 h, 5 h, 10 h over 8 attempts). A series sends one event at a time, so
 * while its head waits for a retry every later reading of the series waits too; a receiver
 * that fails one request in ten must not park a series for minutes. The quick steps ride
 * that out (two failures in a row cost 0.75 s, three 1.75 s); a receiver that fails
 * everything gets one request per series at the quick cadence, then the long tail.
 */
import type { Clock } from "../clock.js";

export const DEFAULT_RETRY_SCHEDULE: readonly number[] = [
  250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000,
];
export const DEFAULT_MAX_ATTEMPTS = 14;

export const RETRY_AFTER_MIN_MS = 1_000;
export const RETRY_AFTER_MAX_MS = 3_600_000;
export const JITTER = 0.2;

/** The outcome of one attempt as the transport saw it. */
export type Outcome =
  | {
      kind: "response";
      status: number;
      retryAfter?: string | undefined;
      /** What the receiver answered, when the caller asked the transport to keep it (send-test). */
      answer?: Answer | undefined;
    }
  /**
   * No HTTP answer. `stage` is "connect" when no connection could be made (TCP, TLS
   * handshake, proxy tunnel), "request" when the connection was made and the request failed.
   */
  | { kind: "error"; error: unknown; stage: "connect" | "request" }
  /** The request could not be built (render or sign threw); nothing went on the wire. */
  | { kind: "unsendable"; error: unknown };

/** A receiver's answer as `edgehook send-test` prints it. */
export interface Answer {
  headers: Record<string, string | string[] | undefined>;
  /** Up to the first 4 KiB. */
  body: Buffer;
}

/** Why an attempt is unsendable, as the dead reason, the log and send-test say it. */
export function unsendableReason(error: unknown): string {
  const why = error instanceof Error ? error.message : String(error);
  return `cannot build the request: ${why.slice(0, 200)}`;
}

/** Label for `edgehook_deliveries_total{class}`. */
export type OutcomeClass = "2xx" | "3xx" | "4xx" | "5xx" | "offline" | "no_response" | "unsendable";

export type Decision =
  | { action: "delivered"; class: OutcomeClass }
  /** Not reachable now: stays pending, attempts not spent, destination goes down. */
  | { action: "offline"; class: OutcomeClass; error: string }
  /**
   * Try again at `nextAt` (epoch ms). `counted` is false for the one free resend after a
   * connection closed before answering (see the header).
   */
  | { action: "retry"; class: OutcomeClass; nextAt: number; error: string; counted: boolean }
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
  /** This delivery already had its free resend after a closed connection. */
  resent?: boolean;
}

export function statusClass(status: number): OutcomeClass {
  if (status >= 200 && status < 300) return "2xx";
  if (status >= 300 && status < 400) return "3xx";
  if (status >= 400 && status < 500) return "4xx";
  return "5xx";
}

export function decide(outcome: Outcome, ctx: DecideContext): Decision {
  if (outcome.kind === "unsendable") {
    return { action: "dead", class: "unsendable", reason: unsendableReason(outcome.error), disable: false };
  }
  if (outcome.kind === "error") {
    const error = describeError(outcome.error);
    const kind = errorKind(outcome);
    if (kind === "unreachable") return { action: "offline", class: "offline", error };
    if (kind === "closed" && !ctx.resent) {
      return { action: "retry", class: "no_response", nextAt: ctx.now, error, counted: false };
    }
    return counted("no_response", error, undefined, ctx);
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
  return counted(cls, error, parseRetryAfter(outcome.retryAfter, ctx.now), ctx);
}

/** A counted failed attempt: retry on the schedule (or after `fixedDelay`), or dead after max_attempts. */
function counted(cls: OutcomeClass, error: string, fixedDelay: number | undefined, ctx: DecideContext): Decision {
  const n = ctx.attempts + 1;
  if (n >= ctx.policy.max_attempts) {
    return { action: "dead", class: cls, reason: `${error} after ${n} attempts`, disable: false };
  }
  const delay = fixedDelay ?? retryDelay(ctx.policy.retry_schedule, n, ctx.random);
  return { action: "retry", class: cls, nextAt: ctx.now + delay, error, counted: true };
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

/** Time to dead: the sum of the delays before attempts 2..max_attempts (no jitter). */
export function timeToDead(policy: RetryPolicy): number {
  let total = 0;
  for (let n = 1; n < policy.max_attempts; n++) total += retryDelay(policy.retry_schedule, n, () => 0.5);
  return total;
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

/** Codes that only trying to connect produces: unreachable whatever stage was reported. */
const CANNOT_CONNECT: ReadonlySet<string> = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EAI_FAIL",
  "EHOSTUNREACH",
  "EHOSTDOWN",
  "ENETUNREACH",
  "ENETDOWN",
  "UND_ERR_CONNECT_TIMEOUT",
]);

/** Response timeouts: the receiver has the request and did not answer in time. */
const TIMEOUTS: ReadonlySet<string> = new Set(["UND_ERR_HEADERS_TIMEOUT", "UND_ERR_BODY_TIMEOUT", "ETIMEDOUT"]);

/**
 * "unreachable" (no connection: offline), "timeout" (sent, no answer in time) or "closed"
 * (sent, the connection closed or reset before an answer, or anything else once connected).
 */
export function errorKind(outcome: {
  error: unknown;
  stage: "connect" | "request";
}): "unreachable" | "timeout" | "closed" {
  const codes = errorCodes(outcome.error);
  if (outcome.stage === "connect" || codes.some((c) => CANNOT_CONNECT.has(c) || isTlsCode(c))) return "unreachable";
  if (codes.some((c) => TIMEOUTS.has(c))) return "timeout";
  return "closed";
}

function isTlsCode(code: string): boolean {
  return code.startsWith("ERR_TLS") || code.startsWith("ERR_SSL") || code.includes("CERT");
}

/** Every `code` along the error's `cause` chain, outermost first. */
function errorCodes(err: unknown): string[] {
  const codes: string[] = [];
  const seen = new Set<unknown>();
  let e: unknown = err;
  while (e && typeof e === "object" && !seen.has(e)) {
    seen.add(e);
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string") codes.push(code);
    e = (e as { cause?: unknown }).cause;
  }
  return codes;
}

const ERROR_TEXT: Record<string, string> = {
  ECONNREFUSED: "connection refused",
  ECONNRESET: "connection reset",
  EPIPE: "connection closed",
  ENOTFOUND: "DNS lookup failed",
  EAI_AGAIN: "DNS lookup failed (temporary)",
  EAI_FAIL: "DNS lookup failed",
  EHOSTUNREACH: "host unreachable",
  EHOSTDOWN: "host down",
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

/** A short, secret-free description of a transport error for logs and attempt records. */
export function describeError(err: unknown): string {
  // undici wraps the socket error in `cause`; the innermost code is the informative one.
  const code = errorCodes(err).at(-1);
  if (code !== undefined) {
    const known = ERROR_TEXT[code];
    return known ? `${known} (${code})` : isTlsCode(code) ? `TLS: ${code}` : code;
  }
  if (err instanceof Error) return err.message.slice(0, 200);
  return String(err).slice(0, 200);
}

// ---------------------------------------------------------------- offline probing

/** Longest time between two probes while a destination is down (design: resume within 1 s). */
export const PROBE_INTERVAL_MS = 1_000;
/** Probes start up to this share of the interval early, so devices do not probe in lockstep. */
export const PROBE_JITTER = 0.25;
/** A newly committed event may probe at once, but not sooner than this after the last probe ended. */
export const PROBE_NEW_WORK_GAP_MS = 250;

/**
 * While a destination is down, exactly one request (a real delivery, the probe) may be in
 * flight. Probes start every second (0.75 to 1 s apart, jittered), so delivery resumes
 * within a second of the receiver's return however long the outage; a new event may probe
 * sooner, at most every PROBE_NEW_WORK_GAP_MS, so readings published after the receiver
 * returned do not wait for the timer. Any HTTP answer (or a connection made) ends the outage.
 *
 * Cost while down: one connection attempt a second (a refused connect, a DNS query or a
 * connect that waits connect_timeout, one at a time) and no disk write for it (the
 * dispatcher records an offline outcome at most once a minute).
 */
export class OfflineProbe {
  #lastStart = 0;
  #lastEnd = 0;
  #nextAt = 0;
  #inFlight = false;
  readonly #clock: Clock;
  readonly #random: () => number;

  constructor(clock: Clock, random: () => number = Math.random) {
    this.#clock = clock;
    this.#random = random;
  }

  #interval(): number {
    return Math.round(PROBE_INTERVAL_MS * (1 - PROBE_JITTER * this.#random()));
  }

  /** The destination just went down: the first probe is due within a second. */
  reset(): void {
    const now = this.#clock.monotonic();
    this.#lastStart = now;
    this.#lastEnd = now;
    this.#nextAt = now + this.#interval();
    this.#inFlight = false;
  }

  /**
   * Ms until a probe may start (0 = now), or undefined while one is in flight. `newWork`:
   * an event was committed since the last probe, which may go early.
   */
  waitMs(newWork = false): number | undefined {
    if (this.#inFlight) return undefined;
    const due = newWork ? Math.min(this.#nextAt, this.#lastEnd + PROBE_NEW_WORK_GAP_MS) : this.#nextAt;
    return Math.max(0, due - this.#clock.monotonic());
  }

  /** Claims the single probe slot; false when not due or already taken. */
  begin(newWork = false): boolean {
    if (this.waitMs(newWork) !== 0) return false;
    this.#inFlight = true;
    this.#lastStart = this.#clock.monotonic();
    return true;
  }

  /** The probe could not connect: the next one a second after this one started. */
  failed(): void {
    const now = this.#clock.monotonic();
    this.#inFlight = false;
    this.#lastEnd = now;
    this.#nextAt = Math.max(this.#lastStart + this.#interval(), now + PROBE_NEW_WORK_GAP_MS);
  }

  /** The probe ended without telling us anything (e.g. shutdown): may probe again at once. */
  released(): void {
    this.#inFlight = false;
    this.#nextAt = Math.min(this.#nextAt, this.#clock.monotonic());
  }

  get inFlight(): boolean {
    return this.#inFlight;
  }
}

// ---------------------------------------------------------------- outage log

/** Outages of one destination logged line by line within FLAP_WINDOW_MS; more are summarised. */
export const FLAP_LINES = 3;
export const FLAP_WINDOW_MS = 60_000;

export interface FlapSummary {
  /** Outages in the window that were not logged line by line. */
  outages: number;
  /** Their time down, summed (ms; an outage still going counts until now). */
  downMs: number;
  /** Length of the window (ms). */
  windowMs: number;
}

/**
 * Which outage lines to write. Each outage logs "unreachable" when it starts and "reachable
 * again" (with its duration) when it ends, however short. A destination that goes down more
 * than FLAP_LINES times within FLAP_WINDOW_MS (a receiver in a restart loop) would flood the
 * log that way: the further outages of that window are counted instead, and one summary line
 * reports them when the window is over. An outage that itself lasts a whole window is
 * logged when it ends in any case.
 */
export class OutageLog {
  #windowStart: number | undefined;
  #outages = 0;
  #quiet = 0;
  #quietDownMs = 0;
  #currentLogged = false;
  #downAt = 0;
  readonly #clock: Clock;

  constructor(clock: Clock) {
    this.#clock = clock;
  }

  /**
   * The destination went down. `log`: write the "unreachable" line. `summary`: a window
   * that ended with outages to report, to write first.
   */
  down(): { log: boolean; summary?: FlapSummary } {
    const now = this.#clock.monotonic();
    const summary = this.due();
    this.#windowStart ??= now;
    this.#outages++;
    this.#downAt = now;
    this.#currentLogged = this.#outages <= FLAP_LINES;
    if (!this.#currentLogged) this.#quiet++;
    return summary ? { log: this.#currentLogged, summary } : { log: this.#currentLogged };
  }

  /** The destination is back after `downMs`: true to write the "reachable again" line. */
  up(downMs: number): boolean {
    if (this.#currentLogged || downMs >= FLAP_WINDOW_MS) return true;
    this.#quietDownMs += downMs;
    return false;
  }

  /**
   * The summary of a window that is over and had outages not logged line by line (write it),
   * or undefined. `downNow`: the destination is down at this moment (its time so far counts).
   */
  due(downNow = false): FlapSummary | undefined {
    const now = this.#clock.monotonic();
    if (this.#windowStart === undefined || now - this.#windowStart < FLAP_WINDOW_MS) return undefined;
    const summary: FlapSummary | undefined =
      this.#quiet > 0
        ? {
            outages: this.#quiet,
            downMs: this.#quietDownMs + (downNow && !this.#currentLogged ? now - this.#downAt : 0),
            windowMs: now - this.#windowStart,
          }
        : undefined;
    this.#windowStart = undefined;
    this.#outages = 0;
    this.#quiet = 0;
    this.#quietDownMs = 0;
    if (downNow && !this.#currentLogged) {
      // The outage going on was reported in the summary; its end is logged on its own.
      this.#currentLogged = true;
    }
    return summary;
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
