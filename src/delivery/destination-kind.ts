/**
 * What kind of destination a `url` names, by its scheme. Apart from transport-schema.ts so
 * that the delivery code, which asks this for every destination, does not load zod with it
 * (the agent's bundle validates its configuration with zod only while loading it; issue 15).
 */
export type DestinationKind = "webhook" | "mqtt" | "nats";

export function destinationKind(url: string): DestinationKind {
  const scheme = url.slice(0, url.indexOf(":")).toLowerCase();
  if (scheme === "mqtt" || scheme === "mqtts") return "mqtt";
  if (scheme === "nats") return "nats";
  return "webhook";
}
