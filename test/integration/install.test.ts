/**
 * scripts/install.sh into a throwaway root (EDGEHOOK_ROOT): install, upgrade over an
 * edited configuration and an existing outbox, uninstall, purge. The program is this
 * checkout's build (dist/) and its dependencies come from this checkout's node_modules,
 * pruned by npm to production packages (--from-checkout), so no network is needed.
 */
import { spawnSync } from "node:child_process";
import {
  chmodSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";

const CHECKOUT = realpathSync(new URL("../..", import.meta.url));

let tmp: string;
let source: string;
let root: string;

function install(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync("bash", [join(source, "scripts/install.sh"), ...args], {
    encoding: "utf8",
    timeout: 45_000,
    // Never the real root: every test sets EDGEHOOK_ROOT.
    env: { ...process.env, EDGEHOOK_ROOT: root, ...env },
  });
  return { status: r.status, out: r.stdout + r.stderr };
}

const at = (path: string) => join(root, path);
const mode = (path: string) => statSync(at(path)).mode & 0o777;

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), "edgehook-install-"));
  source = join(tmp, "source");
  root = join(tmp, "root");
  // A source tree shaped like the checkout / a release: the package's files, built code,
  // and node_modules (a symlink, as in a worktree).
  mkdirSync(join(source, "scripts"), { recursive: true });
  for (const f of ["package.json", "package-lock.json", "agent.service", "bin"]) {
    cpSync(join(CHECKOUT, f), join(source, f), { recursive: true });
  }
  cpSync(join(CHECKOUT, "scripts/install.sh"), join(source, "scripts/install.sh"));
  if (existsSync(join(CHECKOUT, "config")))
    cpSync(join(CHECKOUT, "config"), join(source, "config"), { recursive: true });
  if (!existsSync(join(source, "config/agent.example.yaml"))) {
    // Until the documented example lands in this branch: the same shape, minimal.
    mkdirSync(join(source, "config"), { recursive: true });
    writeFileSync(join(source, "config/agent.example.yaml"), "version: 1\nagent:\n  # names the device\n  id: my-pi\n");
  }
  symlinkSync(realpathSync(join(CHECKOUT, "node_modules")), join(source, "node_modules"));
  // The checkout's build, which `npm test` makes first and every test that runs
  // bin/edgehook.js uses (compiling a second copy here took most of this file's time).
  expect(existsSync(join(CHECKOUT, "dist/edgehook.js")), "dist/edgehook.js is missing: npm run build").toBe(true);
  cpSync(join(CHECKOUT, "dist"), join(source, "dist"), { recursive: true });
}, 60_000);

afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

describe("install.sh", () => {
  it("installs the program, configuration, unit and CLI link into the root", () => {
    const r = install(["--from-checkout"]);
    expect(r.status, r.out).toBe(0);
    expect(r.out).toMatch(/skipping creating system user edgehook: EDGEHOOK_ROOT is .*, not \//);
    expect(r.out).toMatch(/skipping systemctl daemon-reload \/ enable/);

    // Program: the package's files, production dependencies only, no build step left.
    expect(existsSync(at("opt/edgehook/bin/edgehook.js"))).toBe(true);
    expect(existsSync(at("opt/edgehook/dist"))).toBe(true);
    expect(existsSync(at("opt/edgehook/node_modules/better-sqlite3"))).toBe(true);
    expect(existsSync(at("opt/edgehook/node_modules/mqtt"))).toBe(true);
    for (const dev of ["typescript", "vitest", "@biomejs", "standardwebhooks"]) {
      expect(existsSync(at(`opt/edgehook/node_modules/${dev}`)), dev).toBe(false);
    }
    const pkg = JSON.parse(readFileSync(at("opt/edgehook/package.json"), "utf8")) as {
      scripts: Record<string, string>;
    };
    expect(pkg.scripts.prepare).toBeUndefined();
    // The installed native module works from the installed tree.
    const db = spawnSync(
      process.execPath,
      [
        "-e",
        'const D=require("better-sqlite3");const d=new D(":memory:");console.log(d.prepare("select 41+1 as x").get().x)',
      ],
      { cwd: at("opt/edgehook"), encoding: "utf8" },
    );
    expect(db.stdout.trim(), db.stderr).toBe("42");
    // The program is the bundle, not tsc's per-module build, and it runs from the installed
    // tree alone: its chunks load and the packages it leaves external resolve there.
    expect(existsSync(at("opt/edgehook/dist/edgehook.js"))).toBe(true);
    expect(existsSync(at("opt/edgehook/dist/chunks"))).toBe(true);
    expect(existsSync(at("opt/edgehook/dist/main.js"))).toBe(false);
    const installed = (...args: string[]) =>
      spawnSync(process.execPath, [at("opt/edgehook/bin/edgehook.js"), ...args], {
        cwd: tmp,
        encoding: "utf8",
        env: { ...process.env, OPS_WEBHOOK_SECRET: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" },
      });
    const v = installed("version");
    expect(v.stdout.trim(), v.stderr).toBe(
      (JSON.parse(readFileSync(join(CHECKOUT, "package.json"), "utf8")) as { version: string }).version,
    );
    const check = installed("check", "--config", join(source, "config/agent.example.yaml"));
    expect(check.status, check.stdout + check.stderr).toBe(0);
    expect(check.stdout).toMatch(/: ok/);

    // Configuration from the example, data kept in the state directory, not world-readable.
    const example = parse(readFileSync(join(source, "config/agent.example.yaml"), "utf8"));
    const conf = parse(readFileSync(at("etc/edgehook/agent.yaml"), "utf8"));
    expect(conf).toEqual({ ...example, agent: { ...example.agent, data_dir: "/var/lib/edgehook" } });
    expect(mode("etc/edgehook/agent.yaml")).toBe(0o640);
    expect(mode("var/lib/edgehook")).toBe(0o750);

    expect(readFileSync(at("etc/systemd/system/edgehook.service"), "utf8")).toBe(
      readFileSync(join(CHECKOUT, "agent.service"), "utf8"),
    );
    expect(lstatSync(at("usr/local/bin/edgehook")).isSymbolicLink()).toBe(true);
    expect(readlinkSync(at("usr/local/bin/edgehook"))).toBe("/opt/edgehook/bin/edgehook.js");
  });

  it("upgrades in place: program replaced, edited configuration and outbox kept", () => {
    writeFileSync(at("etc/edgehook/agent.yaml"), "version: 1\nagent:\n  id: edited-by-me\n");
    writeFileSync(at("var/lib/edgehook/outbox.db"), "pretend outbox");
    writeFileSync(at("opt/edgehook/left-over-from-old-version.js"), "");

    const r = install(["--from-checkout"]);
    expect(r.status, r.out).toBe(0);
    expect(r.out).toMatch(/kept the existing \/etc\/edgehook\/agent\.yaml/);
    expect(readFileSync(at("etc/edgehook/agent.yaml"), "utf8")).toBe("version: 1\nagent:\n  id: edited-by-me\n");
    expect(readFileSync(at("var/lib/edgehook/outbox.db"), "utf8")).toBe("pretend outbox");
    expect(existsSync(at("opt/edgehook/left-over-from-old-version.js"))).toBe(false);
    expect(existsSync(at("opt/edgehook/bin/edgehook.js"))).toBe(true);
    expect(existsSync(at("opt/edgehook.new"))).toBe(false);
    expect(existsSync(at("opt/edgehook.old"))).toBe(false);
  });

  it("--uninstall removes the program and unit but keeps configuration and data", () => {
    const r = install(["--uninstall"]);
    expect(r.status, r.out).toBe(0);
    expect(existsSync(at("opt/edgehook"))).toBe(false);
    expect(existsSync(at("etc/systemd/system/edgehook.service"))).toBe(false);
    expect(existsSync(at("usr/local/bin/edgehook"))).toBe(false);
    expect(readFileSync(at("etc/edgehook/agent.yaml"), "utf8")).toMatch(/edited-by-me/);
    expect(readFileSync(at("var/lib/edgehook/outbox.db"), "utf8")).toBe("pretend outbox");
    expect(r.out).toMatch(/kept \/etc\/edgehook \(configuration\) and \/var\/lib\/edgehook \(outbox\)/);
  });

  it("--uninstall --purge removes configuration and data too", () => {
    const r = install(["--uninstall", "--purge"]);
    expect(r.status, r.out).toBe(0);
    expect(existsSync(at("etc/edgehook"))).toBe(false);
    expect(existsSync(at("var/lib/edgehook"))).toBe(false);
    expect(r.out).toMatch(/skipping userdel edgehook/);
  });

  it("refuses an old Node.js with instructions, before touching anything", () => {
    const fake = join(tmp, "old-node");
    writeFileSync(fake, "#!/bin/sh\necho v18.19.0\n");
    chmodSync(fake, 0o755);
    const r = install(["--from-checkout"], { NODE: fake });
    expect(r.status).toBe(1);
    expect(r.out).toMatch(/Node\.js 18\.19\.0 is too old/);
    // The minimum install.sh names is the one package.json promises.
    const pkg = JSON.parse(readFileSync("package.json", "utf8")) as { engines: { node: string } };
    expect(r.out).toContain(`needs Node.js ${pkg.engines.node.replace(">=", "")} or newer`);
    expect(r.out).toMatch(/deb\.nodesource\.com/);
    expect(existsSync(at("opt/edgehook"))).toBe(false);

    const missing = install([], { NODE: join(tmp, "no-such-node") });
    expect(missing.status).toBe(1);
    expect(missing.out).toMatch(/Node\.js not found/);
  });

  it("refuses a PREFIX it could not safely remove, and unknown options", () => {
    const r = install(["--uninstall"], { PREFIX: "/opt" });
    expect(r.status).toBe(1);
    expect(r.out).toMatch(/PREFIX must be an absolute path containing 'edgehook'/);
    const bad = install(["--frobnicate"]);
    expect(bad.status).toBe(1);
    expect(bad.out).toMatch(/unknown option: --frobnicate/);
  });

  it("installs under another PREFIX with the unit and link following it", () => {
    const r = install(["--from-checkout", "--no-enable"], { PREFIX: "/srv/edgehook" });
    expect(r.status, r.out).toBe(0);
    expect(readFileSync(at("etc/systemd/system/edgehook.service"), "utf8")).toMatch(
      /^ExecStart=\/usr\/bin\/node --max-semi-space-size=1 \/srv\/edgehook\/bin\/edgehook\.js run --config \/etc\/edgehook\/agent\.yaml$/m,
    );
    expect(readlinkSync(at("usr/local/bin/edgehook"))).toBe("/srv/edgehook/bin/edgehook.js");
    const u = install(["--uninstall", "--purge"], { PREFIX: "/srv/edgehook" });
    expect(u.status, u.out).toBe(0);
    expect(existsSync(at("srv/edgehook"))).toBe(false);
  });
});
