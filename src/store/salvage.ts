/**
 * Salvage of a damaged outbox file: every row SQLite can still read (pending events with
 * their deliveries, rule states, the redelivery ledger, destination flags) is copied
 * into a fresh database, so a few bad pages on an SD card cost the rows on those pages,
 * not the whole backlog and every alert's state.
 *
 * Reading: a damaged page makes a table scan stop with SQLITE_CORRUPT. Each table is
 * walked in key order, keeping every row until the damage; then from the other end
 * (descending); for integer keys the gap between the two is probed key by key (a point
 * lookup goes down the tree and may avoid the damaged page), walking on from each row
 * found; rule states are also looked up by the series their events name.
 *
 * Rows are checked before they are kept (types, JSON bodies and states): a garbage page
 * that happens to parse is not sent to anyone. Each event body is also checked against
 * its checksum (body-check.ts): bytes damaged where SQLite does not look (inside a row)
 * are not sent either; that event's deliveries count as lost.
 */
import type Database from "better-sqlite3";
import { bodyIntact } from "./body-check.js";
import { RECOUNT_SQL } from "./counters.js";

/** Point lookups spent on the gap between two damaged regions of an integer key. */
const PROBE_BUDGET = 2_000_000;

export interface SalvageCounts {
  /** Pending events saved (with at least one pending delivery). */
  events: number;
  /** Deliveries saved, by state. */
  pending: number;
  settled: number;
  states: number;
  messageKeys: number;
  flags: number;
  /** What the damaged file's own counters said it held, when they could be read. */
  expectedEvents: number | null;
  expectedPending: number | null;
  /** Rows read but rejected (wrong types, a body or state that is not JSON, a body that fails its checksum). */
  rejected: number;
  /** Of the rejected rows, events whose body failed its checksum. */
  damagedBodies: number;
  /** Tables whose scan met a damaged page (some of their rows may be lost). */
  damagedTables: string[];
}

type Row = Record<string, unknown>;

interface TableSpec {
  name: string;
  columns: string[];
  /** Columns added by a later migration: a file of an older schema version reads them as NULL. */
  optional?: string[];
  /** Key columns, in the table's own order (a rowid alias, or the WITHOUT ROWID primary key). */
  key: string[];
  integerKey: boolean;
  valid: (r: Row) => boolean;
  /** For a valid row: are its contents what was stored (a checksum matches)? */
  intact?: (r: Row) => boolean;
}

const isInt = (v: unknown) => typeof v === "number" && Number.isInteger(v);
const isStr = (v: unknown) => typeof v === "string";
const isIntOrNull = (v: unknown) => v === null || isInt(v);
const isStrOrNull = (v: unknown) => v === null || isStr(v);
const isJson = (v: unknown) => {
  if (typeof v !== "string" && !Buffer.isBuffer(v)) return false;
  try {
    JSON.parse(typeof v === "string" ? v : v.toString("utf8"));
    return true;
  } catch {
    return false;
  }
};

const TABLES: TableSpec[] = [
  {
    name: "events",
    columns: ["seq", "id", "type", "rule", "series", "severity", "priority", "created_at", "size", "body", "body_crc"],
    optional: ["body_crc"],
    key: ["seq"],
    integerKey: true,
    valid: (r) =>
      isInt(r.seq) &&
      isStr(r.id) &&
      (r.id as string).startsWith("msg_") &&
      isStr(r.type) &&
      isStr(r.rule) &&
      isStr(r.series) &&
      isStr(r.severity) &&
      isInt(r.priority) &&
      isInt(r.created_at) &&
      isInt(r.size) &&
      isIntOrNull(r.body_crc) &&
      Buffer.isBuffer(r.body) &&
      isJson(r.body),
    intact: (r) => Buffer.isBuffer(r.body) && bodyIntact(r.body, typeof r.body_crc === "number" ? r.body_crc : null),
  },
  {
    name: "deliveries",
    columns: [
      "id",
      "event_seq",
      "destination",
      "series",
      "priority",
      "created_at",
      "state",
      "next_at",
      "attempts",
      "settled_at",
      "last_status",
      "last_error",
      "reason",
      "history",
    ],
    key: ["id"],
    integerKey: true,
    valid: (r) =>
      isInt(r.id) &&
      isInt(r.event_seq) &&
      isStr(r.destination) &&
      isStr(r.series) &&
      isInt(r.priority) &&
      isInt(r.created_at) &&
      (r.state === 0 || r.state === 1 || r.state === 2) &&
      isInt(r.next_at) &&
      isInt(r.attempts) &&
      isIntOrNull(r.settled_at) &&
      isIntOrNull(r.last_status) &&
      isStrOrNull(r.last_error) &&
      isStrOrNull(r.reason) &&
      isStrOrNull(r.history),
  },
  {
    name: "series_state",
    columns: ["rule", "series", "version", "state"],
    key: ["rule", "series"],
    integerKey: false,
    valid: (r) => isStr(r.rule) && isStr(r.series) && isStr(r.version) && isStr(r.state) && isJson(r.state),
  },
  {
    name: "source_messages",
    columns: ["key"],
    key: ["key"],
    integerKey: false,
    valid: (r) => isStr(r.key),
  },
  {
    name: "source_sessions",
    columns: ["scope", "since", "broker_dropped"],
    key: ["scope"],
    integerKey: false,
    valid: (r) => isStr(r.scope) && isInt(r.since) && isIntOrNull(r.broker_dropped),
  },
  {
    name: "destination_flags",
    columns: ["name", "disabled", "reason", "since"],
    key: ["name"],
    integerKey: false,
    valid: (r) => isStr(r.name) && isInt(r.disabled) && isStrOrNull(r.reason) && isIntOrNull(r.since),
  },
];

/**
 * Reads what it can from `from` (open, possibly damaged) and writes it into `to` (a
 * fresh, migrated, empty outbox). Never throws for a damaged `from`; throws only when
 * writing `to` fails.
 */
export function salvageInto(from: Database.Database, to: Database.Database): SalvageCounts {
  const damaged = new Set<string>();
  let rejected = 0;
  let damagedBodies = 0;
  const read = (spec: TableSpec, candidates?: unknown[][]): Row[] => {
    const { rows, hitDamage } = readTable(from, spec, candidates);
    if (hitDamage) damaged.add(spec.name);
    const valid = rows.filter(spec.valid);
    const ok = spec.intact ? valid.filter(spec.intact) : valid;
    rejected += rows.length - ok.length;
    if (spec.name === "events") damagedBodies += valid.length - ok.length;
    return ok;
  };
  const events = read(TABLES[0] as TableSpec);
  const deliveries = read(TABLES[1] as TableSpec);
  // The series of stored events and deliveries name rule states that should exist.
  const seriesKeys = new Map<string, unknown[]>();
  for (const e of events) seriesKeys.set(`${e.rule}\u0000${e.series}`, [e.rule, e.series]);
  for (const d of deliveries) {
    const rule = String(d.series).split("\u001f")[0] as string;
    seriesKeys.set(`${rule}\u0000${d.series}`, [rule, d.series]);
  }
  const states = read(TABLES[2] as TableSpec, [...seriesKeys.values()]);
  const messages = read(TABLES[3] as TableSpec);
  const sessions = read(TABLES[4] as TableSpec);
  const flags = read(TABLES[5] as TableSpec);

  // A delivery needs its event; an event is worth keeping only with a delivery still
  // to make (delivered and dead ones are kept alongside as its history).
  const eventsBySeq = new Map(events.map((e) => [e.seq as number, e]));
  const kept = deliveries.filter((d) => eventsBySeq.has(d.event_seq as number));
  const pendingSeqs = new Set(kept.filter((d) => d.state === 0).map((d) => d.event_seq as number));
  const keptDeliveries = kept.filter((d) => pendingSeqs.has(d.event_seq as number));
  const keptEvents = events.filter((e) => pendingSeqs.has(e.seq as number));

  const insert = (table: string, columns: string[]) =>
    to.prepare(`INSERT OR IGNORE INTO ${table} (${columns.join(", ")}) VALUES (${columns.map(() => "?").join(", ")})`);
  to.transaction(() => {
    // In TABLES order: events before the deliveries that refer to them.
    for (const [i, rows] of [keptEvents, keptDeliveries, states, messages, sessions, flags].entries()) {
      const spec = TABLES[i] as TableSpec;
      const st = insert(spec.name, spec.columns);
      for (const r of rows) st.run(...spec.columns.map((c) => r[c]));
    }
    // Heads (the earliest pending row of each series and destination) and the counters
    // are derived, so they are rebuilt rather than trusted.
    to.exec(`
      UPDATE deliveries SET is_head = 1 WHERE id IN
        (SELECT MIN(id) FROM deliveries WHERE state = 0 GROUP BY destination, series);
    `);
    to.exec(RECOUNT_SQL);
  }).immediate();

  const pending = keptDeliveries.filter((d) => d.state === 0).length;
  return {
    events: keptEvents.length,
    pending,
    settled: keptDeliveries.length - pending,
    states: states.length,
    messageKeys: messages.length,
    flags: flags.length,
    expectedEvents: tryNumber(from, "SELECT value FROM totals WHERE key = 'events'"),
    expectedPending: tryNumber(from, "SELECT SUM(n) FROM counts WHERE state = 0"),
    rejected,
    damagedBodies,
    damagedTables: [...damaged],
  };
}

function tryNumber(db: Database.Database, sql: string): number | null {
  try {
    const v = db.prepare(sql).pluck().get();
    return typeof v === "number" ? v : null;
  } catch {
    return null;
  }
}

/** Every row of the table SQLite can still reach; hitDamage when some could not be. */
function readTable(
  db: Database.Database,
  spec: TableSpec,
  candidates: readonly unknown[][] = [],
): { rows: Row[]; hitDamage: boolean } {
  const key = spec.key.join(", ");
  const tuple = `(${key})`;
  const params = `(${spec.key.map(() => "?").join(", ")})`;
  const descKey = spec.key.map((k) => `${k} DESC`).join(", ");
  type Stmts = Record<"asc" | "ascFrom" | "desc" | "descFrom" | "point", Database.Statement>;
  const prepare = (cols: string): Stmts => ({
    asc: db.prepare(`SELECT ${cols} FROM ${spec.name} ORDER BY ${key}`),
    ascFrom: db.prepare(`SELECT ${cols} FROM ${spec.name} WHERE ${tuple} > ${params} ORDER BY ${key}`),
    desc: db.prepare(`SELECT ${cols} FROM ${spec.name} ORDER BY ${descKey}`),
    descFrom: db.prepare(`SELECT ${cols} FROM ${spec.name} WHERE ${tuple} < ${params} ORDER BY ${descKey}`),
    point: db.prepare(`SELECT ${cols} FROM ${spec.name} WHERE ${tuple} = ${params}`),
  });
  let stmts: Stmts;
  try {
    try {
      stmts = prepare(spec.columns.join(", "));
    } catch (err) {
      // A file of an older schema version: its rows without the columns added since.
      if (!spec.optional || !/no such column/.test((err as Error).message)) throw err;
      const optional = new Set(spec.optional);
      stmts = prepare(spec.columns.map((c) => (optional.has(c) ? `NULL AS ${c}` : c)).join(", "));
    }
  } catch (err) {
    // A file of an older schema version may lack a table or column: nothing to save there.
    const absent = /no such (table|column)/.test((err as Error).message);
    return { rows: [], hitDamage: !absent };
  }
  const keyOf = (r: Row) => spec.key.map((k) => r[k]);
  const rows = new Map<string, Row>();
  const add = (r: Row) => rows.set(JSON.stringify(keyOf(r)), r);

  /**
   * Walks a scan, keeping every row until the end, a damaged page, or (ascending, integer
   * keys) `stop`. Rows read before the damage are kept.
   */
  const walk = (
    stmt: Database.Statement,
    args: unknown[],
    stop?: number,
  ): { last: unknown[] | undefined; done: boolean } => {
    let last: unknown[] | undefined;
    try {
      for (const r of stmt.iterate(...args) as IterableIterator<Row>) {
        if (stop !== undefined && (r[spec.key[0] as string] as number) >= stop) return { last, done: true };
        add(r);
        last = keyOf(r);
      }
      return { last, done: true };
    } catch {
      return { last, done: false };
    }
  };

  const up = walk(stmts.asc, []);
  if (up.done) return { rows: [...rows.values()], hitDamage: false };
  // From the other end down to the damage.
  const down = walk(stmts.desc, []);
  // Integer keys: probe the gap between the two damaged ends key by key (a point lookup
  // goes down the tree and may avoid the damaged page), walking on from each row found.
  if (spec.integerKey && !down.done) {
    const to = (down.last?.[0] as number | undefined) ?? Number.MAX_SAFE_INTEGER;
    let budget = PROBE_BUDGET;
    for (let k = ((up.last?.[0] as number | undefined) ?? 0) + 1; k < to && budget > 0; k++, budget--) {
      let r: Row | undefined;
      try {
        r = stmts.point.get(k) as Row | undefined;
      } catch {
        continue;
      }
      if (!r) continue;
      add(r);
      const next = walk(stmts.ascFrom, [k], to);
      if (next.done) break;
      k = Math.max(k, (next.last?.[0] as number | undefined) ?? k);
    }
  }
  // Keys known from elsewhere (a rule state's series from its events): looked up directly.
  for (const c of candidates) {
    if (rows.has(JSON.stringify(c))) continue;
    try {
      const r = stmts.point.get(...c) as Row | undefined;
      if (r) add(r);
    } catch {
      // On a damaged page.
    }
  }
  return { rows: [...rows.values()], hitDamage: true };
}
