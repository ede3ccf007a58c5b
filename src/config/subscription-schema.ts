/**
 * One MQTT subscription of the one schema (schema.ts puts it under `mqtt.subscriptions`).
 * A `preset` (sources/presets) is merged under the keys the user wrote, then the defaults
 * are applied, so the output is the same plain subscription whether or not a preset
 * named it, and every key of a preset can be overridden.
 */
import { z } from "zod";
import { compileGlob } from "../rules/glob.js";
import { PRESET_NAMES, PRESETS, type PresetName } from "../sources/presets/index.js";
import { commonTopic, filterCovers } from "../sources/topics.js";
import { isTimeZone } from "../sources/zoned-time.js";

const timeZone = z.string().refine(isTimeZone, "must be an IANA time zone name like Europe/Berlin or UTC");
const globs = z.array(z.string().min(1));
const stateValue = z.union([z.number(), z.string(), z.boolean()]);

export const payloadFormat = z.enum(["json", "number", "kv", "text"]);

const keys = z.strictObject({
  /** Topic filter, or a list of them; `+` and `#` wildcards allowed. Required unless a preset gives it. */
  topic: z.union([z.string().min(1), z.array(z.string().min(1)).min(1, "must list at least one topic")]).optional(),
  /** Firmware preset: zigbee2mqtt | tasmota | esphome | shelly (docs/devices.md). */
  preset: z.enum(PRESET_NAMES).optional(),
  /** With preset: the firmware's topic root when not its default (zigbee2mqtt's base_topic, Tasmota's prefix, ...). */
  base_topic: z.string().min(1).optional(),
  qos: z.union([z.literal(0), z.literal(1), z.literal(2)]).default(1),
  /** Sensor name; `{1}` is the first wildcard's segment(s), `{topic.N}` the Nth topic segment (from 1), `{field}` a payload field. Default `{1}`. */
  sensor: z.string().min(1).optional(),
  /** Metric name, with the same placeholders; with `values: "*"` it prefixes the field names. */
  metric: z.string().min(1).optional(),
  format: payloadFormat.optional(),
  /** json: dot path of the value in the payload. */
  value: z.string().min(1).optional(),
  /** json/kv: metric name → dot path or key; or "*" for every numeric and boolean field. */
  values: z.union([z.literal("*"), z.record(z.string(), z.string())]).optional(),
  /** values "*": only fields whose name matches one of these globs (`*` any run, `?` one character). */
  include: globs.optional(),
  /** values "*": skip fields whose name matches one of these globs (e.g. linkquality). */
  exclude: globs.optional(),
  /** Metric renames, applied last: { water_temperature: temperature }. */
  rename: z.record(z.string(), z.string().min(1)).optional(),
  /** values "*": a top-level object's name becomes this label and is left out of the metric name. */
  group_label: z.string().min(1).optional(),
  /** values "*": `snake` writes metric names from fields in snake_case (DewPoint → dew_point). */
  metric_case: z.enum(["keep", "snake"]).optional(),
  /** Topic globs (`*` any run, also across `/`) this subscription leaves alone. */
  ignore_topics: globs.optional(),
  /** Dot path (json) or key (kv) of the measurement time: epoch s/ms/µs/ns or ISO 8601. Default: arrival time. */
  timestamp: z.string().min(1).optional(),
  /** IANA zone of ISO times without `Z` or an offset (Tasmota's `Time`). Default: the agent's own zone. */
  timezone: timeZone.optional(),
  /** Text → value, e.g. { ON: 1, OFF: 0 }; matched case-insensitively. */
  states: z.record(z.string(), stateValue).optional(),
  /**
   * Messages the broker sends from its retained store when edgehook subscribes (after
   * every start and reconnect): `ignore` (default) skips them, counted, because their
   * value may be days old and would look like a live sensor; `accept` takes them as readings.
   */
  retained: z.enum(["ignore", "accept"]).optional(),
  labels: z.record(z.string(), z.string()).default({}),
});

export interface SubscriptionConfig {
  /** The topic filters, always a list. */
  topics: string[];
  preset?: PresetName;
  base_topic?: string;
  qos: 0 | 1 | 2;
  sensor: string;
  metric?: string;
  format: z.output<typeof payloadFormat>;
  value?: string;
  values?: "*" | Record<string, string>;
  include?: string[];
  exclude?: string[];
  rename?: Record<string, string>;
  group_label?: string;
  metric_case: "keep" | "snake";
  ignore_topics?: string[];
  timestamp?: string;
  timezone?: string;
  states?: Record<string, number | string | boolean>;
  retained: "ignore" | "accept";
  labels: Record<string, string>;
}

export const subscription = keys.transform((s, ctx): SubscriptionConfig => {
  if (s.base_topic !== undefined && s.preset === undefined) {
    ctx.addIssue({ code: "custom", path: ["base_topic"], message: "only with preset" });
  }
  const preset = s.preset === undefined ? undefined : PRESETS[s.preset](s.base_topic);
  const topic = s.topic ?? preset?.topic;
  if (topic === undefined) {
    ctx.addIssue({ code: "custom", path: ["topic"], message: "is required (or a preset)" });
    return z.NEVER;
  }
  const out: SubscriptionConfig = {
    ...preset,
    topics: typeof topic === "string" ? [topic] : [...topic],
    qos: s.qos,
    sensor: s.sensor ?? preset?.sensor ?? "{1}",
    format: s.format ?? preset?.format ?? "json",
    metric_case: s.metric_case ?? preset?.metric_case ?? "keep",
    retained: s.retained ?? "ignore",
    labels: s.labels,
  };
  delete (out as { topic?: unknown }).topic;
  for (const [k, v] of Object.entries(s)) {
    if (v === undefined || k === "topic") continue;
    if (k in out && (k === "qos" || k === "labels" || k === "sensor" || k === "format" || k === "metric_case"))
      continue;
    (out as unknown as Record<string, unknown>)[k] = v;
  }
  // A value path chosen by the user replaces the preset's values.
  if (s.value !== undefined && s.values === undefined) delete out.values;
  return out;
});

/** The keys a preset expands to, as the user would write them (for `check --explain`). */
export function explainSubscription(s: SubscriptionConfig): Record<string, unknown> {
  const { topics, preset: _preset, base_topic: _base, ...rest } = s;
  return { topic: topics.length === 1 ? topics[0] : topics, ...rest };
}

/** A problem (or, with `warning`, a warning) about one subscription, for load.ts to place. */
export interface SubscriptionProblem {
  path: (string | number)[];
  message: string;
  warning?: boolean;
}

/**
 * Checks that need the whole subscription (after its preset): what a format needs, what
 * `{N}` can be filled by, and which subscriptions hide others (the first that matches a
 * topic takes it: MqttRouter).
 */
export function checkSubscriptions(subs: readonly SubscriptionConfig[]): SubscriptionProblem[] {
  const out: SubscriptionProblem[] = [];
  subs.forEach((s, i) => {
    const at = (path: (string | number)[], message: string) =>
      out.push({ path: ["mqtt", "subscriptions", i, ...path], message });
    const single = s.format === "number" || s.format === "text";
    if (single && !s.metric) at([], `format ${s.format} needs metric (the name of its one value)`);
    if (s.format === "text" && !s.states) at([], "format text needs states, e.g. { ON: 1, OFF: 0 }");
    if (s.values && single) at(["values"], `format ${s.format} carries one value; use metric`);
    const everyField = !single && !s.value && (s.values === undefined || s.values === "*");
    for (const key of ["include", "exclude", "group_label"] as const) {
      if (s[key] !== undefined && !everyField) at([key], 'only with values: "*" (every field)');
    }
    // `{N}` is the Nth wildcard of the topic filter; more than it has can never be filled.
    for (const topic of s.topics) {
      const wildcards = topic.split("/").filter((seg) => seg === "+" || seg === "#").length;
      for (const key of ["sensor", "metric"] as const) {
        const template = s[key];
        for (const m of template?.matchAll(/\{(\d+)\}/g) ?? []) {
          const n = Number(m[1]);
          if (n < 1 || n > wildcards) {
            at(
              [key],
              wildcards === 0
                ? `{${n}} needs a + or # wildcard in the topic; name it, e.g. {topic.2} or a fixed name`
                : `{${n}} but the topic ${topic} has ${wildcards} wildcard${wildcards === 1 ? "" : "s"}`,
            );
          }
        }
      }
    }
  });
  out.push(...overlaps(subs));
  return out;
}

function overlaps(subs: readonly SubscriptionConfig[]): SubscriptionProblem[] {
  const out: SubscriptionProblem[] = [];
  const ignored = subs.map((s) => (s.ignore_topics ?? []).map(compileGlob));
  for (let j = 1; j < subs.length; j++) {
    const later = subs[j]!;
    for (const b of later.topics) {
      for (let i = 0; i < j; i++) {
        const earlier = subs[i]!;
        const hit = earlier.topics.find((a) => commonTopic(a, b) !== undefined);
        if (hit === undefined) continue;
        const example = commonTopic(hit, b) as string;
        // The earlier one leaves these topics alone (ignore_topics): they reach this one.
        if (ignored[i]!.some((m) => m(example))) continue;
        const name = `subscriptions.${i} (${hit})`;
        if (filterCovers(hit, b)) {
          out.push({
            path: ["mqtt", "subscriptions", j, "topic"],
            message: `${b} never gets a message: ${name} comes first and takes every topic it matches (the first matching subscription decodes a message); move this one before it`,
            warning: true,
          });
          break;
        }
        // An earlier, narrower subscription is the way to treat a few topics differently.
        if (filterCovers(b, hit)) continue;
        out.push({
          path: ["mqtt", "subscriptions", j, "topic"],
          message: `topics that both ${b} and ${name} match (such as ${example}) go to the earlier one only`,
          warning: true,
        });
        break;
      }
    }
  }
  return out;
}
