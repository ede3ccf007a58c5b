/**
 * Opens the outbox database: pragmas for durability, the schema (versioned in code
 * with forward migrations) and an integrity check. A damaged file does not crash-loop
 * the agent and does not cost the whole backlog: every row SQLite can still read is
 * salvaged into a fresh file (salvage.ts), and the damaged one is moved aside.
 *
 * Durability: WAL with synchronous=FULL. Every commit fsyncs the WAL, so a commit that
 * returned survives power loss; group commit in outbox.ts keeps that affordable.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";
import type { Logger } from "../ops/logger.js";
import { damageMarker, removeDamageMarker } from "./body-check.js";
import { damageKind } from "./damage.js";
import { type SalvageCounts, salvageInto } from "./salvage.js";

export type { Database } from "better-sqlite3";

/**
 * Forward migrations; index i upgrades user_version i to i + 1. Never edit a shipped
 * entry: append a new one. Index names say which query they serve.
 */
const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE events (
    seq        INTEGER PRIMARY KEY,
    id         TEXT    NOT NULL,            -- msg_..., the webhook-id
    type       TEXT    NOT NULL,
    rule       TEXT    NOT NULL,
    series     TEXT    NOT NULL,
    severity   TEXT    NOT NULL,
    priority   INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    size       INTEGER NOT NULL,            -- bytes counted against outbox.max_bytes
    body       BLOB    NOT NULL             -- the exact bytes every attempt signs
  );
  -- queue show ID, queue replay ID
  CREATE UNIQUE INDEX events_by_id ON events (id);

  CREATE TABLE deliveries (
    id          INTEGER PRIMARY KEY,
    event_seq   INTEGER NOT NULL REFERENCES events (seq),
    destination TEXT    NOT NULL,
    series      TEXT    NOT NULL,
    priority    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    state       INTEGER NOT NULL DEFAULT 0, -- 0 pending, 1 delivered, 2 dead
    is_head     INTEGER NOT NULL DEFAULT 0, -- 1 for the earliest pending row of (destination, series)
    next_at     INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    settled_at  INTEGER,
    last_status INTEGER,
    last_error  TEXT,
    reason      TEXT,
    history     TEXT                        -- JSON, the last attempts
  );
  -- deliveries of one event: show, orphan-event cleanup (and the foreign key)
  CREATE INDEX deliveries_by_event ON deliveries (event_seq);
  -- is there a pending row of this series? which one is the earliest? (enqueue, settle)
  CREATE INDEX deliveries_pending_by_series ON deliveries (destination, series, id) WHERE state = 0;
  -- next(): due heads, highest priority first, then oldest. Holds one row per series.
  CREATE INDEX deliveries_next_heads ON deliveries (destination, priority DESC, id) WHERE is_head = 1;
  -- nextDueAt(), oldest pending age: earliest head
  CREATE INDEX deliveries_next_due ON deliveries (destination, next_at) WHERE is_head = 1;
  -- at most one head per series and destination, enforced by the database
  CREATE UNIQUE INDEX deliveries_head_of_series ON deliveries (destination, series) WHERE is_head = 1;
  -- max_age expiry and the full-outbox drop order (lowest priority, oldest first)
  CREATE INDEX deliveries_expire_and_drop ON deliveries (priority, destination, created_at) WHERE state = 0;
  -- pruning delivered/dead rows by age, queue replay --dead
  CREATE INDEX deliveries_prune_settled ON deliveries (state, settled_at) WHERE state <> 0;

  -- Counters kept in step with the rows in the same transactions, so limits and
  -- stats never need COUNT(*) over a large backlog.
  CREATE TABLE counts (
    destination TEXT    NOT NULL,
    state       INTEGER NOT NULL,
    n           INTEGER NOT NULL,
    PRIMARY KEY (destination, state)
  ) WITHOUT ROWID;
  CREATE TABLE totals (
    key   TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
  ) WITHOUT ROWID;
  INSERT INTO totals (key, value) VALUES ('events', 0), ('bytes', 0);

  CREATE TABLE series_state (
    rule    TEXT NOT NULL,
    series  TEXT NOT NULL,
    version TEXT NOT NULL,
    state   TEXT NOT NULL,
    PRIMARY KEY (rule, series)
  ) WITHOUT ROWID;

  CREATE TABLE destination_flags (
    name     TEXT    PRIMARY KEY,
    disabled INTEGER NOT NULL,
    reason   TEXT,
    since    INTEGER
  ) WITHOUT ROWID;
  `,
  // 1 → 2: keys of committed MQTT messages, so a message the broker redelivers after
  // a crash between commit and PUBACK is recognised instead of processed twice.
  `
  CREATE TABLE source_messages (
    key TEXT    PRIMARY KEY,
    at  INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE INDEX source_messages_by_age ON source_messages (at);
  `,
  // 2 → 3: only the keys of messages the broker may still redeliver are kept, and they
  // name the broker session (issue 10); the newest 100,000 kept before outlived their
  // packet ids, which wrap at 65,535. The old keys cannot be told apart: after a clean
  // stop none was still needed. Sessions: whether the broker ever had edgehook's
  // persistent session, so a connect without it can be told from the first one, and
  // the broker's drop count last seen, so drops while edgehook was down are noticed.
  `
  DROP TABLE source_messages;
  CREATE TABLE source_messages (
    key TEXT PRIMARY KEY
  ) WITHOUT ROWID;
  CREATE TABLE source_sessions (
    scope          TEXT    PRIMARY KEY,
    since          INTEGER NOT NULL,
    broker_dropped INTEGER            -- the broker's dropped-message count when last seen
  ) WITHOUT ROWID;
  `,
  // 3 → 4: the CRC-32 of each event body (body-check.ts). SQLite does not notice damage
  // inside a row's bytes, so a garbled body was signed and sent as valid. Rows stored
  // before have none (NULL) and are taken as before.
  `
  ALTER TABLE events ADD COLUMN body_crc INTEGER;
  `,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

export interface OpenOptions {
  logger: Logger;
  /**
   * Run PRAGMA quick_check and move a damaged file aside (default true). Commands that
   * open the database while the agent runs pass false: only the agent may move it.
   */
  check?: boolean;
  /** Wall clock for the name of a moved-aside file. */
  now?: () => number;
}

/**
 * Opens (creating if needed) the outbox database. A file that is not a database or
 * fails its integrity check is salvaged: the rows SQLite can still read (pending events
 * with their deliveries, rule states, message keys, destination flags) go into a fresh
 * file, the damaged one is renamed to `<file>.corrupt-<ISO time>` (with its -wal and
 * -shm) and the fresh one takes its place; one error line says how many rows were saved
 * and lost. Throws only when no fresh database can be created. A file found damaged while
 * running in a way the check cannot see (an event body that failed its checksum, which
 * left a marker: body-check.ts) is salvaged the same way.
 */
export function openDatabase(file: string, opts: OpenOptions): Database.Database {
  const check = opts.check ?? true;
  mkdirSync(dirname(file), { recursive: true });
  try {
    if (check) damagedWhileRunning(file);
    return openChecked(file, check, opts.logger);
  } catch (err) {
    if (!check || !isCorruption(err)) throw err;
    const log = opts.logger;
    const suffix = `.corrupt-${new Date((opts.now ?? Date.now)()).toISOString()}`;
    const salvageFile = `${file}.salvage`;
    const started = performance.now();
    let counts: SalvageCounts | undefined;
    try {
      counts = salvage(file, salvageFile, log);
    } catch (e) {
      // Writing the fresh file failed (e.g. the disk is full): start empty rather than not at all.
      log.error({ err: e, file }, "salvaging the damaged outbox failed; starting an empty one");
      removeSet(salvageFile);
    }
    const moved = moveAside(file, suffix);
    removeDamageMarker(file);
    if (counts) renameSync(salvageFile, file);
    const ms = Math.round(performance.now() - started);
    const movedTo = `${file}${suffix}`;
    if (!counts) {
      log.error(
        { err, file, movedTo, moved, code: "EDGEHOOK_DB_CORRUPT" },
        `outbox database ${file} is damaged (${(err as Error).message}); moved it to ${movedTo} and started an empty outbox. Events still pending in the old file were not delivered: keep the moved file for inspection and check the storage (dmesg, SD card health).`,
      );
      return openChecked(file, true, log);
    }
    const lostPending = counts.expectedPending === null ? null : Math.max(0, counts.expectedPending - counts.pending);
    const lost =
      lostPending === null
        ? "an unknown number of pending deliveries (the file's counters were unreadable)"
        : `${lostPending} pending deliveries`;
    if (counts.damagedTables.includes("all")) {
      log.error(
        { err, file, movedTo, moved, ms, code: "EDGEHOOK_DB_CORRUPT", saved: null, lost: null },
        `outbox database ${file} is damaged (${(err as Error).message}) and holds nothing readable; moved it to ${movedTo} and started an empty outbox. Check the storage (dmesg, SD card health).`,
      );
      return openChecked(file, true, log);
    }
    const states = counts.damagedTables.includes("series_state")
      ? `${counts.states} rule states (some were on damaged pages: those series start fresh)`
      : `${counts.states} rule states`;
    log.error(
      {
        err,
        file,
        movedTo,
        moved,
        ms,
        code: "EDGEHOOK_DB_CORRUPT",
        saved: {
          events: counts.events,
          pending: counts.pending,
          settled: counts.settled,
          states: counts.states,
          messageKeys: counts.messageKeys,
          flags: counts.flags,
        },
        lost: { pending: lostPending, rejectedRows: counts.rejected, damagedBodies: counts.damagedBodies },
        damagedTables: counts.damagedTables,
      },
      `outbox database ${file} is damaged (${(err as Error).message}); salvaged ${counts.events} pending events (${counts.pending} deliveries) and ${states} into a fresh outbox; lost ${lost}${rejectedRows(counts)}. The damaged file is kept at ${movedTo}; check the storage (dmesg, SD card health).`,
    );
    return openChecked(file, true, log);
  }
}

/** The rows left out, for the salvage line: " and 3 unreadable rows (2 event bodies failed their checksum)". */
function rejectedRows(counts: SalvageCounts): string {
  if (counts.rejected === 0) return "";
  const bodies = counts.damagedBodies;
  const why =
    bodies === 0
      ? ""
      : ` (${bodies} event ${bodies === 1 ? "body" : "bodies"} failed ${bodies === 1 ? "its" : "their"} checksum)`;
  return ` and ${counts.rejected} unreadable rows${why}`;
}

/** Copies what is readable in `file` into a fresh outbox at `out`. */
function salvage(file: string, out: string, logger: Logger): SalvageCounts {
  removeSet(out);
  let from: Database.Database | undefined;
  try {
    // Read-only: the damaged file stays as it was found (no checkpoint into it on close).
    from = new Database(file, { readonly: true, fileMustExist: true });
    from.prepare("SELECT COUNT(*) FROM sqlite_master").get(); // opening is lazy: is there a schema at all?
  } catch {
    from?.close();
    from = undefined; // not even a database header: nothing to save
  }
  try {
    const to = openChecked(out, false, logger);
    try {
      if (!from) {
        return {
          events: 0,
          pending: 0,
          settled: 0,
          states: 0,
          messageKeys: 0,
          flags: 0,
          expectedEvents: null,
          expectedPending: null,
          rejected: 0,
          damagedBodies: 0,
          damagedTables: ["all"],
        };
      }
      return salvageInto(from, to);
    } finally {
      to.close();
    }
  } finally {
    from?.close();
  }
}

/** A database file is a set: the file and its -wal and -shm (WAL mode). */
const SET_SUFFIXES = ["", "-wal", "-shm"] as const;

function removeSet(file: string): void {
  for (const ext of SET_SUFFIXES) rmSync(file + ext, { force: true });
}

function openChecked(file: string, check: boolean, logger: Logger): Database.Database {
  const db = new Database(file);
  try {
    // Small pages for a new file (no effect on an existing one): every commit writes
    // each page it touches to the WAL and again at checkpoint, and a commit touches
    // about a dozen pages (event, delivery, their indexes, counters, rule state).
    // 1 KiB pages write 2.5 times fewer bytes per event than 4 KiB (22 KB against
    // 55 KB measured here): less wear on an SD card.
    db.pragma("page_size = 1024");
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = FULL");
    db.pragma("busy_timeout = 5000");
    db.pragma("foreign_keys = ON");
    // Bounded memory: a fixed page cache (8 MiB), no mmap; the WAL file is truncated
    // back to this size after checkpoints so a burst does not keep disk forever.
    db.pragma("cache_size = -8192");
    db.pragma("journal_size_limit = 16777216");
    db.pragma("temp_store = FILE");
    if (check) {
      const started = performance.now();
      const rows = db.pragma("quick_check(5)") as { quick_check: string }[];
      const ms = Math.round(performance.now() - started);
      // It reads the whole file: worth a line when a large backlog makes the start slow.
      if (ms > 1000) logger.info({ file, ms }, "outbox integrity check done");
      const problems = rows.map((r) => r.quick_check).filter((r) => r !== "ok");
      if (problems.length > 0) {
        throw new CorruptDatabaseError(`quick_check: ${problems.join("; ")}`);
      }
    }
    migrate(db);
    return db;
  } catch (err) {
    db.close();
    throw err;
  }
}

function migrate(db: Database.Database): void {
  const version = db.pragma("user_version", { simple: true }) as number;
  if (version > SCHEMA_VERSION) {
    throw new Error(
      `outbox schema version ${version} is newer than this edgehook understands (${SCHEMA_VERSION}); upgrade edgehook`,
    );
  }
  for (let v = version; v < SCHEMA_VERSION; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v] as string);
      db.pragma(`user_version = ${v + 1}`);
    }).immediate();
  }
}

class CorruptDatabaseError extends Error {
  readonly code = "SQLITE_CORRUPT";
}

/** Throws CorruptDatabaseError when a marker says the file was found damaged while running. */
function damagedWhileRunning(file: string): void {
  const marker = damageMarker(file);
  let reason: string;
  try {
    reason = readFileSync(marker, "utf8").trim();
  } catch {
    return; // no marker (the usual case)
  }
  throw new CorruptDatabaseError(`found while running, ${marker}: ${reason || "no reason recorded"}`);
}

/** SQLite's answers for a damaged file or one that is not a database at all. */
function isCorruption(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return typeof code === "string" && damageKind(code) === "corrupt";
}

/** Renames the file and its -wal/-shm so they stay a matching set (`x.corrupt-T`, `x.corrupt-T-wal`). */
function moveAside(file: string, suffix: string): string[] {
  const moved: string[] = [];
  for (const ext of SET_SUFFIXES) {
    if (existsSync(file + ext)) {
      renameSync(file + ext, `${file}${suffix}${ext}`);
      moved.push(file + ext);
    }
  }
  return moved;
}
