/**
 * Webhook signatures.
 *
 * Standard Webhooks v1 (https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md):
 * `webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`, where the key
 * is the base64-decoded part of the secret after `whsec_`. While rotating keys, one
 * signature per secret, separated by spaces; receivers accept any that verifies.
 *
 * GitHub style: `x-hub-signature-256: sha256=<hex HMAC-SHA256(secret, body)>`, where the
 * secret is used as raw UTF-8 bytes (GitHub's convention), not base64-decoded.
 */
import { createHmac } from "node:crypto";

const PREFIX = "whsec_";

// Decoding a secret is cheap but happens on every attempt; a destination has one or two.
const keyCache = new Map<string, Buffer>();

/** The HMAC key of a `whsec_...` secret (a secret without the prefix is read as base64 too). */
export function secretKey(secret: string): Buffer {
  let key = keyCache.get(secret);
  if (key === undefined) {
    const b64 = secret.startsWith(PREFIX) ? secret.slice(PREFIX.length) : secret;
    key = Buffer.from(b64, "base64");
    if (key.length === 0) throw new Error("webhook secret is empty after base64 decoding");
    if (keyCache.size > 64) keyCache.clear();
    keyCache.set(secret, key);
  }
  return key;
}

/** The `webhook-signature` header value: `v1,<sig>` per secret, space-separated. */
export function signV1(secrets: readonly string[], id: string, timestampSec: number, body: Buffer): string {
  const prefix = `${id}.${timestampSec}.`;
  const parts: string[] = [];
  for (const secret of secrets) {
    const mac = createHmac("sha256", secretKey(secret));
    mac.update(prefix);
    mac.update(body);
    parts.push(`v1,${mac.digest("base64")}`);
  }
  return parts.join(" ");
}

/** The `x-hub-signature-256` header value: `sha256=<hex>`. */
export function hubSignature(secret: string, body: Buffer): string {
  return `sha256=${createHmac("sha256", secret).update(body).digest("hex")}`;
}
