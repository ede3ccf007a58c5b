/**
 * `edgehook demo`: the whole path on one machine with nothing installed. An embedded
 * MQTT broker, three simulated greenhouse sensors that cross a threshold, the agent,
 * and a local receiver that verifies every webhook's signature and prints it. Midway
 * the receiver goes offline: events wait in the outbox and arrive when it returns.
 *
 * The script runs on its own timeline (seconds below). `--speed 10` plays it ten times
 * faster (`--duration` is on that timeline too); the agent itself is not sped up: its
 * retry schedule and its probing of the offline receiver keep real time.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import mqtt from "mqtt";
import { Agent } from "../agent.js";
import { loadConfig } from "../config/load.js";
import { parseDuration } from "../config/units.js";
import { ExitCode } from "../errors.js";
import { createLogger } from "../ops/logger.js";
import type { CliIO } from "./io.js";
import { type ReceivedWebhook, type RunningReceiver, startReceiver } from "./receive.js";

/** Temperature of each simulated sensor at second `t` of the timeline. */
const SCRIPT: Record<string, (t: number) => number> = {
  "greenhouse-1": (t) => (t < 4 ? 24 + t : t < 12 ? 33 : t < 16 ? 33 - (t - 12) * 2 : 25),
  "greenhouse-2": () => 22 + Math.random(),
  // Crosses while the receiver is offline (seconds 18 to 30).
  "greenhouse-3": (t) => (t < 20 ? 26 : t < 25 ? 34 : 24),
};
const OFFLINE_FROM_S = 18;
const OFFLINE_UNTIL_S = 30;
/** Sensors publish every this many milliseconds of the timeline. */
const PUBLISH_EVERY_MS = 500;
/** Fastest --speed: at 20 the sensors still publish every 25 ms. */
const MAX_SPEED = 20;

export async function demoCommand(args: string[], io: CliIO): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { duration: { type: "string", default: "40s" }, speed: { type: "string", default: "1" } },
  });
  const durationMs = parseDuration(values.duration ?? "40s");
  if (durationMs === undefined) {
    io.err("edgehook demo: --duration must be like 40s");
    return ExitCode.USAGE;
  }
  const speed = Number(values.speed ?? "1");
  if (!Number.isFinite(speed) || speed < 0.1 || speed > MAX_SPEED) {
    io.err(`edgehook demo: --speed must be a number from 0.1 to ${MAX_SPEED} (is '${values.speed}')`);
    return ExitCode.USAGE;
  }
  const dir = mkdtempSync(join(tmpdir(), "edgehook-demo-"));
  const secret = `whsec_${randomBytes(24).toString("base64")}`;
  const say = (line: string) => io.out(`[demo] ${line}`);

  let verified = 0;
  const receiverOptions = {
    host: "127.0.0.1",
    secret,
    out: (l: string) => io.out(`[receiver] ${l}`),
    onWebhook: (w: ReceivedWebhook) => {
      if (w.verification.ok) verified++;
    },
  };
  let receiver: RunningReceiver | undefined = await startReceiver({ ...receiverOptions, port: 0 });
  const receiverPort = receiver.port;

  const configFile = join(dir, "agent.yaml");
  writeFileSync(
    configFile,
    `version: 1
agent:
  id: demo-pi
  data_dir: ./data
  shutdown_timeout: 2s
  log_level: error
mqtt:
  url: embedded
  embedded: { host: 127.0.0.1, port: 0 }
  subscriptions:
    - topic: greenhouse/+/temperature
      sensor: "{1}"
      metric: temperature
      format: json
      value: celsius
      timestamp: ts
destinations:
  receiver:
    url: http://127.0.0.1:${receiverPort}/hooks
    secret: ${secret}
    retry_schedule: [1s]
rules:
  - name: too-hot
    match: { metric: temperature }
    above: 30
    clear_below: 28
    severity: warning
    labels: { site: demo }
    notify: [receiver]
http:
  listen: false
`,
  );
  const loaded = loadConfig(configFile, { env: {} });
  const agent = new Agent({ loaded, logger: createLogger("error") });
  await agent.start();
  say(`agent started; embedded MQTT broker at ${agent.mqttUrl}; receiver at http://127.0.0.1:${receiverPort}/hooks`);
  const publishEveryMs = PUBLISH_EVERY_MS / speed;
  say(
    `rule too-hot: fires above 30 °C, resolves under 28 °C; three greenhouse sensors publish every ${Math.round(publishEveryMs)} ms` +
      (speed === 1 ? "" : ` (the demo's timeline at ${speed}x speed)`),
  );

  const client = mqtt.connect(agent.mqttUrl as string, { clientId: "demo-sensors" });
  await new Promise<void>((resolve, reject) => {
    client.once("connect", () => resolve());
    client.once("error", reject);
  });

  const started = Date.now();
  let receiverDown: Promise<void> | undefined;
  let receiverBack: Promise<void> | undefined;
  let receiverUp = false;
  let lastPending = 0;
  let finish!: (why: "timeout" | "signal") => void;
  const done = new Promise<"timeout" | "signal">((resolve) => {
    finish = resolve;
  });
  let interrupted = false;
  let interrupt!: () => void;
  const signalled = new Promise<void>((resolve) => {
    interrupt = resolve;
  });
  const onSignal = () => {
    interrupted = true;
    interrupt();
    finish("signal");
  };
  const offs = [io.onSignal("SIGINT", onSignal), io.onSignal("SIGTERM", onSignal)];
  const timer = setTimeout(() => finish("timeout"), durationMs / speed);

  const tick = setInterval(() => {
    const t = ((Date.now() - started) * speed) / 1000;
    for (const [sensor, curve] of Object.entries(SCRIPT)) {
      const celsius = Math.round(curve(t) * 10) / 10;
      client.publish(`greenhouse/${sensor}/temperature`, JSON.stringify({ celsius, ts: Date.now() }), { qos: 1 });
    }
    if (t >= OFFLINE_FROM_S && !receiverDown && !receiverUp && receiver) {
      say("taking the receiver offline: new events wait in the outbox");
      receiverDown = receiver.stop();
      receiver = undefined;
    }
    if (receiverDown && !receiverUp) {
      const pending = agent.health().outbox.pending;
      if (pending !== lastPending) say(`outbox: ${pending} event(s) pending, waiting for the receiver`);
      lastPending = pending;
    }
    if (t >= OFFLINE_UNTIL_S && receiverDown && !receiverUp) {
      receiverUp = true;
      say(`bringing the receiver back; ${agent.health().outbox.pending} event(s) waiting in the outbox`);
      receiverBack = receiverDown
        .then(async () => {
          receiver = await startReceiver({ ...receiverOptions, port: receiverPort });
        })
        .catch((err: unknown) => say(`could not bring the receiver back: ${(err as Error).message}`));
    }
  }, publishEveryMs);

  await done;
  clearTimeout(timer);
  clearInterval(tick);
  const pending = () => agent.health().outbox.pending;
  if (!interrupted && receiverUp && pending() > 0) {
    // The dispatcher probes an unreachable receiver every second, so the backlog may
    // still be on its way.
    say(`time is up; waiting for ${pending()} event(s) to reach the receiver (at most 60 s)`);
    const deadline = Date.now() + 60_000;
    while (pending() > 0 && Date.now() < deadline && !interrupted) {
      await Promise.race([signalled, new Promise((r) => setTimeout(r, 250))]);
    }
  }
  for (const off of offs) off();
  say(interrupted ? "interrupted, stopping" : "stopping");
  await client.endAsync();
  await agent.stop();
  await receiverDown;
  // A receiver still coming back would otherwise start after this and keep the process alive.
  await receiverBack;
  await receiver?.stop();
  say(`done: the receiver verified ${verified} webhook(s)`);
  rmSync(dir, { recursive: true, force: true });
  return ExitCode.OK;
}
