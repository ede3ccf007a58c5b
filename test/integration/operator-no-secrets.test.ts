/**
 * The documented recipe `sudo -u edgehook edgehook queue stats` under LoadCredential=:
 * the operator commands start as a user who cannot read a single secret, while `run`
 * and `send-test`, which need them, refuse with the file they cannot read.
 * Runs the real binary as `nobody` (runuser; the tests run as root).
 */
import { spawnSync } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import mqtt from "mqtt";
import { afterEach, describe, expect, it } from "vitest";
import { AgentProcess, BIN, tempDir, writeConfig } from "../support/agent-process.js";
import { freePort } from "../support/ports.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";
import { waitUntil } from "../support/wait.js";

const NOBODY = 65534;
const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await Promise.resolve(c()).catch(() => {});
});

/** The edgehook binary as the user nobody, with no secret in its environment. */
function asNobody(args: string[]) {
  const r = spawnSync("runuser", ["-u", "nobody", "--", process.execPath, BIN, ...args], {
    encoding: "utf8",
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", LANG: "C.UTF-8" },
    timeout: 30_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function chownTree(path: string, uid: number): void {
  chownSync(path, uid, uid);
  if (statSync(path).isDirectory()) for (const f of readdirSync(path)) chownTree(join(path, f), uid);
}

describe("operator commands need no secrets", () => {
  it("queue, status and destination enable work as a user who cannot read any secret; run and send-test do not", async () => {
    if (process.getuid?.() !== 0) throw new Error("this test switches to the user nobody: run it as root (CI does)");
    const dir = tempDir("edgehook-nosecret-");
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    chmodSync(dir, 0o755);
    const creds = join(dir, "credentials");
    mkdirSync(creds, { mode: 0o700 });
    for (const [f, v] of [
      ["ops-secret", WEBHOOK_SECRET],
      ["lake-token", "tk_lake"],
      ["pager-password", "pw"],
      ["http-token", "page-token"],
    ] as const) {
      writeFileSync(join(creds, f), `${v}\n`, { mode: 0o600 });
    }
    const [httpPort, mqttPort, deadPort] = [await freePort(), await freePort(), await freePort()];
    const file = writeConfig(
      dir,
      `version: 1
agent: { id: nosecret-pi, data_dir: ./data, shutdown_timeout: 1s, require_clock_sync: never }
mqtt:
  url: embedded
  embedded: { host: 127.0.0.1, port: ${mqttPort} }
  subscriptions:
    - { topic: "t/+", sensor: "{1}", metric: temperature, format: number }
destinations:
  ops:
    url: http://127.0.0.1:${deadPort}/hook
    secret_file: credentials/ops-secret
  lake:
    url: http://127.0.0.1:${deadPort}/lake
    signature: none
    token_file: credentials/lake-token
  pager:
    url: http://127.0.0.1:${deadPort}/pager
    signature: none
    basic_auth: { username: edgehook, password_file: credentials/pager-password }
  env:
    url: http://127.0.0.1:${deadPort}/env
    secret: \${ENV_SECRET}
rules:
  - name: hot
    match: { sensor: "*", metric: temperature }
    above: 30
    notify: [ops, lake]
http:
  listen: 127.0.0.1:${httpPort}
  token_file: credentials/http-token
`,
    );
    chmodSync(file, 0o644);

    // The agent (root here, the service user in production) reads every secret.
    const agent = new AgentProcess(file, { ENV_SECRET: WEBHOOK_SECRET });
    cleanups.push(() => agent.stop());
    await agent.start();
    const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${mqttPort}`, { clientId: "nosecret-pub" });
    await client.publishAsync("t/bench", "35", { qos: 1 });
    await client.endAsync();
    // The data belongs to the service user; the credentials stay root's.
    chownTree(join(dir, "data"), NOBODY);

    // While the agent runs: status comes from its API; nothing is read from disk.
    await waitUntil(() => asNobody(["status", "--config", file]).stdout.includes("ops"), "status as nobody");
    const live = asNobody(["status", "--config", file]);
    expect(live.code).toBe(0);
    expect(live.stderr).toBe("");
    expect(live.stdout).toMatch(/ops\s+down \(since/);
    expect(live.stdout).not.toContain("whsec_");

    const stats = asNobody(["queue", "stats", "--config", file]);
    expect(stats).toMatchObject({ code: 0, stderr: "" });
    expect(stats.stdout).toMatch(/ops\s+down \(since [^)]*\)\s+1\s/);

    await agent.stop();
    const down = asNobody(["status", "--config", file]);
    expect(down).toMatchObject({ code: 0, stderr: "" });
    expect(down.stdout).toContain("AGENT DOWN");
    expect(down.stdout).toMatch(/ops\s+unknown \(agent down\)\s+1\s/);
    const list = asNobody(["queue", "list", "--config", file]);
    expect(list).toMatchObject({ code: 0, stderr: "" });
    expect(list.stdout).toMatch(/hot\/bench\/temperature/);
    expect(asNobody(["destination", "enable", "ops", "--config", file])).toMatchObject({
      code: 0,
      stdout: "ops: was not disabled; nothing to do\n",
    });

    // The commands that sign or send refuse, naming the file they cannot read.
    const send = asNobody(["send-test", "ops", "--config", file]);
    expect(send.code).toBe(78);
    expect(send.stderr).toMatch(/destinations\.ops\.secret_file: cannot read .*ops-secret \(EACCES\)/);
    const run = asNobody(["run", "--config", file]);
    expect(run.code).toBe(78);
    expect(run.stderr).toMatch(/EACCES/);
  });
});
