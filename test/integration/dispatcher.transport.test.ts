/**
 * The dispatcher's transport with real servers: TLS verification (a self-signed receiver is
 * refused until its CA is configured), client certificates, and an HTTP proxy taken from
 * the environment variables the agent passes in.
 */
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer as createHttpServer, type Server } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { type AddressInfo, connect, createServer as createNetServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TLSSocket } from "node:tls";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { configSchema } from "../../src/config/schema.js";
import { Dispatcher } from "../../src/delivery/dispatcher.js";
import { silentLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import { Outbox } from "../../src/store/outbox.js";
import { dispatcherRig, testDestinations, testEvent } from "../support/dispatcher-rig.js";
import { FakeClock } from "../support/fake-clock.js";
import { Receiver } from "../support/receiver.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

const dir = mkdtempSync(join(tmpdir(), "edgehook-tls-"));
const cleanups: (() => Promise<void> | void)[] = [];

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

beforeAll(() => {
  // A throwaway self-signed certificate for 127.0.0.1 (also used as the client certificate).
  execFileSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-keyout",
      join(dir, "key.pem"),
      "-out",
      join(dir, "cert.pem"),
      "-days",
      "1",
      "-subj",
      "/CN=127.0.0.1",
      "-addext",
      "subjectAltName=IP:127.0.0.1",
    ],
    { stdio: "ignore" },
  );
  return () => rmSync(dir, { recursive: true, force: true });
});

async function listen(server: Server): Promise<number> {
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  cleanups.push(
    () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  );
  return (server.address() as AddressInfo).port;
}

async function drainOne(url: string, extra: Record<string, unknown>, env: Record<string, string> = {}) {
  const { clock, outbox, dispatcher, commit } = dispatcherRig({
    destinations: testDestinations({ ops: { url, ...extra } }),
    cleanups,
    prefix: "edgehook-tls-db-",
    options: { env },
  });
  const event = testEvent(clock, { series: "s", type: "test", rule: "r", severity: "info", priority: 0, data: {} });
  const id = event.id;
  await commit([event]);
  dispatcher.start();
  await new Promise((r) => setImmediate(r));
  await dispatcher.whenIdle();
  return { dispatcher, delivery: outbox.show(id)?.deliveries[0] };
}

describe("dispatcher transport", () => {
  it("verifies TLS: a self-signed receiver is unreachable (not failed) until its CA is configured", async () => {
    let got = 0;
    const server = createHttpsServer(
      { key: readFileSync(join(dir, "key.pem")), cert: readFileSync(join(dir, "cert.pem")) },
      (req, res) => {
        req.resume();
        req.on("end", () => {
          got++;
          res.end("ok");
        });
      },
    );
    const port = await listen(server as unknown as Server);
    const url = `https://127.0.0.1:${port}/hooks`;

    const refused = await drainOne(url, {});
    expect(got).toBe(0);
    expect(refused.dispatcher.states().ops?.state).toBe("down");
    expect(refused.dispatcher.states().ops?.detail).toMatch(/TLS|CERT|certificate/i);
    expect(refused.delivery).toMatchObject({ state: "pending", attempts: 0 });

    const trusted = await drainOne(url, { tls: { ca_file: join(dir, "cert.pem") } });
    expect(got).toBe(1);
    expect(trusted.delivery?.state).toBe("delivered");
  });

  it("a TLS receiver that resets during the handshake is unreachable: no attempt spent", async () => {
    // Something listens, but drops every connection on the TLS ClientHello (a broken
    // terminator, a firewall): the request never got to a receiver.
    const server = createNetServer((socket) => socket.once("data", () => socket.resetAndDestroy()));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
    const port = (server.address() as AddressInfo).port;
    const { dispatcher, delivery } = await drainOne(`https://127.0.0.1:${port}/hooks`, { max_attempts: 1 });
    expect(dispatcher.states().ops?.state).toBe("down");
    expect(dispatcher.states().ops?.detail).toMatch(/ECONNRESET|socket/i);
    expect(delivery).toMatchObject({ state: "pending", attempts: 0 });
  });

  it("presents the client certificate from tls.cert_file/key_file", async () => {
    const seen: (string | undefined)[] = [];
    const pem = readFileSync(join(dir, "cert.pem"));
    const server = createHttpsServer(
      { key: readFileSync(join(dir, "key.pem")), cert: pem, ca: pem, requestCert: true, rejectUnauthorized: true },
      (req, res) => {
        seen.push(String((req.socket as TLSSocket).getPeerCertificate().subject?.CN));
        req.resume();
        req.on("end", () => res.end("ok"));
      },
    );
    const port = await listen(server as unknown as Server);
    const { delivery } = await drainOne(`https://127.0.0.1:${port}/hooks`, {
      tls: { ca_file: join(dir, "cert.pem"), cert_file: join(dir, "cert.pem"), key_file: join(dir, "key.pem") },
    });
    expect(delivery?.state).toBe("delivered");
    expect(seen).toEqual(["127.0.0.1"]);
  });

  it("refuses to start on an unreadable ca_file with a clear error", async () => {
    const clock = new FakeClock();
    const cfg = configSchema.parse({
      version: 1,
      agent: { id: "t" },
      destinations: {
        ops: { url: "https://127.0.0.1:1/x", secret: WEBHOOK_SECRET, tls: { ca_file: join(dir, "nope.pem") } },
      },
    });
    const outbox = new Outbox({
      file: join(mkdtempSync(join(dir, "db-")), "outbox.db"),
      limits: cfg.outbox,
      clock,
      logger: silentLogger(),
      metrics: new Metrics(),
    });
    outbox.open();
    cleanups.push(() => outbox.close());
    const d = new Dispatcher({
      outbox,
      destinations: cfg.destinations,
      clock,
      logger: silentLogger(),
      metrics: new Metrics(),
      env: {},
    });
    expect(() => d.start()).toThrow(/tls\.ca_file: cannot read .*nope\.pem/);
  });

  it("goes through HTTP_PROXY when the environment names one", async () => {
    const receiver = new Receiver(WEBHOOK_SECRET);
    await receiver.start();
    cleanups.push(() => receiver.stop());
    const tunnels: string[] = [];
    const proxy = createHttpServer((_req, res) => {
      res.writeHead(405);
      res.end();
    });
    proxy.on("connect", (req, client: Socket, head: Buffer) => {
      tunnels.push(String(req.url));
      const [host, port] = String(req.url).split(":");
      const upstream = connect(Number(port), host, () => {
        client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
        upstream.write(head);
        upstream.pipe(client);
        client.pipe(upstream);
      });
      upstream.on("error", () => client.destroy());
      client.on("error", () => upstream.destroy());
    });
    const proxyPort = await listen(proxy);
    const { delivery } = await drainOne(receiver.url, {}, { HTTP_PROXY: `http://127.0.0.1:${proxyPort}` });
    expect(delivery?.state).toBe("delivered");
    expect(tunnels).toEqual([`127.0.0.1:${receiver.port}`]);
    expect(receiver.accepted[0]?.verified).toBe(true);
  });

  it("a connect that never completes hits connect_timeout and counts as offline", async () => {
    // A listener that never accepts: once its backlog is full the kernel drops further SYNs,
    // so a new connect hangs (Node's net servers always accept, hence python).
    const py = spawn(
      "python3",
      [
        "-c",
        "import socket,sys,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen(0)\nprint(s.getsockname()[1],flush=True)\ntime.sleep(60)",
      ],
      { stdio: ["ignore", "pipe", "ignore"] },
    );
    cleanups.push(() => {
      py.kill("SIGKILL");
    });
    const port = await new Promise<number>((resolve) =>
      py.stdout?.once("data", (d) => resolve(Number(String(d).trim()))),
    );
    const fillers: Socket[] = [];
    for (let i = 0; i < 4; i++) fillers.push(connect(port, "127.0.0.1").on("error", () => undefined));
    cleanups.push(() => {
      for (const f of fillers) f.destroy();
    });
    // The first one completes its handshake (it fills the accept queue); the others' SYNs are
    // sent in the same turn, so by then the listener has no room left.
    await new Promise((r) => fillers[0]?.once("connect", r));
    const t0 = Date.now();
    const { dispatcher, delivery } = await drainOne(`http://127.0.0.1:${port}/hooks`, {
      connect_timeout: "300ms",
      max_attempts: 1,
    });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    expect(dispatcher.states().ops).toMatchObject({ state: "down" });
    expect(dispatcher.states().ops?.detail).toMatch(/connect timeout|ETIMEDOUT/);
    expect(delivery).toMatchObject({ state: "pending", attempts: 0 });
  });
});
