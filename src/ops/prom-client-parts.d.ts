/**
 * Types for the modules of prom-client that metrics.ts imports by path instead of the
 * package index (which loads the push gateway, cluster aggregation and the rest as well):
 * the classes are the same ones the index re-exports.
 */
declare module "prom-client/lib/registry.js" {
  import { Registry } from "prom-client";
  export = Registry;
}

declare module "prom-client/lib/counter.js" {
  import { Counter } from "prom-client";
  export = Counter;
}

declare module "prom-client/lib/gauge.js" {
  import { Gauge } from "prom-client";
  export = Gauge;
}

declare module "prom-client/lib/histogram.js" {
  import { Histogram } from "prom-client";
  export = Histogram;
}

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
