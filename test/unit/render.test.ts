import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/load.js";
import {
  acceptsEvent,
  batchId,
  compressBody,
  RenderError,
  render,
  renderBatch,
  signingPlan,
  v1aSignatures,
} from "../../src/delivery/render.js";
import { generateSigningKey, parsePublicKey, verifyV1aSignature } from "../../src/delivery/sign-v1a.js";
import type { NewEvent } from "../../src/events.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";
import { bytes, destFrom, firing, resolved } from "./render-fixtures.js";

describe("render: format standard", () => {
  it("sends the stored bytes unchanged as application/json", () => {
    const dest = destFrom(`    secret: ${WEBHOOK_SECRET}`);
    // Unusual but valid JSON spacing must survive: the stored bytes are what gets signed.
    const stored = Buffer.from('{"type":"alert.firing", "timestamp":"2026-01-01T00:00:00Z","data":{"value":1.10}}');
    const r = render(stored, dest);
    expect(r.body.equals(stored)).toBe(true);
    expect(r.contentType).toBe("application/json");
    expect(r.headers).toEqual({});
    expect(r.url).toBeUndefined();
  });
});

describe("render: format template", () => {
  it("renders a JSON template from the stored body", () => {
    const dest = destFrom(`    signature: none
    template:
      text: "{{ data.sensor }} {{ data.value | round(1) }} since {{ data.since | time }}"
      value: "{{ data.value }}"
      room: "{{ data.labels.room | upper }}"`);
    const r = render(bytes(firing), dest);
    expect(r.contentType).toBe("application/json");
    expect(JSON.parse(r.body.toString())).toEqual({
      text: "boiler 81.5 since 2026-01-01 11:58 UTC",
      value: 81.456,
      room: "CELLAR",
    });
  });

  it("renders an XML text template with escaped values", () => {
    const dest = destFrom(`    signature: none
    content_type: application/xml
    template: |-
      <event type="{{ type }}"><sensor>{{ data.sensor }}</sensor></event>`);
    const ev = { ...firing, data: { ...firing.data, sensor: 'a<b>&"c"' } };
    const r = render(bytes(ev), dest);
    expect(r.contentType).toBe("application/xml");
    expect(r.body.toString()).toBe('<event type="alert.firing"><sensor>a&lt;b&gt;&amp;&quot;c&quot;</sensor></event>');
  });

  it("a stored body that is not JSON is a RenderError (the delivery cannot succeed)", () => {
    const dest = destFrom(`    preset: slack`);
    expect(() => render(Buffer.from("not json"), dest)).toThrow(RenderError);
  });
});

describe("render: auth headers", () => {
  it("token → Authorization: Bearer, read from token_file by the loader", () => {
    const dir = mkdtempSync(join(tmpdir(), "edgehook-token-"));
    writeFileSync(join(dir, "tok"), "s3cr3t-token\n");
    const { config } = parseConfig(
      `version: 1
agent: { id: a }
destinations:
  d:
    url: https://x.example/
    preset: slack
    token_file: tok
    headers: { X-Team: ops }
`,
      join(dir, "agent.yaml"),
      { env: {} },
    );
    const r = render(bytes(firing), config.destinations.d!);
    expect(r.headers).toEqual({ authorization: "Bearer s3cr3t-token", "x-team": "ops" });
  });

  it("basic_auth → Authorization: Basic base64(user:password)", () => {
    const dest = destFrom(`    preset: homeassistant
    basic_auth: { username: edge, password: "pä:ss" }`);
    const h = render(bytes(firing), dest).headers.authorization;
    expect(h).toBe(`Basic ${Buffer.from("edge:pä:ss").toString("base64")}`);
  });

  it.each([
    [
      "    preset: slack\n    token: a\n    basic_auth: { username: u, password: p }",
      /give either token or basic_auth/,
    ],
    ["    preset: slack\n    token: a\n    headers: { Authorization: x }", /Authorization is already set/],
    ["    preset: slack\n    basic_auth: { username: 'u:x', password: p }", /must not contain ':'/],
    ["    preset: slack\n    template: { a: 1 }", /give either preset or template/],
    [`    format: standard\n    preset: slack\n    secret: ${WEBHOOK_SECRET}`, /format standard sends/],
    ["    format: template\n    signature: none", /format template needs template/],
    ["    signature: none\n    content_type: text/plain", /content_type applies to template only/],
    ["    preset: slack\n    ntfy_topic: x", /applies to preset ntfy only/],
    ["    preset: slack\n    batch: { max_events: 10, max_wait: 5s }", /batch sends the standard envelope/],
    ["    ed25519: { secret: whsk_nope }", /ed25519: secret: must be whsk_/],
    ["    url2: x", /unknown key/],
  ])("config error: %s", (lines, message) => {
    expect(() => destFrom(lines)).toThrow(message);
  });

  it("a plain destination still needs a secret; a preset or an ed25519 key alone does not", () => {
    expect(() => destFrom("    headers: {}")).toThrow(/needs secret/);
    expect(() => destFrom("    preset: discord")).not.toThrow();
    expect(() => destFrom(`    ed25519: { secret: ${generateSigningKey().secret} }`)).not.toThrow();
  });

  it("an ed25519 key problem does not print the key", () => {
    let message = "";
    try {
      destFrom("    ed25519: { secret: whsk_c2VjcmV0 }");
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(/destinations\.d\.ed25519: secret: must be whsk_/);
    expect(message).not.toContain("c2VjcmV0");
  });
});

describe("signing plan", () => {
  it("v1 for each secret, v1a for each ed25519 key, nothing with signature: none", () => {
    const k = generateSigningKey();
    const dest = destFrom(`    secret: [${WEBHOOK_SECRET}, whsec_dGVzdA==]
    ed25519: { secret: ${k.secret} }`);
    expect(signingPlan(dest)).toEqual({
      hmac: [WEBHOOK_SECRET, "whsec_dGVzdA=="],
      ed25519: [k.secret],
    });
    const body = render(bytes(firing), dest).body;
    const sig = v1aSignatures(dest, "msg_1", 1767268800, body);
    expect(sig).toMatch(/^v1a,[A-Za-z0-9+/]{86}==$/);
    expect(verifyV1aSignature([parsePublicKey(k.publicKey)], "msg_1", 1767268800, body, sig)).toBe(true);
    const none = destFrom(`    signature: none\n    ed25519: { secret: ${k.secret} }`);
    expect(signingPlan(none)).toEqual({ hmac: [], ed25519: [] });
    expect(v1aSignatures(none, "msg_1", 1, body)).toBe("");
  });

  it("a preset without a secret is sent unsigned", () => {
    expect(signingPlan(destFrom("    preset: slack"))).toEqual({ hmac: [], ed25519: [] });
  });
});

describe("acceptsEvent", () => {
  const event = (severity: NewEvent["severity"], labels?: unknown): Pick<NewEvent, "severity" | "body"> => ({
    severity,
    body: { type: "alert.firing", timestamp: "2026-01-01T00:00:00Z", data: labels === undefined ? {} : { labels } },
  });

  it.each([
    [{}, "info", undefined, true],
    [{ min_severity: "warning" }, "info", undefined, false],
    [{ min_severity: "warning" }, "warning", undefined, true],
    [{ min_severity: "warning" }, "critical", undefined, true],
    [{ min_severity: "critical" }, "warning", undefined, false],
    [{ match_labels: { room: "cellar" } }, "info", { room: "cellar", site: "home" }, true],
    [{ match_labels: { room: "cellar" } }, "info", { room: "attic" }, false],
    [{ match_labels: { room: "cellar" } }, "info", undefined, false],
    [{ match_labels: { room: "cellar" } }, "info", "room=cellar", false],
    [{ match_labels: { room: "cellar", site: "home" } }, "critical", { room: "cellar" }, false],
    [{ match_labels: { toString: "x" } }, "info", {}, false],
    [{ match_labels: {} }, "info", undefined, true],
    [{ min_severity: "warning", match_labels: { room: "cellar" } }, "info", { room: "cellar" }, false],
  ] as const)("%j accepts %s %j → %s", (dest, severity, labels, expected) => {
    expect(acceptsEvent(dest, event(severity, labels))).toBe(expected);
  });
});

describe("batching", () => {
  const dest = destFrom(`    secret: ${WEBHOOK_SECRET}
    batch: { max_events: 50, max_wait: 5s }`);

  it("one envelope of type batch; each event keeps its id and its exact bytes", () => {
    const a = Buffer.from('{"type":"alert.firing","timestamp":"2026-01-01T12:00:05.000Z","data":{"value":1.50}}');
    const b = bytes(resolved);
    const r = renderBatch([a, b], ["msg_A", "msg_B"], dest);
    const out = JSON.parse(r.body.toString());
    expect(out).toEqual({
      type: "batch",
      timestamp: "2026-01-01T12:20:00.000Z",
      data: {
        events: [
          { id: "msg_A", type: "alert.firing", timestamp: "2026-01-01T12:00:05.000Z", data: { value: 1.5 } },
          { id: "msg_B", ...resolved },
        ],
      },
    });
    // Spliced, not re-serialised: 1.50 keeps its text.
    expect(r.body.toString()).toContain('"data":{"value":1.50}');
    expect(r.contentType).toBe("application/json");
    expect(renderBatch([a, b], ["msg_A", "msg_B"], dest).body.equals(r.body)).toBe(true);
  });

  it("handles an empty object and rejects bad input", () => {
    expect(JSON.parse(renderBatch([Buffer.from(" {} ")], ["msg_1"], dest).body.toString()).data.events).toEqual([
      { id: "msg_1" },
    ]);
    expect(() => renderBatch([Buffer.from("[1]")], ["msg_1"], dest)).toThrow(RenderError);
    expect(() => renderBatch([bytes(firing)], [], dest)).toThrow(RenderError);
    expect(() => renderBatch([], [], dest)).toThrow(RenderError);
  });

  it("batchId is stable for the same events and differs otherwise", () => {
    expect(batchId(["msg_A", "msg_B"])).toBe(batchId(["msg_A", "msg_B"]));
    expect(batchId(["msg_A", "msg_B"])).not.toBe(batchId(["msg_B", "msg_A"]));
    expect(batchId(["msg_A"])).toMatch(/^msg_batch_[A-Za-z0-9_-]{26}$/);
  });
});

describe("gzip", () => {
  it("compresses only above gzip_above, deterministically, and round-trips", () => {
    const dest = destFrom(`    secret: ${WEBHOOK_SECRET}
    gzip_above: 1KB`);
    expect(dest.gzip_above).toBe(1000);
    const small = Buffer.alloc(1000, "a");
    expect(compressBody(small, dest)).toEqual({ body: small, headers: {} });
    const big = Buffer.from(JSON.stringify({ events: Array.from({ length: 200 }, (_, i) => ({ i, s: "boiler" })) }));
    const z = compressBody(big, dest);
    expect(z.headers).toEqual({ "content-encoding": "gzip" });
    expect(z.body.length).toBeLessThan(big.length / 3);
    expect(gunzipSync(z.body).equals(big)).toBe(true);
    expect(compressBody(big, dest).body.equals(z.body)).toBe(true);
    expect(compressBody(big, {})).toEqual({ body: big, headers: {} });
  });
});
