import { createPrivateKey, createPublicKey, verify } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  checkSigningKey,
  generateSigningKey,
  parsePublicKey,
  parseSigningKey,
  publicKeyString,
  signV1a,
  verifyV1aSignature,
} from "../../src/delivery/sign-v1a.js";

// The signing vector of the Standard Webhooks reference library
// (standard-webhooks/libraries/go/webhook_asymmetric_test.go, TestAsymmetricWebhookSign):
// the key is base64 of a 32-byte Ed25519 seed, accepted with or without the whsk_ prefix there.
const VECTOR = {
  key: "whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=",
  id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
  timestamp: 1614265330,
  payload: '{"test": 2432232314}',
  expected: "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag==",
};

describe("v1a (Ed25519) signatures", () => {
  it("matches the Standard Webhooks reference vector", () => {
    expect(signV1a(VECTOR.key, VECTOR.id, VECTOR.timestamp, Buffer.from(VECTOR.payload))).toBe(VECTOR.expected);
  });

  it("accepts a 64-byte secret (seed followed by public key) and signs with its seed", () => {
    const seed = Buffer.from(VECTOR.key.slice(5), "base64");
    const pub = createPublicKey(parseSigningKey(VECTOR.key)).export({ format: "der", type: "spki" }).subarray(12);
    const long = `whsk_${Buffer.concat([seed, pub]).toString("base64")}`;
    expect(signV1a(long, VECTOR.id, VECTOR.timestamp, Buffer.from(VECTOR.payload))).toBe(VECTOR.expected);
  });

  it("verifies with the public key, and fails on any change", () => {
    const pub = parsePublicKey(publicKeyString(parseSigningKey(VECTOR.key)));
    const body = Buffer.from(VECTOR.payload);
    const ok = (id: string, ts: number, b: Buffer, sig: string) => verifyV1aSignature([pub], id, ts, b, sig);
    expect(ok(VECTOR.id, VECTOR.timestamp, body, VECTOR.expected)).toBe(true);
    expect(ok(VECTOR.id, VECTOR.timestamp, Buffer.from('{"test": 2432232315}'), VECTOR.expected)).toBe(false);
    expect(ok("msg_other", VECTOR.timestamp, body, VECTOR.expected)).toBe(false);
    expect(ok(VECTOR.id, VECTOR.timestamp + 1, body, VECTOR.expected)).toBe(false);
    expect(ok(VECTOR.id, VECTOR.timestamp, body, VECTOR.expected.replace("v1a,", "v1,"))).toBe(false);
    expect(ok(VECTOR.id, VECTOR.timestamp, body, "v1a,")).toBe(false);
    // Among v1 entries while rotating keys, the v1a entry is found.
    expect(
      ok(VECTOR.id, VECTOR.timestamp, body, `v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= ${VECTOR.expected}`),
    ).toBe(true);
  });

  it("generated keys round-trip and verify independently with node:crypto from the raw public key", () => {
    const k = generateSigningKey();
    expect(k.secret).toMatch(/^whsk_[A-Za-z0-9+/]{43}=$/);
    expect(k.publicKey).toMatch(/^whpk_[A-Za-z0-9+/]{43}=$/);
    expect(checkSigningKey(k.secret)).toBeUndefined();
    const body = Buffer.from('{"type":"test"}');
    const sig = signV1a([k.secret], "msg_1", 1700000000, body);
    // Independent check: rebuild the public key from its JWK (raw x coordinate), not our SPKI helper.
    const x = Buffer.from(k.publicKey.slice(5), "base64").toString("base64url");
    const jwkKey = createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x }, format: "jwk" });
    const raw = Buffer.from(sig.slice(4), "base64");
    expect(verify(null, Buffer.from(`msg_1.1700000000.${body.toString()}`), jwkKey, raw)).toBe(true);
    // And the secret's seed gives the same key pair through JWK import.
    const d = Buffer.from(k.secret.slice(5), "base64").toString("base64url");
    const priv = createPrivateKey({ key: { kty: "OKP", crv: "Ed25519", x, d }, format: "jwk" });
    expect(publicKeyString(priv)).toBe(k.publicKey);
  });

  it("signs with every key while rotating", () => {
    const a = generateSigningKey();
    const b = generateSigningKey();
    const body = Buffer.from("{}");
    const sig = signV1a([a.secret, b.secret], "msg_1", 1, body);
    expect(sig.split(" ")).toHaveLength(2);
    expect(verifyV1aSignature([parsePublicKey(b.publicKey)], "msg_1", 1, body, sig)).toBe(true);
    expect(verifyV1aSignature([parsePublicKey(a.publicKey)], "msg_1", 1, body, sig)).toBe(true);
    expect(verifyV1aSignature([parsePublicKey(generateSigningKey().publicKey)], "msg_1", 1, body, sig)).toBe(false);
  });

  it.each([
    ["VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=", /whsk_/],
    ["whsk_", /32-byte/],
    ["whsk_c2hvcnQ=", /32-byte/],
    ["whsk_not base64!", /32-byte/],
  ])("rejects the signing key %s", (key, message) => {
    expect(checkSigningKey(key)).toMatch(message);
    expect(() => parseSigningKey(key)).toThrow();
  });

  it("rejects a malformed public key", () => {
    expect(() => parsePublicKey("whpk_c2hvcnQ=")).toThrow(/32 bytes/);
  });
});
