/**
 * The real agent process (`node bin/edgehook.js run`) talking to a real sd_notify socket,
 * as systemd would see it: READY=1 once it serves, watchdog pings, RELOADING=1/READY=1
 * around SIGHUP, STOPPING=1 before it exits, and no READY=1 for a broken configuration.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { HealthReport } from "../../src/ops/health.js";
import { AgentProcess, tempDir, writeConfig } from "../support/agent-process.js";
import { Mosquitto } from "../support/mosquitto.js";
import { NotifySocket } from "../support/notify-socket.js";
import { freePort } from "../support/ports.js";

const config = (brokerUrl: string, httpPort: number) => `version: 1
agent: { id: notify-pi, data_dir: ./data, shutdown_timeout: 2s, require_clock_sync: never }
mqtt:
  url: ${brokerUrl}
  subscriptions:
    - { topic: "t/+", sensor: "{1}", metric: temperature, format: number }
destinations:
  ops: { url: "http://127.0.0.1:9/hook", signature: none }
rules:
  - { name: hot, match: { metric: temperature }, above: 30, notify: [ops] }
http: { listen: "127.0.0.1:${httpPort}" }
`;

describe("the agent under a notify socket", () => {
  const broker = new Mosquitto();
  const sock = new NotifySocket();
  beforeAll(async () => {
    await Promise.all([broker.start(), sock.start()]);
  });
  afterAll(async () => {
    await Promise.all([broker.stop(), sock.stop()]);
  });

  it("sends READY=1 when it serves, pings the watchdog, brackets a reload, and sends STOPPING=1 first", async () => {
    const dir = tempDir();
    const httpPort = await freePort();
    const agent = new AgentProcess(writeConfig(dir, config(broker.url, httpPort)), {
      NOTIFY_SOCKET: sock.path,
      WATCHDOG_USEC: "400000",
    });
    try {
      await agent.start();
      const [ready] = await sock.waitFor("READY");
      expect(ready!.fields.MAINPID).toBe(String(agent.pid));
      // Ready means ready: the health endpoint answers and the database is open.
      const res = await fetch(`http://127.0.0.1:${httpPort}/healthz`);
      const health = (await res.json()) as HealthReport;
      expect(res.status).toBe(200);
      expect(health.database).toBe("open");
      expect(health.agent).toBe("notify-pi");

      // WATCHDOG_USEC=400 ms: a ping every 200 ms.
      const pings = await sock.waitFor("WATCHDOG", 3, 2_000);
      expect(pings[2]!.at - pings[0]!.at).toBeLessThan(1_000);
      expect(pings.every((p) => p.fields.MAINPID === String(agent.pid))).toBe(true);

      agent.kill("SIGHUP");
      const [reloading] = await sock.waitFor("RELOADING");
      const readies = await sock.waitFor("READY", 2);
      expect(sock.messages.indexOf(reloading!)).toBeLessThan(sock.messages.indexOf(readies[1]!));

      agent.kill("SIGTERM");
      const [stopping] = await sock.waitFor("STOPPING");
      const exit = await agent.exited();
      expect(exit.code).toBe(0);
      expect(sock.messages.indexOf(stopping!)).toBeGreaterThan(sock.messages.indexOf(readies[1]!));
    } finally {
      await agent.stop();
    }
  });

  it("exits 78 on a broken configuration without ever sending READY=1", async () => {
    const dir = tempDir();
    const before = sock.with("READY").length;
    const agent = new AgentProcess(
      writeConfig(dir, config(broker.url, await freePort()).replace("above: 30", "above: warm")),
      { NOTIFY_SOCKET: sock.path, WATCHDOG_USEC: "400000" },
    );
    await expect(agent.start()).rejects.toThrow(/agent exited during start \(78\)/);
    expect((await agent.exited()).code).toBe(78);
    expect(sock.with("READY").length).toBe(before);
  });
});
