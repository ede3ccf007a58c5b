/**
 * Destinations built through the real config loader (defaults applied, frozen), and
 * realistic event bodies as the rule engine stores them.
 */
import { parseConfig } from "../../src/config/load.js";
import type { DestinationConfig } from "../../src/config/schema.js";
import type { EventBody } from "../../src/events.js";

/** `lines`: the keys of one destination, indented by 4 spaces, after `url`. */
export function destFrom(lines: string, url = "https://hooks.example/in"): DestinationConfig {
  const text = `version: 1
agent:
  id: pi-cellar
destinations:
  d:
    url: ${url}
${lines}
`;
  const { config } = parseConfig(text, "agent.yaml", { env: {} });
  return config.destinations.d as DestinationConfig;
}

export const firing: EventBody = {
  type: "alert.firing",
  timestamp: "2026-01-01T12:00:05.000Z",
  data: {
    agent: "pi-cellar",
    rule: "boiler-hot",
    sensor: "boiler",
    metric: "temp",
    value: 81.456,
    threshold: 80,
    severity: "critical",
    labels: { room: "cellar", site: "home" },
    since: "2026-01-01T11:58:00.000Z",
  },
};

export const resolved: EventBody = {
  type: "alert.resolved",
  timestamp: "2026-01-01T12:20:00.000Z",
  data: { ...firing.data, value: 74.9 },
};

export const bytes = (b: EventBody): Buffer => Buffer.from(JSON.stringify(b), "utf8");
