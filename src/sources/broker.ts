/**
 * An MQTT broker inside edgehook (`mqtt.url: embedded`) for small setups where the
 * sensors publish straight to the device and nothing else runs a broker. Aedes v1
 * with its in-memory persistence: sessions do not survive an edgehook restart, so a
 * separate mosquitto is the better choice when readings must survive one.
 */
import { timingSafeEqual } from "node:crypto";
import { createServer, type Server, type Socket } from "node:net";
import { Aedes, type AuthenticateError } from "aedes";
import type { Logger } from "../ops/logger.js";
import { brokerUrl } from "./mqtt-options.js";

export interface EmbeddedBrokerOptions {
  host: string;
  /** 0 picks a free port; start() returns the actual one. */
  port: number;
  username?: string | undefined;
  password?: string | undefined;
  logger: Logger;
}

export class EmbeddedBroker {
  readonly #opts: EmbeddedBrokerOptions;
  #aedes: Aedes | undefined;
  #server: Server | undefined;
  #sockets = new Set<Socket>();

  constructor(opts: EmbeddedBrokerOptions) {
    this.#opts = opts;
  }

  async start(): Promise<{ url: string }> {
    const { host, port, username, password, logger } = this.#opts;
    const aedes = await Aedes.createBroker();
    if (username !== undefined || password !== undefined) {
      aedes.authenticate = (_client, user, pass, done) => {
        const ok = equal(user ?? "", username ?? "") && equal(pass?.toString("utf8") ?? "", password ?? "");
        if (ok) return done(null, true);
        const err = new Error("bad username or password") as AuthenticateError;
        // 4 = CONNACK "bad user name or password" (MQTT 3.1.1 §3.2.2.3).
        (err as { returnCode: number }).returnCode = 4;
        done(err, false);
      };
    }
    aedes.on("clientError", (client, err) => logger.debug({ client: client.id, err }, "embedded broker client error"));
    const server = createServer((socket) => {
      this.#sockets.add(socket);
      socket.once("close", () => this.#sockets.delete(socket));
      aedes.handle(socket);
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    server.on("error", (err) => logger.error({ err }, "embedded broker server error"));
    this.#aedes = aedes;
    this.#server = server;
    const addr = server.address();
    const actual = typeof addr === "object" && addr ? addr.port : port;
    const url = brokerUrl(host, actual);
    logger.info({ url }, "embedded MQTT broker listening");
    return { url };
  }

  async stop(): Promise<void> {
    const server = this.#server;
    const aedes = this.#aedes;
    this.#server = undefined;
    this.#aedes = undefined;
    if (server) {
      const closed = new Promise<void>((r) => server.close(() => r()));
      for (const s of this.#sockets) s.destroy();
      await closed;
    }
    if (aedes) await new Promise<void>((r) => aedes.close(() => r()));
  }
}

function equal(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
