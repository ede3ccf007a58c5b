/** MQTT.js client options from the `mqtt` config, and small helpers of the MQTT source. */
import type { IClientOptions } from "mqtt";
import type { MqttConfig } from "../config/schema.js";
import { readTlsFiles } from "../config/tls-files.js";

export interface ClientOptionsInput {
  clientId: string;
  statusTopic: string;
  username: string | undefined;
  password: string | undefined;
  /** Relative tls.*_file paths are read from here. */
  baseDir: string | undefined;
}

export function clientOptions(cfg: MqttConfig, o: ClientOptionsInput): IClientOptions {
  const { username, password } = o;
  const options: IClientOptions = {
    clientId: o.clientId,
    protocolVersion: cfg.protocol_version,
    keepalive: Math.max(1, Math.round(cfg.keepalive / 1000)),
    clean: cfg.clean,
    reconnectPeriod: cfg.reconnect_period,
    connectTimeout: 30_000,
    // We subscribe on every connect ourselves (a resumed session keeps them anyway).
    resubscribe: false,
    queueQoSZero: false,
    // mqtt-packet's write cache pre-builds 65,536 small buffers (~5 MB) to save a few
    // allocations per publish; edgehook publishes almost nothing.
    writeCache: false,
    will: { topic: o.statusTopic, payload: Buffer.from("offline"), qos: 1, retain: true },
  };
  if (username !== undefined) options.username = username;
  if (password !== undefined) options.password = password;
  if (cfg.protocol_version === 5 && !cfg.clean) {
    // MQTT 5 ends a session at disconnect unless an expiry is given (§3.1.2.11.2).
    options.properties = { sessionExpiryInterval: 0xffffffff };
  }
  if (cfg.tls) {
    Object.assign(options, readTlsFiles(cfg.tls, { baseDir: o.baseDir, label: "mqtt.tls", detailed: true }));
    options.rejectUnauthorized = cfg.tls.reject_unauthorized;
  }
  return options;
}

/** The URL of a broker listening on `host` (an IPv6 address in brackets) and `port`. */
export function brokerUrl(host: string, port: number): string {
  return `mqtt://${host.includes(":") ? `[${host}]` : host}:${port}`;
}

export function redactUrl(u: string): string {
  try {
    const url = new URL(u);
    if (url.password) url.password = "redacted";
    return url.toString();
  } catch {
    return u;
  }
}

export function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}
