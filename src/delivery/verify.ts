/**
 * Receiver-side verification of Standard Webhooks signatures, for `edgehook receive`
 * and for anyone embedding edgehook's receiver: v1 (HMAC-SHA256 with a `whsec_`
 * secret) and v1a (Ed25519 with a `whpk_` public key).
 *
 * Follows the spec's verification steps: the three headers must be present, the
 * timestamp within the tolerance (default 5 minutes, either side), and one entry of
 * the space-separated `webhook-signature` must match. Comparisons are constant-time.
 */
import { createHmac, type KeyObject, timingSafeEqual } from "node:crypto";
import type { IncomingHttpHeaders } from "node:http";
import { verifyV1aSignature } from "./sign-v1a.js";

export type VerifyResult = { ok: true; scheme: "v1" | "v1a" } | { ok: false; reason: string };

export interface VerifyKeys {
  /** `whsec_...` secrets (v1). */
  secrets?: readonly string[];
  /** Parsed `whpk_...` public keys (v1a), see parsePublicKey. */
  publicKeys?: readonly KeyObject[];
}

export interface VerifyOptions {
  toleranceSec?: number;
  /** Current time in epoch seconds (tests). */
  nowSec?: number;
}

function header(headers: IncomingHttpHeaders | Record<string, string | undefined>, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v.join(" ") : v;
}

/** The HMAC key of a `whsec_` secret: base64 after the prefix (the prefix is optional, as in the reference libraries). */
function secretKey(secret: string): Buffer {
  return Buffer.from(secret.startsWith("whsec_") ? secret.slice(6) : secret, "base64");
}

/** `v1,<base64>` for one secret; the sender side lives in the dispatcher, this is for checking. */
export function v1Signature(secret: string, id: string, timestampSec: number, body: Buffer): string {
  const mac = createHmac("sha256", secretKey(secret));
  mac.update(`${id}.${timestampSec}.`);
  mac.update(body);
  return `v1,${mac.digest("base64")}`;
}

export function verifyWebhook(
  keys: VerifyKeys,
  headers: IncomingHttpHeaders | Record<string, string | undefined>,
  body: Buffer,
  options: VerifyOptions = {},
): VerifyResult {
  const id = header(headers, "webhook-id");
  const ts = header(headers, "webhook-timestamp");
  const sig = header(headers, "webhook-signature");
  if (!id || !ts || !sig) {
    const missing = [!id && "webhook-id", !ts && "webhook-timestamp", !sig && "webhook-signature"].filter(Boolean);
    return { ok: false, reason: `missing ${missing.join(", ")}` };
  }
  if (!/^\d+$/.test(ts)) return { ok: false, reason: "webhook-timestamp is not epoch seconds" };
  const timestamp = Number(ts);
  const now = options.nowSec ?? Math.floor(Date.now() / 1000);
  const tolerance = options.toleranceSec ?? 300;
  if (timestamp < now - tolerance) return { ok: false, reason: `timestamp too old (${now - timestamp}s)` };
  if (timestamp > now + tolerance) return { ok: false, reason: `timestamp in the future (${timestamp - now}s)` };

  const entries = sig.split(" ").filter(Boolean);
  for (const secret of keys.secrets ?? []) {
    const expected = Buffer.from(v1Signature(secret, id, timestamp, body).slice(3), "base64");
    for (const entry of entries) {
      const [version, b64] = entry.split(",", 2);
      if (version !== "v1" || !b64) continue;
      const given = Buffer.from(b64, "base64");
      if (given.length === expected.length && timingSafeEqual(given, expected)) return { ok: true, scheme: "v1" };
    }
  }
  if (keys.publicKeys?.length && verifyV1aSignature(keys.publicKeys, id, timestamp, body, sig)) {
    return { ok: true, scheme: "v1a" };
  }
  return { ok: false, reason: "no signature matches" };
}

/** Checks v1 (HMAC) signatures only. */
export function verifyV1(
  secrets: readonly string[],
  headers: IncomingHttpHeaders | Record<string, string | undefined>,
  body: Buffer,
  toleranceSec = 300,
  nowSec?: number,
): VerifyResult {
  const options: VerifyOptions = { toleranceSec };
  if (nowSec !== undefined) options.nowSec = nowSec;
  return verifyWebhook({ secrets }, headers, body, options);
}
