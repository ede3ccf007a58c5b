/**
 * Firmware presets for MQTT subscriptions (`preset: NAME`, optional `base_topic`). A preset
 * is only a set of ordinary subscription keys: the schema merges it under what the user
 * wrote, so any key can be overridden, and `edgehook check --explain` prints the result.
 */
import { esphome } from "./esphome.js";
import { shelly } from "./shelly.js";
import { tasmota } from "./tasmota.js";
import type { PresetSettings } from "./types.js";
import { zigbee2mqtt } from "./zigbee2mqtt.js";

export type { PresetSettings } from "./types.js";

export const PRESETS = {
  zigbee2mqtt,
  tasmota,
  esphome,
  shelly,
} as const satisfies Record<string, (base?: string) => PresetSettings>;

export type PresetName = keyof typeof PRESETS;
export const PRESET_NAMES = Object.keys(PRESETS) as [PresetName, ...PresetName[]];
