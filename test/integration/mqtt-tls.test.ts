/**
 * MqttSource over mqtts:// against a real mosquitto with a throwaway CA: server
 * verification with ca_file, client certificates (cert_file/key_file), and
 * reject_unauthorized: an untrusted broker is a "down" state, not a crash.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import mqtt from "mqtt";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { systemClock } from "../../src/clock.js";
import { configSchema } from "../../src/config/schema.js";
import { createLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import { MqttSource } from "../../src/sources/mqtt.js";
import type { Reading } from "../../src/sources/reading.js";
import { makeCerts } from "../support/certs.js";
import { waitForPort } from "../support/mosquitto.js";
import { freePort } from "../support/ports.js";
import { waitUntil } from "../support/wait.js";

let dir = "";
const f = (n: string) => join(dir, n);
let proc: ChildProcess | undefined;
let port = 0;
const sources: MqttSource[] = [];

beforeAll(async () => {
  // A throwaway CA with server and client certificates (test/support/certs.ts).
  dir = makeCerts().dir;
  port = await freePort();
  writeFileSync(
    f("mosquitto.conf"),
    [
      `listener ${port} 127.0.0.1`,
      "allow_anonymous true",
      `cafile ${f("ca.crt")}`,
      `certfile ${f("server.crt")}`,
      `keyfile ${f("server.key")}`,
      "require_certificate true",
      "",
    ].join("\n"),
  );
  let stderr = "";
  const p = spawn("mosquitto", ["-c", f("mosquitto.conf")], { stdio: ["ignore", "ignore", "pipe"] });
  p.stderr?.on("data", (d) => {
    stderr += String(d);
  });
  proc = p;
  await waitForPort(port, () => (p.exitCode !== null ? `mosquitto exited: ${stderr}` : undefined));
});

afterEach(async () => {
  for (const s of sources.splice(0)) await s.stop();
});

afterAll(async () => {
  const p = proc;
  if (p && p.exitCode === null) {
    const exited = new Promise((r) => p.once("exit", r));
    p.kill("SIGTERM");
    await exited;
  }
});

function start(tls: Record<string, unknown>, baseDir?: string) {
  const config = configSchema.parse({
    version: 1,
    agent: { id: "tls" },
    mqtt: {
      url: `mqtts://127.0.0.1:${port}`,
      tls,
      reconnect_period: "100ms",
      subscriptions: [{ topic: "tls/+", metric: "v", format: "number" }],
    },
  }).mqtt!;
  const readings: Reading[] = [];
  const logs: Record<string, unknown>[] = [];
  const src = new MqttSource({
    config,
    agentId: "tls",
    sink: async (r) => {
      readings.push(...r);
    },
    logger: createLogger("info", { write: (s: string) => logs.push(JSON.parse(s)) }),
    metrics: new Metrics(),
    clock: systemClock,
    baseDir,
  });
  sources.push(src);
  return { src, readings, logs };
}

describe("MqttSource over TLS", () => {
  it("verifies the broker with ca_file and authenticates with a client certificate", async () => {
    const { src, readings } = start({ ca_file: f("ca.crt"), cert_file: f("client.crt"), key_file: f("client.key") });
    await src.start();
    await waitUntil(() => src.state().status === "up", "TLS connection", 8_000);
    const pub = await mqtt.connectAsync(`mqtts://127.0.0.1:${port}`, {
      ca: readFileSync(f("ca.crt")),
      cert: readFileSync(f("client.crt")),
      key: readFileSync(f("client.key")),
    });
    try {
      const deadline = Date.now() + 5_000;
      while (readings.length === 0 && Date.now() < deadline) {
        await pub.publishAsync("tls/a", "12", { qos: 1 });
        await new Promise((r) => setTimeout(r, 50));
      }
    } finally {
      await pub.endAsync(true);
    }
    expect(readings[0]).toMatchObject({ sensor: "a", metric: "v", value: 12 });
  });

  it("reads relative certificate paths from baseDir and names an unreadable one", async () => {
    const ok = start({ ca_file: "ca.crt", cert_file: "client.crt", key_file: "client.key" }, dir);
    await ok.src.start();
    await waitUntil(() => ok.src.state().status === "up", "TLS connection with relative paths", 8_000);
    const bad = start({ ca_file: "missing-ca.crt" }, dir);
    await expect(bad.src.start()).rejects.toMatchObject({
      code: "EDGEHOOK_CONFIG_UNREADABLE",
      message: `mqtt.tls.ca_file: cannot read ${f("missing-ca.crt")} (ENOENT)`,
    });
  });

  it("stays down and says why when the broker's certificate is not trusted", async () => {
    const { src, logs } = start({ cert_file: f("client.crt"), key_file: f("client.key") });
    await src.start();
    await waitUntil(() => logs.some((l) => l.msg === "MQTT error"), "the TLS error logged", 8_000);
    expect(src.state().status).not.toBe("up");
    expect(JSON.stringify(logs)).toMatch(/self[- ]signed|unable to verify|certificate/i);
  });

  it("connects to an untrusted broker when reject_unauthorized is false", async () => {
    const { src } = start({ reject_unauthorized: false, cert_file: f("client.crt"), key_file: f("client.key") });
    await src.start();
    await waitUntil(() => src.state().status === "up", "connection without verification", 8_000);
  });
});
