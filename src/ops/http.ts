/**
 * The health and metrics HTTP server: GET /healthz (JSON, 200 or 503) and GET /metrics
 * (Prometheus text). It binds only where the configuration says (default loopback):
 * neither endpoint is authenticated, so exposing them is an explicit choice.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { EdgehookError } from "../errors.js";
import { type HealthReport, httpStatusOf } from "./health.js";
import { type Logger, RateLimitedLog } from "./logger.js";
import type { Metrics } from "./metrics.js";

export interface HttpServerOptions {
  /** `host:port`: "127.0.0.1:9780", "[::1]:9780", "0.0.0.0:9780"; port 0 picks a free port. */
  listen: string;
  metrics: Metrics;
  health: () => HealthReport;
  logger: Logger;
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
  #server: Server | undefined;

  constructor(options: HttpServerOptions) {
    this.#listen = options.listen;
    this.#metrics = options.metrics;
    this.#health = options.health;
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
    this.#log.info({ host, port: bound }, "serving /healthz and /metrics");
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
    const path = (req.url ?? "/").split("?", 1)[0];
    if (path !== "/healthz" && path !== "/metrics") {
      return send(res, 404, "text/plain; charset=utf-8", "not found: try /healthz or /metrics\n");
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.setHeader("allow", "GET, HEAD");
      return send(res, 405, "text/plain; charset=utf-8", "method not allowed\n");
    }
    if (path === "/healthz") {
      const report = this.#health();
      return send(res, httpStatusOf(report), "application/json", `${JSON.stringify(report)}\n`);
    }
    const text = await this.#metrics.registry.metrics();
    return send(res, 200, this.#metrics.registry.contentType, text);
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

function send(res: ServerResponse, status: number, contentType: string, body: string): void {
  res.writeHead(status, {
    "content-type": contentType,
    "content-length": Buffer.byteLength(body),
    "cache-control": "no-store",
  });
  res.end(res.req.method === "HEAD" ? undefined : body);
}
