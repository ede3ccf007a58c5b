/**
 * The event-time correction (src/event-time.ts): events stored while the clock was not
 * yet synchronised get their body rewritten once it is, but only while no attempt has
 * used the body (signatures cover the stored bytes). The stored size follows the new
 * body, so the max_bytes counter stays true.
 */
import type { OutboxConnection } from "./connection.js";

interface UnsentRow {
  seq: number;
  size: number;
  len: number;
  body: Buffer;
}

export class EventRewrite {
  readonly #conn: OutboxConnection;
  readonly #s;

  constructor(conn: OutboxConnection) {
    this.#conn = conn;
    const db = conn.db;
    this.#s = {
      unsentEvent: db.prepare(
        `SELECT seq, size, length(body) AS len, body FROM events e WHERE id = ?
           AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.history IS NOT NULL)`,
      ),
      replaceBody: db.prepare("UPDATE events SET body = ?, size = ? WHERE seq = ?"),
    };
  }

  /** The stored body of an event that no attempt has used yet, or undefined. */
  unsentBody(eventId: string): Buffer | undefined {
    return (this.#s.unsentEvent.get(eventId) as UnsentRow | undefined)?.body;
  }

  /** Replaces the stored bodies of events no attempt has used yet, in one transaction. Returns how many. */
  rewriteUnsent(bodies: ReadonlyMap<string, Buffer>): number {
    return this.#conn.write((delta) => {
      let n = 0;
      for (const [id, body] of bodies) {
        const row = this.#s.unsentEvent.get(id) as UnsentRow | undefined;
        if (!row) continue;
        const size = row.size - row.len + body.length;
        this.#s.replaceBody.run(body, size, row.seq);
        delta.bytes += size - row.size;
        n++;
      }
      return n;
    });
  }
}
