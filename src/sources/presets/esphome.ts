/**
 * ESPHome (https://esphome.io/components/mqtt.html): every entity publishes its state as
 * plain text on `<topic_prefix>/<component>/<object id>/state`, a number for `sensor`,
 * `ON`/`OFF` for `binary_sensor`. The topic prefix is the node name unless set.
 * With `base_topic` (one node's topic_prefix) the sensor is the last segment of it.
 */
import type { PresetSettings } from "./types.js";

export function esphome(base?: string): PresetSettings {
  const common = { format: "text", states: { ON: true, OFF: false } } as const;
  if (base === undefined) {
    return { ...common, topic: ["+/sensor/+/state", "+/binary_sensor/+/state"], sensor: "{1}", metric: "{2}" };
  }
  return {
    ...common,
    topic: [`${base}/sensor/+/state`, `${base}/binary_sensor/+/state`],
    sensor: base.split("/").filter(Boolean).pop() ?? base,
    metric: "{1}",
  };
}
