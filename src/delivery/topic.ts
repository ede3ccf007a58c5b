/**
 * Topic (MQTT) and subject (NATS) templates of broker destinations:
 *
 *   topic: edgehook/{agent}/{type}/{sensor}        (MQTT, levels split by "/")
 *   subject: edgehook.{agent}.{type}               (NATS, tokens split by ".")
 *
 * A placeholder is one name in single braces: `type` or `id` of the event, a `data` field
 * of the rule events (`agent`, `rule`, `sensor`, `metric`, `severity`, ...: DATA_FIELDS in
 * src/event-data.ts), or `labels.<name>`. Values read as text the way body templates read
 * them (template.ts toText); a missing value becomes `_` so a level is never empty.
 *
 * A value may not change the shape of the name it lands in: characters the broker reads as
 * wildcards (MQTT `+ #`, NATS `* >`), and NUL or whitespace, become `_`. The separator is
 * kept (an event type `alert.firing` is two NATS tokens, a sensor `hall/left` two MQTT
 * levels), which keeps names readable and subscriptions like `edgehook.*.alert.>` working.
 */
import { isDataField } from "../event-data.js";
import { toText } from "./template.js";

export type TopicKind = "mqtt" | "nats";

type Part = string | { path: string[] };

export interface CompiledTopic {
  /** The name for one event: `envelope` is the parsed stored body, `id` the event id. */
  render(envelope: unknown, id: string): string;
  /** The literal text before the first placeholder (create_stream uses it). */
  readonly prefix: string;
}

export type TopicResult = { ok: true; topic: CompiledTopic } | { ok: false; problem: string };

const PLACEHOLDER = /\{([^{}]*)\}/g;

const UNSAFE: Record<TopicKind, RegExp> = {
  // MQTT 3.1.1 §4.7.1: + and # are wildcards, not allowed in a topic name; NUL (and other control characters) is refused.
  mqtt: /[+#\p{Cc}\s]/gu,
  // NATS subjects: * and > are wildcards; whitespace ends the subject on the wire.
  nats: /[*>\p{Cc}\s]/gu,
};

export function compileTopic(template: string, kind: TopicKind): TopicResult {
  const parts: Part[] = [];
  let last = 0;
  for (const m of template.matchAll(PLACEHOLDER)) {
    const name = (m[1] ?? "").trim();
    if (m.index > last) parts.push(template.slice(last, m.index));
    last = m.index + m[0].length;
    const path = name.split(".");
    const [head, ...rest] = path;
    const known =
      ((head === "type" || head === "id") && rest.length === 0) ||
      (head === "labels" && rest.length === 1 && rest[0] !== "") ||
      (head !== undefined && isDataField(head) && head !== "labels" && rest.length === 0);
    if (!known) {
      return {
        ok: false,
        problem: `{${name}} is not a placeholder: use {type}, {id}, {agent}, {rule}, {sensor}, {metric}, {severity} or {labels.NAME}`,
      };
    }
    parts.push({ path });
  }
  if (last < template.length) parts.push(template.slice(last));
  const literal = parts.filter((p): p is string => typeof p === "string").join("");
  if (/[{}]/.test(literal)) return { ok: false, problem: "has an unmatched { or }" };
  if (literal.replace(UNSAFE[kind], "") !== literal) {
    return {
      ok: false,
      problem:
        kind === "mqtt"
          ? "must not contain +, # or spaces (a topic name, not a filter)"
          : "must not contain *, > or spaces (a subject, not a filter)",
    };
  }
  if (kind === "nats" && (template.startsWith(".") || template.endsWith(".") || template.includes(".."))) {
    return { ok: false, problem: "must not start or end with '.' or have an empty token" };
  }
  const first = parts.findIndex((p) => typeof p !== "string");
  const prefix = first === -1 ? literal : parts.slice(0, first).join("");
  return {
    ok: true,
    topic: {
      prefix,
      render(envelope: unknown, id: string): string {
        let out = "";
        for (const p of parts) {
          if (typeof p === "string") out += p;
          else out += clean(toText(lookup(envelope, id, p.path)), kind);
        }
        return out;
      },
    },
  };
}

function lookup(envelope: unknown, id: string, path: string[]): unknown {
  const [head, ...rest] = path;
  if (head === "id") return id;
  const env = isRecord(envelope) ? envelope : {};
  if (head === "type") return env.type;
  let v: unknown = env.data;
  for (const k of [head ?? "", ...rest]) v = isRecord(v) ? v[k] : undefined;
  return v;
}

function clean(value: string, kind: TopicKind): string {
  const v = value.replace(UNSAFE[kind], "_");
  if (kind === "nats") {
    // An empty token is not a valid subject: "a..b", ".a", "a.".
    const tokens = v.split(".").map((t) => (t === "" ? "_" : t));
    return tokens.join(".");
  }
  return v === "" ? "_" : v;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
