/**
 * `edgehook run` in a real terminal (a pty from util-linux `script`) prints short readable
 * lines, coloured unless NO_COLOR; under systemd (JOURNAL_STREAM) it stays JSON.
 */
import { spawn } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import { BIN, tempDir, writeConfig } from "../support/agent-process.js";
import { track } from "../support/children.js";
import { waitUntil } from "../support/wait.js";

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await Promise.resolve(c()).catch(() => {});
});

/** Runs the agent on a pty until it logged "edgehook running", stops it, returns what the terminal showed. */
async function runOnTerminal(env: NodeJS.ProcessEnv, args: string[] = []): Promise<string> {
  const dir = tempDir("edgehook-tty-");
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const file = writeConfig(dir, "version: 1\nagent: { id: tty-pi, data_dir: ./data }\nhttp: { listen: false }\n");
  const { JOURNAL_STREAM: _j, INVOCATION_ID: _i, NO_COLOR: _n, FORCE_COLOR: _f, ...rest } = process.env;
  const proc = track(
    spawn(
      "script",
      ["-q", "-e", "-c", `exec "${process.execPath}" "${BIN}" run --config "${file}" ${args.join(" ")}`, "/dev/null"],
      {
        env: { ...rest, TERM: "xterm-256color", ...env },
        stdio: ["pipe", "pipe", "pipe"],
      },
    ),
  );
  let screen = "";
  proc.stdout?.on("data", (d: Buffer) => {
    screen += d.toString("utf8");
  });
  const exited = new Promise((r) => proc.once("exit", r));
  await waitUntil(() => screen.includes("edgehook running"), "the agent running on a terminal", 15_000);
  // `script` runs the agent as its child on the pty; SIGTERM stops it (a hang-up would reload it).
  const children = readFileSync(`/proc/${proc.pid}/task/${proc.pid}/children`, "utf8").trim().split(/\s+/);
  for (const pid of children) process.kill(Number(pid), "SIGTERM");
  await exited;
  return screen;
}

describe("logs on a terminal", () => {
  it("are short coloured lines: time, level, component, message, fields", async () => {
    const screen = await runOnTerminal({});
    expect(screen).toContain("\u001b[32mINFO ");
    // biome-ignore lint/suspicious/noControlCharactersInRegex: removing the colour codes
    const plain = screen.replace(/\u001b\[[0-9;]*m/g, "").replace(/\r/g, "");
    expect(plain).toMatch(/^\d\d:\d\d:\d\d INFO {2}edgehook running {2}agent=tty-pi version=\d+\.\d+\.\d+$/m);
    expect(plain).toMatch(/^\d\d:\d\d:\d\d INFO {2}stopped$/m);
    expect(plain).not.toContain('{"level"');
  });

  it("NO_COLOR keeps them plain", async () => {
    const screen = await runOnTerminal({ NO_COLOR: "1" });
    expect(screen).toMatch(/\d\d:\d\d:\d\d INFO {2}edgehook running/);
    expect(screen).not.toContain("\u001b[");
  });

  it("under systemd (JOURNAL_STREAM set) they stay JSON, one object per line", async () => {
    const screen = await runOnTerminal({ JOURNAL_STREAM: "8:12345" });
    const lines = screen.replace(/\r/g, "").split("\n").filter(Boolean);
    expect(lines.length).toBeGreaterThan(1);
    for (const l of lines) expect(JSON.parse(l)).toHaveProperty("level");
  });

  it("--log-format json wins over the terminal", async () => {
    const screen = await runOnTerminal({}, ["--log-format", "json"]);
    const lines = screen.replace(/\r/g, "").split("\n").filter(Boolean);
    expect(lines.map((l) => (JSON.parse(l) as { msg: string }).msg)).toContain("edgehook running");
  });
});
