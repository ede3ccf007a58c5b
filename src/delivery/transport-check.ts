/**
 * Checks of the keys of broker destinations (transport-schema.ts) that need the parsed
 * file: keys that do not apply to a destination's kind, required topic/subject, and the
 * defaults that depend on the agent (an MQTT destination's client id).
 */
import type { DestinationConfig } from "../config/schema.js";
import { destinationKind } from "./destination-kind.js";
import { compileTopic } from "./topic.js";

const MQTT_ONLY = ["topic", "qos", "retain", "client_id", "protocol_version", "keepalive"] as const;
const NATS_ONLY = ["subject", "stream", "create_stream", "credentials_file", "nkey_file"] as const;
const BROKER_ONLY = ["username", "password"] as const;
/** Webhook-only keys a broker destination refuses: there is no HTTP request to shape. */
const WEBHOOK_ONLY = [
  "format",
  "preset",
  "template",
  "content_type",
  "ntfy_topic",
  "basic_auth",
  "batch",
  "gzip_above",
  "hub_secret",
] as const;

/** Reports a problem at a config path; `secret` keeps the value out of the message. */
export type AddKindProblem = (path: (string | number)[], message: string, secret?: boolean) => void;

const SECRET_VALUES = new Set(["secret", "password", "token", "ed25519"]);

/** Problems with keys that do not apply to a destination's kind, and missing required ones. */
export function checkDestinationKinds(destinations: Record<string, DestinationConfig>, report: AddKindProblem): void {
  for (const [name, d] of Object.entries(destinations)) {
    const at = (...p: string[]) => ["destinations", name, ...p];
    const add = (path: string[], message: string) => report(path, message, SECRET_VALUES.has(path[2] ?? ""));
    const kind = destinationKind(d.url);
    const refuse = (keys: readonly (keyof DestinationConfig)[], why: string) => {
      for (const k of keys) if (d[k] !== undefined) add(at(k), why);
    };
    if (kind === "webhook") {
      refuse(MQTT_ONLY, "applies to mqtt:// and mqtts:// destinations only");
      refuse(NATS_ONLY, "applies to nats:// destinations only");
      refuse(BROKER_ONLY, "applies to mqtt(s):// and nats:// destinations (a webhook uses basic_auth or token)");
      continue;
    }
    refuse(WEBHOOK_ONLY, "applies to http(s):// webhooks only; a broker destination publishes the standard envelope");
    if (Object.keys(d.headers).length > 0) add(at("headers"), "applies to http(s):// webhooks only");
    const u = new URL(d.url);
    if (u.pathname !== "" && u.pathname !== "/") {
      add(
        at("url"),
        `must be ${u.protocol}//host:port without a path; the ${kind === "mqtt" ? "topic" : "subject"} names where events go`,
      );
    }
    if (u.username !== "" || u.password !== "")
      add(at("url"), "must not hold credentials; use username and password_file");
    if (kind === "mqtt") {
      refuse(NATS_ONLY, "applies to nats:// destinations only");
      if (d.token !== undefined) add(at("token"), "applies to http(s):// and nats:// destinations");
      if (d.topic === undefined) add(at(), "needs topic, e.g. edgehook/{agent}/{type}/{sensor}");
      else {
        const r = compileTopic(d.topic, "mqtt");
        if (!r.ok) add(at("topic"), r.problem);
      }
      if (d.protocol_version === 4 && d.secret !== undefined) {
        add(
          at("secret"),
          "MQTT 3.1.1 (protocol_version 4) has no user properties to carry a signature; use protocol_version 5, or remove secret",
        );
      }
      if (d.protocol_version === 4 && d.ed25519 !== undefined) {
        add(at("ed25519"), "MQTT 3.1.1 (protocol_version 4) has no user properties to carry a signature");
      }
    } else {
      refuse(MQTT_ONLY, "applies to mqtt:// and mqtts:// destinations only");
      if (d.subject === undefined) add(at(), "needs subject, e.g. edgehook.{agent}.{type}");
      else {
        const r = compileTopic(d.subject, "nats");
        if (!r.ok) add(at("subject"), r.problem);
        else if (d.create_stream === true && r.topic.prefix === "") {
          add(at("create_stream"), "needs a subject that starts with literal text (the stream captures <that>>)");
        }
      }
      if (d.create_stream === true && d.stream === undefined)
        add(at("create_stream"), "needs stream (the name to create)");
      const auths = [d.token, d.credentials_file, d.nkey_file, d.username].filter((v) => v !== undefined).length;
      if (auths > 1) add(at(), "give one of token, credentials_file, nkey_file or username/password");
    }
    if (d.password !== undefined && d.username === undefined) add(at("password"), "needs username");
  }
}

/** Whether a destination signs: an MQTT 3.1.1 destination has nowhere to put a signature. */
export function carriesSignature(d: Pick<DestinationConfig, "url" | "protocol_version">): boolean {
  return !(destinationKind(d.url) === "mqtt" && d.protocol_version === 4);
}

/**
 * Fills what a broker destination's defaults depend on beyond its own keys: an MQTT
 * destination's client id is edgehook-<agent.id>-<destination name>, so each device and
 * each destination has its own session, apart from the sensor-side source's
 * (edgehook-<agent.id>). Runs on the parsed config before it is frozen.
 */
export function fillBrokerDefaults(config: {
  agent: { id: string };
  destinations: Record<string, DestinationConfig>;
}): void {
  for (const [name, d] of Object.entries(config.destinations)) {
    if (destinationKind(d.url) === "mqtt" && d.client_id === undefined)
      d.client_id = `edgehook-${config.agent.id}-${name}`;
  }
}
