/**
 * `edgehook check --explain`: each MQTT subscription as the agent runs it, with its preset
 * expanded and defaults filled in, as YAML a user can paste back and edit.
 */
import { stringify } from "yaml";
import type { Config } from "../config/schema.js";
import { explainSubscription } from "../config/subscription-schema.js";

export function explainSubscriptions(config: Config): string {
  const subs = config.mqtt?.subscriptions ?? [];
  if (subs.length === 0) return "\nNo MQTT subscriptions.";
  const lines = ["", "MQTT subscriptions as they run (the first whose topic matches a message decodes it):"];
  subs.forEach((s, i) => {
    lines.push("", `# subscriptions.${i}${s.preset ? ` (preset ${s.preset})` : ""}`);
    const yaml = stringify([explainSubscription(s)], { lineWidth: 0, flowCollectionPadding: false });
    lines.push(yaml.trimEnd());
  });
  return lines.join("\n");
}
