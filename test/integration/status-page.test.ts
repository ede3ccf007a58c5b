/**
 * What an operator sees, from a real agent with a real receiver outage: the status page
 * in headless Chromium, `edgehook status`, `queue stats`, /api/status and /metrics agree;
 * with the agent killed, `status` reads the outbox and says so.
 *
 * EDGEHOOK_UPDATE_SCREENSHOT=1 writes docs/status-page.png from this test.
 */
import { copyFileSync, readFileSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import mqtt from "mqtt";
import { afterEach, describe, expect, it } from "vitest";
import type { StatusSnapshot } from "../../src/ops/status.js";
import { AgentProcess, edgehookAsync, tempDir, writeConfig } from "../support/agent-process.js";
import { type Browser, openBrowser } from "../support/browser.js";
import { freePort } from "../support/ports.js";
import { Receiver } from "../support/receiver.js";
import { waitUntil } from "../support/wait.js";

const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await Promise.resolve(c()).catch(() => {});
});

async function metric(base: string, name: string, labels: string): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name}{${labels}}`));
  return line === undefined ? 0 : Number(line.split(" ").pop());
}

describe("status page and edgehook status", () => {
  it("show a receiver outage as a person sees it: down, pending rising, then falling after recovery", async () => {
    const dir = tempDir("edgehook-status-");
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const receiver = new Receiver();
    await receiver.start();
    cleanups.push(() => receiver.stop());
    const receiverPort = receiver.port;
    const [httpPort, mqttPort] = [await freePort(), await freePort()];
    const file = writeConfig(
      dir,
      `version: 1
agent: { id: greenhouse-pi, data_dir: ./data, shutdown_timeout: 1s, require_clock_sync: never }
mqtt:
  url: embedded
  embedded: { host: 127.0.0.1, port: ${mqttPort} }
  subscriptions:
    - { topic: "sensors/+/temperature", sensor: "{1}", metric: temperature, format: number }
destinations:
  ops: { url: "${receiver.url}", signature: none }
rules:
  - name: too-hot
    match: { sensor: "*", metric: temperature }
    above: 30
    notify: [ops]
http:
  listen: 127.0.0.1:${httpPort}
`,
    );
    const base = `http://127.0.0.1:${httpPort}`;
    const agent = new AgentProcess(file);
    cleanups.push(() => agent.stop());
    await agent.start();

    // One event delivered while the receiver is up.
    const publish = async (sensors: string[]) => {
      const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${mqttPort}`, { clientId: `pub-${Date.now()}` });
      for (const s of sensors) await client.publishAsync(`sensors/${s}/temperature`, "35.5", { qos: 1 });
      await client.endAsync();
    };
    await publish(["bench-1"]);
    await waitUntil(() => receiver.received.length === 1, "the first webhook");

    const browser: Browser = await openBrowser();
    cleanups.push(() => browser.close());
    const page = browser.page;
    await page.goto(`${base}/`);
    const pendingOnPage = async () => Number(await page.locator('[data-pending="ops"]').textContent());
    const rowOf = (name: string) => page.locator("tr", { has: page.locator(`[data-pending="${name}"]`) });
    await waitUntil(async () => (await rowOf("ops").textContent())?.includes("up") === true, "ops up on the page");
    expect(await page.locator("h1").textContent()).toContain("greenhouse-pi");

    // The outage: the receiver goes away; readings keep coming.
    await receiver.stop();
    await publish(["bench-2", "bench-3"]);
    await waitUntil(
      async () => (await rowOf("ops").textContent())?.includes("down") === true,
      "ops down on the page",
      20_000,
    );
    await waitUntil(async () => (await pendingOnPage()) === 2, "2 pending on the page", 20_000);
    await publish(["bench-4", "bench-5", "bench-6"]);
    await waitUntil(async () => (await pendingOnPage()) === 5, "the page's pending count rising to 5", 20_000);
    expect(await rowOf("ops").textContent()).toMatch(/connection refused/);
    // Firing now: the six sensors above 30, with their values.
    const firing = page.locator("section", { has: page.locator("h2", { hasText: "Firing now" }) });
    expect(await firing.locator("tbody tr").count()).toBe(6);
    expect(await firing.textContent()).toContain("35.5");

    // The page, `status`, `queue stats`, /api/status and /metrics agree.
    const api = (await (await fetch(`${base}/api/status`)).json()) as StatusSnapshot;
    const status = await edgehookAsync(["status", "--json", "--config", file]);
    expect(status.code).toBe(0);
    const cli = JSON.parse(status.stdout) as StatusSnapshot;
    const stats = await edgehookAsync(["queue", "stats", "--json", "--config", file]);
    const row = (
      JSON.parse(stats.stdout) as { destination: string; state: string; pending: number; delivered: number }[]
    )[0];
    for (const s of [api, cli]) {
      expect(s.from).toBe("agent");
      expect(s.destinations[0]).toMatchObject({ name: "ops", state: "down", pending: 5, delivered: 1 });
      expect(s.firing).toHaveLength(6);
      expect(s.sources[0]).toMatchObject({ name: "mqtt", status: "up" });
      // Six readings, the first of them perhaps more than a minute ago on a slow machine.
      expect(s.sources[0]?.readings_1m).toBeGreaterThanOrEqual(5);
      expect(s.sources[0]?.readings_1m).toBeLessThanOrEqual(6);
    }
    expect(row).toMatchObject({ destination: "ops", state: "down", pending: 5, delivered: 1 });
    expect(await metric(base, "edgehook_outbox_deliveries", 'destination="ops",state="pending"')).toBe(5);
    expect(await metric(base, "edgehook_destination_state", 'destination="ops",state="down"')).toBe(1);
    const text = await edgehookAsync(["status", "--config", file]);
    expect(text.stdout).toMatch(/ops\s+down \(since \d\d:\d\d:\d\d\)\s+5\s/);
    expect(text.stdout).toMatch(/mqtt\s+connected\s/);
    const statsText = await edgehookAsync(["queue", "stats", "--config", file]);
    expect(statsText.stdout).toMatch(/ops\s+down \(since \d\d:\d\d:\d\d\)\s+5\s+0\s+1\s/);

    // Readable on a phone: the page itself never scrolls sideways (wide tables scroll in place).
    expect(await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")).toBe(true);
    // No secret: destinations by name only, never their URL (which may carry a token).
    expect(await page.content()).not.toContain(receiver.url);
    expect(JSON.stringify(api)).not.toContain(receiver.url);

    // The chart has the outbox depth, and the page has the deliveries.
    expect(await page.locator("svg.chart polyline").count()).toBe(1);
    expect(await page.locator("section", { hasText: "Last 6 deliveries" }).count()).toBe(1);
    const shot = join(dir, "status-page.png");
    await page.screenshot({ path: shot, fullPage: true });
    expect(readFileSync(shot).subarray(1, 4).toString()).toBe("PNG");
    if (process.env.EDGEHOOK_UPDATE_SCREENSHOT === "1") {
      copyFileSync(shot, resolve(import.meta.dirname, "../../docs/status-page.png"));
    }

    // The agent dies: `status` reads the outbox and says so; the page says it lost the agent.
    agent.kill("SIGKILL");
    await agent.exited();
    const down = await edgehookAsync(["status", "--config", file]);
    expect(down.code).toBe(0);
    expect(down.stdout).toContain("AGENT DOWN");
    expect(down.stdout).toMatch(/ops\s+unknown \(agent down\)\s+5\s/);
    const downJson = JSON.parse((await edgehookAsync(["status", "--json", "--config", file])).stdout) as StatusSnapshot;
    expect(downJson).toMatchObject({ from: "outbox", agent: { running: false } });
    expect(downJson.firing).toHaveLength(6);
    expect((await edgehookAsync(["queue", "stats", "--config", file])).stdout).toMatch(
      /ops\s+unknown \(agent down\)\s+5\s/,
    );
    await waitUntil(
      async () => ((await page.locator("#conn").textContent()) ?? "").includes("does not answer"),
      "the page saying the agent does not answer",
    );

    // Recovery: the receiver is back and the agent restarted; the same page follows.
    await receiver.start(receiverPort);
    const again = new AgentProcess(file);
    cleanups.push(() => again.stop());
    await again.start();
    await waitUntil(async () => (await pendingOnPage()) === 0, "the page's pending count falling to 0", 30_000);
    expect(await rowOf("ops").textContent()).toContain("up");
    expect(await page.locator("#conn").textContent()).toBe("");
    expect(receiver.received.length).toBe(6);
    // Back up, the views agree again: `queue stats` and `status` say up, as /metrics does.
    expect((await edgehookAsync(["queue", "stats", "--config", file])).stdout).toMatch(/ops\s+up\s+0\s+0\s+6\b/);
    expect((await edgehookAsync(["status", "--config", file])).stdout).toMatch(/ops\s+up\s+0\s/);
    expect(await metric(base, "edgehook_destination_state", 'destination="ops",state="up"')).toBe(1);
    expect(await metric(base, "edgehook_outbox_deliveries", 'destination="ops",state="pending"')).toBe(0);
  });
});
