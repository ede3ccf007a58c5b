/**
 * Shelly, both generations in one subscription.
 * - Gen1 (https://shelly-api-docs.shelly.cloud/gen1/#shelly-h-amp-t-mqtt):
 *   `shellies/<id>/sensor/<metric>` with a bare value (`22.5`, `true`, `open`).
 * - Gen2+ (https://shelly-api-docs.shelly.cloud/gen2/General/RPCChannels#mqtt): with
 *   "generic status update" on, `<id>/status/<component>:<n>` with the component's
 *   status object, e.g. `temperature:0` → `{"id":0,"tC":22.3,"tF":72.1}`.
 * The metric is the topic's last segment; an object's fields are named
 * `<component>:<n>.<field>` and the common ones renamed below.
 */
import type { PresetSettings } from "./types.js";

export function shelly(base = "shellies"): PresetSettings {
  return {
    topic: [`${base}/+/sensor/+`, "+/status/+"],
    sensor: "{1}",
    metric: "{2}",
    format: "json",
    values: "*",
    // Gen1 door/window `state` is open/close; JSON true/false need no states.
    states: { open: true, close: false },
    // Gen1 text that is no measurement (dark/twilight/bright).
    ignore_topics: ["*/sensor/illumination"],
    exclude: ["*.id", "*.tF", "*.minute_ts", "*.by_minute", "*.by_minute.*"],
    rename: {
      "temperature:0.tC": "temperature",
      "humidity:0.rh": "humidity",
      "illuminance:0.lux": "illuminance",
      "devicepower:0.battery.percent": "battery",
      "devicepower:0.battery.V": "battery_voltage",
      "devicepower:0.external.present": "external_power",
      "switch:0.output": "switch",
      "switch:0.apower": "power",
      "switch:0.voltage": "voltage",
      "switch:0.current": "current",
      "switch:0.aenergy.total": "energy",
      "switch:0.temperature.tC": "device_temperature",
    },
  };
}
