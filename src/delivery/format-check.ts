/**
 * Checks of a destination's format keys (src/delivery/format-schema.ts) that need the
 * parsed file: which format applies once defaults are in, whether an HMAC secret is
 * needed, and templates compiled against the rules that notify the destination.
 */
import type { DestinationConfig, RuleConfig } from "../config/schema.js";
import { checkSigningKey } from "./sign-v1a.js";
import { type ConfigPath, compileTemplate } from "./template.js";
import { carriesSignature } from "./transport-check.js";

/** The format a destination uses once defaults are applied. */
export function formatOf(d: Pick<DestinationConfig, "format" | "preset" | "template">): "standard" | "template" {
  return d.format ?? (d.preset !== undefined || d.template !== undefined ? "template" : "standard");
}

/**
 * Whether `signature: standard` on this destination needs an HMAC `secret`.
 * Presets may go without one (Slack, Discord, Teams and ntfy do not verify signatures;
 * their URL or token is the credential), and an `ed25519` key alone signs with v1a.
 */
export function needsHmacSecret(d: DestinationConfig): boolean {
  return d.signature === "standard" && carriesSignature(d) && d.preset === undefined && d.ed25519 === undefined;
}

function secretsOf(v: string | readonly string[] | undefined): string[] {
  return v === undefined ? [] : typeof v === "string" ? [v] : [...v];
}

/** `data` fields the rules that notify `destName` add through `extra`. */
function extraFieldsFor(destName: string, rules: readonly RuleConfig[]): Set<string> {
  const out = new Set<string>();
  for (const r of rules) if (r.notify.includes(destName)) for (const k of Object.keys(r.extra)) out.add(k);
  return out;
}

export type AddProblem = (path: ConfigPath, message: string) => void;

/**
 * Cross-checks of the format keys, called by the loader's crossCheck with its
 * positioned `add`. Templates are compiled here, so an unknown placeholder or
 * filter stops `edgehook check` with `file:line:col`.
 */
export function checkDestinationFormats(
  config: { destinations: Record<string, DestinationConfig>; rules: readonly RuleConfig[] },
  add: AddProblem,
): void {
  for (const [name, d] of Object.entries(config.destinations)) {
    const at = (...p: (string | number)[]): ConfigPath => ["destinations", name, ...p];
    const format = formatOf(d);
    if (d.format === "standard" && (d.preset !== undefined || d.template !== undefined)) {
      add(at("format"), "format standard sends the stored envelope; remove it to use preset or template");
    }
    if (format === "template" && d.preset === undefined && d.template === undefined) {
      add(at("format"), "format template needs template (or a preset)");
    }
    if (d.preset !== undefined && d.template !== undefined) {
      add(at("template"), "give either preset or template, not both");
    }
    if (d.content_type !== undefined && d.template === undefined) {
      add(at("content_type"), "content_type applies to template only");
    }
    if (d.ntfy_topic !== undefined && d.preset !== "ntfy") add(at("ntfy_topic"), "applies to preset ntfy only");
    if (d.preset === "ntfy" && d.ntfy_topic === undefined) {
      const topic = new URL(d.url).pathname.split("/").filter(Boolean).pop();
      if (!topic) add(at("url"), "preset ntfy needs the topic: ntfy_topic, or the URL https://ntfy.sh/<topic>");
    }
    if (d.template !== undefined && d.preset === undefined) {
      const r = compileTemplate(d.template, at("template"), {
        contentType: d.content_type,
        extraDataFields: extraFieldsFor(name, config.rules),
      });
      if (!r.ok) for (const p of r.problems) add(p.path, p.message);
    }
    const authHeader = Object.keys(d.headers).some((h) => h.toLowerCase() === "authorization");
    if (d.token !== undefined && d.basic_auth !== undefined) {
      add(at("basic_auth"), "give either token or basic_auth, not both");
    }
    if (authHeader && (d.token !== undefined || d.basic_auth !== undefined)) {
      add(at("headers"), "Authorization is already set by token or basic_auth");
    }
    if (d.basic_auth?.username.includes(":")) add(at("basic_auth", "username"), "must not contain ':' (RFC 7617)");
    if (d.ed25519 !== undefined) {
      const keys = secretsOf(d.ed25519.secret);
      keys.forEach((k, i) => {
        // Positioned at the parent mapping: the loader quotes scalar values, and this one is a secret.
        const problem = checkSigningKey(k);
        if (problem) add(at("ed25519"), `secret${keys.length > 1 ? ` ${i + 1}` : ""}: ${problem}`);
      });
    }
    if (d.batch !== undefined && format !== "standard") {
      add(at("batch"), "batch sends the standard envelope; it cannot be combined with preset or template");
    }
  }
}
