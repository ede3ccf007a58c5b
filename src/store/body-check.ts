/**
 * Every event body is stored with its CRC-32 (events.body_crc) and checked wherever it is
 * read to be sent, shown or salvaged. SQLite checks the structure of its pages (headers,
 * pointers) but not the bytes of a row: a damaged sector inside a large body (bodies of
 * a few KB live on overflow pages) reads back without an error, and edgehook would sign
 * the garbled bytes and deliver them as valid. A body that fails its checksum is damage
 * like SQLITE_CORRUPT: never sent, the outbox fails (damage.ts), and the next start
 * salvages the file without that event (salvage.ts counts it as lost).
 *
 * SQLite's quick_check at start cannot see this kind of damage, so when it is met while
 * running a marker file beside the database (`<file>-damaged`) tells the next start to
 * salvage anyway (db.ts).
 *
 * Rows stored before checksums existed have none (NULL) and are taken as before. The
 * column comes after the body in the row (ALTER TABLE appends), so damage to a large
 * body's last page may garble the stored checksum too: any mismatch is damage, whichever
 * of the two was hit.
 */
import { rmSync, writeFileSync } from "node:fs";
import { crc32 } from "node:zlib";

/** The checksum stored with a body: CRC-32 of its exact bytes (an unsigned 32-bit integer). */
export function bodyCrc(body: Buffer): number {
  return crc32(body);
}

/** Whether a stored body matches its stored checksum; a row without one (NULL) is accepted. */
export function bodyIntact(body: Buffer, crc: number | null): boolean {
  return crc === null || crc32(body) === crc;
}

/**
 * A stored event body that does not match its checksum. Its code is SQLITE_CORRUPT so that
 * everything that handles a damaged file (damageKind, /healthz, salvage at start) handles it.
 */
export class DamagedBodyError extends Error {
  readonly code = "SQLITE_CORRUPT";
  readonly eventId: string;

  constructor(eventId: string, stored: number, read: number) {
    super(
      `the stored body of event ${eventId} does not match its checksum (crc32 ${read} read, ${stored} stored): the file is damaged`,
    );
    this.name = "DamagedBodyError";
    this.eventId = eventId;
  }
}

/** Throws DamagedBodyError unless the body matches its checksum (or has none). */
export function checkBody(eventId: string, body: Buffer, crc: number | null): void {
  if (crc === null) return;
  const read = crc32(body);
  if (read !== crc) throw new DamagedBodyError(eventId, crc, read);
}

/** The marker that makes the next start salvage a file whose damage quick_check cannot see. */
export function damageMarker(file: string): string {
  return `${file}-damaged`;
}

/** Leaves the marker (best effort: the caller has failed the outbox already); false when it could not. */
export function writeDamageMarker(file: string, reason: string): boolean {
  try {
    writeFileSync(damageMarker(file), `${reason}\n`, { flush: true });
    return true;
  } catch {
    return false;
  }
}

export function removeDamageMarker(file: string): void {
  rmSync(damageMarker(file), { force: true });
}
