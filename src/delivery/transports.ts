/**
 * Destinations are chosen by the scheme of their `url` (issue 13): one transport factory
 * per scheme. A new kind of destination registers its factory here; nothing else in the
 * delivery core changes.
 */
import { EdgehookError } from "../errors.js";
import { httpTransport } from "./http-transport.js";
import { mqttTransport } from "./mqtt-transport.js";
import { natsTransport } from "./nats-transport.js";
import type { TransportFactory } from "./transport.js";

/** Factories by `URL.protocol` (`https:`). */
export type TransportRegistry = ReadonlyMap<string, TransportFactory>;

function registry(factories: readonly TransportFactory[]): TransportRegistry {
  const out = new Map<string, TransportFactory>();
  for (const f of factories) for (const s of f.schemes) out.set(s, f);
  return out;
}

/** The transports edgehook ships. */
export const TRANSPORTS: TransportRegistry = registry([httpTransport, mqttTransport, natsTransport]);

/** The factory for a destination url; throws EDGEHOOK_CONFIG_INVALID for a scheme nothing serves. */
export function transportFor(url: string, transports: TransportRegistry = TRANSPORTS): TransportFactory {
  const scheme = new URL(url).protocol;
  const factory = transports.get(scheme);
  if (factory === undefined) {
    throw new EdgehookError(
      "EDGEHOOK_CONFIG_INVALID",
      `destination url scheme ${scheme.replace(/:$/, "")}:// is not supported (use ${[...transports.keys()].map((s) => `${s}//`).join(", ")})`,
    );
  }
  return factory;
}
