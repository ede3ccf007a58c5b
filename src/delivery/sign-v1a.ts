/**
 * Standard Webhooks asymmetric signatures, version `v1a` (Ed25519).
 *
 * Signed content is the same as for v1: `${webhook-id}.${webhook-timestamp}.${body}`.
 * The header entry is `v1a,<base64 of the 64-byte Ed25519 signature>`, space-separated
 * from any v1 entries in `webhook-signature`.
 *
 * Keys follow the reference libraries (standard-webhooks/libraries/go webhook_asymmetric.go):
 * the secret key is `whsk_` + base64 of the 32-byte Ed25519 seed, the public key `whpk_` +
 * base64 of the 32-byte raw public key. A 64-byte secret (seed followed by the public key,
 * as libsodium and Go's ed25519.PrivateKey store it) is accepted too; its seed is used.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject, sign, verify } from "node:crypto";

// DER prefixes that wrap a raw 32-byte Ed25519 seed / public key (RFC 8410).
const PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");
const SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

const SECRET_PREFIX = "whsk_";
const PUBLIC_PREFIX = "whpk_";

function decodeKey(text: string, prefix: string): Buffer | undefined {
  const b64 = text.startsWith(prefix) ? text.slice(prefix.length) : text;
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) return undefined;
  return Buffer.from(b64, "base64");
}

/** Why `text` is not a usable signing key, or undefined when it is. Never quotes the key. */
export function checkSigningKey(text: string): string | undefined {
  if (!text.startsWith(SECRET_PREFIX)) return "must be an Ed25519 secret key: whsk_ followed by base64";
  const raw = decodeKey(text, SECRET_PREFIX);
  if (!raw || (raw.length !== 32 && raw.length !== 64)) {
    return "must be whsk_ followed by the base64 of a 32-byte Ed25519 seed (generate one with `edgehook keygen`)";
  }
  return undefined;
}

const privateCache = new Map<string, KeyObject>();

/** Parses `whsk_...` into a private KeyObject (cached: called on every attempt). */
export function parseSigningKey(text: string): KeyObject {
  const cached = privateCache.get(text);
  if (cached) return cached;
  const problem = checkSigningKey(text);
  if (problem) throw new Error(`ed25519 secret ${problem}`);
  const raw = decodeKey(text, SECRET_PREFIX) as Buffer;
  const key = createPrivateKey({
    key: Buffer.concat([PKCS8_PREFIX, raw.subarray(0, 32)]),
    format: "der",
    type: "pkcs8",
  });
  if (privateCache.size > 64) privateCache.clear();
  privateCache.set(text, key);
  return key;
}

/** Parses `whpk_...` (or bare base64 of the 32 raw bytes) into a public KeyObject. */
export function parsePublicKey(text: string): KeyObject {
  const raw = decodeKey(text.trim(), PUBLIC_PREFIX);
  if (raw?.length !== 32) throw new Error("a public key must be whpk_ followed by base64 of 32 bytes");
  return createPublicKey({ key: Buffer.concat([SPKI_PREFIX, raw]), format: "der", type: "spki" });
}

/** The `whpk_...` string of a private or public key. */
export function publicKeyString(key: KeyObject): string {
  const pub = key.type === "private" ? createPublicKey(key) : key;
  const der = pub.export({ format: "der", type: "spki" });
  return PUBLIC_PREFIX + der.subarray(SPKI_PREFIX.length).toString("base64");
}

/** A fresh key pair: `secret` goes into the destination (`ed25519.secret_file`), `publicKey` to the receiver. */
export function generateSigningKey(): { secret: string; publicKey: string } {
  const { privateKey } = generateKeyPairSync("ed25519");
  const der = privateKey.export({ format: "der", type: "pkcs8" });
  return {
    secret: SECRET_PREFIX + der.subarray(PKCS8_PREFIX.length).toString("base64"),
    publicKey: publicKeyString(privateKey),
  };
}

function signedContent(id: string, timestampSec: number, body: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`${id}.${timestampSec}.`, "utf8"), body]);
}

/**
 * `v1a,<sig>` entries for each key, space-separated, to append to `webhook-signature`.
 * Ed25519 is deterministic: the same key, id, timestamp and body give the same signature.
 */
export function signV1a(secrets: string | readonly string[], id: string, timestampSec: number, body: Buffer): string {
  const content = signedContent(id, timestampSec, body);
  const list = typeof secrets === "string" ? [secrets] : secrets;
  return list.map((s) => `v1a,${sign(null, content, parseSigningKey(s)).toString("base64")}`).join(" ");
}

/**
 * True when one `v1a` entry of the `webhook-signature` value verifies with one of
 * `publicKeys`. Timestamp tolerance is the caller's (see verify.ts).
 */
export function verifyV1aSignature(
  publicKeys: readonly KeyObject[],
  id: string,
  timestampSec: number,
  body: Buffer,
  signatureHeader: string,
): boolean {
  const content = signedContent(id, timestampSec, body);
  for (const entry of signatureHeader.split(" ")) {
    const [version, b64] = entry.split(",", 2);
    if (version !== "v1a" || !b64) continue;
    const sig = Buffer.from(b64, "base64");
    if (sig.length !== 64) continue;
    for (const k of publicKeys) if (verify(null, content, k, sig)) return true;
  }
  return false;
}
