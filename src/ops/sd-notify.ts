/**
 * systemd readiness, status, watchdog and shutdown notifications (sd_notify(3)).
 *
 * Mechanism: we spawn `systemd-notify` for each message. sd_notify needs an AF_UNIX
 * SOCK_DGRAM socket, which Node cannot open, and a native addon would need a compiler
 * on a stock Raspberry Pi OS. `systemd-notify` ships with systemd itself, so it is
 * wherever `Type=notify` can work, and it handles every NOTIFY_SOCKET form (a path or
 * an abstract `@name`). Costs: one short process per message (~5 ms CPU here; the
 * watchdog sends one every WatchdogSec/2, i.e. every 15 s with the unit we ship).
 *
 * Two details make this reliable:
 * - The message comes from a child PID, so the unit needs `NotifyAccess=all`. We pass
 *   `--pid=<our pid>`: when permitted (root) systemd-notify sends our PID as the
 *   sender credentials, otherwise it falls back to its own PID, which is in the
 *   service's cgroup and accepted under NotifyAccess=all. It also sends MAINPID=<our
 *   pid>, which is the main PID already.
 * - Older systemd dropped messages from a sender that exited before the manager looked
 *   up its cgroup (systemd issue #2739). Since systemd 246 systemd-notify waits for the
 *   manager to process the message (BARRIER=1, unless --no-block), which closes that
 *   race; Raspberry Pi OS bullseye has 247, bookworm 252.
 *
 * With NOTIFY_SOCKET unset (not under systemd, or Type≠notify) nothing is spawned.
 */
import { spawn } from "node:child_process";
import type { Clock, TimerHandle } from "../clock.js";
import type { Logger } from "./logger.js";

export interface SdNotifyOptions {
  /** The process environment (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID, PATH). */
  env: NodeJS.ProcessEnv;
  logger: Logger;
  clock: Clock;
  /** Our PID: the main PID systemd knows, and the one WATCHDOG_PID must name. */
  pid: number;
  /** The notifier program; found on env.PATH. */
  command?: string;
  /** A hung notifier is killed after this long (systemd-notify's own barrier waits 5 s). */
  timeoutMs?: number;
}

export class SdNotify {
  readonly #env: NodeJS.ProcessEnv;
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #pid: number;
  readonly #command: string;
  readonly #timeoutMs: number;
  /** Messages go out one at a time, in order (READY before STOPPING). */
  #chain: Promise<void> = Promise.resolve();
  #watchdogTimer: TimerHandle | undefined;
  #watchdogPending = false;
  #missingReported = false;
  #stopped = false;

  constructor(options: SdNotifyOptions) {
    this.#env = options.env;
    this.#log = options.logger;
    this.#clock = options.clock;
    this.#pid = options.pid;
    this.#command = options.command ?? "systemd-notify";
    this.#timeoutMs = options.timeoutMs ?? 6_000;
  }

  /** True when systemd asked for notifications (NOTIFY_SOCKET is set). */
  get enabled(): boolean {
    return Boolean(this.#env.NOTIFY_SOCKET);
  }

  /**
   * The watchdog ping interval in ms (half of WATCHDOG_USEC), or undefined when systemd
   * expects no pings from us: no socket, no WATCHDOG_USEC, or WATCHDOG_PID naming
   * another process (sd_watchdog_enabled(3)).
   */
  get watchdogIntervalMs(): number | undefined {
    if (!this.enabled) return undefined;
    const usec = Number(this.#env.WATCHDOG_USEC);
    if (!Number.isFinite(usec) || usec <= 0) return undefined;
    const owner = this.#env.WATCHDOG_PID;
    if (owner !== undefined && owner !== "" && Number(owner) !== this.#pid) return undefined;
    return Math.max(1, Math.floor(usec / 2_000));
  }

  /** Start-up (or a reload) is complete: the outbox is open and sources are started. */
  ready(status?: string): Promise<void> {
    return this.#send(status === undefined ? ["READY=1"] : ["READY=1", `STATUS=${oneLine(status)}`]);
  }

  /** A reload began; call ready() when the new configuration runs. */
  reloading(): Promise<void> {
    return this.#send(["RELOADING=1"]);
  }

  /** Shutdown began. Send this first, before stopping any part. */
  stopping(): Promise<void> {
    return this.#send(["STOPPING=1"]);
  }

  /**
   * Asks systemd for more time in the current phase (start-up, reload or stop), e.g. while
   * a large outbox is checked: the phase may then last `ms` from now (EXTEND_TIMEOUT_USEC).
   */
  extendTimeout(ms: number): Promise<void> {
    return this.#send([`EXTEND_TIMEOUT_USEC=${Math.max(0, Math.round(ms * 1000))}`]);
  }

  /** Free-form text shown by `systemctl status`. */
  status(text: string): Promise<void> {
    return this.#send([`STATUS=${oneLine(text)}`]);
  }

  /**
   * Sends WATCHDOG=1 every half WATCHDOG_USEC. `healthy`, when given, is asked before
   * each ping: a false answer skips the ping, so systemd restarts a stuck agent.
   * Does nothing when systemd expects no pings.
   */
  startWatchdog(healthy?: () => boolean): void {
    const interval = this.watchdogIntervalMs;
    if (interval === undefined || this.#watchdogTimer) return;
    this.#stopped = false;
    this.#log.debug({ intervalMs: interval }, "systemd watchdog enabled");
    const tick = () => {
      if (this.#stopped) return;
      this.#watchdogTimer = this.#clock.setTimeout(tick, interval);
      this.#watchdogTimer.unref?.();
      let ok = true;
      try {
        ok = healthy ? healthy() : true;
      } catch (err) {
        this.#log.warn({ err }, "health check for the watchdog failed");
        ok = false;
      }
      if (!ok) {
        this.#log.warn("agent unhealthy: withholding the systemd watchdog ping");
        return;
      }
      // One ping in flight is enough; a second queued behind it adds nothing.
      if (this.#watchdogPending) return;
      this.#watchdogPending = true;
      void this.#send(["WATCHDOG=1"]).finally(() => {
        this.#watchdogPending = false;
      });
    };
    tick();
  }

  /** Stops the watchdog and waits for messages already queued (e.g. STOPPING=1). */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#watchdogTimer) this.#clock.clearTimeout(this.#watchdogTimer);
    this.#watchdogTimer = undefined;
    await this.#chain;
  }

  #send(fields: string[]): Promise<void> {
    if (!this.enabled) return Promise.resolve();
    const next = this.#chain
      .then(() => this.#spawn(fields))
      .catch((err: unknown) => this.#log.warn({ err, fields: fields.map(fieldName) }, "systemd notification failed"));
    this.#chain = next;
    return next;
  }

  /** Never rejects: a failed notification is logged, it must not stop the agent. */
  #spawn(fields: string[]): Promise<void> {
    return new Promise((resolve) => {
      let stderr = "";
      const child = spawn(this.#command, [`--pid=${this.#pid}`, ...fields], {
        env: this.#env,
        stdio: ["ignore", "ignore", "pipe"],
        timeout: this.#timeoutMs,
      });
      child.stderr?.on("data", (chunk: Buffer) => {
        if (stderr.length < 1_000) stderr += chunk.toString();
      });
      child.once("error", (err: NodeJS.ErrnoException) => {
        if (err.code === "ENOENT") {
          if (!this.#missingReported) {
            this.#missingReported = true;
            this.#log.error(
              { command: this.#command },
              "NOTIFY_SOCKET is set but systemd-notify was not found; systemd will not see the agent as ready",
            );
          }
        } else {
          this.#log.warn({ err, fields: fields.map(fieldName) }, "systemd notification failed");
        }
        resolve();
      });
      child.once("close", (code, signal) => {
        if (code !== 0) {
          this.#log.warn(
            { code, signal, stderr: stderr.trim(), fields: fields.map(fieldName) },
            "systemd-notify did not deliver the notification",
          );
        }
        resolve();
      });
    });
  }
}

/** sd_notify messages are newline-separated VAR=VALUE: a newline would start a new variable. */
function oneLine(text: string): string {
  return text.replace(/[\r\n]+/g, " ");
}

function fieldName(field: string): string {
  return field.split("=", 1)[0] ?? field;
}
