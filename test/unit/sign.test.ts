import { createHmac } from "node:crypto";
import { Webhook } from "standardwebhooks";
import { describe, expect, it } from "vitest";
import { hubSignature, signV1 } from "../../src/delivery/sign.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

// Reference vector from the Standard Webhooks spec and its libraries' tests (with WEBHOOK_SECRET, the spec's example secret).
const ID = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const TS = 1614265330;
const BODY = Buffer.from('{"test": 2432232314}');
const EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

describe("signV1", () => {
  it("matches the Standard Webhooks reference vector", () => {
    expect(signV1([WEBHOOK_SECRET], ID, TS, BODY)).toBe(EXPECTED);
  });

  it("matches what the standardwebhooks package signs", () => {
    const wh = new Webhook(WEBHOOK_SECRET);
    expect(signV1([WEBHOOK_SECRET], ID, TS, BODY)).toBe(wh.sign(ID, new Date(TS * 1000), BODY));
  });

  it("verifies with the standardwebhooks package at the current time", () => {
    const now = Math.floor(Date.now() / 1000);
    const body = Buffer.from(JSON.stringify({ type: "alert.firing", data: { value: 3.5, note: "ü ✓" } }));
    const headers = {
      "webhook-id": ID,
      "webhook-timestamp": String(now),
      "webhook-signature": signV1([WEBHOOK_SECRET], ID, now, body),
    };
    expect(new Webhook(WEBHOOK_SECRET).verify(body, headers)).toEqual(JSON.parse(body.toString()));
  });

  it("signs with every secret while rotating, and each verifies on its own", () => {
    const other = `whsec_${Buffer.from("another key of 24 bytes!").toString("base64")}`;
    const now = Math.floor(Date.now() / 1000);
    const sig = signV1([WEBHOOK_SECRET, other], ID, now, BODY);
    const parts = sig.split(" ");
    expect(parts).toHaveLength(2);
    expect(parts[0]).toMatch(/^v1,[A-Za-z0-9+/]+=*$/);
    const headers = { "webhook-id": ID, "webhook-timestamp": String(now), "webhook-signature": sig };
    expect(() => new Webhook(WEBHOOK_SECRET).verify(BODY, headers)).not.toThrow();
    expect(() => new Webhook(other).verify(BODY, headers)).not.toThrow();
  });

  it("fails verification when the body, id or timestamp differ", () => {
    const now = Math.floor(Date.now() / 1000);
    const sig = signV1([WEBHOOK_SECRET], ID, now, BODY);
    const wh = new Webhook(WEBHOOK_SECRET);
    const ok = { "webhook-id": ID, "webhook-timestamp": String(now), "webhook-signature": sig };
    expect(() => wh.verify('{"test": 2432232315}', ok)).toThrow();
    expect(() => wh.verify(BODY, { ...ok, "webhook-id": "msg_other" })).toThrow();
    expect(() => wh.verify(BODY, { ...ok, "webhook-timestamp": String(now - 1) })).toThrow();
  });

  it("signs the exact bytes, not a re-serialisation", () => {
    const a = Buffer.from('{"a":1,"b":2}');
    const b = Buffer.from('{"b":2,"a":1}');
    expect(signV1([WEBHOOK_SECRET], ID, TS, a)).not.toBe(signV1([WEBHOOK_SECRET], ID, TS, b));
  });
});

describe("hubSignature", () => {
  it("is sha256=<hex HMAC of the body keyed by the raw secret>", () => {
    // GitHub's documented example: secret "It's a Secret to Everybody", payload "Hello, World!".
    expect(hubSignature("It's a Secret to Everybody", Buffer.from("Hello, World!"))).toBe(
      "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
    );
    const body = Buffer.from('{"x":1}');
    expect(hubSignature("s3cret", body)).toBe(`sha256=${createHmac("sha256", "s3cret").update(body).digest("hex")}`);
  });
});
