/**
 * Heartbeats (a dead man's switch) from a real agent process to a real HTTP receiver:
 * they arrive at the `every` interval, carry health, outbox depth, oldest pending age,
 * sources and version, are signed like any webhook, and during a receiver outage only one
 * waits in the outbox; it is delivered once the receiver is back.
 */
import { afterEach, describe, expect, it } from "vitest";
import type { HeartbeatData } from "../../src/event-data.js";
import { version } from "../../src/version.js";
import { AgentProcess, edgehookAsync, tempDir, writeConfig } from "../support/agent-process.js";
import { freePort } from "../support/ports.js";
import { Receiver } from "../support/receiver.js";

const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

const config = (url: string, httpPort: number) => `version: 1
agent: { id: hb-pi, data_dir: ./data, shutdown_timeout: 2s, require_clock_sync: never, log_level: debug }
destinations:
  monitor: { url: "${url}", secret: ${SECRET} }
heartbeat: { every: 1s, notify: [monitor] }
http: { listen: "127.0.0.1:${httpPort}" }
`;

interface Beat {
  type: string;
  timestamp: string;
  data: HeartbeatData;
}

describe("heartbeats", () => {
  let agent: AgentProcess | undefined;
  const receiver = new Receiver(SECRET);
  afterEach(async () => {
    await agent?.stop();
    agent = undefined;
    await receiver.stop();
  });

  it("arrive every interval, signed, and an outage leaves one waiting that is delivered after", async () => {
    await receiver.start();
    const dir = tempDir();
    const file = writeConfig(dir, config(receiver.url, await freePort()));
    agent = new AgentProcess(file);
    await agent.start();
    const a = agent;

    await receiver.waitFor(() => receiver.accepted.length >= 3, "three heartbeats");
    const first = receiver.accepted.slice(0, 3);
    expect(first.every((r) => r.verified)).toBe(true);
    const beat = first[0]?.json as Beat;
    expect(beat.type).toBe("agent.heartbeat");
    expect(beat.data).toMatchObject({
      agent: "hb-pi",
      rule: "heartbeat",
      health: expect.stringMatching(/^(ok|degraded)$/),
      agent_version: version(),
      every_s: 1,
      sources: [],
      outbox: { pending: expect.any(Number), dead: 0 },
    });
    expect(beat.data.outbox).toHaveProperty("oldest_pending_s");
    expect(typeof beat.data.uptime_s).toBe("number");
    // At the interval: one a second, not a burst and not slower.
    const gaps = first.slice(1).map((r, i) => r.receivedAt - (first[i]?.receivedAt ?? 0));
    for (const g of gaps) {
      expect(g).toBeGreaterThan(700);
      expect(g).toBeLessThan(3_000);
    }

    // Receiver down: connection refused, the destination is offline.
    await receiver.stop();
    const downAt = receiver.accepted.length;
    const skipped = () => a.logs.filter((l) => l.msg === "heartbeat not enqueued where one still waits").length;
    const before = skipped();
    await a.waitForLog(() => skipped() >= before + 3, "three beats coalesced during the outage", 20_000);
    const pending = await edgehookAsync(["queue", "list", "--state", "pending", "--json", "--config", file]);
    expect(pending.code).toBe(0);
    const waiting = (JSON.parse(pending.stdout) as { type: string; destination: string; eventId: string }[]).filter(
      (d) => d.type === "agent.heartbeat",
    );
    expect(waiting).toHaveLength(1);
    expect(waiting[0]?.destination).toBe("monitor");

    // Back: the one that waited is delivered, then the beat goes on.
    await receiver.start();
    await receiver.waitFor(() => receiver.accepted.length >= downAt + 2, "heartbeats after recovery", 30_000);
    const after = receiver.accepted.slice(downAt);
    expect(after[0]?.id).toBe(waiting[0]?.eventId);
    expect(after[0]?.verified).toBe(true);
    // The outage left one heartbeat, not one per missed interval.
    expect(new Set(receiver.accepted.map((r) => r.id)).size).toBe(receiver.accepted.length);
    expect(after.length).toBeLessThanOrEqual(3);
  }, 90_000);
});
