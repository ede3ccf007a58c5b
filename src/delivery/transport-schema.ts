/**
 * The keys of broker destinations, chosen by the URL scheme of `url`:
 *
 *   http://, https://   webhook (POST)                          format-schema.ts
 *   mqtt://, mqtts://   publish to an MQTT broker (PUBACK)       mqtt-transport.ts
 *   nats://             publish to NATS JetStream (PubAck)       nats-transport.ts
 *
 * The keys are spread into the one destination schema (config/schema.ts), so every kind
 * shares the outbox keys (max_attempts, retry_schedule, max_age, concurrency, min_severity,
 * ...); `checkDestinationKinds` refuses keys that do not apply to a destination's kind.
 * Nothing here has a default, so a webhook destination parses exactly as before. The checks
 * that need the parsed file are in transport-check.ts; this module imports nothing from
 * schema.ts (schema.ts imports it, and scripts/check-cycles.mjs keeps src/ free of cycles).
 */
import { z } from "zod";
import { duration } from "../config/fields.js";

export { type DestinationKind, destinationKind } from "./destination-kind.js";

export const DESTINATION_SCHEMES = /^(https?|mqtts?|nats)$/;

export const transportKeys = {
  /** mqtt(s)://: the topic template, e.g. edgehook/{agent}/{type}/{sensor} (see delivery/topic.ts). */
  topic: z.string().min(1).optional(),
  /** mqtt(s)://: 1 (default; delivered = PUBACK) or 2 (delivered = PUBCOMP). */
  qos: z.union([z.literal(1), z.literal(2)]).optional(),
  /** mqtt(s)://: publish retained (the broker keeps the last event per topic). Default false. */
  retain: z.boolean().optional(),
  /** mqtt(s)://: the client id of this destination's own connection. Default edgehook-<agent.id>-<destination>. */
  client_id: z.string().min(1).optional(),
  /** mqtt(s)://, nats://: user name for the broker or server. */
  username: z.string().min(1).optional(),
  /** mqtt(s)://, nats://: password (prefer password_file). */
  password: z.string().optional(),
  /** mqtt(s)://: 5 (default; signature headers as user properties) or 4 (MQTT 3.1.1: the body only). */
  protocol_version: z.union([z.literal(4), z.literal(5)]).optional(),
  /** mqtt(s)://: MQTT keepalive of the connection. Default 30s. */
  keepalive: duration().optional(),
  /** nats://: the subject template, e.g. edgehook.{agent}.{type} (see delivery/topic.ts). */
  subject: z.string().min(1).optional(),
  /** nats://: the JetStream stream that must capture the subjects (checked on connect). */
  stream: z.string().min(1).optional(),
  /** nats://: create `stream` (subjects <literal prefix of subject>>) when it does not exist. Default false. */
  create_stream: z.boolean().optional(),
  /** nats://: a .creds file (JWT + nkey seed), read on each connect. */
  credentials_file: z.string().min(1).optional(),
  /** nats://: a file holding an nkey seed (SU...), read on each connect. */
  nkey_file: z.string().min(1).optional(),
};
