/**
 * The one place a webhook request is built from a stored delivery. Templates and batching
 * will hook in here later; the dispatcher only sends what this returns.
 *
 * Invariants 2 and 3: `webhook-id` is the event id (the same on every retry, so receivers
 * can drop duplicates); `webhook-timestamp` is the time of THIS attempt and the signature is
 * computed fresh over the exact stored body bytes, because receivers reject timestamps
 * older than about 5 minutes and an event may wait hours for connectivity.
 */
import { readFileSync } from "node:fs";
import type { DestinationConfig } from "../config/schema.js";
import type { Delivery } from "../store/types.js";
import { hubSignature, signV1 } from "./sign.js";

function readVersion(): string {
  try {
    // src/delivery/ and dist/delivery/ are both two levels below package.json.
    const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as {
      version?: string;
    };
    return pkg.version ?? "0.0.0";
  } catch {
    return "0.0.0";
  }
}

export const VERSION = readVersion();
export const USER_AGENT = `edgehook/${VERSION}`;

/** The destination keys a request depends on. */
export type RequestDestination = Pick<DestinationConfig, "secret" | "hub_secret" | "signature" | "headers">;

export interface BuiltRequest {
  headers: Record<string, string>;
  body: Buffer;
}

/** Secrets of a destination as a list (one while not rotating). */
export function secretsOf(dest: Pick<DestinationConfig, "secret">): string[] {
  if (dest.secret === undefined) return [];
  return Array.isArray(dest.secret) ? dest.secret : [dest.secret];
}

export function buildRequest(delivery: Delivery, dest: RequestDestination, nowSec: number): BuiltRequest {
  const body = delivery.body;
  // Static headers first so they can never override the protocol headers below.
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(dest.headers ?? {})) headers[k.toLowerCase()] = v;
  headers["content-type"] = "application/json";
  headers["user-agent"] = USER_AGENT;
  headers["webhook-id"] = delivery.eventId;
  headers["webhook-timestamp"] = String(nowSec);
  if (dest.signature !== "none") {
    const secrets = secretsOf(dest);
    if (secrets.length > 0) headers["webhook-signature"] = signV1(secrets, delivery.eventId, nowSec, body);
  }
  if (dest.hub_secret) headers["x-hub-signature-256"] = hubSignature(dest.hub_secret, body);
  return { headers, body };
}
