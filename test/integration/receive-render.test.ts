/**
 * The request path as the request builder is meant to use it — render, sign the
 * rendered bytes, gzip after signing — sent over real HTTP to `edgehook receive`.
 * v1 signatures come from the `standardwebhooks` package, not from edgehook.
 */
import { Webhook } from "standardwebhooks";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningReceiver, startReceiver } from "../../src/cli/receive.js";
import { parseConfig } from "../../src/config/load.js";
import { compressBody, render, signingPlan, v1aSignatures } from "../../src/delivery/render.js";
import { generateSigningKey } from "../../src/delivery/sign-v1a.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

const secret = WEBHOOK_SECRET;
const pair = generateSigningKey();
const lines: string[] = [];
let receiver: RunningReceiver;

beforeAll(async () => {
  receiver = await startReceiver({ port: 0, secret, publicKey: pair.publicKey, keep: 100, out: (l) => lines.push(l) });
});
afterAll(async () => {
  await receiver.stop();
});

const event = Buffer.from(
  JSON.stringify({
    type: "alert.firing",
    timestamp: "2026-01-01T12:00:05.000Z",
    data: {
      agent: "pi",
      rule: "hot",
      sensor: 'boiler "main" ✓',
      metric: "temp",
      value: 81.5,
      threshold: 80,
      severity: "critical",
      labels: { room: "cellar" },
    },
  }),
);

function destinations(url: string) {
  const { config } = parseConfig(
    `version: 1
agent: { id: pi }
destinations:
  standard: { url: "${url}", secret: ${secret}, gzip_above: 100 }
  v1a-only: { url: "${url}", ed25519: { secret: "${pair.secret}" } }
  slack: { url: "${url}", preset: slack, secret: ${secret} }
  ntfy: { url: "${url}topic", preset: ntfy, secret: ${secret}, ed25519: { secret: "${pair.secret}" } }
  xml:
    url: "${url}"
    secret: ${secret}
    content_type: application/xml
    template: "<s>{{ data.sensor }}</s>"
`,
    "agent.yaml",
    { env: {} },
  );
  return config.destinations;
}

async function send(name: string, id: string) {
  const dest = destinations(receiver.url)[name]!;
  const r = render(event, dest);
  const now = new Date();
  const ts = Math.floor(now.getTime() / 1000);
  const plan = signingPlan(dest);
  const sigs = [
    ...plan.hmac.map((s) => new Webhook(s).sign(id, now, r.body)),
    v1aSignatures(dest, id, ts, r.body),
  ].filter(Boolean);
  const wire = compressBody(r.body, dest);
  const res = await fetch(r.url ?? dest.url, {
    method: "POST",
    headers: {
      ...r.headers,
      "content-type": r.contentType,
      "webhook-id": id,
      "webhook-timestamp": String(ts),
      "webhook-signature": sigs.join(" "),
      ...wire.headers,
    },
    body: wire.body,
  });
  return { res, wire, r };
}

describe("render → sign → gzip → POST", () => {
  it("standard format, gzipped above gzip_above, verifies on the uncompressed body", async () => {
    const { res, wire } = await send("standard", "msg_std");
    expect(wire.headers["content-encoding"]).toBe("gzip");
    expect(res.status).toBe(200);
    const got = receiver.received.find((w) => w.id === "msg_std");
    expect(got?.verification).toEqual({ ok: true, scheme: "v1" });
    expect(got?.body.equals(event)).toBe(true);
  });

  it("an ed25519-only destination verifies with the public key (v1a)", async () => {
    const { res } = await send("v1a-only", "msg_v1a");
    expect(res.status).toBe(200);
    expect(receiver.received.find((w) => w.id === "msg_v1a")?.verification).toEqual({ ok: true, scheme: "v1a" });
  });

  it("a preset body is signed as rendered and arrives intact", async () => {
    const { res } = await send("slack", "msg_slack");
    expect(res.status).toBe(200);
    const got = receiver.received.find((w) => w.id === "msg_slack");
    expect(got?.verification.ok).toBe(true);
    expect((got?.json as { text: string } | undefined)?.text).toBe(
      '🔴 CRITICAL: boiler "main" ✓/temp is 81.5 (threshold 80)',
    );
    expect(lines.find((l) => l.includes("msg_slack"))).toContain('"🔴 CRITICAL: boiler \\"main\\" ✓/temp');
  });

  it("ntfy posts to the server root with the topic in the body; v1 and v1a both present", async () => {
    const { res, r } = await send("ntfy", "msg_ntfy");
    expect(r.url).toBe(receiver.url);
    expect(res.status).toBe(200);
    const got = receiver.received.find((w) => w.id === "msg_ntfy");
    expect(got?.verification.ok).toBe(true);
    expect(
      String(got?.headers["webhook-signature"])
        .split(" ")
        .map((s) => s.split(",")[0]),
    ).toEqual(["v1", "v1a"]);
    expect((got?.json as { topic: string } | undefined)?.topic).toBe("topic");
  });

  it("an XML template arrives escaped with its content type", async () => {
    const { res } = await send("xml", "msg_xml");
    expect(res.status).toBe(200);
    const got = receiver.received.find((w) => w.id === "msg_xml");
    expect(got?.verification.ok).toBe(true);
    expect(got?.headers["content-type"]).toBe("application/xml");
    expect(got?.body.toString()).toBe("<s>boiler &quot;main&quot; ✓</s>");
  });
});
