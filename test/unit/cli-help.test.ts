/**
 * Every command in the table answers --help and -h with its usage, options and an
 * example, exit 0, without reading a configuration; typos get a "did you mean".
 */
import { describe, expect, it } from "vitest";
import { COMMANDS, checkOptions, resolveCommand } from "../../src/cli/commands.js";
import type { CliIO } from "../../src/cli/io.js";
import { runCli } from "../../src/cli.js";
import { parseConfig } from "../../src/config/load.js";
import { closest } from "../../src/suggest.js";

async function cli(...argv: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const io: CliIO = {
    // A configuration that does not exist: help must not look for it.
    env: { EDGEHOOK_CONFIG: "/nonexistent/edgehook/agent.yaml" },
    pid: 1,
    out: (l) => out.push(l),
    err: (l) => err.push(l),
    onSignal: () => () => {},
    exitNow: () => {
      throw new Error("exitNow");
    },
  };
  const code = await runCli(argv, io);
  return { code, out: out.join("\n"), err: err.join("\n") };
}

describe("edgehook help", () => {
  for (const spec of COMMANDS) {
    for (const flag of ["--help", "-h"]) {
      it(`edgehook ${spec.name} ${flag}`, async () => {
        const r = await cli(...spec.name.split(" "), flag);
        expect(r.err).toBe("");
        expect(r.code).toBe(0);
        expect(r.out).toContain(`Usage: edgehook ${spec.name}`);
        expect(r.out).toContain("Example:");
        expect(r.out).toContain(spec.example);
        for (const opt of Object.keys(spec.options)) expect(r.out).toContain(`--${opt}`);
      });
    }
    it(`edgehook help ${spec.name}`, async () => {
      const r = await cli("help", ...spec.name.split(" "));
      expect(r.code).toBe(0);
      expect(r.out).toContain(`Usage: edgehook ${spec.name}`);
    });
    it(`edgehook ${spec.name}: every option in the table is accepted, an unknown one refused`, () => {
      for (const [name, o] of Object.entries(spec.options)) {
        expect(checkOptions(spec, [`--${name}`, ...(o.value ? ["x"] : [])])).toBeUndefined();
      }
      expect(checkOptions(spec, ["--no-such-option"])).toMatch(/unknown option '--no-such-option'/);
    });
  }

  it("help after positional arguments: send-test --help is not a destination", async () => {
    expect((await cli("send-test", "--help")).out).toContain("Usage: edgehook send-test DESTINATION");
    expect((await cli("queue", "show", "msg_1", "-h")).code).toBe(0);
  });

  it("edgehook help, --help and -h print the overview with every command", async () => {
    for (const argv of [["help"], ["--help"], ["-h"]]) {
      const r = await cli(...argv);
      expect(r.code).toBe(0);
      for (const spec of COMMANDS) expect(r.out).toContain(spec.name);
    }
    // No command at all is a usage error, with the overview on stderr.
    const none = await cli();
    expect(none.code).toBe(64);
    expect(none.err).toContain("Commands:");
  });

  it("edgehook queue --help lists the queue commands", async () => {
    const r = await cli("queue", "--help");
    expect(r.code).toBe(0);
    expect(r.out).toContain("edgehook queue stats");
    expect(r.out).toContain("edgehook queue purge");
  });
});

describe("did you mean", () => {
  it.each([
    [["stauts"], "unknown command 'stauts' (did you mean 'status'?)"],
    [["queue", "stat"], "unknown queue command 'stat' (did you mean 'stats'?)"],
    [["queue", "lsit"], "unknown queue command 'lsit' (did you mean 'list'?)"],
    [["destination", "enabel", "ops"], "(did you mean 'enable'?)"],
    [
      ["queue", "list", "--destnation", "ops"],
      "unknown option '--destnation' for edgehook queue list (did you mean '--destination'?)",
    ],
    [["status", "--jsno"], "(did you mean '--json'?)"],
    [["run", "--log-fromat", "json"], "(did you mean '--log-format'?)"],
  ])("edgehook %j", async (argv, message) => {
    const r = await cli(...argv);
    expect(r.code).toBe(64);
    expect(r.err).toContain(message);
    expect(r.err).toContain("edgehook");
  });

  it("says nothing when nothing is close", async () => {
    const r = await cli("frobnicate");
    expect(r.err).toContain("unknown command 'frobnicate'");
    expect(r.err).not.toContain("did you mean");
    expect(closest("zzzz", ["stats", "list"])).toBeUndefined();
  });

  it("resolves commands of a group and of one word", () => {
    expect(resolveCommand(["queue", "stats", "--json"])).toMatchObject({
      spec: { name: "queue stats" },
      rest: ["--json"],
    });
    expect(resolveCommand(["status"])).toMatchObject({ spec: { name: "status" }, rest: [] });
  });

  it("an unknown configuration key names the nearest known one", () => {
    const yaml = `version: 1
agent:
  id: pi
  log_levle: debug
destinations:
  ops: { url: "http://127.0.0.1:9/h", signature: none }
rules:
  - name: hot
    sensor: "*"
    metric: temperature
    above: 30
    clear_bellow: 28
    notify: [ops]
`;
    let message = "";
    try {
      parseConfig(yaml, "agent.yaml", { env: {} });
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toContain("agent.yaml:4:3: agent.log_levle: unknown key (did you mean 'log_level'?)");
    expect(message).toContain("rules.0.clear_bellow: unknown key (did you mean 'clear_below'?)");
  });
});

describe("edgehook demo options", () => {
  it("refuses a --speed it cannot play, before starting anything", async () => {
    for (const speed of ["fast", "0", "50"]) {
      const r = await cli("demo", "--speed", speed);
      expect(r.code).toBe(64);
      expect(r.err).toBe(`edgehook demo: --speed must be a number from 0.1 to 20 (is '${speed}')`);
    }
  });
});
