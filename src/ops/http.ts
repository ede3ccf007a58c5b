/**
 * The agent's local HTTP server: GET / (the status page), GET /api/status (its JSON, also
 * read by `edgehook status`), GET /healthz (JSON, 200 or 503) and GET /metrics
 * (Prometheus text). It binds only where the configuration says (default loopback).
 *
 * Access: requests from a loopback address are always answered (a local user can run
 * `edgehook status` anyway). From other hosts, when `http.token` is set, every path needs
 * it (`Authorization: Bearer`, or `?token=` once, which sets a cookie for the page);
 * without a token, the page and /api/status refuse other hosts, while /healthz and
 * /metrics answer them as before (`check` warns).
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { type AddressInfo, isIPv4, isIPv6 } from "node:net";
import { EdgehookError } from "../errors.js";
import { type HealthReport, httpStatusOf } from "./health.js";
import { type Logger, RateLimitedLog } from "./logger.js";
import type { Metrics } from "./metrics.js";
import { renderPage } from "./page.js";
import type { StatusSnapshot } from "./status.js";

export interface HttpServerOptions {
  /** `host:port`: "127.0.0.1:9780", "[::1]:9780", "0.0.0.0:9780"; port 0 picks a free port. */
  listen: string;
  metrics: Metrics;
  health: () => HealthReport;
  /** The status page and /api/status; without it they answer 404. */
  status?: () => Promise<StatusSnapshot>;
  /** http.token: required from non-loopback peers. */
  token?: string | undefined;
  logger: Logger;
}

/** True for 127.0.0.0/8, ::1, localhost and IPv4-mapped loopback. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "").toLowerCase();
  if (h === "localhost" || h === "::1") return true;
  if (h.startsWith("::ffff:")) return isLoopback(h.slice(7));
  return isIPv4(h) && h.startsWith("127.");
}

/** Where a local client reaches a server bound to `listen` (a wildcard means loopback). */
export function localUrl(listen: string): string {
  const { host, port } = parseListen(listen);
  if (host === "0.0.0.0" || host === "") return `http://127.0.0.1:${port}`;
  if (host === "::") return `http://[::1]:${port}`;
  return isIPv6(host) ? `http://[${host}]:${port}` : `http://${host}:${port}`;
}

export interface ListenAddress {
  host: string;
  port: number;
}

/**
 * Parses `http.listen`. A bare port (":9780" or "9780") binds loopback only.
 * Throws EDGEHOOK_CONFIG_INVALID naming the key.
 */
export function parseListen(listen: string): ListenAddress {
  const bad = () =>
    new EdgehookError(
      "EDGEHOOK_CONFIG_INVALID",
      `http.listen: must be host:port like 127.0.0.1:9780 or [::1]:9780 (is '${listen}')`,
    );
  const text = listen.trim();
  let host: string;
  let portText: string;
  const v6 = /^\[([0-9A-Fa-f:.]+)\]:(\d+)$/.exec(text);
  if (v6) {
    host = v6[1]!;
    portText = v6[2]!;
  } else if (/^\d+$/.test(text)) {
    host = "127.0.0.1";
    portText = text;
  } else {
    const colon = text.lastIndexOf(":");
    if (colon < 0) throw bad();
    host = text.slice(0, colon) || "127.0.0.1";
    portText = text.slice(colon + 1);
    // An unbracketed IPv6 address is ambiguous ("::1:9780"): require [::1]:9780.
    if (!/^[A-Za-z0-9.-]+$/.test(host)) throw bad();
  }
  const port = Number(portText);
  if (!/^\d{1,5}$/.test(portText) || port > 65_535) throw bad();
  return { host, port };
}

export class HttpServer {
  readonly #listen: string;
  readonly #metrics: Metrics;
  readonly #health: () => HealthReport;
  readonly #log: Logger;
  readonly #errors = new RateLimitedLog(60_000);
  readonly #status: (() => Promise<StatusSnapshot>) | undefined;
  readonly #tokenHash: Buffer | undefined;
  #server: Server | undefined;

  constructor(options: HttpServerOptions) {
    this.#listen = options.listen;
    this.#metrics = options.metrics;
    this.#health = options.health;
    this.#status = options.status;
    this.#tokenHash = options.token === undefined ? undefined : sha256(options.token);
    this.#log = options.logger;
  }

  async start(): Promise<{ port: number }> {
    if (this.#server) throw new Error("HttpServer already started");
    const { host, port } = parseListen(this.#listen);
    this.#metrics.enableProcessMetrics();
    const server = createServer((req, res) => {
      this.#handle(req, res).catch((err: unknown) => this.#fail(res, err));
    });
    // A scraper that stalls must not hold sockets forever on a small device.
    server.requestTimeout = 10_000;
    server.headersTimeout = 5_000;
    server.keepAliveTimeout = 5_000;
    server.maxConnections = 32;
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) => {
        reject(
          new Error(
            `cannot listen on ${this.#listen} for /healthz and /metrics: ${err.code ?? err.message}` +
              (err.code === "EADDRINUSE" ? " (another process uses the port; change http.listen)" : ""),
            { cause: err },
          ),
        );
      };
      server.once("error", onError);
      server.listen({ host, port }, () => {
        server.off("error", onError);
        resolve();
      });
    });
    server.on("error", (err) => this.#log.error({ err }, "health/metrics server error"));
    this.#server = server;
    const bound = (server.address() as AddressInfo).port;
    this.#log.info(
      { host, port: bound },
      this.#status ? "serving the status page, /healthz and /metrics" : "serving /healthz and /metrics",
    );
    return { port: bound };
  }

  async stop(): Promise<void> {
    const server = this.#server;
    if (!server) return;
    this.#server = undefined;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeAllConnections();
    await closed;
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://local");
    const path = url.pathname;
    const page = this.#status !== undefined && (path === "/" || path === "/api/status");
    if (path !== "/healthz" && path !== "/metrics" && !page) {
      return send(res, 404, "text/plain; charset=utf-8", "not found: try /, /healthz or /metrics\n");
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.setHeader("allow", "GET, HEAD");
      return send(res, 405, "text/plain; charset=utf-8", "method not allowed\n");
    }
    const access = this.#access(req, url);
    if (access === "no-token" && page) {
      return send(
        res,
        403,
        "text/plain; charset=utf-8",
        "the status page is served to other hosts only with http.token_file set\n",
      );
    }
    if (access === "denied") {
      res.setHeader("www-authenticate", 'Bearer realm="edgehook"');
      return send(res, 401, "text/plain; charset=utf-8", "a token is needed: Authorization: Bearer TOKEN or ?token=\n");
    }
    if (path === "/" && url.searchParams.has("token")) {
      // Keep the token out of the address bar, history and screenshots: a cookie carries it.
      res.setHeader(
        "set-cookie",
        `edgehook_token=${encodeURIComponent(url.searchParams.get("token") ?? "")}; HttpOnly; SameSite=Strict; Path=/`,
      );
      res.writeHead(303, { location: "/", "cache-control": "no-store", "content-length": 0 });
      res.end();
      return;
    }
    if (path === "/api/status" && this.#status) {
      const snapshot = await this.#status();
      return send(res, 200, "application/json", `${JSON.stringify(snapshot)}\n`);
    }
    if (path === "/" && this.#status) {
      const snapshot = await this.#status();
      return send(res, 200, "text/html; charset=utf-8", renderPage(snapshot), PAGE_HEADERS);
    }
    if (path === "/healthz") {
      const report = this.#health();
      return send(res, httpStatusOf(report), "application/json", `${JSON.stringify(report)}\n`);
    }
    const text = await this.#metrics.registry.metrics();
    return send(res, 200, this.#metrics.registry.contentType, text);
  }

  #access(req: IncomingMessage, url: URL): Access {
    return accessOf(
      req.socket.remoteAddress ?? "",
      this.#tokenHash,
      bearer(req) ?? url.searchParams.get("token") ?? cookie(req, "edgehook_token"),
    );
  }

  #fail(res: ServerResponse, err: unknown): void {
    const suppressed = this.#errors.shouldLog("handler");
    if (suppressed !== undefined) this.#log.error({ err, suppressed }, "health/metrics request failed");
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const body = { status: "failing", problems: [`health check failed: ${String(err)}`] };
    send(res, 503, "application/json", `${JSON.stringify(body)}\n`);
  }
}

export type Access = "ok" | "no-token" | "denied";

/**
 * Who may read: `ok`; `no-token` (another host, and no http.token is configured);
 * `denied` (a token is configured and the request does not carry it).
 */
export function accessOf(remote: string, tokenHash: Buffer | undefined, given: string | null | undefined): Access {
  if (isLoopback(remote)) return "ok";
  if (tokenHash === undefined) return "no-token";
  if (given === undefined || given === null) return "denied";
  return timingSafeEqual(sha256(given), tokenHash) ? "ok" : "denied";
}

/** The page loads nothing from elsewhere and cannot be framed. */
const PAGE_HEADERS = {
  "content-security-policy":
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
};

export function sha256(text: string): Buffer {
  return createHash("sha256").update(text).digest();
}

function bearer(req: IncomingMessage): string | undefined {
  const h = req.headers.authorization;
  const m = h ? /^Bearer\s+(.+)$/i.exec(h) : null;
  return m?.[1]?.trim();
}

function cookie(req: IncomingMessage, name: string): string | undefined {
  for (const part of (req.headers.cookie ?? "").split(";")) {
    const eq = part.indexOf("=");
    if (eq > 0 && part.slice(0, eq).trim() === name) {
      try {
        return decodeURIComponent(part.slice(eq + 1).trim());
      } catch {
        return undefined;
      }
    }
  }
  return undefined;
}

function send(
  res: ServerResponse,
  status: number,
  contentType: string,
  body: string,
  extra: Record<string, string> = {},
): void {
  res.writeHead(status, {
    "content-type": contentType,
    "content-length": Buffer.byteLength(body),
    "cache-control": "no-store",
    ...extra,
  });
  res.end(res.req.method === "HEAD" ? undefined : body);
}
