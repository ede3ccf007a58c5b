/**
 * `edgehook receive`: a small local webhook receiver for setting up and debugging
 * destinations. It verifies each request's Standard Webhooks signature (v1 with
 * `--secret`, v1a with `--public-key`) and prints one line per webhook:
 *
 *   2026-01-01T12:00:05Z msg_01J… alert.firing boiler/temp=81.5 (threshold 80, critical) verified v1
 *
 * `--verbose` adds the body. Listens on 127.0.0.1 unless `--host` says otherwise.
 * A request whose signature fails is answered 401, the way a real receiver would,
 * so the agent's handling of a rejected delivery can be watched too.
 *
 * `edgehook keygen` prints fresh keys: a `whsec_` secret for v1, and an Ed25519
 * `whsk_`/`whpk_` pair for v1a.
 */
import { randomBytes } from "node:crypto";
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { parseArgs } from "node:util";
import { gunzipSync } from "node:zlib";
import { parseDuration } from "../config/units.js";
import { generateSigningKey, parsePublicKey } from "../delivery/sign-v1a.js";
import { type VerifyResult, verifyWebhook } from "../delivery/verify.js";
import { ExitCode } from "../errors.js";
import { safe, safeLines } from "./safe-text.js";

export interface ReceivedWebhook {
  /** Epoch ms when it arrived. */
  at: number;
  id: string;
  type: string;
  summary: string;
  /** The verdict; `{ ok: false, reason: "no key given" }` when the receiver has none. */
  verification: VerifyResult;
  status: number;
  headers: IncomingHttpHeaders;
  /** The body after removing content-encoding (what was signed). */
  body: Buffer;
  json: unknown;
  /** When this webhook-id was first seen, if it is a repeat. */
  repeatOf?: number;
}

export interface ReceiverOptions {
  port?: number;
  host?: string;
  /** `whsec_...` secret(s) for v1. */
  secret?: string | readonly string[];
  /** `whpk_...` public key(s) for v1a. */
  publicKey?: string | readonly string[];
  /** Status for verified (or, with no keys, every) webhook. Default 200. */
  status?: number;
  verbose?: boolean;
  /** Accepted distance of webhook-timestamp from now, either side (default 300 s). */
  toleranceSec?: number;
  /**
   * How many recent webhooks `received` keeps, bodies included (default 0: none; a
   * receiver left running holds nothing after printing).
   */
  keep?: number;
  out: (line: string) => void;
  /** Called after each webhook is answered. */
  onWebhook?: (w: ReceivedWebhook) => void;
  /** Wall clock in ms (tests). */
  now?: () => number;
}

export interface RunningReceiver {
  port: number;
  url: string;
  /** The last `keep` webhooks (see ReceiverOptions.keep). */
  received: ReceivedWebhook[];
  stop(): Promise<void>;
}

const MAX_BODY = 10 * 1024 * 1024;
/** webhook-ids remembered to mark repeats (a redelivery, a replay). */
const REPLAY_CACHE = 10_000;

const list = (v: string | readonly string[] | undefined): string[] =>
  v === undefined ? [] : typeof v === "string" ? [v] : [...v];

function fmtNumber(v: unknown): string {
  if (typeof v === "number" && Number.isFinite(v) && !Number.isInteger(v)) {
    return String(Number(`${Math.round(Number(`${v}e3`))}e-3`));
  }
  return typeof v === "string" ? v : JSON.stringify(v);
}

/** A short description of a body: the measurement of an envelope, the size of a batch, a preset's text. */
export function summarize(json: unknown, body: Buffer): { type: string; summary: string } {
  if (!json || typeof json !== "object" || Array.isArray(json)) {
    return { type: "-", summary: `${body.length} bytes` };
  }
  const o = json as Record<string, unknown>;
  const type = typeof o.type === "string" ? o.type : "-";
  const data = o.data && typeof o.data === "object" ? (o.data as Record<string, unknown>) : undefined;
  if (type === "batch" && Array.isArray(data?.events)) return { type, summary: `${data.events.length} events` };
  if (Array.isArray(data?.readings)) return { type, summary: `${data.readings.length} readings` };
  if (data) {
    const what = [data.sensor, data.metric].filter((x) => typeof x === "string" && x).join("/");
    const value = data.value === undefined ? "" : `=${fmtNumber(data.value)}`;
    const extras = [
      data.threshold !== undefined && data.threshold !== null ? `threshold ${fmtNumber(data.threshold)}` : "",
      typeof data.severity === "string" ? data.severity : "",
    ].filter(Boolean);
    const summary = `${what}${value}${extras.length ? ` (${extras.join(", ")})` : ""}`;
    return { type, summary: summary || `${body.length} bytes` };
  }
  // Preset bodies, handy when previewing them against this receiver.
  for (const k of ["text", "content", "message"]) {
    if (typeof o[k] === "string") return { type, summary: JSON.stringify((o[k] as string).slice(0, 160)) };
  }
  return { type, summary: `${body.length} bytes` };
}

function readBody(req: IncomingMessage): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        resolve(undefined);
        req.resume();
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => resolve(size > MAX_BODY ? undefined : Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

function isoSeconds(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** Why a present webhook-timestamp is refused, or undefined when it is absent or within tolerance. */
function staleTimestamp(headers: IncomingHttpHeaders, at: number, toleranceSec: number): string | undefined {
  const raw = headers["webhook-timestamp"];
  if (raw === undefined) return undefined;
  const ts = String(raw);
  if (!/^\d+$/.test(ts)) return "webhook-timestamp is not epoch seconds";
  const delta = Number(ts) - Math.floor(at / 1000);
  if (delta < -toleranceSec) return `timestamp too old (${-delta}s, tolerance ${toleranceSec}s)`;
  if (delta > toleranceSec) return `timestamp in the future (${delta}s, tolerance ${toleranceSec}s)`;
  return undefined;
}

export async function startReceiver(options: ReceiverOptions): Promise<RunningReceiver> {
  const secrets = list(options.secret);
  const publicKeys = list(options.publicKey).map((k) => parsePublicKey(k));
  const hasKeys = secrets.length > 0 || publicKeys.length > 0;
  const okStatus = options.status ?? 200;
  const now = options.now ?? (() => Date.now());
  const out = options.out;
  const received: ReceivedWebhook[] = [];
  const keep = options.keep ?? 0;
  const toleranceSec = options.toleranceSec ?? 300;
  /** webhook-id → when first seen; insertion order is age order. */
  const seen = new Map<string, number>();

  const server: Server = createServer((req, res) => {
    void (async () => {
      let raw: Buffer | undefined;
      try {
        raw = await readBody(req);
      } catch {
        return; // the client went away; nothing to answer
      }
      if (raw === undefined) {
        res.writeHead(413).end("body too large\n");
        out(`${new Date(now()).toISOString()} request over ${MAX_BODY} bytes refused (413)`);
        return;
      }
      let body = raw;
      if (String(req.headers["content-encoding"] ?? "").toLowerCase() === "gzip") {
        try {
          body = gunzipSync(raw, { maxOutputLength: MAX_BODY });
        } catch {
          res.writeHead(400).end("bad gzip body\n");
          out(`${new Date(now()).toISOString()} request with a bad gzip body refused (400)`);
          return;
        }
      }
      let json: unknown;
      try {
        json = JSON.parse(body.toString("utf8"));
      } catch {
        json = undefined;
      }
      const at = now();
      const verification: VerifyResult = hasKeys
        ? verifyWebhook({ secrets, publicKeys }, req.headers, body, { toleranceSec, nowSec: Math.floor(at / 1000) })
        : { ok: false, reason: "no key given" };
      // Without keys the timestamp is still checked when there is one (a replayed old request).
      const stale = hasKeys ? undefined : staleTimestamp(req.headers, at, toleranceSec);
      const status = stale ? 400 : verification.ok || !hasKeys ? okStatus : 401;
      const { type, summary } = summarize(json, body);
      const id = String(req.headers["webhook-id"] ?? "-");
      const first = id === "-" ? undefined : seen.get(id);
      if (id !== "-" && first === undefined) {
        seen.set(id, at);
        if (seen.size > REPLAY_CACHE) seen.delete(seen.keys().next().value as string);
      }
      const webhook: ReceivedWebhook = {
        at,
        id,
        type,
        summary,
        verification,
        status,
        headers: req.headers,
        body,
        json,
      };
      if (first !== undefined) webhook.repeatOf = first;
      if (keep > 0) {
        received.push(webhook);
        if (received.length > keep) received.shift();
      }
      const verdict = stale
        ? `REJECTED: ${stale}`
        : verification.ok
          ? `verified ${verification.scheme}`
          : hasKeys
            ? `INVALID signature: ${verification.reason}`
            : "not verified (no --secret or --public-key)";
      const repeat = first === undefined ? "" : ` REPEAT (webhook-id first seen ${isoSeconds(first)})`;
      out(`${isoSeconds(at)} ${safe(id)} ${safe(type)} ${safe(summary)} ${verdict}${repeat} → ${status}`);
      if (options.verbose) {
        const text = json === undefined ? body.toString("utf8") : JSON.stringify(json, null, 2);
        for (const line of safeLines(text)) out(`  ${line}`);
      }
      res
        .writeHead(status, { "content-type": "text/plain" })
        .end(stale ? `${stale}\n` : verification.ok || !hasKeys ? "ok\n" : "invalid signature\n");
      options.onWebhook?.(webhook);
    })();
  });

  const host = options.host ?? "127.0.0.1";
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const shownHost = host.includes(":") ? `[${host}]` : host;
  return {
    port,
    url: `http://${shownHost}:${port}/`,
    received,
    stop: () =>
      new Promise<void>((resolve) => {
        // Let answers already written reach their clients; cut whatever is still open after a second.
        const force = setTimeout(() => server.closeAllConnections(), 1000);
        force.unref();
        server.close(() => {
          clearTimeout(force);
          resolve();
        });
        server.closeIdleConnections();
      }),
  };
}

const RECEIVE_USAGE = `usage: edgehook receive [--port 9781] [--host 127.0.0.1] [--secret whsec_...]... [--public-key whpk_...]...
                       [--status 200] [--count N] [--tolerance 5m] [--verbose]`;

/**
 * Runs the receiver until `signal` aborts (main.ts wires SIGINT/SIGTERM) or `--count`
 * webhooks have arrived. Returns the exit code.
 */
export async function receiveCommand(
  args: string[],
  out: (line: string) => void,
  signal?: AbortSignal,
): Promise<number> {
  let values: Record<string, string | boolean | string[] | undefined>;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        port: { type: "string", default: "9781" },
        host: { type: "string", default: "127.0.0.1" },
        secret: { type: "string", multiple: true },
        "public-key": { type: "string", multiple: true },
        status: { type: "string", default: "200" },
        count: { type: "string" },
        tolerance: { type: "string", default: "5m" },
        verbose: { type: "boolean", short: "v", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    out(`edgehook receive: ${(err as Error).message}`);
    out(RECEIVE_USAGE);
    return ExitCode.USAGE;
  }
  if (values.help) {
    out(RECEIVE_USAGE);
    return ExitCode.OK;
  }
  const usage = (message: string) => {
    out(`edgehook receive: ${message}`);
    out(RECEIVE_USAGE);
    return ExitCode.USAGE;
  };
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535)
    return usage(`--port must be 0..65535 (is '${values.port}')`);
  const status = Number(values.status);
  if (!Number.isInteger(status) || status < 100 || status > 599) {
    return usage(`--status must be an HTTP status (is '${values.status}')`);
  }
  const count = values.count === undefined ? undefined : Number(values.count);
  if (count !== undefined && (!Number.isInteger(count) || count < 1)) {
    return usage(`--count must be a positive whole number (is '${values.count}')`);
  }
  const toleranceMs = parseDuration(values.tolerance as string);
  if (toleranceMs === undefined || toleranceMs < 1000) {
    return usage(`--tolerance must be a duration of at least 1s, like 5m (is '${values.tolerance}')`);
  }
  const secrets = (values.secret as string[] | undefined) ?? [];
  for (const s of secrets) {
    if (!/^whsec_[A-Za-z0-9+/=]+$/.test(s)) return usage("--secret must be whsec_ followed by base64");
  }
  const publicKeys = (values["public-key"] as string[] | undefined) ?? [];
  for (const k of publicKeys) {
    try {
      parsePublicKey(k);
    } catch (err) {
      return usage(`--public-key: ${(err as Error).message}`);
    }
  }
  if (signal?.aborted) return ExitCode.OK;

  let done: () => void = () => {};
  const finished = new Promise<void>((resolve) => {
    done = resolve;
  });
  let seen = 0;
  let receiver: RunningReceiver;
  try {
    receiver = await startReceiver({
      port,
      host: values.host as string,
      secret: secrets,
      publicKey: publicKeys,
      status,
      verbose: values.verbose as boolean,
      toleranceSec: Math.floor(toleranceMs / 1000),
      out,
      onWebhook: () => {
        if (count !== undefined && ++seen >= count) done();
      },
    });
  } catch (err) {
    out(`edgehook receive: cannot listen on ${values.host}:${port} (${(err as NodeJS.ErrnoException).code ?? err})`);
    return ExitCode.FAILURE;
  }
  const keys = [
    secrets.length && `${secrets.length} v1 secret(s)`,
    publicKeys.length && `${publicKeys.length} v1a key(s)`,
  ]
    .filter(Boolean)
    .join(", ");
  out(`listening on ${receiver.url} (${keys || "no keys: signatures are not checked"}); Ctrl-C stops`);
  signal?.addEventListener("abort", () => done(), { once: true });
  await finished;
  await receiver.stop();
  return ExitCode.OK;
}

/** `edgehook keygen`: a v1 secret and a v1a key pair, ready to paste. */
export function keygenCommand(out: (line: string) => void): number {
  const pair = generateSigningKey();
  out(`# v1 (HMAC): the same secret on both sides`);
  out(`secret: whsec_${randomBytes(32).toString("base64")}`);
  out(`# v1a (Ed25519): the agent keeps the secret key (ed25519.secret_file), the receiver gets the public key`);
  out(`ed25519 secret key: ${pair.secret}`);
  out(`ed25519 public key: ${pair.publicKey}`);
  return ExitCode.OK;
}
