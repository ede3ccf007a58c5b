/**
 * Reads the `tls.ca_file` / `cert_file` / `key_file` of a config section (a destination, the
 * MQTT source, `edgehook tap`): the one place these files are read, so every user resolves
 * relative paths the same way (against the config file's directory) and fails with the same
 * error code. Read at start or reload, never per connection.
 */
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { EdgehookError } from "../errors.js";

export interface TlsFileKeys {
  ca_file?: string | undefined;
  cert_file?: string | undefined;
  key_file?: string | undefined;
}

/** The file contents, under the names node:tls, undici and MQTT.js take them. */
export interface TlsMaterial {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

export interface TlsReadOptions {
  /** Relative paths resolve against this (the config file's directory); the cwd when unset. */
  baseDir?: string | undefined;
  /** Names the section in the error: `mqtt.tls` → "mqtt.tls.ca_file: cannot read ...". */
  label: string;
  /** The error shows the resolved path and the errno code rather than the path as written. */
  detailed?: boolean;
}

/** Throws EDGEHOOK_CONFIG_UNREADABLE (with the fs error as `cause`) when a named file cannot be read. */
export function readTlsFiles(tls: TlsFileKeys | undefined, options: TlsReadOptions): TlsMaterial {
  const out: TlsMaterial = {};
  if (tls === undefined) return out;
  const ca = readOne(tls.ca_file, "ca_file", options);
  const cert = readOne(tls.cert_file, "cert_file", options);
  const key = readOne(tls.key_file, "key_file", options);
  if (ca) out.ca = ca;
  if (cert) out.cert = cert;
  if (key) out.key = key;
  return out;
}

function readOne(file: string | undefined, key: string, options: TlsReadOptions): Buffer | undefined {
  if (file === undefined || file === "") return undefined;
  const path = options.baseDir ? resolve(options.baseDir, file) : resolve(file);
  try {
    return readFileSync(path);
  } catch (err) {
    const why = options.detailed ? `${path} (${errnoCode(err) ?? String(err)})` : file;
    throw new EdgehookError("EDGEHOOK_CONFIG_UNREADABLE", `${options.label}.${key}: cannot read ${why}`, {
      cause: err,
    });
  }
}

/** `ENOENT`, `EACCES`, ... of an fs error, if it has one. */
export function errnoCode(err: unknown): string | undefined {
  if (typeof err !== "object" || err === null || !("code" in err)) return undefined;
  return typeof err.code === "string" ? err.code : undefined;
}
