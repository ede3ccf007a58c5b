/**
 * Turns the stored body of a delivery into what goes on the wire for one
 * destination: the body bytes, their content type, and the headers that are not
 * signatures (auth, the destination's static headers).
 *
 * The outbox stores the Standard Webhooks envelope once, as exact bytes. Rendering
 * happens per attempt from those bytes and is deterministic, so the request
 * builder can sign what `render` returns (design invariant 3):
 *
 *   const r = render(delivery.body, dest);            // body, contentType, headers, url?
 *   sign r.body (v1 with dest.secret, plus v1aSignatures(dest, id, ts, r.body))
 *   const wire = compressBody(r.body, dest);          // gzip after signing
 *   POST (r.url ?? dest.url) with { ...r.headers, content-type, webhook-*, ...wire.headers } and wire.body
 *
 * Also here: `acceptsEvent` (routing by severity and labels) and the pure parts of
 * batching (`renderBatch`, `batchId`).
 */
import { createHash } from "node:crypto";
import { gzipSync } from "node:zlib";
import type { DestinationConfig, Severity } from "../config/schema.js";
import type { NewEvent } from "../events.js";
import { formatOf } from "./format-check.js";
import { renderPreset } from "./presets.js";
import { signV1a } from "./sign-v1a.js";
import { type CompiledTemplate, compileTemplate } from "./template.js";

export interface Rendered {
  body: Buffer;
  contentType: string;
  /** Auth and static headers (lower-case names); no content-type, no signatures. */
  headers: Record<string, string>;
  /** Send here instead of `dest.url` (only ntfy with the topic in the URL path). */
  url?: string;
}

/** The stored body cannot be rendered (not JSON): retrying cannot help, the delivery is dead. */
export class RenderError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "RenderError";
  }
}

const compiled = new WeakMap<object, CompiledTemplate>();

/** The compiled template of a (frozen) destination config, compiled once and reused per attempt. */
function templateOf(dest: DestinationConfig): CompiledTemplate {
  const hit = compiled.get(dest);
  if (hit) return hit;
  // Placeholders were checked against the rules when the config loaded; accept any data field here.
  const r = compileTemplate(dest.template, ["template"], { contentType: dest.content_type, anyDataField: true });
  if (!r.ok) throw new RenderError(`template does not compile: ${r.problems.map((p) => p.message).join("; ")}`);
  compiled.set(dest, r.template);
  return r.template;
}

function parseBody(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString("utf8"));
  } catch (err) {
    throw new RenderError("the stored body is not JSON", { cause: err });
  }
}

/** `Authorization` from `token` or `basic_auth`, then the destination's static headers. */
export function staticHeaders(dest: DestinationConfig): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(dest.headers)) out[k.toLowerCase()] = v;
  if (dest.token !== undefined) out.authorization = `Bearer ${dest.token}`;
  if (dest.basic_auth !== undefined) {
    const { username, password } = dest.basic_auth;
    out.authorization = `Basic ${Buffer.from(`${username}:${password}`, "utf8").toString("base64")}`;
  }
  return out;
}

export function render(body: Buffer, dest: DestinationConfig): Rendered {
  const headers = staticHeaders(dest);
  if (formatOf(dest) === "standard") return { body, contentType: "application/json", headers };
  const envelope = parseBody(body);
  if (dest.preset !== undefined) {
    const p = renderPreset(dest.preset, envelope, dest);
    const out: Rendered = { body: Buffer.from(JSON.stringify(p.value), "utf8"), contentType: p.contentType, headers };
    if (p.url !== undefined) out.url = p.url;
    return out;
  }
  const t = templateOf(dest);
  return { body: t.render(envelope), contentType: t.contentType, headers };
}

// ---------------------------------------------------------------- signing

/**
 * Which signatures `signature: standard` adds: v1 (HMAC) for each `secret`, v1a
 * (Ed25519) for each `ed25519.secret`. A preset destination without secrets is
 * sent unsigned (see needsHmacSecret in format-check.ts).
 */
export function signingPlan(dest: DestinationConfig): { hmac: string[]; ed25519: string[] } {
  if (dest.signature === "none") return { hmac: [], ed25519: [] };
  const list = (v: string | readonly string[] | undefined) =>
    v === undefined ? [] : typeof v === "string" ? [v] : [...v];
  return { hmac: list(dest.secret), ed25519: list(dest.ed25519?.secret) };
}

/** The `v1a,...` entries to append (space-separated) to `webhook-signature`; "" when none. */
export function v1aSignatures(dest: DestinationConfig, id: string, timestampSec: number, body: Buffer): string {
  const keys = signingPlan(dest).ed25519;
  return keys.length ? signV1a(keys, id, timestampSec, body) : "";
}

// ---------------------------------------------------------------- compression

/**
 * Gzips the body when it is larger than `gzip_above`. Signatures are computed over the
 * uncompressed body: receivers' body parsers (Express, FastAPI, Go's gzip handlers)
 * inflate `content-encoding: gzip` before the handler verifies the bytes.
 */
export function compressBody(
  body: Buffer,
  dest: Pick<DestinationConfig, "gzip_above">,
): {
  body: Buffer;
  headers: Record<string, string>;
} {
  if (dest.gzip_above === undefined || body.length <= dest.gzip_above) return { body, headers: {} };
  return { body: gzipSync(body, { level: 6 }), headers: { "content-encoding": "gzip" } };
}

// ---------------------------------------------------------------- routing

const RANK: Record<Severity, number> = { info: 0, warning: 1, critical: 2 };

/**
 * Whether `dest` wants `event`: its severity is at least `min_severity` and its
 * labels (body.data.labels) include every `match_labels` pair exactly.
 */
export function acceptsEvent(
  dest: Pick<DestinationConfig, "min_severity" | "match_labels">,
  event: Pick<NewEvent, "severity" | "body">,
): boolean {
  if (dest.min_severity !== undefined && RANK[event.severity] < RANK[dest.min_severity]) return false;
  if (dest.match_labels !== undefined) {
    const raw = event.body.data.labels;
    const labels = raw && typeof raw === "object" ? (raw as Record<string, unknown>) : {};
    for (const [k, v] of Object.entries(dest.match_labels)) {
      if (!Object.hasOwn(labels, k) || labels[k] !== v) return false;
    }
  }
  return true;
}

// ---------------------------------------------------------------- batching

/**
 * One request for several events: `{ "type": "batch", "timestamp": <latest event time>,
 * "data": { "events": [ { "id": "msg_...", "type": ..., "timestamp": ..., "data": ... }, ... ] } }`.
 * Each event keeps its own id, so receivers deduplicate per event. The stored bytes of
 * each event are spliced in unchanged (no re-serialisation, so numbers keep their exact text).
 */
export function renderBatch(bodies: readonly Buffer[], ids: readonly string[], dest: DestinationConfig): Rendered {
  if (bodies.length !== ids.length) throw new RenderError("renderBatch: one id per body");
  if (bodies.length === 0) throw new RenderError("renderBatch: no events");
  if (formatOf(dest) !== "standard") throw new RenderError("batch needs format standard");
  let latest = "";
  let latestMs = Number.NEGATIVE_INFINITY;
  const parts: Buffer[] = [];
  bodies.forEach((b, i) => {
    const text = b.toString("utf8").trim();
    const env = parseBody(b) as { timestamp?: unknown };
    if (!text.startsWith("{")) throw new RenderError("a batched body must be a JSON object");
    const ms = typeof env.timestamp === "string" ? Date.parse(env.timestamp) : Number.NaN;
    if (Number.isFinite(ms) && ms >= latestMs) {
      latestMs = ms;
      latest = env.timestamp as string;
    }
    const rest = text.slice(1).trimStart();
    const head = `{"id":${JSON.stringify(ids[i])}${rest.startsWith("}") ? "" : ","}`;
    parts.push(Buffer.from(head + rest, "utf8"));
  });
  const open = Buffer.from(`{"type":"batch","timestamp":${JSON.stringify(latest)},"data":{"events":[`, "utf8");
  const body = Buffer.concat([open, ...parts.flatMap((p, i) => (i ? [Buffer.from(","), p] : [p])), Buffer.from("]}}")]);
  return { body, contentType: "application/json", headers: staticHeaders(dest) };
}

/**
 * A stable `webhook-id` for a batch: the same events in the same order give the same id,
 * so a retried batch is recognisable as a duplicate.
 */
export function batchId(ids: readonly string[]): string {
  return `msg_batch_${createHash("sha256").update(ids.join(",")).digest("base64url").slice(0, 26)}`;
}
