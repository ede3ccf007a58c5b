/**
 * Logs on stdout. Under systemd (journald stores and rotates them) and in a pipe: one JSON
 * object per line. In a terminal: short readable lines (`pretty`), coloured unless
 * NO_COLOR is set. One child logger per component: `log.child({ component: "outbox" })`.
 * Secrets are redacted by path, in both formats.
 */
import { type DestinationStream, type Logger, pino } from "pino";
import { safe } from "../cli/safe-text.js";

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

export type LogFormat = "auto" | "json" | "pretty";

/**
 * `auto`: JSON under systemd (JOURNAL_STREAM or INVOCATION_ID set) and when stdout is not a
 * terminal (a pipe, a file, a test); pretty in a terminal.
 */
export function resolveLogFormat(format: LogFormat, env: NodeJS.ProcessEnv, isTTY: boolean): "json" | "pretty" {
  if (format !== "auto") return format;
  if (env.JOURNAL_STREAM || env.INVOCATION_ID) return "json";
  return isTTY ? "pretty" : "json";
}

/** Colour when the terminal takes it: not with NO_COLOR (any value), TERM=dumb, or a pipe. */
export function useColor(env: NodeJS.ProcessEnv, isTTY: boolean): boolean {
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== "") return false;
  if (env.FORCE_COLOR !== undefined && env.FORCE_COLOR !== "0") return true;
  return isTTY && env.TERM !== "dumb";
}

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

/** A logger writing readable lines (see formatPretty) to `write`. */
export function createPrettyLogger(level: string, write: (line: string) => void, color: boolean): Logger {
  return createLogger(level, {
    write: (json: string) => {
      write(formatPretty(json, color));
    },
  });
}

const LEVEL_COLORS: Record<string, string> = {
  trace: "90",
  debug: "36",
  info: "32",
  warn: "33",
  error: "31",
  fatal: "35",
};
const HIDDEN = new Set(["level", "time", "pid", "hostname", "component", "msg"]);

/**
 * One JSON log line as `10:02:11 WARN  dispatcher  destination ops is down  error=ECONNREFUSED`.
 * Epoch-millisecond fields (`since`, `*At`) are shown as local times; errors as their message.
 */
export function formatPretty(json: string, color: boolean): string {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json.endsWith("\n") ? json : `${json}\n`;
  }
  const paint = (code: string, text: string) => (color ? `\u001b[${code}m${text}\u001b[0m` : text);
  const level = String(o.level ?? "info");
  const t = typeof o.time === "string" || typeof o.time === "number" ? new Date(o.time) : new Date();
  const fields: string[] = [];
  for (const [k, v] of Object.entries(o)) {
    if (HIDDEN.has(k) || v === undefined) continue;
    fields.push(`${paint("2", `${safe(k)}=`)}${fieldValue(k, v)}`);
  }
  const component = typeof o.component === "string" ? `${paint("1", safe(o.component))}  ` : "";
  return `${paint("2", clockTime(t))} ${paint(LEVEL_COLORS[level] ?? "0", level.toUpperCase().padEnd(5))} ${component}${safe(o.msg ?? "")}${
    fields.length ? `  ${fields.join(" ")}` : ""
  }\n`;
}

const TIME_KEY = /(^since$|At$|_at$|^at$|Since$)/;

function fieldValue(key: string, v: unknown): string {
  if (TIME_KEY.test(key)) {
    if (typeof v === "number" && v > 1e12 && v < 1e13) return clockTime(new Date(v));
    if (typeof v === "string" && /^\d{4}-\d\d-\d\dT[\d:.]+Z$/.test(v)) return clockTime(new Date(v));
  }
  if (v && typeof v === "object" && "message" in v && typeof (v as { message: unknown }).message === "string") {
    const e = v as { message: string; code?: unknown };
    return quote(safe(e.code ? `${e.message} (${String(e.code)})` : e.message));
  }
  if (typeof v === "string") return /^[^\s"=]+$/.test(v) ? safe(v) : quote(safe(v));
  return safe(JSON.stringify(v));
}

/** Quotes text that safe() already escaped (no second escaping of its backslashes). */
function quote(text: string): string {
  return `"${text.replace(/"/g, '\\"')}"`;
}

function clockTime(d: Date): string {
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
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
