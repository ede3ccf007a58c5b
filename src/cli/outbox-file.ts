/**
 * The outbox as the operator commands (queue, destination, status) open it: next to a
 * running agent, without integrity check, with a silent logger.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { systemClock } from "../clock.js";
import type { LoadedConfig } from "../config/load.js";
import { silentLogger } from "../ops/logger.js";
import { Metrics } from "../ops/metrics.js";
import { Outbox } from "../store/outbox.js";

export function outboxFile(loaded: LoadedConfig): string {
  return join(loaded.dataDir, "outbox.db");
}

export function openOutbox(loaded: LoadedConfig): Outbox {
  const maxAge: Record<string, number> = {};
  for (const [name, d] of Object.entries(loaded.config.destinations)) {
    if (d.max_age !== undefined) maxAge[name] = d.max_age;
  }
  const outbox = new Outbox({
    file: outboxFile(loaded),
    limits: loaded.config.outbox,
    clock: systemClock,
    logger: silentLogger(),
    metrics: new Metrics(),
    destinationMaxAge: maxAge,
    check: false,
  });
  outbox.open();
  return outbox;
}

/** Runs fn on the outbox, or returns `ifMissing` when the agent never created one. */
export function withOutbox<T>(loaded: LoadedConfig, ifMissing: () => T, fn: (o: Outbox) => T): T {
  if (!existsSync(outboxFile(loaded))) return ifMissing();
  const outbox = openOutbox(loaded);
  try {
    return fn(outbox);
  } finally {
    outbox.close();
  }
}
