/**
 * The receiver examples in README.md, run as written (only the port changed) against
 * the real agent: each prints the event it verified.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentProcess, tempDir, writeConfig } from "../support/agent-process.js";
import { Mosquitto, waitForPort } from "../support/mosquitto.js";
import { freePort } from "../support/ports.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

const readme = readFileSync("README.md", "utf8");

function block(lang: string, after: string): string {
  const start = readme.indexOf(after);
  const fence = "```";
  const m = new RegExp(`${fence}${lang}\\n([\\s\\S]*?)${fence}`).exec(readme.slice(start));
  if (start < 0 || !m) throw new Error(`README has no ${lang} block after '${after}'`);
  return m[1] as string;
}

describe("README receiver examples", () => {
  const broker = new Mosquitto();
  beforeAll(() => broker.start());
  afterAll(() => broker.stop());

  for (const [name, lang, after, cmd, file] of [
    ["Node.js", "js", "Node.js, with the `standardwebhooks` package", process.execPath, "receiver.mjs"],
    ["Python", "python", "Python, standard library only", "python3", "receiver.py"],
  ] as const) {
    it(`the ${name} example verifies and prints a real webhook`, async () => {
      const port = await freePort();
      // Inside the project so `standardwebhooks` resolves from node_modules.
      const dir = resolve("test/.tmp");
      mkdirSync(dir, { recursive: true });
      const path = join(dir, `${port}-${file}`);
      writeFileSync(path, block(lang, after).replace("8080", String(port)));
      const proc: ChildProcess = spawn(cmd, [path], {
        env: { ...process.env, OPS_WEBHOOK_SECRET: WEBHOOK_SECRET },
        stdio: ["ignore", "pipe", "pipe"],
      });
      let stdout = "";
      let stderr = "";
      proc.stderr?.on("data", (d) => {
        stderr += String(d);
      });
      const printed = new Promise<string>((res) =>
        proc.stdout?.on("data", (d) => {
          stdout += String(d);
          if (stdout.includes("\n")) res(stdout);
        }),
      );
      const agent = new AgentProcess(
        writeConfig(
          tempDir(),
          `version: 1
agent: { id: readme-pi, data_dir: ./data, require_clock_sync: never }
mqtt:
  url: ${broker.url}
  subscriptions:
    - { topic: "t/+", sensor: "{1}", metric: temperature, format: number }
destinations:
  ops: { url: "http://127.0.0.1:${port}/hooks", secret: ${WEBHOOK_SECRET} }
rules:
  - { name: hot, match: { metric: temperature }, above: 30, notify: [ops] }
http: { listen: false }
`,
        ),
      );
      try {
        await waitForPort(port, () => (proc.exitCode !== null ? `receiver exited: ${stderr}` : undefined));
        await agent.start();
        const client = await mqtt.connectAsync(broker.url);
        await client.publishAsync("t/gh1", "35", { qos: 1 });
        await client.endAsync();
        expect((await printed).trim()).toBe("alert.firing gh1 35");
      } finally {
        await agent.stop();
        proc.kill("SIGTERM");
      }
    });
  }
});
