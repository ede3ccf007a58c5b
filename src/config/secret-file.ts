/**
 * Where a relative `*_file` key is looked for: first in `$CREDENTIALS_DIRECTORY` (systemd
 * `LoadCredential=`), then beside the configuration file. An absolute path is itself.
 */
import { isAbsolute, resolve } from "node:path";

export function secretFileCandidates(
  p: string,
  baseDir: string | undefined,
  env: Readonly<Record<string, string | undefined>>,
): string[] {
  if (isAbsolute(p)) return [p];
  const candidates: string[] = [];
  if (env.CREDENTIALS_DIRECTORY) candidates.push(resolve(env.CREDENTIALS_DIRECTORY, p));
  candidates.push(baseDir ? resolve(baseDir, p) : resolve(p));
  return candidates;
}
