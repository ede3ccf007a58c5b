/**
 * `edgehook tap` against real parts: a running agent with a persistent session beside it
 * (the agent still gets every message; tap writes nothing to its outbox and takes nothing
 * from its session), a socat pty standing in for an Arduino, and a port the agent holds.
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentProcess, CommandProcess, edgehookAsync, tempDir, writeConfig } from "../support/agent-process.js";
import { ModbusSlave, words } from "../support/modbus.js";
import { Mosquitto } from "../support/mosquitto.js";
import { freePort } from "../support/ports.js";
import { Receiver } from "../support/receiver.js";
import { scrapeMetrics, sumOf } from "../support/scrape.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";
import { SocatPty } from "../support/socat.js";
import { TERMINAL_CONTROL } from "../support/terminal.js";

/** A digest of every file of the data directory (outbox, WAL, shm): equal means untouched. */
function digest(dataDir: string): string {
  const h = createHash("sha256");
  for (const f of readdirSync(dataDir).sort()) h.update(f).update(readFileSync(join(dataDir, f)));
  return h.digest("hex");
}

describe("edgehook tap (real mosquitto, real agent, socat pty)", () => {
  const broker = new Mosquitto();
  const receiver = new Receiver(WEBHOOK_SECRET);
  const dir = tempDir();
  const pty = new SocatPty();
  let agent: AgentProcess | undefined;
  let tap: CommandProcess | undefined;
  let httpPort = 0;

  beforeAll(async () => {
    httpPort = await freePort();
    await broker.start();
    await receiver.start();
    await pty.start();
  });
  afterAll(async () => {
    tap?.kill("SIGKILL");
    await agent?.stop();
    await pty.stop();
    await receiver.stop();
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
    rmSync(pty.dir, { recursive: true, force: true });
  });

  const config = (serial = "") =>
    writeConfig(
      dir,
      `version: 1
agent: { id: tap-pi, data_dir: ./data, require_clock_sync: never }
mqtt:
  url: ${broker.url}
  subscriptions:
    - { topic: "greenhouse/+/env", values: { temperature: t }, qos: 1 }
${serial}destinations:
  ops: { url: "${receiver.url}", secret: ${WEBHOOK_SECRET} }
rules:
  - { name: readings, match: { metric: temperature }, forward: true, notify: [ops] }
  - { name: hot, match: { sensor: gh*, metric: temperature }, above: 30, notify: [ops] }
http: { listen: "127.0.0.1:${httpPort}" }
`,
    );

  it("prints readings, rules and decode errors beside a live agent, which still gets every message", async () => {
    const file = config();
    agent = new AgentProcess(file);
    await agent.start();
    await agent.waitForLog((l) => l.msg === "subscribed to MQTT topics", "the agent's subscription");
    tap = new CommandProcess(["tap", "--config", file, "--count", "3"]);
    await tap.waitFor(() => tap!.stderr.includes("mqtt: tapping"), "tap's subscription");
    const pub = await mqtt.connectAsync(broker.url, { clientId: "tap-pub" });
    await pub.publishAsync("greenhouse/gh1/env", '{"t":31.5,"battery":90}', { qos: 1 });
    await pub.publishAsync("greenhouse/gh2/env", "{oops", { qos: 1 });
    // A field name that would clear the screen is printed escaped (mosquitto refuses such topics).
    await pub.publishAsync("greenhouse/gh3/env", '{"t":20,"\\u001b[2J":1}', { qos: 1 });
    expect(await tap.exited).toBe(0);
    const out = tap.stdout;
    expect(out).toMatch(
      /mqtt greenhouse\/gh1\/env \(subscriptions\.0\) 23 bytes\n {2}\{"t":31\.5,"battery":90\}\n {2}→ gh1 temperature = 31\.5 {3}rules: readings, hot\n {2}ignored: battery \(not in values\)/,
    );
    expect(out).toMatch(
      /mqtt greenhouse\/gh2\/env .*\n {2}\{oops\n {2}✗ not_json: the payload is not JSON \(format json\)/,
    );
    expect(out).toMatch(/→ gh3 temperature = 20 {3}rules: readings, hot\n {2}ignored: \\e\[2J \(not in values\)/);
    expect(out).not.toMatch(TERMINAL_CONTROL);
    expect(tap.stderr).toMatch(/as edgehook-tap-tap-pi-\d+ \(clean session, QoS 0/);
    // The agent got every message: two readings forwarded, one firing.
    await receiver.waitFor(() => receiver.accepted.length === 3, "the agent's webhooks");
    // The fields tap showed as ignored are counted by the agent too, not dropped unseen.
    const samples = await scrapeMetrics(httpPort);
    expect(sumOf(samples, "edgehook_decode_ignored_fields_total", { source: "mqtt" })).toBe(2);
    expect(sumOf(samples, "edgehook_decode_errors_total", { source: "mqtt", reason: "not_json" })).toBe(1);

    // The agent stops; what is published meanwhile waits in its persistent session.
    expect((await agent.stop()).code).toBe(0);
    agent = undefined;
    const dataDir = join(dir, "data");
    const before = digest(dataDir);
    tap = new CommandProcess(["tap", "--config", file, "--count", "2", "--json"]);
    await tap.waitFor(() => tap!.stderr.includes("mqtt: tapping"), "tap's subscription");
    await pub.publishAsync("greenhouse/gh4/env", '{"t":21}', { qos: 1 });
    await pub.publishAsync("greenhouse/gh5/env", '{"t":22}', { qos: 1 });
    expect(await tap.exited).toBe(0);
    const lines = tap.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { readings: { sensor: string; rules: string[] }[] });
    expect(lines.map((l) => l.readings.map((r) => `${r.sensor} ${r.rules.join("+")}`))).toEqual([
      ["gh4 readings+hot"],
      ["gh5 readings+hot"],
    ]);
    await pub.endAsync();
    // Tap wrote nothing next to the outbox and took nothing from the agent's session:
    expect(digest(dataDir)).toBe(before);
    agent = new AgentProcess(file);
    await agent.start();
    await receiver.waitFor(() => receiver.accepted.length === 5, "the readings published while the agent was down");
    const sensors = receiver.accepted.slice(3).map((r) => (r.json as { data: { sensor: string } }).data.sensor);
    expect(sensors.sort()).toEqual(["gh4", "gh5"]);
    expect((await agent.stop()).code).toBe(0);
    agent = undefined;
  }, 90_000);

  it("taps a serial port: an Arduino's loose Key: value line, garbage with its reason; a port the agent holds is named", async () => {
    const file = config(`serial:
  - name: arduino
    path: ${pty.devPath}
    format: kv
    rename: { Temperature: temperature, "Heat index": heat_index }
`);
    tap = new CommandProcess(["tap", "--config", file, "--serial", "arduino", "--count", "2"]);
    await tap.waitFor(() => tap!.stderr.includes("serial:arduino: tapping"), "the port open");
    await pty.write("Humidity: 40.00%  Temperature: 22.50°C 72.50°F  Heat index: 22.15°C 71.87°F\r\n");
    await pty.write(Buffer.from([0x01, 0xfe, 0x0a]));
    expect(await tap.exited).toBe(0);
    expect(tap.stdout).toMatch(
      /serial:arduino \d+ bytes\n {2}Humidity: 40\.00% {2}Temperature: 22\.50°C 72\.50°F {2}Heat index: 22\.15°C 71\.87°F\n {2}→ arduino Humidity = 40 {3}rules: \(none\)\n {2}→ arduino temperature = 22\.5 {3}rules: readings\n {2}→ arduino heat_index = 22\.15 {3}rules: \(none\)/,
    );
    expect(tap.stdout).toMatch(/✗ binary: control characters/);

    agent = new AgentProcess(file);
    await agent.start();
    await agent.waitForLog((l) => l.msg === "serial port open", "the agent's port");
    tap = new CommandProcess(["tap", "--config", file, "--serial", "arduino", "--count", "1"]);
    expect(await tap.exited).toBe(1);
    expect(tap.stderr).toMatch(/serial:arduino: .* is in use \(the agent, or another program, holds it/);
    // The agent's reading of the port goes on.
    await pty.write("Temperature: 35.1 C\n");
    await receiver.waitFor(
      () => receiver.accepted.some((r) => (r.json as { data: { value: unknown } }).data.value === 35.1),
      "the agent's reading",
    );
    expect((await agent.stop()).code).toBe(0);
    agent = undefined;
    expect(existsSync(pty.devPath)).toBe(true);
  }, 90_000);

  it("shows derived metrics and what a when rule makes of the values seen so far", async () => {
    const file = writeConfig(
      dir,
      `version: 1
agent: { id: tap-pi, data_dir: ./data, require_clock_sync: never }
serial:
  - { name: arduino, path: ${pty.devPath}, format: kv }
derive:
  - { metric: dew_point, sensor: "arduino", value: "dew_point(temperature, humidity)" }
destinations:
  ops: { url: "${receiver.url}", secret: ${WEBHOOK_SECRET} }
rules:
  - { name: damp, match: { sensor: arduino }, when: "humidity > 80 && temperature - dew_point < 2", notify: [ops] }
`,
    );
    tap = new CommandProcess(["tap", "--config", file, "--serial", "arduino", "--count", "2"]);
    await tap.waitFor(() => tap!.stderr.includes("serial:arduino: tapping"), "the port open");
    await pty.write("temperature: 20\n");
    await pty.write("humidity: 90\n");
    expect(await tap.exited).toBe(0);
    // The first line: humidity not seen yet, so no dew point and the rule is unknown.
    expect(tap.stdout).toMatch(/→ arduino temperature = 20 {3}rules: damp \(when: unknown, [^)]*humidity[^)]*\)/);
    // The second: the dew point of 20 °C at 90 % is 18.3 °C, derived and judged.
    const dew = /⇢ arduino dew_point = (\d+\.\d+) \(derived\) {3}rules: damp \(when: true\)/.exec(tap.stdout);
    expect(dew, tap.stdout).not.toBeNull();
    expect(Number(dew?.[1])).toBeCloseTo(18.3, 1);
  }, 60_000);

  it("--polled polls Modbus, 1-Wire and files: each poll's readings with their rules, bad data and a dead unit on stderr", async () => {
    const slave = await ModbusSlave.tcp(); // answers unit 1 only: unit 2 is a dead device on the bus
    try {
      await slave.set(1, "holding", 0, words("int16", 655));
      const w1 = join(dir, "w1");
      for (const [id, t] of [
        ["28-0316a2795fff", 23125],
        ["22-000000a1b2c3", 85000], // the power-on value: no reading
      ] as const) {
        mkdirSync(join(w1, id), { recursive: true });
        writeFileSync(
          join(w1, id, "w1_slave"),
          `72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=${t}\n`,
        );
      }
      writeFileSync(join(dir, "soc_temp"), "48500\n");
      const file = writeConfig(
        dir,
        `version: 1
agent: { id: tap-pi, data_dir: ./data-polled, require_clock_sync: never }
modbus:
  - name: plant
    url: ${slave.url}
    every: 400ms
    timeout: 150ms
    devices:
      - { unit_id: 1, sensor: boiler, registers: [{ metric: temperature, address: 0, type: int16, scale: 0.1 }] }
      - { unit_id: 2, sensor: tank, registers: [{ metric: level, address: 0 }] }
onewire: { root: ./w1, every: 1s, names: { 28-0316a2795fff: cellar } }
files:
  - { path: ./soc_temp, every: 400ms, sensor: pi, metric: soc_temperature, scale: 0.001 }
destinations:
  ops: { url: "${receiver.url}", secret: ${WEBHOOK_SECRET} }
rules:
  - { name: hot, match: { metric: "*temperature" }, above: 30, notify: [ops] }
http: { listen: false }
`,
      );
      // Without --polled they are named, not polled.
      const plain = await edgehookAsync(["tap", "--config", file, "--count", "1"]);
      expect(plain.code).toBe(64);
      expect(plain.stderr).toContain(
        "not tapped (polled sources are polled with --polled): modbus:plant, onewire, file:./soc_temp",
      );

      tap = new CommandProcess(["tap", "--config", file, "--polled", "--count", "9"]);
      expect(await tap.exited).toBe(0);
      const out = tap.stdout;
      expect(out).toMatch(/ modbus:plant\n {2}→ boiler temperature = 65\.5 {3}rules: hot\n/);
      expect(out).toMatch(/ onewire\n {2}→ cellar temperature = 23\.125 {3}rules: hot\n/);
      expect(out).toMatch(/ file:\.\/soc_temp\n {2}→ pi soc_temperature = 48\.5 {3}rules: hot\n/);
      expect(out).not.toContain("tank");
      // The sources' own warnings say what gave no reading and why.
      expect(tap.stderr).toMatch(/WARN .*modbus device not answering .*unit=2 .*reason=timeout/);
      expect(tap.stderr).toMatch(/WARN .*skipped a 1-Wire reading .*id=22-000000a1b2c3 .*reason=power_on_value/);
      // Nothing stored: tap opens no outbox.
      expect(existsSync(join(dir, "data-polled"))).toBe(false);
    } finally {
      await slave.stop();
    }
  }, 90_000);
});
