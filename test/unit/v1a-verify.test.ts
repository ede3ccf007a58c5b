/** Receiver-side verification (src/delivery/verify.ts), v1 signed by the `standardwebhooks` package. */
import { Webhook } from "standardwebhooks";
import { describe, expect, it } from "vitest";
import { generateSigningKey, parsePublicKey, signV1a } from "../../src/delivery/sign-v1a.js";
import { v1Signature, verifyV1, verifyWebhook } from "../../src/delivery/verify.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

const secret = WEBHOOK_SECRET;
const body = Buffer.from('{"type":"test","timestamp":"2026-01-01T00:00:00Z","data":{}}');
const T = 1767225600;

function headers(ts: number, sig?: string) {
  return {
    "webhook-id": "msg_1",
    "webhook-timestamp": String(ts),
    "webhook-signature": sig ?? new Webhook(secret).sign("msg_1", new Date(ts * 1000), body),
  };
}

describe("verifyWebhook", () => {
  it("our v1 signature equals the standardwebhooks package's", () => {
    expect(v1Signature(secret, "msg_1", T, body)).toBe(new Webhook(secret).sign("msg_1", new Date(T * 1000), body));
  });

  it.each([
    [T, true, ""],
    [T - 300, true, ""],
    [T + 300, true, ""],
    [T - 301, false, "timestamp too old (301s)"],
    [T + 301, false, "timestamp in the future (301s)"],
  ])("timestamp %i at now=T → ok %s", (ts, ok, reason) => {
    const r = verifyV1([secret], headers(ts), body, 300, T);
    expect(r.ok).toBe(ok);
    if (!r.ok) expect(r.reason).toBe(reason);
  });

  it("accepts any matching entry while keys rotate, on either side", () => {
    const other = "whsec_dGVzdHRlc3R0ZXN0dGVzdA==";
    const both = `${new Webhook(other).sign("msg_1", new Date(T * 1000), body)} ${headers(T)["webhook-signature"]}`;
    expect(verifyV1([secret], headers(T, both), body, 300, T)).toEqual({ ok: true, scheme: "v1" });
    expect(verifyV1([other, secret], headers(T), body, 300, T)).toEqual({ ok: true, scheme: "v1" });
    expect(verifyV1([other], headers(T), body, 300, T)).toEqual({ ok: false, reason: "no signature matches" });
  });

  it("rejects missing headers, a non-numeric timestamp and a one-byte change", () => {
    expect(verifyV1([secret], { "webhook-id": "msg_1" }, body, 300, T)).toEqual({
      ok: false,
      reason: "missing webhook-timestamp, webhook-signature",
    });
    expect(verifyV1([secret], { ...headers(T), "webhook-timestamp": "1e9" }, body, 300, T).ok).toBe(false);
    const changed = Buffer.from(body);
    changed[changed.length - 2] = 0x20;
    expect(verifyV1([secret], headers(T), changed, 300, T).ok).toBe(false);
  });

  it("a v1a entry verifies with the public key and not with a v1 secret", () => {
    const k = generateSigningKey();
    const sig = signV1a(k.secret, "msg_1", T, body);
    const h = headers(T, sig);
    expect(verifyWebhook({ publicKeys: [parsePublicKey(k.publicKey)] }, h, body, { nowSec: T })).toEqual({
      ok: true,
      scheme: "v1a",
    });
    expect(verifyWebhook({ secrets: [secret] }, h, body, { nowSec: T }).ok).toBe(false);
  });
});
