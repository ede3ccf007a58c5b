/**
 * What a broker destination publishes for one delivery: the same request a webhook would
 * get (request.ts: the stored envelope, `webhook-id` = the event id, `webhook-timestamp` of
 * this attempt and `webhook-signature` computed now over the body), carried as a message:
 * the body as payload, the webhook-* headers as MQTT 5 user properties or NATS headers,
 * and the topic or subject rendered from the destination's template.
 *
 * Headers that only mean something to an HTTP server (user-agent, authorization: the NATS
 * token authenticates the connection instead) are not carried.
 */
import type { DestinationConfig } from "../config/schema.js";
import type { Delivery } from "../store/types.js";
import { buildRequest } from "./request.js";
import { type CompiledTopic, compileTopic, type TopicKind } from "./topic.js";

export interface BrokerMessage {
  /** The MQTT topic or NATS subject. */
  name: string;
  body: Buffer;
  /** content-type, webhook-id, webhook-timestamp, webhook-signature (when signing). */
  headers: Record<string, string>;
}

const NOT_CARRIED = new Set(["user-agent", "authorization", "content-encoding"]);

const compiled = new Map<string, CompiledTopic>();

function topicOf(template: string, kind: TopicKind): CompiledTopic {
  const key = `${kind}\u0000${template}`;
  let t = compiled.get(key);
  if (t === undefined) {
    const r = compileTopic(template, kind);
    // The config loader refused templates that do not compile; this is a stale or hand-built config.
    if (!r.ok) throw new Error(`${kind === "mqtt" ? "topic" : "subject"} ${template}: ${r.problem}`);
    t = r.topic;
    if (compiled.size > 256) compiled.clear();
    compiled.set(key, t);
  }
  return t;
}

/** Throws (a render error: unsendable) when the stored body cannot be read or rendered. */
export function brokerMessage(
  delivery: Delivery,
  dest: DestinationConfig,
  kind: TopicKind,
  nowSec: number,
): BrokerMessage {
  const template = kind === "mqtt" ? dest.topic : dest.subject;
  if (template === undefined) throw new Error(`destination has no ${kind === "mqtt" ? "topic" : "subject"}`);
  const built = buildRequest(delivery, dest, nowSec);
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(built.headers)) if (!NOT_CARRIED.has(k)) headers[k] = v;
  const envelope: unknown = JSON.parse(delivery.body.toString("utf8"));
  return {
    name: topicOf(template, kind).render(envelope, delivery.eventId),
    body: built.body,
    headers,
  };
}
