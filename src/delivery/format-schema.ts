/**
 * The destination keys that choose the body format, presets, authentication,
 * asymmetric signing, batching and compression. Spread into the `destination`
 * object of src/config/schema.ts (`...formatKeys`) so the one schema stays the
 * source of truth. The checks that need the whole file (templates against the
 * rules that notify a destination) are in format-check.ts.
 *
 * This module imports nothing from schema.ts, not even types: schema.ts imports
 * it, and scripts/check-cycles.mjs keeps src/ free of import cycles.
 */
import { z } from "zod";
import { duration, size } from "../config/fields.js";

export const PRESETS = ["slack", "discord", "teams", "ntfy", "homeassistant"] as const;
export type PresetName = (typeof PRESETS)[number];

export const formatKeys = {
  /**
   * `standard`: the Standard Webhooks JSON envelope as stored. `template`: the body
   * comes from `template` or `preset`. Default: `template` when either is given.
   */
  format: z.enum(["standard", "template"]).optional(),
  /** Ready-made body for a known receiver: slack, discord, teams, ntfy or homeassistant (docs/destinations.md). */
  preset: z.enum(PRESETS).optional(),
  /**
   * Body template: a mapping or list (sent as JSON) or text (needs `content_type`). String
   * leaves may hold `{{ data.sensor }}`-style placeholders with filters.
   */
  template: z.unknown().optional(),
  /** Content type of a text template (decides escaping) or of a JSON template (must end in json). */
  content_type: z.string().min(1).optional(),
  /** ntfy preset: the topic. Default: the last segment of the URL path. */
  ntfy_topic: z
    .string()
    .regex(/^[-_A-Za-z0-9]{1,64}$/, "must be an ntfy topic: letters, digits, '-' or '_'")
    .optional(),
  /** Sent as `Authorization: Bearer <token>`. Prefer token_file or ${ENV}. */
  token: z.string().min(1).optional(),
  /** Sent as `Authorization: Basic ...`. Prefer password_file. */
  basic_auth: z.strictObject({ username: z.string().min(1), password: z.string() }).optional(),
  /**
   * Asymmetric Standard Webhooks signature `v1a` (Ed25519): `secret` is a `whsk_...` key;
   * receivers verify with the `whpk_...` public key. Prefer secret_file.
   */
  ed25519: z.strictObject({ secret: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]) }).optional(),
  /** Send several events in one request (`type: batch`); standard format only. */
  batch: z
    .strictObject({
      max_events: z.number().int().min(1).max(1000),
      max_wait: duration(),
    })
    .optional(),
  /** Gzip request bodies larger than this (`content-encoding: gzip`). Default: never. */
  gzip_above: size().optional(),
};
