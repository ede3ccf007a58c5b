/**
 * A compound `when` rule end to end: two metrics published to a real mosquitto, a derived
 * metric computed from them, and the alert and its resolution received and verified
 * (Standard Webhooks signatures) at a real HTTP receiver.
 */
import mqtt from "mqtt";
import { afterAll, describe, expect, it } from "vitest";
import { AgentProcess, tempDir, writeConfig } from "../support/agent-process.js";
import { Mosquitto } from "../support/mosquitto.js";
import { Receiver } from "../support/receiver.js";

const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

describe("when rules over MQTT", () => {
  const broker = new Mosquitto();
  const receiver = new Receiver(SECRET);
  let agent: AgentProcess | undefined;

  afterAll(async () => {
    await agent?.stop();
    await receiver.stop();
    await broker.stop();
  });

  it("fires when both metrics meet the expression and resolves once clear_when holds", async () => {
    await broker.start();
    await receiver.start();
    const configFile = writeConfig(
      tempDir(),
      `version: 1
agent: { id: cel-pi, data_dir: ./data, require_clock_sync: never }
mqtt:
  url: ${broker.url}
  subscriptions:
    - { topic: "gh/+/temperature", sensor: "{1}", metric: temperature, format: number }
    - { topic: "gh/+/humidity", sensor: "{1}", metric: humidity, format: number }
destinations:
  ops: { url: "${receiver.url}", secret: ${SECRET} }
derive:
  - { metric: dew_point, value: "dew_point(temperature, humidity)" }
rules:
  - name: condensation
    when: "humidity > 85 && temperature - dew_point < 2"
    clear_when: "humidity < 75"
    severity: critical
    notify: [ops]
http: { listen: false }
`,
    );
    agent = new AgentProcess(configFile);
    await agent.start();
    const client = await mqtt.connectAsync(broker.url, { clientId: "cel-publisher" });
    const types = () => receiver.accepted.map((r) => (r.json as { type: string }).type);

    await client.publishAsync("gh/house1/temperature", "21.5", { qos: 1 });
    await client.publishAsync("gh/house1/humidity", "60", { qos: 1 });
    await client.publishAsync("gh/house1/humidity", "92", { qos: 1 });
    await receiver.waitFor(() => receiver.accepted.length >= 1, "the compound alert");
    const firing = receiver.accepted[0]?.json as { type: string; data: Record<string, unknown> };
    expect(firing.type).toBe("alert.firing");
    expect(firing.data).toMatchObject({
      rule: "condensation",
      sensor: "house1",
      metric: "humidity,temperature,dew_point",
      value: true,
      expression: "humidity > 85 && temperature - dew_point < 2",
      clear_when: "humidity < 75",
      severity: "critical",
    });
    const values = firing.data.values as Record<string, number>;
    expect(values.humidity).toBe(92);
    expect(values.temperature).toBe(21.5);
    expect(values.dew_point).toBeCloseTo(20.1, 1);

    // Not clear yet (hysteresis): 80 % is no longer above 85 but not under 75.
    await client.publishAsync("gh/house1/humidity", "80", { qos: 1 });
    await client.publishAsync("gh/house1/humidity", "70", { qos: 1 });
    await receiver.waitFor(() => receiver.accepted.length >= 2, "the resolution");
    await client.endAsync();
    expect(types()).toEqual(["alert.firing", "alert.resolved"]);
    const resolved = receiver.accepted[1]?.json as { data: { values: Record<string, number> } };
    expect(resolved.data.values.humidity).toBe(70);
  }, 60_000);
});
