/**
 * config/load.ts as the bundled program sees it (scripts/bundle.mjs puts this module in its
 * place): the same exports, but each load runs dist/config-loader.cjs, a separate bundle of
 * load.ts with zod, the schemas, yaml and the expression checker, and then lets it go.
 *
 * Why (issue 15): validating a configuration needs zod and every schema built from it, which
 * a module graph keeps for the life of the process once imported: about 3 MB of heap in an
 * agent that validates once at start and again only on SIGHUP. A CommonJS module dropped from
 * require.cache, with nothing else holding its functions, is garbage like any other object.
 * The configuration it returns is plain data.
 *
 * Errors keep their classes: the loader's ConfigError and EdgehookError (its own copies)
 * are thrown again as this bundle's, so `instanceof` in cli.ts holds.
 */
import { createRequire } from "node:module";
import { EdgehookError } from "../errors.js";
import type * as Loader from "./load.js";
import type { LoadedConfig, LoadOptions } from "./load.js";
import { ConfigError, type ConfigProblem } from "./problems.js";

export type { LoadedConfig, LoadOptions } from "./load.js";
export { ConfigError, type ConfigProblem, formatProblem, UNREAD_SECRET } from "./problems.js";

export function loadConfig(file: string, options: LoadOptions = {}): LoadedConfig {
  return withLoader((loader) => loader.loadConfig(file, options));
}

export function parseConfig(text: string, file: string, options: LoadOptions = {}): LoadedConfig {
  return withLoader((loader) => loader.parseConfig(text, file, options));
}

/** dist/config-loader.cjs, from dist/edgehook.js or a chunk in dist/chunks/. */
const LOADER_PATHS = ["./config-loader.cjs", "../config-loader.cjs"];

function withLoader<T>(use: (loader: typeof Loader) => T): T {
  const require = createRequire(import.meta.url);
  let path: string | undefined;
  for (const candidate of LOADER_PATHS) {
    try {
      path = require.resolve(candidate);
      break;
    } catch {
      // not here
    }
  }
  if (path === undefined) throw new Error(`config-loader.cjs is missing beside ${import.meta.url}: npm run build`);
  const hadRegistry = "__zod_globalRegistry" in globalThis;
  try {
    return use(require(path) as typeof Loader);
  } catch (err) {
    throw sameClass(err);
  } finally {
    delete require.cache[path];
    // zod keeps its schema registry on globalThis; left there, it would hold zod's code.
    if (!hadRegistry) delete (globalThis as { __zod_globalRegistry?: unknown }).__zod_globalRegistry;
  }
}

function sameClass(err: unknown): unknown {
  if (!(err instanceof Error) || err instanceof EdgehookError) return err;
  const { name, code, problems } = err as Error & { code?: unknown; problems?: ConfigProblem[] };
  if (name === "ConfigError" && Array.isArray(problems)) return new ConfigError(problems);
  if (name === "EdgehookError" && typeof code === "string") {
    return new EdgehookError(code as EdgehookError["code"], err.message, { cause: err.cause });
  }
  return err;
}
