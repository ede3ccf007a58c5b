import { describe, expect, it } from "vitest";
import { silentLogger } from "../../src/ops/logger.js";
import { SdNotify } from "../../src/ops/sd-notify.js";
import { FakeClock } from "../support/fake-clock.js";

const PID = 4242;
const notifier = (env: NodeJS.ProcessEnv) =>
  new SdNotify({ env, logger: silentLogger(), clock: new FakeClock(), pid: PID });

describe("SdNotify.watchdogIntervalMs (sd_watchdog_enabled(3))", () => {
  it.each([
    [{ NOTIFY_SOCKET: "/run/n", WATCHDOG_USEC: "30000000" }, 15_000],
    [{ NOTIFY_SOCKET: "/run/n", WATCHDOG_USEC: "30000000", WATCHDOG_PID: String(PID) }, 15_000],
    [{ NOTIFY_SOCKET: "@abstract", WATCHDOG_USEC: "400000", WATCHDOG_PID: "" }, 200],
    [{ NOTIFY_SOCKET: "/run/n", WATCHDOG_USEC: "1" }, 1],
    [{ NOTIFY_SOCKET: "/run/n", WATCHDOG_USEC: "30000000", WATCHDOG_PID: "1" }, undefined],
    [{ NOTIFY_SOCKET: "/run/n", WATCHDOG_USEC: "0" }, undefined],
    [{ NOTIFY_SOCKET: "/run/n", WATCHDOG_USEC: "soon" }, undefined],
    [{ NOTIFY_SOCKET: "/run/n" }, undefined],
    [{ WATCHDOG_USEC: "30000000" }, undefined],
    [{ NOTIFY_SOCKET: "", WATCHDOG_USEC: "30000000" }, undefined],
  ])("%j → %s", (env, expected) => {
    expect(notifier(env).watchdogIntervalMs).toBe(expected);
  });

  it("is enabled only with a socket", () => {
    expect(notifier({ NOTIFY_SOCKET: "/run/systemd/notify" }).enabled).toBe(true);
    expect(notifier({}).enabled).toBe(false);
  });
});
