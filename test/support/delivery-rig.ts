/**
 * The rig of the delivery tests (test/integration/delivery-*.test.ts): a real mosquitto per
 * test file, and per test a receiver and a real agent whose rule turns readings above
 * THRESHOLD into alert.firing and below it into alert.resolved for destination `ops`.
 * Call useDeliveryRig() at the top level of a test file: it registers the file's hooks.
 */
import mqtt from "mqtt";
import { afterAll, afterEach, beforeAll } from "vitest";
import { AgentProcess, tempDir, writeConfig } from "./agent-process.js";
import { Mosquitto } from "./mosquitto.js";
import { freePort } from "./ports.js";
import { type Received, Receiver } from "./receiver.js";
import { WEBHOOK_SECRET } from "./secrets.js";

export const THRESHOLD = 50;

export const data = (r: Received) => (r.json as { type: string; data: { sensor: string; value: number } }).data;
export const typeOf = (r: Received) => (r.json as { type: string }).type;

export interface Rig {
  agent: AgentProcess;
  receiver: Receiver;
  config: string;
  /** Publishes one reading of `sensor` (QoS 1); resolves once the broker has it. */
  publish(sensor: string, value: number): Promise<void>;
  /** edgehook_deliveries_total{destination="ops",class} from /metrics (rigs started with metrics). */
  deliveries(cls: string): Promise<number>;
}

/**
 * Starts a receiver and an agent whose rule turns readings above THRESHOLD into
 * alert.firing and below it into alert.resolved for destination `ops` (with `extra`
 * destination keys), and waits until a probe reading went all the way through.
 */
async function startRig(
  broker: Mosquitto,
  cleanups: (() => Promise<unknown>)[],
  id: string,
  extra: string,
  opts: { metrics?: boolean },
): Promise<Rig> {
  const receiver = new Receiver(WEBHOOK_SECRET);
  await receiver.start();
  cleanups.push(() => receiver.stop());
  const dir = tempDir();
  const httpPort = opts.metrics ? await freePort() : undefined;
  const config = writeConfig(
    dir,
    `version: 1
agent: { id: ${id}, data_dir: ./data, require_clock_sync: never, shutdown_timeout: 1s }
mqtt:
  url: ${broker.url}
  subscriptions:
    - { topic: "${id}/+/temp", qos: 1, sensor: "{1}", metric: temp, format: json, value: value }
destinations:
  ops: { url: "${receiver.url}", secret: ${WEBHOOK_SECRET}${extra ? `, ${extra}` : ""} }
rules:
  - { name: hot, match: { metric: temp }, above: ${THRESHOLD}, notify: [ops] }
http: { listen: ${httpPort ? `"127.0.0.1:${httpPort}"` : "false"} }
`,
  );
  const agent = new AgentProcess(config);
  await agent.start();
  cleanups.push(() => agent.stop());
  const client = await mqtt.connectAsync(broker.url, { clientId: `${id}-pub` });
  cleanups.push(() => client.endAsync());
  const publish = async (sensor: string, value: number) => {
    await client.publishAsync(`${id}/${sensor}/temp`, JSON.stringify({ value }), { qos: 1 });
  };
  // "edgehook running" may come before the broker confirmed the subscription, and a QoS 1
  // message nobody subscribed to is dropped: the rig is ready once a probe came through.
  const probed = () => receiver.accepted.some((r) => data(r).sensor === "probe");
  for (let i = 0; i < 50 && !probed(); i++) {
    await publish("probe", THRESHOLD * 2);
    await receiver.waitFor(probed, "the probe", 300).catch(() => undefined);
  }
  await receiver.waitFor(probed, "the probe", 1_000);
  const deliveries = async (cls: string) => {
    if (!httpPort) throw new Error("this rig was started without metrics");
    const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
    const line = text
      .split("\n")
      .find(
        (l) =>
          l.startsWith("edgehook_deliveries_total{") && l.includes(`class="${cls}"`) && l.includes(`destination="ops"`),
      );
    return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : 0;
  };
  return { agent, receiver, config, publish, deliveries };
}

/**
 * Registers the file's hooks (one mosquitto for the file; after each test, what it started is
 * stopped in reverse order) and returns `rig()` and the list a test may push its own cleanups to.
 */
export function useDeliveryRig() {
  const broker = new Mosquitto();
  const cleanups: (() => Promise<unknown>)[] = [];
  beforeAll(() => broker.start());
  afterAll(() => broker.stop());
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
  });
  const rig = (id: string, extra = "", opts: { metrics?: boolean } = {}) => startRig(broker, cleanups, id, extra, opts);
  return { rig, cleanups };
}
