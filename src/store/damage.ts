/**
 * Damage met while running (invariant 7, and a worn SD card): a SQLITE_CORRUPT/NOTADB/IOERR
 * from any read or write of the open outbox is recorded once (`damage`, logged fatal with
 * what to do); from then on the outbox refuses new events (refusal.ts) and the agent's
 * /healthz fails, so systemd restarts it and openDatabase() salvages the readable rows into
 * a fresh file (db.ts, salvage.ts). An event body that fails its checksum (body-check.ts)
 * is damage too; it also leaves a marker so that the restart salvages although SQLite's
 * own check finds nothing wrong.
 */
import type { Clock } from "../clock.js";
import type { Logger } from "../ops/logger.js";
import { DamagedBodyError, damageMarker, writeDamageMarker } from "./body-check.js";

/** The database failed while running: SQLITE_CORRUPT/NOTADB (`corrupt`) or SQLITE_IOERR (`io_error`). */
export interface Damage {
  kind: "corrupt" | "io_error";
  /** The SQLite error code, extended where SQLite gave one (SQLITE_IOERR_WRITE, ...). */
  sqliteCode: string;
  message: string;
  /** Epoch ms when it was first seen. */
  since: number;
}

/**
 * Which better-sqlite3 error codes mean the file cannot be trusted: SQLITE_CORRUPT and
 * SQLITE_NOTADB (`corrupt`), SQLITE_IOERR (`io_error`), with any extended code
 * (SQLITE_CORRUPT_INDEX, SQLITE_IOERR_WRITE, ...). Busy, full or constraint errors do not.
 */
export function damageKind(code: string): Damage["kind"] | undefined {
  if (code.startsWith("SQLITE_CORRUPT") || code.startsWith("SQLITE_NOTADB")) return "corrupt";
  if (code.startsWith("SQLITE_IOERR")) return "io_error";
  return undefined;
}

/**
 * Watches the errors of one outbox for damage. Sticky for the life of the Outbox: the file
 * cannot be trusted until the agent restarts, checks it and salvages what is readable.
 */
export class DamageWatch {
  readonly #file: string;
  readonly #clock: Clock;
  readonly #log: Logger;
  #damage: Damage | undefined;
  #marked = false;

  constructor(file: string, clock: Clock, log: Logger) {
    this.#file = file;
    this.#clock = clock;
    this.#log = log;
  }

  /** The first damage seen, or undefined. */
  get current(): Damage | undefined {
    return this.#damage;
  }

  /** Runs fn; a database error that means damage is recorded (and logged once) before it is rethrown. */
  guard<T>(fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      this.note(err);
      throw err;
    }
  }

  note(err: unknown): void {
    if (err instanceof DamagedBodyError && !this.#marked) {
      this.#marked = true;
      if (!writeDamageMarker(this.#file, err.message)) {
        this.#log.error(
          { file: this.#file, marker: damageMarker(this.#file) },
          `could not write ${damageMarker(this.#file)}: the next start may not notice that an event body is damaged`,
        );
      }
    }
    const code = (err as { code?: unknown } | undefined)?.code;
    if (typeof code !== "string" || this.#damage) return;
    const kind = damageKind(code);
    if (!kind) return;
    this.#damage = { kind, sqliteCode: code, message: (err as Error).message, since: this.#clock.now() };
    this.#log.fatal(
      {
        err,
        sqliteCode: code,
        file: this.#file,
        code: kind === "corrupt" ? "EDGEHOOK_DB_CORRUPT" : "EDGEHOOK_DB_IO_ERROR",
      },
      `outbox database ${this.#file} ${kind === "corrupt" ? "is damaged" : "had an I/O error"} while running (${code}: ${(err as Error).message}). /healthz now reports failing and the systemd watchdog is no longer fed, so systemd restarts edgehook (or restart it yourself: systemctl restart edgehook); at start the file is checked and every readable row is salvaged into a fresh one, the damaged file is kept beside it. New readings wait at their source until then. Check the storage now: dmesg, the SD card's health; replace a card that keeps failing.`,
    );
  }
}
