/**
 * agent.service, checked by systemd's own tools (systemd-analyze verify and security),
 * which work without systemd running as PID 1. CI needs the Debian package `systemd`.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { configSchema } from "../../src/config/schema.js";

const UNIT = new URL("../../agent.service", import.meta.url);
const PACKAGE = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as {
  bin: Record<string, string>;
};

function systemdAnalyze(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync("systemd-analyze", args, { encoding: "utf8", timeout: 20_000 });
  if (r.error && (r.error as NodeJS.ErrnoException).code === "ENOENT") {
    throw new Error("systemd-analyze not found: install the Debian package 'systemd' (apt-get install -y systemd)");
  }
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The unit's [Service]/[Unit]/[Install] keys, each with all its values in order. */
function parseUnit(text: string): Map<string, string[]> {
  const keys = new Map<string, string[]>();
  let section = "";
  for (const line of text.split("\n")) {
    const t = line.trim();
    if (t === "" || t.startsWith("#")) continue;
    const s = /^\[(\w+)\]$/.exec(t);
    if (s) {
      section = s[1]!;
      continue;
    }
    const eq = t.indexOf("=");
    const key = `${section}.${t.slice(0, eq)}`;
    keys.set(key, [...(keys.get(key) ?? []), t.slice(eq + 1)]);
  }
  return keys;
}

function seconds(value: string): number {
  const m = /^(\d+)(s|min)?$/.exec(value);
  if (!m) throw new Error(`unexpected time span ${value}`);
  return Number(m[1]) * (m[2] === "min" ? 60 : 1);
}

let dir: string;
let installed: string;

/**
 * A copy named edgehook.service (as install.sh installs it), with /usr/bin/node replaced
 * by the node running this test, because verify checks that ExecStart's binary exists.
 */
function prepare(name: string, edit: (text: string) => string = (t) => t): string {
  const text = readFileSync(UNIT, "utf8").replaceAll("/usr/bin/node", process.execPath);
  const path = join(dir, name);
  writeFileSync(path, edit(text));
  return path;
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "edgehook-unit-"));
  installed = prepare("edgehook.service");
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe("agent.service", () => {
  it("passes systemd-analyze verify without a single warning", () => {
    const r = systemdAnalyze(["verify", installed]);
    expect({ status: r.status, stdout: r.stdout, stderr: r.stderr }).toEqual({ status: 0, stdout: "", stderr: "" });
  });

  it("the same check catches a mistyped key and a missing binary", () => {
    const typo = systemdAnalyze(["verify", prepare("typo.service", (t) => t.replace("WatchdogSec=", "WatchdogSecs="))]);
    expect(typo.stderr).toMatch(/Unknown key 'WatchdogSecs'/);
    const missing = systemdAnalyze([
      "verify",
      prepare("missing.service", (t) => t.replaceAll(process.execPath, "/nonexistent/node")),
    ]);
    expect(missing.status).not.toBe(0);
  });

  it("keeps systemd's exposure score at 2.5 or lower", () => {
    const r = systemdAnalyze(["security", "--offline=yes", "--threshold=25", installed]);
    const overall = /Overall exposure level for edgehook\.service: ([\d.]+)/.exec(r.stdout);
    expect(overall, r.stdout + r.stderr).not.toBeNull();
    expect(Number(overall![1])).toBeLessThanOrEqual(2.5);
    expect(r.status).toBe(0);
  });

  it("says what the agent relies on", () => {
    const unit = parseUnit(readFileSync(UNIT, "utf8"));
    const one = (key: string) => {
      const v = unit.get(key);
      expect(v, key).toHaveLength(1);
      return v![0]!;
    };
    expect(one("Service.Type")).toBe("notify");
    // systemd-notify runs as a child process: see src/ops/sd-notify.ts.
    expect(one("Service.NotifyAccess")).toBe("all");
    expect(one("Service.ExecStart")).toBe(
      `/usr/bin/node --max-semi-space-size=1 /opt/edgehook/${PACKAGE.bin.edgehook} run --config /etc/edgehook/agent.yaml`,
    );
    expect(one("Service.ExecReload")).toBe("/bin/kill -HUP $MAINPID");
    expect(one("Service.RestartPreventExitStatus")).toBe("78");
    expect(one("Service.Restart")).toBe("on-failure");
    expect(one("Service.User")).toBe("edgehook");
    expect(one("Service.SupplementaryGroups")).toBe("dialout");
    expect(one("Service.StateDirectory")).toBe("edgehook");
    expect(one("Service.ReadWritePaths")).toBe("/var/lib/edgehook");
    expect(one("Service.ProtectSystem")).toBe("strict");
    expect(unit.get("Service.DeviceAllow")).toContain("char-ttyUSB rw");
    expect(one("Install.WantedBy")).toBe("multi-user.target");
    // A missing credential file fails the unit, so LoadCredential= ships commented out.
    expect(unit.has("Service.LoadCredential")).toBe(false);
    expect(readFileSync(UNIT, "utf8")).toMatch(/^#LoadCredential=ops-webhook-secret:\/etc\/edgehook\//m);

    const defaults = configSchema.parse({ version: 1, agent: { id: "x" } });
    expect(seconds(one("Service.TimeoutStopSec")) * 1000).toBeGreaterThan(defaults.agent.shutdown_timeout * 2);
    expect(seconds(one("Service.WatchdogSec"))).toBeGreaterThanOrEqual(10);
  });
});
