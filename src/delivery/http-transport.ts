/**
 * The webhook transport (`http://`, `https://`): one undici Pool per destination (keep-alive,
 * `concurrency` connections) or, when HTTP_PROXY / HTTPS_PROXY are set, an EnvHttpProxyAgent.
 * Requests are built and signed per attempt by request.ts; which stage an error came from
 * is told by connect-errors.ts (undici's connect diagnostics channel). See transport.ts for
 * the contract.
 */
import { createRequire } from "node:module";
import type { EnvHttpProxyAgent, Dispatcher as HttpDispatcher } from "undici";
// The parts of undici that are used, not its index (which loads fetch, WebSocket and the
// rest and keeps them resident): see undici-parts.d.ts. Behind a proxy the whole package is
// loaded after all (httpClient).
import request from "undici/lib/api/api-request.js";
import Pool from "undici/lib/dispatcher/pool.js";
import type { DestinationConfig } from "../config/schema.js";
import { readTlsFiles } from "../config/tls-files.js";
import type { Delivery } from "../store/types.js";
import { failedToConnect, watchConnectErrors } from "./connect-errors.js";
import type { Answer, Outcome } from "./policy.js";
import { RenderError } from "./render.js";
import { buildBatchRequest, buildRequest } from "./request.js";
import type { Attempt, SendOptions, Transport, TransportContext, TransportFactory } from "./transport.js";

/** How much of an answer `edgehook send-test` gets to see. */
const ANSWER_BYTES = 4096;

export const httpTransport: TransportFactory = {
  schemes: ["http:", "https:"],
  connectionKey(c: DestinationConfig): string {
    return JSON.stringify([new URL(c.url).origin, c.tls, c.connect_timeout, c.response_timeout, c.concurrency]);
  },
  create(config: DestinationConfig, context: TransportContext): Transport {
    const client = httpClient(config, context);
    watchConnectErrors();
    return new HttpTransport(client, config);
  },
};

class HttpTransport implements Transport {
  readonly #http: HttpDispatcher;
  readonly #origin: string;
  readonly #timeout: number;
  /** The request target of the last URL seen (nearly always the destination's own). */
  #lastUrl = "";
  #lastTarget = "";

  constructor(http: HttpDispatcher, config: DestinationConfig) {
    this.#http = http;
    this.#origin = new URL(config.url).origin;
    this.#timeout = config.response_timeout;
  }

  prepare(deliveries: readonly Delivery[], config: DestinationConfig, nowSec: number): Attempt {
    const built =
      config.batch !== undefined
        ? buildBatchRequest(deliveries, config, nowSec)
        : buildRequest(only(deliveries), config, nowSec);
    return {
      id: built.id,
      timestamp: nowSec,
      deliveries,
      body: built.body,
      headers: built.headers,
      target: this.#target(built.url),
    };
  }

  /**
   * The path and query to request. A preset may choose another URL (ntfy posts to the server
   * root). The connections belong to the destination's origin, so only the path may differ.
   */
  #target(href: string): string {
    if (href === this.#lastUrl) return this.#lastTarget;
    const url = new URL(href);
    if (url.origin !== this.#origin) {
      throw new RenderError(`rendered URL has origin ${url.origin}, not the destination's ${this.#origin}`);
    }
    this.#lastUrl = href;
    this.#lastTarget = `${url.pathname}${url.search}`;
    return this.#lastTarget;
  }

  send(attempt: Attempt, options: SendOptions): Promise<Outcome> {
    let pending: Promise<HttpDispatcher.ResponseData>;
    try {
      pending = request.call(this.#http, {
        origin: this.#origin,
        path: attempt.target,
        method: "POST",
        headers: attempt.headers,
        body: attempt.body,
        signal: options.signal,
        headersTimeout: this.#timeout,
        bodyTimeout: this.#timeout,
      });
    } catch (error) {
      // undici refused the request synchronously (e.g. an invalid header value).
      return Promise.resolve({ kind: "unsendable", error });
    }
    return pending.then(async (res): Promise<Outcome> => {
      const ra = res.headers["retry-after"];
      const outcome: Outcome = { kind: "response", status: res.statusCode, retryAfter: Array.isArray(ra) ? ra[0] : ra };
      if (options.keepAnswer) {
        outcome.answer = await readAnswer(res);
      } else {
        // Read and discard the answer so the keep-alive connection can be reused.
        await res.body.dump({ limit: 65_536 }).catch(() => undefined);
      }
      return outcome;
    }, failed);
  }

  close(): Promise<void> {
    return this.#http.close().catch(() => undefined);
  }

  destroy(): Promise<void> {
    return this.#http.destroy().catch(() => undefined);
  }
}

/** A request that undici failed: malformed (unsendable), or which stage the network failed at. */
function failed(error: unknown): Outcome {
  // undici's argument validation (e.g. a header value with a newline): nothing was sent
  // and no retry can send it.
  if (isInvalidRequest(error)) return { kind: "unsendable", error };
  return { kind: "error", error, stage: failedToConnect(error) ? "connect" : "request" };
}

function isInvalidRequest(err: unknown): boolean {
  return typeof err === "object" && err !== null && "code" in err && err.code === "UND_ERR_INVALID_ARG";
}

async function readAnswer(res: HttpDispatcher.ResponseData): Promise<Answer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const chunk of res.body) {
    const b = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk);
    if (n < ANSWER_BYTES) chunks.push(b);
    n += b.length;
  }
  return { headers: res.headers, body: Buffer.concat(chunks).subarray(0, ANSWER_BYTES) };
}

function only(deliveries: readonly Delivery[]): Delivery {
  const [first] = deliveries;
  if (first === undefined || deliveries.length !== 1) {
    throw new RenderError(`one delivery per request without batching (got ${deliveries.length})`);
  }
  return first;
}

/** The HTTP client of one destination. Reads the TLS files now (start or reload). */
function httpClient(config: DestinationConfig, context: TransportContext): HttpDispatcher {
  const tls = {
    ...readTlsFiles(config.tls, { baseDir: context.baseDir, label: "destination tls" }),
    // Certificate verification stays on unless the config explicitly turns it off.
    rejectUnauthorized: config.tls?.reject_unauthorized ?? true,
  };
  const common = {
    connections: config.concurrency,
    headersTimeout: config.response_timeout,
    bodyTimeout: config.response_timeout,
    // undici 7 never follows redirects unless the redirect interceptor is composed in,
    // which we do not do: maxRedirections is effectively 0 (a 3xx is a failure, see policy.ts).
  };
  const env = context.env;
  const httpProxy = env.http_proxy ?? env.HTTP_PROXY;
  const httpsProxy = env.https_proxy ?? env.HTTPS_PROXY;
  if (httpProxy || httpsProxy) {
    const opts: EnvHttpProxyAgent.Options = {
      ...common,
      connect: { timeout: config.connect_timeout, ...tls },
      requestTls: { ...tls, timeout: config.connect_timeout },
    };
    if (httpProxy) opts.httpProxy = httpProxy;
    if (httpsProxy) opts.httpsProxy = httpsProxy;
    const noProxy = env.no_proxy ?? env.NO_PROXY;
    if (noProxy !== undefined) opts.noProxy = noProxy;
    // ProxyAgent tunnels with dispatcher.connect(), which only undici's index adds to
    // Dispatcher.prototype: only here, and only once, is the whole package loaded.
    const undici: typeof import("undici") = createRequire(import.meta.url)("undici");
    return new undici.EnvHttpProxyAgent(opts);
  }
  return new Pool(new URL(config.url).origin, {
    ...common,
    connect: { timeout: config.connect_timeout, ...tls },
  });
}
