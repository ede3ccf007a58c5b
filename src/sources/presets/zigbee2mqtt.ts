/**
 * zigbee2mqtt (https://www.zigbee2mqtt.io/guide/usage/mqtt_topics_and_messages.html):
 * each device publishes one JSON object of its state on `<base_topic>/<friendly name>`,
 * where the friendly name may itself contain `/`. The bridge's own topics
 * (`<base_topic>/bridge/...`), the command topics (`.../set`, `.../get`) and the
 * availability topic (`.../availability`) carry no readings.
 */
import type { PresetSettings } from "./types.js";

export function zigbee2mqtt(base = "zigbee2mqtt"): PresetSettings {
  return {
    topic: [`${base}/#`],
    sensor: "{1}",
    format: "json",
    values: "*",
    // Present when the bridge's `last_seen` option is on (ISO 8601 with offset, or epoch ms).
    timestamp: "last_seen",
    states: { ON: true, OFF: false },
    ignore_topics: [`${base}/bridge/*`, "*/set", "*/set/*", "*/get", "*/get/*", "*/availability"],
  };
}
