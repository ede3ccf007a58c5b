/**
 * The event-time correction (src/event-time.ts): events stored while the clock was not
 * yet synchronised get their body rewritten once it is, but only while no attempt has
 * used the body (signatures cover the stored bytes). The stored size follows the new
 * body, so the max_bytes counter stays true.
 */
import { bodyCrc, checkBody } from "./body-check.js";
import type { OutboxConnection } from "./connection.js";

interface UnsentRow {
  seq: number;
  id: string;
  size: number;
  len: number;
  body: Buffer;
  body_crc: number | null;
}

export class EventRewrite {
  readonly #conn: OutboxConnection;
  readonly #s;

  constructor(conn: OutboxConnection) {
    this.#conn = conn;
    const db = conn.db;
    this.#s = {
      unsentEvent: db.prepare(
        `SELECT seq, id, size, length(body) AS len, body, body_crc FROM events e WHERE id = ?
           AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.history IS NOT NULL)`,
      ),
      replaceBody: db.prepare("UPDATE events SET body = ?, body_crc = ?, size = ? WHERE seq = ?"),
    };
  }

  /** The stored body of an event that no attempt has used yet, or undefined; a damaged one is damage (guard). */
  unsentBody(eventId: string): Buffer | undefined {
    return this.#conn.guard(() => {
      const row = this.#s.unsentEvent.get(eventId) as UnsentRow | undefined;
      if (row) checkBody(row.id, row.body, row.body_crc);
      return row?.body;
    });
  }

  /** Replaces the stored bodies of events no attempt has used yet, in one transaction. Returns how many. */
  rewriteUnsent(bodies: ReadonlyMap<string, Buffer>): number {
    return this.#conn.write((delta) => {
      let n = 0;
      for (const [id, body] of bodies) {
        const row = this.#s.unsentEvent.get(id) as UnsentRow | undefined;
        if (!row) continue;
        const size = row.size - row.len + body.length;
        this.#s.replaceBody.run(body, bodyCrc(body), size, row.seq);
        delta.bytes += size - row.size;
        n++;
      }
      return n;
    });
  }
}
