import { ConfigError, parseConfig } from "../../src/config/load.js";

/** The problems parseConfig reports for `text`, as `line:col: key: message`; [] when valid. */
export function configProblems(text: string, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    parseConfig(text, "agent.yaml", { env });
  } catch (err) {
    if (err instanceof ConfigError) return err.problems.map((p) => `${p.line}:${p.col}: ${p.key}: ${p.message}`);
    throw err;
  }
  return [];
}
