/**
 * What a configuration load reports: the problems found, the error that carries them, and the
 * placeholder of a secret that was not read. Its own module so that config/load.ts and
 * config/load-detached.ts (the bundled agent's stand-in, which must not import load.ts and
 * with it zod) share one definition.
 */
import { EdgehookError } from "../errors.js";

export interface ConfigProblem {
  file: string;
  line: number;
  col: number;
  /** Dotted key, e.g. `destinations.ops.url` or `rules.0.notify.1`. */
  key: string;
  message: string;
}

/** What a secret holds when the configuration was loaded without reading secrets. */
export const UNREAD_SECRET = "[not read]";

export class ConfigError extends EdgehookError {
  readonly problems: ConfigProblem[];
  constructor(problems: ConfigProblem[]) {
    super("EDGEHOOK_CONFIG_INVALID", problems.map(formatProblem).join("\n"));
    this.name = "ConfigError";
    this.problems = problems;
  }
}

export function formatProblem(p: ConfigProblem): string {
  return `${p.file}:${p.line}:${p.col}: ${p.key ? `${p.key}: ` : ""}${p.message}`;
}
