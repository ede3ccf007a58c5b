/**
 * Ready-made bodies for receivers people already run: Slack and Discord incoming
 * webhooks, Microsoft Teams Workflows, ntfy and Home Assistant webhook triggers.
 *
 * Each preset turns the stored Standard Webhooks envelope into the body its
 * receiver documents. They are plain functions rather than templates because they
 * pick words, colours and priorities by event type and severity, which the
 * template language deliberately cannot do. Output is deterministic: the same
 * envelope gives the same bytes.
 *
 * Receiver references (checked against the shapes in test/unit/render-presets.test.ts):
 * - Slack: https://api.slack.com/messaging/webhooks — `{ text, blocks }`; `text` is the
 *   notification fallback; mrkdwn needs `&`, `<`, `>` escaped.
 * - Discord: https://discord.com/developers/docs/resources/webhook#execute-webhook —
 *   `{ content (≤ 2000), embeds (title ≤ 256, description ≤ 4096, ≤ 25 fields, value ≤ 1024),
 *   allowed_mentions }`.
 * - Teams: Office 365 connectors (MessageCard) are retired; the Workflows app's
 *   "Post to a channel when a webhook request is received" takes
 *   `{ type: "message", attachments: [{ contentType: "application/vnd.microsoft.card.adaptive", content: <Adaptive Card> }] }`.
 * - ntfy: https://docs.ntfy.sh/publish/#publish-as-json — POST JSON to the server root with
 *   `{ topic, title, message, priority 1..5, tags }`.
 * - Home Assistant: webhook trigger, `POST /api/webhook/<id>` with JSON available as
 *   `trigger.json` in the automation.
 */
import type { DestinationConfig, Severity } from "../config/schema.js";
import type { PresetName } from "./format-schema.js";
import { toText, truncate } from "./template.js";

export interface PresetOutput {
  value: unknown;
  contentType: string;
  /** Where to POST when it differs from the destination URL (ntfy with the topic in the URL). */
  url?: string;
}

/** The envelope fields presets use, read defensively: a body is data, not a promise. */
export interface Facts {
  type: string;
  timestamp: string;
  agent: string;
  rule: string;
  sensor: string;
  metric: string;
  value: unknown;
  threshold: unknown;
  severity: Severity;
  since: unknown;
  /** sensor.silent: when the sensor last reported (null when never). */
  lastSeen: unknown;
  /** sensor.silent: the rule's absent_for in seconds. */
  absentForS: unknown;
  /** readings: how many readings the batch holds. */
  count: unknown;
  labels: Record<string, string>;
  /** `data` fields beyond the known ones (rule `extra`). */
  extra: Record<string, unknown>;
}

const KNOWN = new Set(["agent", "rule", "sensor", "metric", "value", "threshold", "severity", "labels", "since"]);

export function factsOf(envelope: unknown): Facts {
  const env = (envelope && typeof envelope === "object" ? envelope : {}) as Record<string, unknown>;
  const data = (env.data && typeof env.data === "object" ? env.data : {}) as Record<string, unknown>;
  const str = (v: unknown) => (typeof v === "string" ? v : v === undefined || v === null ? "" : toText(v));
  const sev = data.severity === "info" || data.severity === "critical" ? data.severity : "warning";
  const labels: Record<string, string> = {};
  if (data.labels && typeof data.labels === "object") {
    for (const [k, v] of Object.entries(data.labels as Record<string, unknown>)) labels[k] = str(v);
  }
  const extra: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(data)) if (!KNOWN.has(k)) extra[k] = v;
  return {
    type: str(env.type),
    timestamp: str(env.timestamp),
    agent: str(data.agent),
    rule: str(data.rule),
    sensor: str(data.sensor),
    metric: str(data.metric),
    value: data.value,
    threshold: data.threshold,
    severity: sev,
    since: data.since,
    lastSeen: data.last_seen,
    absentForS: data.absent_for_s,
    count: data.count,
    labels,
    extra,
  };
}

/** Numbers to at most 3 decimals (a sensor's 21.456789 reads as 21.457); anything else as text. */
export function formatValue(v: unknown): string {
  if (typeof v === "number" && Number.isFinite(v)) {
    return Number.isInteger(v) ? String(v) : String(Number(`${Math.round(Number(`${v}e3`))}e-3`));
  }
  return toText(v);
}

/** `2026-01-01 12:00 UTC`, or the text as given when it is not a time. */
export function formatTime(v: unknown): string {
  if (v === undefined || v === null || v === "") return "";
  const ms = typeof v === "number" ? (v >= 1e11 ? v : v * 1000) : Date.parse(String(v));
  if (!Number.isFinite(ms)) return toText(v);
  const iso = new Date(ms).toISOString();
  return `${iso.slice(0, 10)} ${iso.slice(11, 16)} UTC`;
}

type Kind = "firing" | "repeat" | "resolved" | "silent" | "returned" | "test" | "other";

function kindOf(type: string): Kind {
  switch (type) {
    case "alert.firing":
      return "firing";
    case "alert.repeat":
      return "repeat";
    case "alert.resolved":
      return "resolved";
    case "sensor.silent":
      return "silent";
    case "sensor.returned":
      return "returned";
    case "test":
      return "test";
    default:
      return "other";
  }
}

const EMOJI: Record<Kind, string> = {
  firing: "",
  repeat: "🔁",
  resolved: "✅",
  silent: "🔇",
  returned: "🔈",
  test: "🧪",
  other: "📈",
};
const SEVERITY_EMOJI: Record<Severity, string> = { critical: "🔴", warning: "🟠", info: "🔵" };

function emojiOf(f: Facts): string {
  const k = kindOf(f.type);
  return k === "firing" ? SEVERITY_EMOJI[f.severity] : EMOJI[k];
}

/** What is measured: `boiler/temp`, or just the sensor. */
function subject(f: Facts): string {
  return [f.sensor, f.metric].filter(Boolean).join("/") || f.rule || f.agent || "edgehook";
}

/** The word that leads a message: CRITICAL, RESOLVED, SILENT... */
function status(f: Facts): string {
  switch (kindOf(f.type)) {
    case "firing":
      return f.severity.toUpperCase();
    case "repeat":
      return `${f.severity.toUpperCase()} (still firing)`;
    case "resolved":
      return "RESOLVED";
    case "silent":
      return "SILENT";
    case "returned":
      return "BACK";
    case "test":
      return "TEST";
    default:
      return (f.type || "event").toUpperCase();
  }
}

/** `90` → `1m30s`: how long a sensor may stay silent, as rules write it. */
function seconds(v: unknown): string {
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0) return toText(v);
  const h = Math.floor(v / 3600);
  const m = Math.floor((v % 3600) / 60);
  const s = Math.round(v % 60);
  return [h && `${h}h`, m && `${m}m`, s && `${s}s`].filter(Boolean).join("") || "0s";
}

/** The measurement part: `is 81.5 (threshold 80)`, or what a silent sensor means. */
function detail(f: Facts): string {
  const k = kindOf(f.type);
  if (k === "silent") {
    if (f.lastSeen !== undefined && f.lastSeen !== null) return `has sent nothing since ${formatTime(f.lastSeen)}`;
    if (typeof f.absentForS === "number") return `has sent nothing for ${seconds(f.absentForS)}`;
    return f.since !== undefined ? `has sent nothing since ${formatTime(f.since)}` : "has gone silent";
  }
  if (k === "returned") return "reports again";
  if (k === "test") return `test webhook from ${f.agent || "edgehook"}`;
  if (typeof f.count === "number" && f.value === undefined) return `sent ${f.count} readings`;
  const value = f.value === undefined ? "" : `is ${formatValue(f.value)}`;
  const threshold = f.threshold === undefined || f.threshold === null ? "" : ` (threshold ${formatValue(f.threshold)})`;
  return `${value}${threshold}`.trim();
}

/** `since …` for alerts; for a resolved alert, when it had started. */
function sinceText(f: Facts): string {
  if (f.since === undefined || f.since === null || f.since === "") return "";
  const k = kindOf(f.type);
  if (k === "firing" || k === "repeat") return `since ${formatTime(f.since)}`;
  if (k === "resolved") return `was firing since ${formatTime(f.since)}`;
  return "";
}

/** One line of plain text: `CRITICAL: boiler/temp is 81.5 (threshold 80) since 2026-01-01 11:58 UTC`. */
export function headline(f: Facts): string {
  if (kindOf(f.type) === "test") return `TEST: ${detail(f)}`;
  return [`${status(f)}: ${subject(f)}`, detail(f), sinceText(f)].filter(Boolean).join(" ");
}

function labelText(labels: Record<string, string>): string {
  return Object.entries(labels)
    .map(([k, v]) => `${k}=${v}`)
    .join(", ");
}

/** Name/value pairs shown as fields (Discord), facts (Teams) or context (Slack); empty values left out. */
function factList(f: Facts): [string, string][] {
  const out: [string, string][] = [
    ["Value", f.value === undefined ? "" : formatValue(f.value)],
    ["Threshold", f.threshold === undefined || f.threshold === null ? "" : formatValue(f.threshold)],
    ["Severity", f.severity],
    ["Since", formatTime(f.since)],
    ["Rule", f.rule],
    ["Agent", f.agent],
    ["Labels", labelText(f.labels)],
  ];
  return out.filter(([, v]) => v !== "");
}

// ---------------------------------------------------------------- slack

/** Slack mrkdwn control characters (https://api.slack.com/reference/surfaces/formatting#escaping). */
function slackEscape(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

// Slack rejects a section text over 3000 characters (Block Kit reference, section block).
const SLACK_TEXT_MAX = 3000;

function slack(f: Facts): unknown {
  const e = slackEscape;
  const line = `${emojiOf(f)} ${headline(f)}`.trim();
  const measure = detail(f);
  const main = [`${emojiOf(f)} *${e(status(f))}*: *${e(subject(f))}* ${e(measure)}`.trim(), e(sinceText(f))]
    .filter(Boolean)
    .join("\n");
  const context = [
    f.rule && `rule *${e(f.rule)}*`,
    f.agent && `agent *${e(f.agent)}*`,
    Object.keys(f.labels).length ? e(labelText(f.labels)) : "",
  ]
    .filter(Boolean)
    .join(" · ");
  const blocks: unknown[] = [{ type: "section", text: { type: "mrkdwn", text: truncate(main, SLACK_TEXT_MAX) } }];
  if (context)
    blocks.push({ type: "context", elements: [{ type: "mrkdwn", text: truncate(context, SLACK_TEXT_MAX) }] });
  return { text: truncate(e(line), SLACK_TEXT_MAX), blocks };
}

// ---------------------------------------------------------------- discord

/** Backslash-escapes Discord markdown so a sensor named `__x__` is not rendered bold. */
function discordEscape(s: string): string {
  return s.replace(/([\\*_~`|[\]])/g, "\\$1");
}

const COLORS = { critical: 0xd93f0b, warning: 0xf2a900, info: 0x1d76db, resolved: 0x2eb67d, neutral: 0x808080 };

function colorOf(f: Facts): number {
  const k = kindOf(f.type);
  if (k === "resolved" || k === "returned") return COLORS.resolved;
  if (k === "firing" || k === "repeat") return COLORS[f.severity];
  if (k === "silent") return COLORS.warning;
  return COLORS.neutral;
}

function discord(f: Facts): unknown {
  const embed: Record<string, unknown> = {
    title: truncate(discordEscape(`${status(f)}: ${subject(f)}`), 256),
    description: truncate(discordEscape([detail(f), sinceText(f)].filter(Boolean).join("\n") || status(f)), 4096),
    color: colorOf(f),
    fields: factList(f)
      .slice(0, 25)
      .map(([name, value]) => ({ name, value: truncate(discordEscape(value), 1024), inline: true })),
    footer: { text: "edgehook" },
  };
  if (f.timestamp && Number.isFinite(Date.parse(f.timestamp))) embed.timestamp = new Date(f.timestamp).toISOString();
  return {
    content: truncate(discordEscape(`${emojiOf(f)} ${headline(f)}`.trim()), 2000),
    embeds: [embed],
    // Sensor names and labels are data: never let them ping @everyone or a role.
    allowed_mentions: { parse: [] },
  };
}

// ---------------------------------------------------------------- teams

function teamsColor(f: Facts): string {
  const k = kindOf(f.type);
  if (k === "resolved" || k === "returned") return "Good";
  if (k === "firing" || k === "repeat")
    return f.severity === "critical" ? "Attention" : f.severity === "warning" ? "Warning" : "Accent";
  if (k === "silent") return "Warning";
  return "Default";
}

function teams(f: Facts): unknown {
  const body: unknown[] = [
    {
      type: "TextBlock",
      text: `${emojiOf(f)} ${status(f)}: ${subject(f)}`.trim(),
      weight: "Bolder",
      size: "Medium",
      color: teamsColor(f),
      wrap: true,
    },
    { type: "TextBlock", text: [detail(f), sinceText(f)].filter(Boolean).join(" ") || status(f), wrap: true },
    { type: "FactSet", facts: factList(f).map(([title, value]) => ({ title, value })) },
  ];
  return {
    type: "message",
    attachments: [
      {
        contentType: "application/vnd.microsoft.card.adaptive",
        contentUrl: null,
        content: {
          $schema: "http://adaptivecards.io/schemas/adaptive-card.json",
          type: "AdaptiveCard",
          // 1.4 renders in Teams desktop, web and mobile; Workflows posts it as is.
          version: "1.4",
          body,
          msteams: { width: "Full" },
        },
      },
    ],
  };
}

// ---------------------------------------------------------------- ntfy

/** ntfy priorities 1..5; 3 is the default, 5 breaks through Do Not Disturb on phones. */
export const NTFY_PRIORITY: Record<Severity, number> = { info: 3, warning: 4, critical: 5 };

const NTFY_TAGS: Record<Kind, string> = {
  firing: "",
  repeat: "repeat",
  resolved: "white_check_mark",
  silent: "mute",
  returned: "loud_sound",
  test: "test_tube",
  other: "chart_with_upwards_trend",
};
const NTFY_SEVERITY_TAG: Record<Severity, string> = {
  critical: "rotating_light",
  warning: "warning",
  info: "information_source",
};

/** The ntfy topic and the URL to publish JSON to (the server root). */
export function ntfyTarget(dest: Pick<DestinationConfig, "url" | "ntfy_topic">): { topic: string; url: string } {
  const u = new URL(dest.url);
  const segments = u.pathname.split("/").filter(Boolean);
  if (dest.ntfy_topic !== undefined) return { topic: dest.ntfy_topic, url: dest.url };
  const topic = segments.pop() ?? "";
  // JSON publishing goes to the root URL (ntfy "Publish as JSON"); keep any base path of a proxied server.
  // The trailing slash matters behind a proxy that routes the prefix as a directory.
  u.pathname = segments.length > 0 ? `/${segments.join("/")}/` : "/";
  return { topic, url: u.toString() };
}

function ntfy(f: Facts, dest: DestinationConfig): PresetOutput {
  const k = kindOf(f.type);
  const { topic, url } = ntfyTarget(dest);
  // A resolved alert is good news: it should not ring through Do Not Disturb like its firing did.
  const priority = k === "firing" || k === "repeat" || k === "silent" ? NTFY_PRIORITY[f.severity] : 3;
  const tags = [k === "firing" ? NTFY_SEVERITY_TAG[f.severity] : NTFY_TAGS[k], f.severity];
  const lines = [
    [detail(f), sinceText(f)].filter(Boolean).join(" "),
    [f.rule && `rule ${f.rule}`, f.agent && `on ${f.agent}`].filter(Boolean).join(" "),
    labelText(f.labels),
  ].filter(Boolean);
  const value = {
    topic,
    title: truncate(`${status(f)}: ${subject(f)}`, 250),
    // ntfy turns messages over 4096 bytes into attachments; stay well under.
    message: truncate(lines.join("\n") || status(f), 3000),
    priority,
    tags,
  };
  return url === dest.url
    ? { value, contentType: "application/json" }
    : { value, contentType: "application/json", url };
}

// ---------------------------------------------------------------- home assistant

const STATE: Record<Kind, string> = {
  firing: "firing",
  repeat: "firing",
  resolved: "resolved",
  silent: "silent",
  returned: "returned",
  test: "test",
  other: "event",
};

/** Flat JSON an automation reads as `trigger.json.<field>`; rule `extra` fields come along at the top level. */
function homeassistant(f: Facts): unknown {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(f.extra)) out[k] = v;
  Object.assign(out, {
    type: f.type,
    state: STATE[kindOf(f.type)],
    agent: f.agent,
    rule: f.rule,
    sensor: f.sensor,
    metric: f.metric,
    value: f.value ?? null,
    threshold: f.threshold ?? null,
    severity: f.severity,
    since: f.since ?? null,
    timestamp: f.timestamp,
    labels: f.labels,
    message: headline(f),
  });
  return out;
}

export function renderPreset(name: PresetName, envelope: unknown, dest: DestinationConfig): PresetOutput {
  const f = factsOf(envelope);
  switch (name) {
    case "slack":
      return { value: slack(f), contentType: "application/json" };
    case "discord":
      return { value: discord(f), contentType: "application/json" };
    case "teams":
      return { value: teams(f), contentType: "application/json" };
    case "ntfy":
      return ntfy(f, dest);
    case "homeassistant":
      return { value: homeassistant(f), contentType: "application/json" };
  }
}
