/**
 * The one place a webhook request is built from stored deliveries: render (format,
 * preset or template; or a batch envelope), sign, compress. The dispatcher only sends
 * what this returns.
 *
 * Invariants 2 and 3: `webhook-id` is the event id (or, for a batch, an id derived from
 * the ids it carries), the same on every retry, so receivers can drop duplicates;
 * `webhook-timestamp` is the time of THIS attempt and the signatures are computed fresh
 * over the rendered, uncompressed body, because receivers reject timestamps older than
 * about 5 minutes and an event may wait hours for connectivity.
 *
 * Any error thrown here (a RenderError: the stored body cannot be rendered) means the
 * request can never be built; the dispatcher makes the delivery dead at once.
 */
import type { DestinationConfig } from "../config/schema.js";
import type { Delivery } from "../store/types.js";
import { version } from "../version.js";
import { batchId, compressBody, type Rendered, render, renderBatch, signingPlan, v1aSignatures } from "./render.js";
import { hubSignature, signV1 } from "./sign.js";

export const VERSION = version();
export const USER_AGENT = `edgehook/${VERSION}`;

export interface BuiltRequest {
  /** The `webhook-id`: the event id, or `batchId` of a batch's members. */
  id: string;
  /** Where to POST: the destination URL, or the one the preset chose (ntfy's server root). */
  url: string;
  /** Lower-case names. */
  headers: Record<string, string>;
  /** Wire bytes (gzipped when above `gzip_above`). */
  body: Buffer;
}

/** Secrets of a destination as a list (one while not rotating). */
export function secretsOf(dest: Pick<DestinationConfig, "secret">): string[] {
  if (dest.secret === undefined) return [];
  return Array.isArray(dest.secret) ? dest.secret : [dest.secret];
}

/** One delivery, one request. */
export function buildRequest(delivery: Delivery, dest: DestinationConfig, nowSec: number): BuiltRequest {
  return finish(render(delivery.body, dest), delivery.eventId, dest, nowSec);
}

/**
 * Several deliveries of one destination in one request (`type: batch`, standard format):
 * the `webhook-id` is `batchId` of the member ids in order, so the same members give the
 * same id on every retry.
 */
export function buildBatchRequest(
  deliveries: readonly Delivery[],
  dest: DestinationConfig,
  nowSec: number,
): BuiltRequest {
  const ids = deliveries.map((d) => d.eventId);
  const r = renderBatch(
    deliveries.map((d) => d.body),
    ids,
    dest,
  );
  return finish(r, batchId(ids), dest, nowSec);
}

function finish(r: Rendered, id: string, dest: DestinationConfig, nowSec: number): BuiltRequest {
  // Auth and static headers first so they can never override the protocol headers below.
  const headers: Record<string, string> = { ...r.headers };
  headers["content-type"] = r.contentType;
  headers["user-agent"] = USER_AGENT;
  headers["webhook-id"] = id;
  headers["webhook-timestamp"] = String(nowSec);
  const plan = signingPlan(dest);
  const signatures: string[] = [];
  if (plan.hmac.length > 0) signatures.push(signV1(plan.hmac, id, nowSec, r.body));
  const v1a = v1aSignatures(dest, id, nowSec, r.body);
  if (v1a !== "") signatures.push(v1a);
  if (signatures.length > 0) headers["webhook-signature"] = signatures.join(" ");
  else delete headers["webhook-signature"];
  if (dest.hub_secret) headers["x-hub-signature-256"] = hubSignature(dest.hub_secret, r.body);
  // Signatures cover the uncompressed body (see compressBody).
  const wire = compressBody(r.body, dest);
  Object.assign(headers, wire.headers);
  return { id, url: r.url ?? dest.url, headers, body: wire.body };
}
