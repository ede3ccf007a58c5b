/**
 * A real HTTP receiver on 127.0.0.1:0 that verifies each webhook with the
 * `standardwebhooks` package (not with edgehook's own code) and records it.
 * `mode` decides the answer: accept, fail with a status, hang, or reset.
 */
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { gunzipSync } from "node:zlib";
import { Webhook } from "standardwebhooks";

export interface Received {
  id: string;
  /** Request target (path and query). */
  path: string;
  timestamp: number;
  headers: IncomingHttpHeaders;
  body: string;
  json: unknown;
  verified: boolean;
  receivedAt: number;
  /** 1 for the first request on its connection, 2 for the next one on the same (kept-alive) connection, ... */
  onConnection: number;
}

export type Answer =
  /** `delayMs` answers later (to let concurrent requests overlap). */
  | { kind: "accept"; status?: number; delayMs?: number }
  /** `body` is the answer's text (default "no"). */
  | { kind: "status"; status: number; headers?: Record<string, string>; body?: string }
  | { kind: "hang" }
  | { kind: "reset" };

export class Receiver {
  readonly received: Received[] = [];
  /** Every request, including rejected ones. */
  requests = 0;
  /** Every request in order of arrival (including hung and reset ones). */
  readonly arrivals: Received[] = [];
  /** Requests whose body arrived and that are not answered yet; and the most at once. */
  open = 0;
  maxOpen = 0;
  answer: (r: Received) => Answer = () => ({ kind: "accept" });
  #server: Server | undefined;
  #port = 0;
  #waiters: { pred: () => boolean; resolve: () => void }[] = [];
  readonly #perSocket = new WeakMap<object, number>();
  readonly #wh: Webhook | undefined;
  readonly #inflate: boolean;

  /** `inflate`: gunzip `content-encoding: gzip` bodies before verifying, as body parsers do. */
  constructor(secret?: string, options: { inflate?: boolean } = {}) {
    this.#wh = secret ? new Webhook(secret) : undefined;
    this.#inflate = options.inflate ?? false;
  }

  get port(): number {
    return this.#port;
  }
  get url(): string {
    return `http://127.0.0.1:${this.#port}/hooks`;
  }

  /** Accepted (2xx-answered) webhooks. */
  get accepted(): Received[] {
    return this.received.filter((r) => (r as Received & { accepted?: boolean }).accepted);
  }

  async start(port = this.#port): Promise<void> {
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        this.requests++;
        let raw = Buffer.concat(chunks);
        if (this.#inflate && req.headers["content-encoding"] === "gzip") {
          try {
            raw = gunzipSync(raw);
          } catch {
            // Left as it came: verification and JSON parsing fail visibly.
          }
        }
        const body = raw.toString("utf8");
        let verified = false;
        if (this.#wh) {
          try {
            this.#wh.verify(body, req.headers as Record<string, string>);
            verified = true;
          } catch {
            verified = false;
          }
        }
        let json: unknown;
        try {
          json = JSON.parse(body);
        } catch {
          json = undefined;
        }
        const onConnection = (this.#perSocket.get(req.socket) ?? 0) + 1;
        this.#perSocket.set(req.socket, onConnection);
        const rec: Received & { accepted?: boolean } = {
          id: String(req.headers["webhook-id"] ?? ""),
          path: req.url ?? "",
          timestamp: Number(req.headers["webhook-timestamp"] ?? 0),
          headers: req.headers,
          body,
          json,
          verified,
          receivedAt: Date.now(),
          onConnection,
        };
        this.arrivals.push(rec);
        this.open++;
        this.maxOpen = Math.max(this.maxOpen, this.open);
        const a = this.answer(rec);
        if (a.kind === "hang") {
          // Never answers; the client must time out.
          req.socket.once("close", () => {
            this.open--;
            this.#check();
          });
          this.#check();
          return;
        }
        const finish = () => {
          this.open--;
          if (a.kind === "reset") {
            req.socket.destroy();
          } else if (a.kind === "status") {
            res.writeHead(a.status, a.headers ?? {});
            res.end(a.body ?? "no");
          } else {
            rec.accepted = true;
            res.writeHead(a.status ?? 200);
            res.end("ok");
          }
          this.received.push(rec);
          this.#check();
        };
        if (a.kind === "accept" && a.delayMs) setTimeout(finish, a.delayMs);
        else finish();
      });
    });
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => resolve());
    });
    this.#port = (server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    const server = this.#server;
    if (!server) return;
    this.#server = undefined;
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  }

  /** Resolves when `pred` holds; rejects after `timeoutMs` with `what` in the message. */
  waitFor(pred: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
    if (pred()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        reject(new Error(`timed out waiting for ${what}; received ${this.received.length}`));
      }, timeoutMs);
      const waiter = {
        pred,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      };
      this.#waiters.push(waiter);
    });
  }

  #check(): void {
    for (const w of [...this.#waiters]) {
      if (w.pred()) {
        this.#waiters = this.#waiters.filter((x) => x !== w);
        w.resolve();
      }
    }
  }
}
