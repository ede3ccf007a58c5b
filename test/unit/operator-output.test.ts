/**
 * What the operator reads: log lines in a terminal, payload text made safe for a
 * terminal, and configuration warnings with a position instead of library noise.
 */
import { describe, expect, it, vi } from "vitest";
import { safe } from "../../src/cli/safe-text.js";
import { parseConfig } from "../../src/config/load.js";
import { createPrettyLogger, formatPretty, resolveLogFormat, useColor } from "../../src/ops/logger.js";

describe("log format", () => {
  it.each([
    ["auto", { JOURNAL_STREAM: "8:1234" }, true, "json"],
    ["auto", { INVOCATION_ID: "abc" }, true, "json"],
    ["auto", {}, true, "pretty"],
    ["auto", {}, false, "json"],
    ["pretty", { JOURNAL_STREAM: "8:1234" }, false, "pretty"],
    ["json", {}, true, "json"],
  ] as const)("%s with %j, tty %s → %s", (format, env, tty, want) => {
    expect(resolveLogFormat(format, env, tty)).toBe(want);
  });

  it.each([
    [{}, true, true],
    [{ NO_COLOR: "1" }, true, false],
    [{ TERM: "dumb" }, true, false],
    [{}, false, false],
    [{ FORCE_COLOR: "1" }, false, true],
  ] as const)("colour with %j, tty %s: %s", (env, tty, want) => {
    expect(useColor(env, tty)).toBe(want);
  });

  it("a pretty line: local time, level, component, message, then the fields; times as clock times", () => {
    const at = new Date(2026, 10, 29, 10, 31, 14).getTime();
    const line = formatPretty(
      JSON.stringify({
        level: "warn",
        time: new Date(at).toISOString(),
        pid: 42,
        component: "dispatcher",
        msg: "destination ops still unreachable",
        destination: "ops",
        error: "connection refused (ECONNREFUSED)",
        downSince: new Date(at - 15_000).toISOString(),
        since: at - 60_000,
        probes: 4,
      }),
      false,
    );
    expect(line).toBe(
      '10:31:14 WARN  dispatcher  destination ops still unreachable  destination=ops error="connection refused (ECONNREFUSED)" downSince=10:30:59 since=10:30:14 probes=4\n',
    );
  });

  it("colours the level only when asked, and escapes control characters from payloads", () => {
    const json = JSON.stringify({ level: "error", time: Date.now(), msg: "bad \u001b[2J name", sensor: "a\nb" });
    expect(formatPretty(json, false)).toContain('bad \\e[2J name  sensor="a\\nb"');
    expect(formatPretty(json, false)).not.toContain("\u001b");
    expect(formatPretty(json, true)).toContain("\u001b[31mERROR");
  });

  it("errors show their message, and redaction still applies", () => {
    const lines: string[] = [];
    const log = createPrettyLogger("info", (l) => lines.push(l), false);
    log.child({ component: "mqtt" }).error({ err: new Error("boom"), password: "hunter2" }, "connect failed");
    log.flush();
    expect(lines.join("")).toMatch(/ERROR mqtt {2}connect failed {2}err="boom" password=\[redacted\]/);
    expect(lines.join("")).not.toContain("hunter2");
  });
});

describe("safe text for a terminal", () => {
  it.each([
    ["plain-sensor", "plain-sensor"],
    ["clear\u001b[2Jscreen", "clear\\e[2Jscreen"],
    ["fake\nrow", "fake\\nrow"],
    ["back\rspace\b", "back\\rspace\\x08"],
    ["c1\u009bx", "c1\\x9bx"],
    ["rtl\u202eevil", "rtl\\u202eevil"],
    ["ünïcode °C", "ünïcode °C"],
  ])("%j → %j", (input, want) => {
    expect(safe(input)).toBe(want);
  });
});

describe("configuration warnings", () => {
  const base = `version: 1
agent: { id: pi }
`;

  it("a key that is a list is a warning with its position, not a library warning on stderr", () => {
    const emit = vi.spyOn(process, "emitWarning");
    try {
      const loaded = parseConfig(
        `${base}mqtt:
  url: mqtt://127.0.0.1:1883
  subscriptions:
    - topic: t/+
      metric: temperature
      format: number
      labels:
        ? [site, room]
        : greenhouse
`,
        "agent.yaml",
        { env: {} },
      );
      expect(emit).not.toHaveBeenCalled();
      expect(loaded.warnings).toEqual([
        "agent.yaml:10:11: mqtt.subscriptions.0.labels: a key that is a list or mapping is read as text; quote it or fix the indentation",
      ]);
    } finally {
      emit.mockRestore();
    }
  });

  it("warns about tls.reject_unauthorized: false and credentials in a destination URL", () => {
    const loaded = parseConfig(
      `${base}destinations:
  ops:
    url: https://user:pass@hooks.example.com/h
    signature: none
    tls: { reject_unauthorized: false }
`,
      "agent.yaml",
      { env: {} },
    );
    expect(loaded.warnings).toEqual([
      expect.stringMatching(/^agent\.yaml:5:10: destinations\.ops\.url: holds credentials/),
      expect.stringMatching(/^agent\.yaml:7:33: destinations\.ops\.tls\.reject_unauthorized: false/),
    ]);
    expect(loaded.warnings.join()).not.toContain("pass@");
  });

  it("warns when the status server listens on the network without a token", () => {
    const open = parseConfig(`${base}http: { listen: "0.0.0.0:9780" }\n`, "agent.yaml", { env: {} });
    expect(open.warnings).toEqual([expect.stringMatching(/http\.listen: is reachable from other hosts/)]);
    const withToken = parseConfig(`${base}http: { listen: "0.0.0.0:9780", token: t0k }\n`, "agent.yaml", { env: {} });
    expect(withToken.warnings).toEqual([]);
    expect(parseConfig(`${base}http: { listen: "[::1]:9780" }\n`, "agent.yaml", { env: {} }).warnings).toEqual([]);
  });

  it("never echoes a header value in an error (it may be an API key)", () => {
    let message = "";
    try {
      parseConfig(
        `${base}destinations:
  ops:
    url: http://127.0.0.1:9/h
    signature: none
    headers: { X-Api-Key: 12345-secret-key, X-Count: [1] }
`,
        "agent.yaml",
        { env: {} },
      );
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toContain("destinations.ops.headers.X-Count");
    expect(message).not.toContain("12345-secret-key");
  });
});

describe("a serial port's name", () => {
  it("defaults to the file name of its path (the by-id name), and can still be given", () => {
    const loaded = parseConfig(
      `version: 1
agent: { id: pi }
serial:
  - path: /dev/serial/by-id/usb-Arduino_Uno_0001-if00
  - path: /dev/ttyUSB0
  - { name: bench, path: /dev/ttyACM0 }
  - path: "/dev/serial/by-path/platform-3f980000.usb-usb-0:1.2:1.0"
`,
      "agent.yaml",
      { env: {} },
    );
    expect(loaded.config.serial.map((s) => s.name)).toEqual([
      "usb-Arduino_Uno_0001-if00",
      "ttyUSB0",
      "bench",
      "platform-3f980000.usb-usb-0_1.2_1.0",
    ]);
  });

  it("two ports on the same path are still told apart by a name", () => {
    expect(() =>
      parseConfig(
        `version: 1\nagent: { id: pi }\nserial:\n  - path: /dev/ttyUSB0\n  - path: /dev/ttyUSB0\n`,
        "agent.yaml",
        {
          env: {},
        },
      ),
    ).toThrow(/serial\.1\.name: another serial port has this name/);
  });
});
