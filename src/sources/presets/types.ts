/** What a firmware preset sets: ordinary subscription keys, each of which the user may override. */
export interface PresetSettings {
  topic: string[];
  sensor: string;
  metric?: string;
  format: "json" | "number" | "kv" | "text";
  values?: "*" | Record<string, string>;
  timestamp?: string;
  states?: Record<string, number | string | boolean>;
  include?: string[];
  exclude?: string[];
  rename?: Record<string, string>;
  group_label?: string;
  metric_case?: "keep" | "snake";
  ignore_topics?: string[];
}
