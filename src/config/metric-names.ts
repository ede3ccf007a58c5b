/**
 * Which metric names the configured sources can produce, for `check`'s warning about an
 * expression naming a metric nothing produces (a typo would otherwise leave the rule
 * unknown forever). Undefined when a source can produce any name (every field of a JSON
 * payload, a metric taken from the topic or the line): then no name can be called wrong.
 */
import type { Config } from "./schema.js";

export function producibleMetrics(config: Config): ReadonlySet<string> | undefined {
  const names = new Set<string>();
  let any = false;
  let sources = 0;
  const fixed = (metric: string | undefined) => {
    if (metric === undefined || metric.includes("{")) any = true;
    else names.add(metric);
  };
  const fields = (s: {
    metric?: string | undefined;
    values?: "*" | Record<string, string> | undefined;
    rename?: Record<string, string> | undefined;
    columns?: string[] | undefined;
  }) => {
    sources++;
    if (s.values === "*") any = true;
    else if (s.values !== undefined) for (const k of Object.keys(s.values)) names.add(k);
    else if (s.columns !== undefined) for (const c of s.columns) names.add(c);
    else fixed(s.metric);
    for (const v of Object.values(s.rename ?? {})) names.add(v);
  };
  for (const s of config.mqtt?.subscriptions ?? []) fields(s);
  for (const s of config.serial) {
    if (s.format === "regex") {
      sources++;
      any = true;
    } else fields(s);
  }
  for (const bus of config.modbus ?? []) {
    for (const d of bus.devices) {
      sources++;
      for (const r of d.registers) names.add(r.metric);
    }
  }
  if (config.onewire !== undefined) {
    sources++;
    names.add(config.onewire.metric);
  }
  for (const f of config.files ?? []) {
    sources++;
    fixed(f.metric);
  }
  // A file with no sources at all (for `rules test`): nothing to compare with.
  if (any || sources === 0) return undefined;
  for (const d of config.derive) names.add(d.metric);
  return names;
}
