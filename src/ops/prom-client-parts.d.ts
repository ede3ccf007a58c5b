/**
 * Types for prom-client's per-metric modules, which metrics.ts imports one by one instead
 * of collectDefaultMetrics (see SCRAPE_TIME_DEFAULT_METRICS there). Each exports a function
 * that registers its metrics.
 */
declare module "prom-client/lib/metrics/*" {
  import type { Registry } from "prom-client";

  function install(registry: Registry, config: { prefix: string }): void;
  export = install;
}
