/**
 * SdNotify against a real AF_UNIX datagram socket, through the real systemd-notify.
 */
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { systemClock } from "../../src/clock.js";
import { createLogger, type Logger, silentLogger } from "../../src/ops/logger.js";
import { SdNotify } from "../../src/ops/sd-notify.js";
import { NotifySocket } from "../support/notify-socket.js";

const PID = process.pid;
const PATH = process.env.PATH ?? "/usr/bin:/bin";

function capturingLogger(): { logger: Logger; lines: () => Record<string, unknown>[] } {
  const out: string[] = [];
  const logger = createLogger("debug", { write: (s: string) => out.push(s) });
  return { logger, lines: () => out.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

let tmp: string;
beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), "edgehook-notify-test-"));
});
afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

describe("SdNotify with a real notify socket", () => {
  let sock: NotifySocket;
  let notify: SdNotify | undefined;
  afterEach(async () => {
    await notify?.stop();
    notify = undefined;
    await sock.stop();
  });

  it("sends READY=1, STATUS, WATCHDOG=1 every half WATCHDOG_USEC and STOPPING=1, in order", async () => {
    sock = new NotifySocket();
    await sock.start();
    notify = new SdNotify({
      env: { PATH, NOTIFY_SOCKET: sock.path, WATCHDOG_USEC: "400000", WATCHDOG_PID: String(PID) },
      logger: silentLogger(),
      clock: systemClock,
      pid: PID,
    });
    expect(notify.watchdogIntervalMs).toBe(200);

    await notify.ready("running: 2 sources");
    const ready = await sock.waitFor("READY");
    expect(ready[0]?.fields).toMatchObject({ READY: "1", STATUS: "running: 2 sources", MAINPID: String(PID) });

    const t0 = Date.now();
    notify.startWatchdog();
    const pings = await sock.waitFor("WATCHDOG", 3, 2_000);
    // The first ping goes out at once, the next ones 200 ms apart: three pings well within 1 s.
    expect(pings[2]!.at - t0).toBeLessThan(1_000);
    expect(pings[2]!.at - pings[1]!.at).toBeGreaterThanOrEqual(100);
    expect(pings.every((p) => p.fields.WATCHDOG === "1")).toBe(true);

    await notify.status("reloading rules\nnow");
    expect((await sock.waitFor("STATUS", 2))[1]?.fields.STATUS).toBe("reloading rules now");

    await notify.stopping();
    await notify.stop();
    const stopping = await sock.waitFor("STOPPING");
    expect(stopping[0]?.fields.STOPPING).toBe("1");
    expect(sock.messages.indexOf(ready[0]!)).toBeLessThan(sock.messages.indexOf(stopping[0]!));

    // After stop() the watchdog is silent.
    const count = sock.with("WATCHDOG").length;
    await new Promise((r) => setTimeout(r, 500));
    expect(sock.with("WATCHDOG").length).toBe(count);
  });

  it("works with an abstract-namespace socket (@name), in order", async () => {
    sock = new NotifySocket({ abstract: true });
    await sock.start();
    expect(sock.path.startsWith("@")).toBe(true);
    notify = new SdNotify({
      env: { PATH, NOTIFY_SOCKET: sock.path },
      logger: silentLogger(),
      clock: systemClock,
      pid: PID,
    });
    await notify.extendTimeout(90_000);
    await notify.ready();
    await notify.reloading();
    await notify.stopping();
    await sock.waitFor("STOPPING");
    expect(sock.messages.filter((m) => !("BARRIER" in m.fields)).map((m) => Object.keys(m.fields).sort())).toEqual([
      ["EXTEND_TIMEOUT_USEC", "MAINPID"],
      ["MAINPID", "READY"],
      ["MAINPID", "RELOADING"],
      ["MAINPID", "STOPPING"],
    ]);
    expect(sock.with("EXTEND_TIMEOUT_USEC")[0]?.fields.EXTEND_TIMEOUT_USEC).toBe("90000000");
  });

  it("sends no watchdog pings when WATCHDOG_PID names another process or WATCHDOG_USEC is unset", async () => {
    sock = new NotifySocket();
    await sock.start();
    const other = new SdNotify({
      env: { PATH, NOTIFY_SOCKET: sock.path, WATCHDOG_USEC: "200000", WATCHDOG_PID: String(PID + 1) },
      logger: silentLogger(),
      clock: systemClock,
      pid: PID,
    });
    const unset = new SdNotify({
      env: { PATH, NOTIFY_SOCKET: sock.path },
      logger: silentLogger(),
      clock: systemClock,
      pid: PID,
    });
    expect(other.watchdogIntervalMs).toBeUndefined();
    expect(unset.watchdogIntervalMs).toBeUndefined();
    other.startWatchdog();
    unset.startWatchdog();
    await new Promise((r) => setTimeout(r, 500));
    await other.ready();
    await sock.waitFor("READY");
    await other.stop();
    await unset.stop();
    expect(sock.with("WATCHDOG")).toEqual([]);
  });

  it("withholds watchdog pings while the agent reports itself unhealthy", async () => {
    sock = new NotifySocket();
    await sock.start();
    notify = new SdNotify({
      env: { PATH, NOTIFY_SOCKET: sock.path, WATCHDOG_USEC: "200000" },
      logger: silentLogger(),
      clock: systemClock,
      pid: PID,
    });
    let healthy = false;
    notify.startWatchdog(() => healthy);
    await new Promise((r) => setTimeout(r, 400));
    expect(sock.with("WATCHDOG")).toEqual([]);
    healthy = true;
    await sock.waitFor("WATCHDOG", 1, 1_000);
  });
});

describe("SdNotify without NOTIFY_SOCKET", () => {
  // A stand-in systemd-notify found first on PATH that records every invocation.
  function fakeNotifier(): { path: string; log: string } {
    const dir = mkdtempSync(join(tmp, "bin-"));
    const log = join(dir, "invocations.log");
    const script = join(dir, "systemd-notify");
    writeFileSync(script, `#!/bin/sh\necho "$@" >> '${log}'\n`);
    chmodSync(script, 0o755);
    return { path: `${dir}:${PATH}`, log };
  }

  it("spawns nothing at all", async () => {
    const fake = fakeNotifier();
    const notify = new SdNotify({
      env: { PATH: fake.path, WATCHDOG_USEC: "100000" },
      logger: silentLogger(),
      clock: systemClock,
      pid: PID,
    });
    expect(notify.enabled).toBe(false);
    notify.startWatchdog();
    await notify.ready("x");
    await notify.status("y");
    await notify.reloading();
    await notify.stopping();
    await new Promise((r) => setTimeout(r, 300));
    await notify.stop();
    expect(existsSync(fake.log)).toBe(false);

    // The same stand-in does record when the socket is set: the check above can fail.
    const control = new SdNotify({
      env: { PATH: fake.path, NOTIFY_SOCKET: join(tmp, "nowhere.sock") },
      logger: silentLogger(),
      clock: systemClock,
      pid: PID,
    });
    await control.ready();
    expect(readFileSync(fake.log, "utf8")).toBe(`--pid=${PID} READY=1\n`);
  });

  it("logs one clear error and carries on when systemd-notify is missing", async () => {
    const { logger, lines } = capturingLogger();
    const notify = new SdNotify({
      env: { PATH, NOTIFY_SOCKET: join(tmp, "nowhere.sock") },
      logger,
      clock: systemClock,
      pid: PID,
      command: "edgehook-no-such-systemd-notify",
    });
    await notify.ready();
    await notify.stopping();
    logger.flush();
    await new Promise((r) => setTimeout(r, 50));
    const errors = lines().filter((l) => l.level === "error");
    expect(errors).toHaveLength(1);
    expect(String(errors[0]?.msg)).toMatch(/systemd-notify was not found/);
  });

  it("logs a warning and resolves when the socket does not exist", async () => {
    const { logger, lines } = capturingLogger();
    const notify = new SdNotify({
      env: { PATH, NOTIFY_SOCKET: join(tmp, "missing.sock") },
      logger,
      clock: systemClock,
      pid: PID,
    });
    await notify.ready();
    logger.flush();
    await new Promise((r) => setTimeout(r, 50));
    expect(lines().some((l) => l.level === "warn" && /did not deliver/.test(String(l.msg)))).toBe(true);
  });
});
