import { gunzipSync } from "node:zlib";
import { Webhook } from "standardwebhooks";
import { describe, expect, it } from "vitest";
import { batchId, RenderError } from "../../src/delivery/render.js";
import { buildBatchRequest, buildRequest, USER_AGENT } from "../../src/delivery/request.js";
import { hubSignature } from "../../src/delivery/sign.js";
import { generateSigningKey, parsePublicKey, verifyV1aSignature } from "../../src/delivery/sign-v1a.js";
import type { Delivery } from "../../src/store/types.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";
import { bytes, destFrom, firing, resolved } from "./render-fixtures.js";

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
const dest = destFrom(`    secret: ${WEBHOOK_SECRET}`);
const now = () => Math.floor(Date.now() / 1000);

describe("buildRequest: standard format", () => {
  it("carries the Standard Webhooks headers, verifiable by the standardwebhooks package", () => {
    const t = now();
    const { headers, body: sent, url } = buildRequest(delivery, dest, t);
    expect(sent).toBe(body);
    expect(url).toBe("https://hooks.example/in");
    expect(headers["content-type"]).toBe("application/json");
    expect(headers["webhook-id"]).toBe(delivery.eventId);
    expect(headers["webhook-timestamp"]).toBe(String(t));
    expect(headers["user-agent"]).toBe(USER_AGENT);
    expect(USER_AGENT).toMatch(/^edgehook\/\d+\.\d+\.\d+/);
    expect(headers["content-encoding"]).toBeUndefined();
    expect(new Webhook(WEBHOOK_SECRET).verify(sent, headers)).toEqual(JSON.parse(body.toString()));
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
    const { headers } = buildRequest(delivery, destFrom(`    secret: [${WEBHOOK_SECRET}, ${other}]`), now());
    expect(headers["webhook-signature"]?.split(" ")).toHaveLength(2);
    expect(() => new Webhook(other).verify(body, headers)).not.toThrow();
  });

  it("omits webhook-signature with signature: none, and adds x-hub-signature-256 with hub_secret", () => {
    const d = destFrom("    signature: none\n    hub_secret: gh-secret");
    const { headers } = buildRequest(delivery, d, 1);
    expect(headers["webhook-signature"]).toBeUndefined();
    expect(headers["webhook-id"]).toBe(delivery.eventId);
    expect(headers["x-hub-signature-256"]).toBe(hubSignature("gh-secret", body));
  });

  it("signature: none wins over a configured secret", () => {
    const { headers } = buildRequest(delivery, destFrom(`    secret: ${WEBHOOK_SECRET}\n    signature: none`), 1);
    expect(headers["webhook-signature"]).toBeUndefined();
  });

  it("adds static headers but never lets them override the protocol headers", () => {
    const d = destFrom(
      `    secret: ${WEBHOOK_SECRET}\n    headers: { Authorization: "Bearer t0ken", "Webhook-Id": forged, "X-Site": north, "Content-Type": text/plain }`,
    );
    const { headers } = buildRequest(delivery, d, 1_700_000_000);
    expect(headers.authorization).toBe("Bearer t0ken");
    expect(headers["x-site"]).toBe("north");
    expect(headers["webhook-id"]).toBe(delivery.eventId);
    expect(headers["content-type"]).toBe("application/json");
  });

  it("sends token as a bearer Authorization and basic_auth as Basic", () => {
    const t = buildRequest(delivery, destFrom(`    secret: ${WEBHOOK_SECRET}\n    token: s3cr3t`), 1);
    expect(t.headers.authorization).toBe("Bearer s3cr3t");
    const b = buildRequest(
      delivery,
      destFrom(`    secret: ${WEBHOOK_SECRET}\n    basic_auth: { username: pi, password: "p:w" }`),
      1,
    );
    expect(b.headers.authorization).toBe(`Basic ${Buffer.from("pi:p:w").toString("base64")}`);
  });

  it("adds v1a (Ed25519) after v1, space-separated; each verifies", () => {
    const key = generateSigningKey();
    const d = destFrom(`    secret: ${WEBHOOK_SECRET}\n    ed25519: { secret: "${key.secret}" }`);
    const t = now();
    const { headers, body: sent } = buildRequest(delivery, d, t);
    const entries = headers["webhook-signature"]?.split(" ") ?? [];
    expect(entries.map((e) => e.split(",")[0])).toEqual(["v1", "v1a"]);
    expect(() => new Webhook(WEBHOOK_SECRET).verify(sent, headers)).not.toThrow();
    const pub = [parsePublicKey(key.publicKey)];
    expect(verifyV1aSignature(pub, delivery.eventId, t, sent, headers["webhook-signature"] ?? "")).toBe(true);
  });

  it("an ed25519 key alone signs v1a only", () => {
    const key = generateSigningKey();
    const { headers } = buildRequest(delivery, destFrom(`    ed25519: { secret: "${key.secret}" }`), 1);
    expect(headers["webhook-signature"]).toMatch(/^v1a,[A-Za-z0-9+/=]+$/);
  });

  it("gzips above gzip_above and signs the uncompressed body", () => {
    const big = Buffer.from(JSON.stringify({ ...firing, data: { ...firing.data, note: "x".repeat(2000) } }));
    const d = destFrom(`    secret: ${WEBHOOK_SECRET}\n    gzip_above: 1KB`);
    const r = buildRequest({ ...delivery, body: big }, d, now());
    expect(r.headers["content-encoding"]).toBe("gzip");
    expect(r.body.length).toBeLessThan(big.length);
    const inflated = gunzipSync(r.body);
    expect(inflated.equals(big)).toBe(true);
    expect(() => new Webhook(WEBHOOK_SECRET).verify(inflated, r.headers)).not.toThrow();
    // Small bodies go as they are.
    const small = buildRequest(delivery, d, now());
    expect(small.headers["content-encoding"]).toBeUndefined();
    expect(small.body).toBe(body);
  });
});

describe("buildRequest: presets and templates", () => {
  const stored = { ...delivery, body: bytes(firing) };

  it("sends the Slack body with its content type, unsigned without a secret", () => {
    const r = buildRequest(stored, destFrom("    preset: slack", "https://hooks.slack.com/services/T/B/x"), 1);
    expect(r.url).toBe("https://hooks.slack.com/services/T/B/x");
    expect(r.headers["content-type"]).toBe("application/json");
    expect(r.headers["webhook-signature"]).toBeUndefined();
    const json = JSON.parse(r.body.toString()) as { text: string; blocks: unknown[] };
    expect(json.text).toContain("CRITICAL");
    expect(json.text).toContain("boiler/temp");
    expect(json.blocks.length).toBeGreaterThan(0);
  });

  it("signs the rendered body (not the stored envelope) when a preset has a secret", () => {
    const r = buildRequest(stored, destFrom(`    preset: homeassistant\n    secret: ${WEBHOOK_SECRET}`), now());
    expect(r.body.equals(stored.body)).toBe(false);
    expect(new Webhook(WEBHOOK_SECRET).verify(r.body, r.headers)).toMatchObject({ state: "firing", sensor: "boiler" });
  });

  it("posts ntfy to the server root with the topic in the body", () => {
    const r = buildRequest(stored, destFrom("    preset: ntfy", "https://ntfy.example.org/ntfy/cellar"), 1);
    expect(r.url).toBe("https://ntfy.example.org/ntfy/");
    expect(JSON.parse(r.body.toString())).toMatchObject({ topic: "cellar", priority: 5 });
  });

  it("renders a template with the text template's content type", () => {
    const d = destFrom(
      '    signature: none\n    content_type: text/plain\n    template: "{{ data.severity | upper }} {{ data.sensor }}"',
    );
    const r = buildRequest(stored, d, 1);
    expect(r.headers["content-type"]).toBe("text/plain; charset=utf-8");
    expect(r.body.toString()).toBe("CRITICAL boiler");
  });

  it("throws RenderError when the stored body cannot be rendered", () => {
    const garbage = { ...delivery, body: Buffer.from("not json {") };
    expect(() => buildRequest(garbage, destFrom("    preset: slack"), 1)).toThrow(RenderError);
  });
});

describe("buildBatchRequest", () => {
  const d = destFrom(`    secret: ${WEBHOOK_SECRET}\n    batch: { max_events: 10, max_wait: 1s }`);
  const members: Delivery[] = [
    { ...delivery, id: 1, eventId: "msg_a", body: bytes(firing) },
    { ...delivery, id: 2, eventId: "msg_b", series: "other", body: bytes(resolved) },
  ];

  it("sends one verified batch envelope whose id is stable across attempts", () => {
    const t = now();
    const a = buildBatchRequest(members, d, t);
    const b = buildBatchRequest(members, d, t + 60);
    expect(a.headers["webhook-id"]).toBe(batchId(["msg_a", "msg_b"]));
    expect(b.headers["webhook-id"]).toBe(a.headers["webhook-id"]);
    const json = new Webhook(WEBHOOK_SECRET).verify(a.body, a.headers) as {
      type: string;
      data: { events: { id: string; type: string }[] };
    };
    expect(json.type).toBe("batch");
    expect(json.data.events.map((e) => [e.id, e.type])).toEqual([
      ["msg_a", "alert.firing"],
      ["msg_b", "alert.resolved"],
    ]);
  });

  it("a different membership or order is a different batch id", () => {
    const a = buildBatchRequest(members, d, 1).headers["webhook-id"];
    expect(buildBatchRequest([...members].reverse(), d, 1).headers["webhook-id"]).not.toBe(a);
    expect(buildBatchRequest(members.slice(0, 1), d, 1).headers["webhook-id"]).not.toBe(a);
  });

  it("throws RenderError when a member body is not JSON", () => {
    const bad = [...members, { ...delivery, id: 3, eventId: "msg_c", body: Buffer.from("\u0000garbage") }];
    expect(() => buildBatchRequest(bad, d, 1)).toThrow(RenderError);
  });
});
