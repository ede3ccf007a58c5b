/**
 * End to end with the polled sources: a real agent process reads a register from a
 * Modbus TCP server process, a 1-Wire probe from a sysfs tree and a polled file; a rule
 * on the register fires and a real receiver gets the webhook, verified with the
 * standardwebhooks package. /healthz, /metrics, /api/status and `edgehook status` know the
 * new sources and their devices.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { Agent } from "../../src/agent.js";
import { loadConfig } from "../../src/config/load.js";
import { createLogger } from "../../src/ops/logger.js";
import type { StatusSnapshot } from "../../src/ops/status.js";
import { AgentProcess, edgehookAsync, tempDir, writeConfig } from "../support/agent-process.js";
import { ModbusSlave, words } from "../support/modbus.js";
import { freePort } from "../support/ports.js";
import { Receiver } from "../support/receiver.js";
import { scrapeMetrics, sumOf } from "../support/scrape.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";
import { waitUntil } from "../support/wait.js";

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface Health {
  status: string;
  problems: string[];
  sources: {
    name: string;
    kind: string;
    status: string;
    detail?: string;
    devices?: { id: string; sensor: string; status: string }[];
  }[];
}

describe("agent with Modbus, 1-Wire and polled files", () => {
  it("reads a Modbus register, fires a rule, and the receiver gets the verified webhook", async () => {
    const dir = tempDir();
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const slave = await ModbusSlave.tcp();
    cleanups.push(() => slave.stop());
    await slave.units([1, 2]);
    await slave.set(1, "holding", 0, words("int16", 650)); // 65.0 °C
    await slave.set(2, "holding", 0, words("int16", 42));
    const receiver = new Receiver(WEBHOOK_SECRET);
    await receiver.start();
    cleanups.push(() => receiver.stop());
    mkdirSync(join(dir, "w1/28-0316a2795fff"), { recursive: true });
    writeFileSync(
      join(dir, "w1/28-0316a2795fff/w1_slave"),
      "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n",
    );
    writeFileSync(join(dir, "soc_temp"), "48500\n");
    const httpPort = await freePort();
    const file = writeConfig(
      dir,
      `version: 1
agent: { id: plant-pi, data_dir: ./data, shutdown_timeout: 2s, require_clock_sync: never }
modbus:
  - name: plant
    url: ${slave.url}
    every: 200ms
    timeout: 150ms
    reopen_max: 300ms
    devices:
      - unit_id: 1
        sensor: boiler
        registers:
          - { metric: temperature, address: 0, type: int16, scale: 0.1 }
      - unit_id: 2
        sensor: tank
        registers:
          - { metric: level, address: 0, type: int16 }
onewire: { root: ./w1, every: 1s, names: { 28-0316a2795fff: cellar } }
files:
  - { path: ./soc_temp, every: 200ms, sensor: pi, metric: soc_temperature, scale: 0.001 }
destinations:
  ops: { url: "${receiver.url}", secret: ${WEBHOOK_SECRET} }
rules:
  - { name: boiler-hot, match: { sensor: boiler, metric: temperature }, above: 80, severity: critical, notify: [ops] }
http: { listen: "127.0.0.1:${httpPort}" }
`,
    );
    const agent = new AgentProcess(file);
    await agent.start();
    cleanups.push(() => agent.stop());
    const health = async (): Promise<Health> =>
      (await fetch(`http://127.0.0.1:${httpPort}/healthz`)).json() as Promise<Health>;

    await waitUntil(async () => (await health()).sources.every((s) => s.status === "up"), "every source up");
    const h = await health();
    expect(h.status).toBe("ok");
    expect(h.sources.map((s) => [s.name, s.kind, s.status])).toEqual([
      ["modbus:plant", "modbus", "up"],
      ["onewire", "onewire", "up"],
      ["file:./soc_temp", "file", "up"],
    ]);
    expect(h.sources[0]!.devices).toEqual([
      expect.objectContaining({ id: "1", sensor: "boiler", status: "up" }),
      expect.objectContaining({ id: "2", sensor: "tank", status: "up" }),
    ]);
    expect(h.sources[1]!.devices).toEqual([
      expect.objectContaining({ id: "28-0316a2795fff", sensor: "cellar", status: "up" }),
    ]);
    expect(receiver.received).toHaveLength(0); // 65.0 is below the threshold

    await slave.set(1, "holding", 0, words("int16", 855)); // 85.5 °C
    await receiver.waitFor(() => receiver.accepted.length >= 1, "the firing webhook");
    const hook = receiver.accepted[0]!;
    expect(hook.verified).toBe(true);
    expect(hook.json).toMatchObject({
      type: "alert.firing",
      data: {
        agent: "plant-pi",
        rule: "boiler-hot",
        sensor: "boiler",
        metric: "temperature",
        value: 85.5,
        threshold: 80,
        severity: "critical",
      },
    });

    const metrics = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
    expect(metrics).toMatch(/^edgehook_source_up\{source="modbus:plant",kind="modbus"\} 1$/m);
    expect(metrics).toMatch(/^edgehook_source_device_up\{source="modbus:plant",device="1"\} 1$/m);
    expect(metrics).toMatch(/^edgehook_source_device_up\{source="onewire",device="28-0316a2795fff"\} 1$/m);
    expect(metrics).toMatch(/^edgehook_source_up\{source="file:\.\/soc_temp",kind="file"\} 1$/m);
    expect(metrics).toMatch(/^edgehook_readings_total\{source="modbus:plant"\} [1-9]\d*$/m);
    expect(metrics).toMatch(/^edgehook_source_poll_duration_seconds_count\{source="modbus:plant"\} [1-9]\d*$/m);

    // The Modbus server goes away: the source is down, the agent degraded and still running.
    await slave.stop();
    // Degraded first shows whichever unit's poll failed first; then the whole source is down.
    await waitUntil(
      async () => (await health()).problems?.some((p) => p.startsWith("source modbus:plant is down")) === true,
      "degraded: the Modbus source down",
    );
    expect((await health()).status).toBe("degraded");
    expect((await health()).problems).toEqual([expect.stringMatching(/^source modbus:plant is down/)]);
    await slave.start();
    await slave.units([1, 2]);
    await waitUntil(async () => (await health()).status === "ok", "ok again");

    // The status views know the polled sources: what up means for each, their devices,
    // and the failed reads (the timeouts and refused connections above), as /metrics counts them.
    const base = `http://127.0.0.1:${httpPort}`;
    const api = async () => (await (await fetch(`${base}/api/status`)).json()) as StatusSnapshot;
    const readErrors = async () =>
      sumOf(await scrapeMetrics(httpPort), "edgehook_source_errors_total", { source: "modbus:plant" });
    await slave.behave(2, { mode: "silent" });
    await waitUntil(
      async () => (await api()).sources[0]?.devices?.find((d) => d.id === "2")?.status === "down",
      "unit 2 down in /api/status",
    );
    const before = await readErrors();
    const snap = await api();
    const after = await readErrors();
    expect(before).toBeGreaterThanOrEqual(1);
    expect(snap.sources.map((x) => [x.name, x.kind, x.status])).toEqual([
      ["modbus:plant", "modbus", "up"],
      ["onewire", "onewire", "up"],
      ["file:./soc_temp", "file", "up"],
    ]);
    expect(snap.sources[0]).toMatchObject({
      detail: "1 of 2 devices not answering",
      devices: [
        { id: "1", sensor: "boiler", status: "up" },
        { id: "2", sensor: "tank", status: "down", detail: "timeout" },
      ],
    });
    expect(snap.sources[0]?.read_errors).toBeGreaterThanOrEqual(before);
    expect(snap.sources[0]?.read_errors).toBeLessThanOrEqual(after);
    expect(snap.sources[0]?.readings_1m).toBeGreaterThan(0);
    expect(snap.sources[1]).toMatchObject({ devices: [{ id: "28-0316a2795fff", sensor: "cellar", status: "up" }] });
    expect((await health()).problems).toEqual([
      expect.stringMatching(/^device 2 \(tank\) of modbus:plant is down: timeout/),
    ]);
    const text = (await edgehookAsync(["status", "--config", file])).stdout;
    expect(text).toMatch(/READ ERRORS/);
    expect(text).toMatch(/^ {2}modbus:plant +bus open \(1 of 2 devices not answering\) +\S+ +\d+ +\d+ +[1-9]\d*$/m);
    expect(text).toMatch(/^ {4}unit 1 \(boiler\) +up +\S+ *$/m);
    expect(text).toMatch(/^ {4}unit 2 \(tank\) +down \(timeout\) +\S+ *$/m);
    expect(text).toMatch(/^ {2}onewire +bus present +\S+ +\d+ +0 +\d+$/m);
    expect(text).toMatch(/^ {4}28-0316a2795fff \(cellar\) +up +\S+ *$/m);
    // (On a loaded machine a 200 ms poll may overrun and be skipped: a read error too.)
    expect(text).toMatch(/^ {2}file:\.\/soc_temp +reading +\S+ +\d+ +0 +\d+$/m);
    const stopped = await agent.stop();
    expect(stopped.code).toBe(0);
    expect(agent.logs.filter((l) => l.level === "error" || l.level === "fatal")).toEqual([]);
  });

  it("loads modbus-serial only when a Modbus bus is configured, and serialport only for an RTU bus", async () => {
    const dir = tempDir();
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(join(dir, "value"), "1\n");
    const slave = await ModbusSlave.tcp();
    cleanups.push(() => slave.stop());
    const base =
      "version: 1\nagent: { id: lazy, data_dir: ./data, require_clock_sync: never }\nhttp: { listen: false }\n";
    const files = "files: [{ path: ./value, sensor: s, every: 100ms }]\n";
    const device = "devices: [{ unit_id: 1, sensor: m, registers: [{ metric: v, address: 0 }] }]";
    const tcp = `modbus: [{ name: m, url: "${slave.url}", every: 100ms, timeout: 50ms, ${device} }]\n`;
    const rtu = `modbus: [{ name: m, url: "${slave.url}", every: 100ms, timeout: 50ms, ${device} }, { name: r, url: "rtu://${join(dir, "no-adapter")}", ${device} }]\n`;
    // The real agent in a fresh process, told which packages are in its module cache once every source has started.
    const probe = (yaml: string) => {
      const file = writeConfig(dir, base + yaml);
      const script = `
        import { createRequire } from "node:module";
        import { Agent } from "${resolve("dist/agent.js")}";
        import { loadConfig } from "${resolve("dist/config/load.js")}";
        import { silentLogger } from "${resolve("dist/ops/logger.js")}";
        const agent = new Agent({ loaded: loadConfig(${JSON.stringify(file)}), logger: silentLogger() });
        await agent.start();
        const deadline = Date.now() + 10_000;
        const settled = () => agent.health().sources.every((s) => s.status === "up" || s.detail?.includes("no-adapter"));
        while (!settled() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
        const loaded = Object.keys(createRequire(import.meta.url).cache);
        const has = (pkg) => loaded.some((k) => k.includes("/node_modules/" + pkg + "/"));
        console.log(JSON.stringify({ up: agent.health().sources.map((s) => s.status), modbus: has("modbus-serial"), serialport: has("serialport") }));
        await agent.stop();
      `;
      const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], {
        encoding: "utf8",
        timeout: 30_000,
      });
      if (r.status !== 0) throw new Error(r.stderr);
      return JSON.parse(r.stdout.trim().split("\n").at(-1)!) as { up: string[]; modbus: boolean; serialport: boolean };
    };
    expect(probe(files)).toEqual({ up: ["up"], modbus: false, serialport: false });
    expect(probe(files + tcp)).toEqual({ up: ["up", "up"], modbus: true, serialport: false });
    expect(probe(files + rtu)).toEqual({ up: ["up", "down", "up"], modbus: true, serialport: true });
  });

  it("stops polling while the outbox refuses readings, and counts what it still held at stop", async () => {
    const dir = tempDir();
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const slave = await ModbusSlave.tcp();
    cleanups.push(() => slave.stop());
    await slave.set(1, "holding", 0, [900]);
    const receiver = new Receiver(WEBHOOK_SECRET);
    await receiver.start();
    cleanups.push(() => receiver.stop());
    const file = writeConfig(
      dir,
      `version: 1
agent: { id: full-pi, data_dir: ./data, shutdown_timeout: 1s, require_clock_sync: never }
modbus:
  - { name: plant, url: "${slave.url}", every: 100ms, timeout: 80ms, devices: [{ unit_id: 1, sensor: boiler, registers: [{ metric: t, address: 0 }] }] }
destinations:
  ops: { url: "${receiver.url}", secret: ${WEBHOOK_SECRET} }
rules:
  - { name: hot, match: { metric: t }, above: 80, notify: [ops] }
outbox: { min_free_disk: 999999GB }
http: { listen: false }
`,
    );
    const logs: Record<string, unknown>[] = [];
    const logger = createLogger("info", { write: (l: string) => logs.push(JSON.parse(l)) });
    const agent = new Agent({ loaded: loadConfig(file), logger });
    await agent.start();
    cleanups.push(() => agent.stop());
    const metric = async (name: string, labels: Record<string, string>) => {
      const m = (await agent.metrics.registry.getMetricsAsJSON()).find((x) => x.name === name);
      return Number(m?.values.find((v) => Object.entries(labels).every(([k, val]) => v.labels[k] === val))?.value ?? 0);
    };
    const skips = () => metric("edgehook_source_errors_total", { source: "modbus:plant", reason: "backpressure" });
    await waitUntil(async () => (await skips()) >= 5, "polls skipped while the outbox refuses");
    // One poll was read and is held; no more are read while it waits.
    const served = (await slave.served()).requests.length;
    expect(served).toBeLessThanOrEqual(2);
    expect(
      logs.filter((l) => String(l.msg).startsWith("outbox refuses new readings: holding 1 modbus readings")),
    ).toHaveLength(1);
    await agent.stop();
    expect(await metric("edgehook_readings_dropped_total", { source: "modbus:plant", reason: "stopped" })).toBe(1);
    expect(logs.some((l) => l.msg === "dropped 1 modbus readings at stop: the outbox did not take them")).toBe(true);
    expect(receiver.received).toHaveLength(0);
  });

  it("restarts the polled sources when a reload changes them", async () => {
    const dir = tempDir();
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(join(dir, "temp"), "52000\n");
    const yaml = (scale: string) => `version: 1
agent: { id: reload-pi, data_dir: ./data, require_clock_sync: never }
files: [{ path: ./temp, every: 100ms, sensor: pi, metric: soc_temperature, scale: ${scale} }]
rules: [{ name: hot, match: { sensor: pi }, above: 100, notify: [ops] }]
destinations: { ops: { url: "http://127.0.0.1:9/hooks", secret: ${WEBHOOK_SECRET} } }
http: { listen: false }
`;
    const file = writeConfig(dir, yaml("0.001"));
    const agent = new Agent({ loaded: loadConfig(file), logger: createLogger("silent") });
    await agent.start();
    cleanups.push(() => agent.stop());
    const firing = async () =>
      Number(
        (await agent.metrics.registry.getMetricsAsJSON())
          .find((m) => m.name === "edgehook_rule_events_total")
          ?.values.find((v) => v.labels.rule === "hot" && v.labels.type === "alert.firing")?.value ?? 0,
      );
    const reads = async () =>
      Number(
        (await agent.metrics.registry.getMetricsAsJSON())
          .find((m) => m.name === "edgehook_readings_total")
          ?.values.find((v) => v.labels.source === "file:./temp")?.value ?? 0,
      );
    await waitUntil(async () => (await reads()) >= 3, "three reads");
    expect(await firing()).toBe(0); // 52 °C
    writeFileSync(file, yaml("0.002"));
    await agent.reload(loadConfig(file));
    // The restarted source reads with the new scale: 104 is above 100.
    await waitUntil(async () => (await firing()) === 1, "the rule firing on the rescaled value");
    expect(agent.health().sources.map((x) => [x.name, x.status])).toEqual([["file:./temp", "up"]]);
  });
});
