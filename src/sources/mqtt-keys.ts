/** Keys that name received MQTT messages for redelivery bookkeeping (redelivery.ts, the ledger). */
import { createHash } from "node:crypto";
import type { IPublishPacket } from "mqtt";

/**
 * Session, packet id, topic and payload hash: what identifies a redelivery of the same
 * message. `session` names the broker session (see sessionTag), so keys of another
 * client id are never taken for this one's.
 */
export function messageKey(session: string, packet: IPublishPacket, payload: Buffer): string {
  const hash = createHash("sha1").update(payload).digest("base64url");
  return `mqtt:${session}:${packet.messageId}:${packet.topic}:${hash}`;
}

/** Short tag of a broker session scope (the client id) used in keys. */
export function sessionTag(scope: string): string {
  return createHash("sha1").update(scope).digest("base64url").slice(0, 8);
}

/** The session tag and packet id of a key made by messageKey. */
export function parseKey(key: string): { session: string; packetId: number } | undefined {
  const m = /^mqtt:([^:]+):(\d+):/.exec(key);
  return m ? { session: m[1] as string, packetId: Number(m[2]) } : undefined;
}
