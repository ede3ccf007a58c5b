// Cost per attempt of rendering a stored event for each destination format, of v1a
// signing, of a 50-event batch and of gzip. Rendering happens on every attempt, so this
// is what a Raspberry Pi pays per request on top of HTTP.
//
// Run: npx tsc -p tsconfig.build.json && node scripts/bench/render.mjs
// Prints the median of 7 runs per case; bounded to a few seconds in total.
import { parseConfig } from "../../dist/config/load.js";
import { compressBody, render, renderBatch, v1aSignatures } from "../../dist/delivery/render.js";
import { generateSigningKey } from "../../dist/delivery/sign-v1a.js";

const key = generateSigningKey();
const { config } = parseConfig(
  `version: 1
agent: { id: pi }
destinations:
  standard: { url: "https://x.example/", secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw }
  slack: { url: "https://x.example/", preset: slack }
  discord: { url: "https://x.example/", preset: discord }
  teams: { url: "https://x.example/", preset: teams }
  ntfy: { url: "https://ntfy.sh/topic", preset: ntfy }
  homeassistant: { url: "https://x.example/", preset: homeassistant }
  template-json:
    url: "https://x.example/"
    signature: none
    template:
      title: "{{ data.severity | upper }}: {{ data.sensor }}"
      message: "{{ data.metric }} is {{ data.value | round(1) }} since {{ data.since | time }}"
      value: "{{ data.value }}"
      labels: "{{ data.labels }}"
  template-xml:
    url: "https://x.example/"
    signature: none
    content_type: application/xml
    template: "<a t='{{ type }}'><s>{{ data.sensor }}</s><v>{{ data.value | fixed(2) }}</v></a>"
  v1a: { url: "https://x.example/", ed25519: { secret: "${key.secret}" } }
  gzip: { url: "https://x.example/", secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, gzip_above: 1KB }
`,
  "bench.yaml",
  { env: {} },
);
const d = config.destinations;

const body = Buffer.from(
  JSON.stringify({
    type: "alert.firing",
    timestamp: "2026-01-01T12:00:05.000Z",
    data: {
      agent: "pi-cellar",
      rule: "boiler-hot",
      sensor: "boiler",
      metric: "temp",
      value: 81.456,
      threshold: 80,
      severity: "critical",
      labels: { room: "cellar", site: "home" },
      since: "2026-01-01T11:58:00.000Z",
    },
  }),
);
const batchBodies = Array.from({ length: 50 }, () => body);
const batchIds = Array.from({ length: 50 }, (_, i) => `msg_${String(i).padStart(26, "0")}`);
const big = renderBatch(batchBodies, batchIds, d.standard).body;

const cases = [
  ["render standard (passthrough)", () => render(body, d.standard)],
  ["render template (JSON)", () => render(body, d["template-json"])],
  ["render template (XML text)", () => render(body, d["template-xml"])],
  ["render preset slack", () => render(body, d.slack)],
  ["render preset discord", () => render(body, d.discord)],
  ["render preset teams", () => render(body, d.teams)],
  ["render preset ntfy", () => render(body, d.ntfy)],
  ["render preset homeassistant", () => render(body, d.homeassistant)],
  ["v1a sign (Ed25519)", () => v1aSignatures(d.v1a, "msg_1", 1767268800, body)],
  ["renderBatch 50 events", () => renderBatch(batchBodies, batchIds, d.standard)],
  [`gzip ${big.length} B batch body`, () => compressBody(big, d.gzip)],
];

function runFor(fn, ms) {
  let n = 0;
  const start = performance.now();
  let now = start;
  while (now - start < ms) {
    for (let i = 0; i < 50; i++) fn();
    n += 50;
    now = performance.now();
  }
  return ((now - start) * 1000) / n; // µs per op
}

const deadline = Date.now() + 100_000;
console.log(`node ${process.version}, median of 7 runs of 40 ms each`);
for (const [name, fn] of cases) {
  if (Date.now() > deadline) break;
  runFor(fn, 40); // warm-up
  const runs = Array.from({ length: 7 }, () => runFor(fn, 40)).sort((a, b) => a - b);
  const us = runs[3];
  console.log(
    `${name.padEnd(34)} ${us.toFixed(2).padStart(9)} µs/op  ${Math.round(1e6 / us)
      .toLocaleString("en")
      .padStart(11)} ops/s`,
  );
}
