/**
 * A TCP relay on loopback between a client and a server (e.g. the agent and mosquitto),
 * which a test can make hold back the bytes of one direction and then cut: the network
 * faults that leave MQTT messages in flight (sent by the broker, never read by the
 * client; or acknowledged by the client, never seen by the broker).
 */
import { connect, createServer, type Server, type Socket } from "node:net";

/** `down`: server → client (e.g. PUBLISH from the broker); `up`: client → server (e.g. PUBACK). */
export type Direction = "down" | "up";

interface Pair {
  client: Socket;
  server: Socket;
  held: Record<Direction, Buffer[]>;
}

export class TcpProxy {
  port = 0;
  #server: Server | undefined;
  readonly #pairs = new Set<Pair>();
  readonly #holding: Record<Direction, boolean> = { down: false, up: false };
  /** Connections accepted so far. */
  connections = 0;

  constructor(readonly targetPort: number) {}

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    const server = createServer((client) => this.#accept(client));
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.port, "127.0.0.1", () => resolve());
    });
    this.port = (server.address() as { port: number }).port;
  }

  /** From now on, bytes in this direction are kept in the proxy instead of forwarded. */
  hold(direction: Direction): void {
    this.#holding[direction] = true;
  }

  /** Forwards what was held in this direction and stops holding. */
  release(direction: Direction): void {
    this.#holding[direction] = false;
    for (const p of this.#pairs) {
      const to = direction === "down" ? p.client : p.server;
      for (const chunk of p.held[direction].splice(0)) to.write(chunk);
    }
  }

  /** Bytes held in this direction, over all connections. */
  heldBytes(direction: Direction): number {
    let n = 0;
    for (const p of this.#pairs) for (const c of p.held[direction]) n += c.length;
    return n;
  }

  /** Drops every connection (and what was held); new connections are accepted and forwarded. */
  cut(): void {
    for (const p of this.#pairs) {
      p.client.destroy();
      p.server.destroy();
    }
    this.#pairs.clear();
    this.#holding.down = false;
    this.#holding.up = false;
  }

  async stop(): Promise<void> {
    this.cut();
    const server = this.#server;
    this.#server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  #accept(client: Socket): void {
    this.connections++;
    const server = connect(this.targetPort, "127.0.0.1");
    const pair: Pair = { client, server, held: { down: [], up: [] } };
    this.#pairs.add(pair);
    const relay = (from: Socket, to: Socket, direction: Direction) => {
      from.on("data", (chunk: Buffer) => {
        if (this.#holding[direction]) pair.held[direction].push(chunk);
        else to.write(chunk);
      });
    };
    relay(client, server, "up");
    relay(server, client, "down");
    const close = () => {
      client.destroy();
      server.destroy();
      this.#pairs.delete(pair);
    };
    client.on("close", close);
    server.on("close", close);
    client.on("error", close);
    server.on("error", close);
  }
}
