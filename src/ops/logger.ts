/**
 * Structured JSON logs on stdout (journald stores and rotates them). One child logger
 * per component: `log.child({ component: "outbox" })`. Secrets are redacted by path.
 */
import { type DestinationStream, type Logger, pino } from "pino";

export type { Logger } from "pino";

export const REDACT_PATHS = [
  "secret",
  "*.secret",
  "*.*.secret",
  "hub_secret",
  "*.hub_secret",
  "password",
  "*.password",
  "*.*.password",
  "headers.authorization",
  "*.headers.authorization",
  "*.headers.Authorization",
  "headers.Authorization",
  "config.destinations.*.secret",
  "config.destinations.*.hub_secret",
  "config.destinations.*.headers",
  "config.mqtt.password",
  "token",
  "*.token",
  "basic_auth.password",
  "*.basic_auth.password",
  "ed25519.secret",
  "*.ed25519.secret",
];

export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { pid: process.pid },
      redact: { paths: REDACT_PATHS, censor: "[redacted]" },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination ?? pino.destination({ dest: 1, sync: false }),
  );
}

/** A logger that writes nothing, for tests and one-shot commands. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}

/**
 * Logs a repeating condition on change and then at a slow cadence, instead of once
 * per occurrence (a flapping port, a down receiver).
 */
export class RateLimitedLog {
  #last = new Map<string, { at: number; suppressed: number }>();
  readonly #intervalMs: number;
  readonly #now: () => number;
  constructor(intervalMs = 60_000, now: () => number = Date.now) {
    this.#intervalMs = intervalMs;
    this.#now = now;
  }
  /** Returns the number of suppressed repeats to report, or undefined to stay quiet. */
  shouldLog(key: string): number | undefined {
    const now = this.#now();
    const entry = this.#last.get(key);
    if (!entry || now - entry.at >= this.#intervalMs) {
      const suppressed = entry?.suppressed ?? 0;
      this.#last.set(key, { at: now, suppressed: 0 });
      return suppressed;
    }
    entry.suppressed++;
    return undefined;
  }
  reset(key: string): void {
    this.#last.delete(key);
  }
}
