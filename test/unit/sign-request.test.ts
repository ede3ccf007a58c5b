import { Webhook } from "standardwebhooks";
import { describe, expect, it } from "vitest";
import { buildRequest, USER_AGENT } from "../../src/delivery/request.js";
import { hubSignature } from "../../src/delivery/sign.js";
import type { Delivery } from "../../src/store/types.js";

const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const body = Buffer.from('{"type":"alert.firing","timestamp":"2026-01-01T00:00:00.000Z","data":{"value":31.5}}');
const delivery: Delivery = {
  id: 7,
  eventId: "msg_01JTESTEVENT0000000000000",
  destination: "ops",
  series: "hot\u001fboiler\u001ftemp",
  type: "alert.firing",
  priority: 10,
  attempts: 2,
  createdAt: 0,
  body,
};
const dest = { secret: SECRET, signature: "standard" as const, headers: {} };

describe("buildRequest", () => {
  it("carries the Standard Webhooks headers, verifiable by the standardwebhooks package", () => {
    const now = Math.floor(Date.now() / 1000);
    const { headers, body: sent } = buildRequest(delivery, dest, now);
    expect(sent).toBe(body);
    expect(headers["content-type"]).toBe("application/json");
    expect(headers["webhook-id"]).toBe(delivery.eventId);
    expect(headers["webhook-timestamp"]).toBe(String(now));
    expect(headers["user-agent"]).toBe(USER_AGENT);
    expect(USER_AGENT).toMatch(/^edgehook\/\d+\.\d+\.\d+/);
    expect(new Webhook(SECRET).verify(sent, headers)).toEqual(JSON.parse(body.toString()));
  });

  it("keeps the id and re-signs with a fresh timestamp on every attempt", () => {
    const a = buildRequest(delivery, dest, 1_700_000_000);
    const b = buildRequest({ ...delivery, attempts: 3 }, dest, 1_700_000_360);
    expect(a.headers["webhook-id"]).toBe(b.headers["webhook-id"]);
    expect(a.headers["webhook-timestamp"]).toBe("1700000000");
    expect(b.headers["webhook-timestamp"]).toBe("1700000360");
    expect(a.headers["webhook-signature"]).not.toBe(b.headers["webhook-signature"]);
  });

  it("signs with every secret while rotating", () => {
    const other = `whsec_${Buffer.from("second key, 24 bytes....").toString("base64")}`;
    const now = Math.floor(Date.now() / 1000);
    const { headers } = buildRequest(delivery, { ...dest, secret: [SECRET, other] }, now);
    expect(headers["webhook-signature"]?.split(" ")).toHaveLength(2);
    expect(() => new Webhook(other).verify(body, headers)).not.toThrow();
  });

  it("omits webhook-signature with signature: none, and adds x-hub-signature-256 with hub_secret", () => {
    const { headers } = buildRequest(delivery, { signature: "none", headers: {}, hub_secret: "gh-secret" }, 1);
    expect(headers["webhook-signature"]).toBeUndefined();
    expect(headers["webhook-id"]).toBe(delivery.eventId);
    expect(headers["x-hub-signature-256"]).toBe(hubSignature("gh-secret", body));
  });

  it("adds static headers but never lets them override the protocol headers", () => {
    const { headers } = buildRequest(
      delivery,
      { ...dest, headers: { Authorization: "Bearer t0ken", "Webhook-Id": "forged", "X-Site": "north" } },
      1_700_000_000,
    );
    expect(headers.authorization).toBe("Bearer t0ken");
    expect(headers["x-site"]).toBe("north");
    expect(headers["webhook-id"]).toBe(delivery.eventId);
  });
});
