/**
 * Tasmota (https://tasmota.github.io/docs/MQTT/, telemetry): `tele/<topic>/SENSOR` carries
 * the attached sensors, each as an object named after its model (`AM2301`, `DS18B20`,
 * `DS18B20-2`, `BME280`, `ENERGY`), and `tele/<topic>/STATE` the device's own state
 * (uptime, heap, Wi-Fi, relay `POWER`). `Time` is the device's local time without a zone:
 * give the subscription the device's `timezone`.
 */
import type { PresetSettings } from "./types.js";

export function tasmota(base = "tele"): PresetSettings {
  return {
    topic: [`${base}/+/SENSOR`, `${base}/+/STATE`],
    sensor: "{1}",
    format: "json",
    values: "*",
    // {"AM2301":{"Temperature":22.3}} → metric temperature, label model=AM2301.
    group_label: "model",
    metric_case: "snake",
    timestamp: "Time",
    states: { ON: true, OFF: false },
  };
}
