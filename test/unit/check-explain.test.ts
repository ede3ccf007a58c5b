/**
 * `edgehook check --explain` prints each subscription as it runs, presets expanded: what
 * it prints, pasted back in place of the preset, is the same subscription. And `check`
 * warns, with a position, when one subscription hides another's messages.
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parse, stringify } from "yaml";
import { type CliIO, runCli } from "../../src/cli.js";
import { parseConfig } from "../../src/config/load.js";
import { PRESET_NAMES } from "../../src/sources/presets/index.js";

const HEAD = `version: 1
agent: { id: pi, data_dir: ./data }
destinations:
  ops: { url: "http://127.0.0.1:9/", signature: none }
rules:
  - { name: hot, match: { metric: temperature }, above: 30, notify: [ops] }
mqtt:
  url: mqtt://127.0.0.1:1883
  subscriptions:
`;

async function check(yaml: string, ...flags: string[]) {
  const dir = mkdtempSync(join(tmpdir(), "edgehook-explain-"));
  const file = join(dir, "agent.yaml");
  writeFileSync(file, yaml);
  const out: string[] = [];
  const err: string[] = [];
  const io: CliIO = {
    env: {},
    pid: 1,
    out: (l) => out.push(l),
    err: (l) => err.push(l),
    onSignal: () => () => {},
    exitNow: () => {
      throw new Error("exitNow");
    },
  };
  const code = await runCli(["check", "--config", file, ...flags], io);
  return { code, out: out.join("\n"), err: err.join("\n") };
}

/** The YAML list under each `# subscriptions.N` heading of --explain's output. */
function explained(out: string): Record<string, unknown>[] {
  const blocks = out.split(/^# subscriptions\.\d+.*$/m).slice(1);
  return blocks.map((b) => (parse(b) as Record<string, unknown>[])[0] as Record<string, unknown>);
}

describe("edgehook check --explain", () => {
  it.each(PRESET_NAMES)(
    "prints preset %s expanded; pasted back without the preset it is the same subscription",
    async (name) => {
      const yaml = `${HEAD}    - { preset: ${name}, base_topic: home/${name} }\n`;
      const r = await check(yaml, "--explain");
      expect(r.code).toBe(0);
      expect(r.out).toContain(`# subscriptions.0 (preset ${name})`);
      const [expansion] = explained(r.out);
      expect(expansion).toBeDefined();
      expect(expansion).not.toHaveProperty("preset");
      // The base topic given replaces the firmware's root (Shelly Gen2 topics start with the device id).
      const topics = ([] as unknown[]).concat(expansion?.topic).map(String);
      expect(topics.some((t) => t.startsWith(`home/${name}/`))).toBe(true);

      const pasted = `${HEAD}${stringify([expansion], { flowCollectionPadding: false })
        .trimEnd()
        .split("\n")
        .map((l) => `    ${l}`)
        .join("\n")}\n`;
      const fromPreset = parseConfig(yaml, "agent.yaml").config.mqtt?.subscriptions[0];
      const fromExpansion = parseConfig(pasted, "agent.yaml").config.mqtt?.subscriptions[0];
      const { preset: _p, base_topic: _b, ...expected } = fromPreset ?? {};
      expect(fromExpansion).toEqual(expected);
    },
  );

  it("a key the user sets wins over the preset's, and --explain shows it", async () => {
    const r = await check(`${HEAD}    - { preset: zigbee2mqtt, exclude: [linkquality], qos: 0 }\n`, "--explain");
    const [s] = explained(r.out);
    expect(s).toMatchObject({ topic: "zigbee2mqtt/#", values: "*", exclude: ["linkquality"], qos: 0 });
  });

  it("without --explain, check prints only its summary", async () => {
    const r = await check(`${HEAD}    - { preset: esphome }\n`);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/agent\.yaml: ok — agent pi, 1 MQTT subscription/);
    expect(r.out).not.toContain("# subscriptions.0");
  });

  it("check warns, with the position, when an earlier subscription takes a later one's messages", async () => {
    const yaml = `${HEAD}    - { preset: zigbee2mqtt }\n    - { topic: "zigbee2mqtt/kitchen/#", values: { t: temperature } }\n`;
    const r = await check(yaml);
    expect(r.code).toBe(0);
    expect(r.err).toMatch(
      /^warning: .*agent\.yaml:11:16: mqtt\.subscriptions\.1\.topic: zigbee2mqtt\/kitchen\/# never gets a message: subscriptions\.0 \(zigbee2mqtt\/#\) comes first/m,
    );
    // Put the narrower one first and the warning goes: that is how a few topics are treated differently.
    const swapped = `${HEAD}    - { topic: "zigbee2mqtt/kitchen/#", values: { t: temperature } }\n    - { preset: zigbee2mqtt }\n`;
    expect((await check(swapped)).err).toBe("");
  });
});
