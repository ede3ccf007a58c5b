/**
 * The `edgehook` command. Each subcommand returns an exit code; only main.ts turns
 * it into a process exit. Usage errors exit 64, configuration errors 78 (EX_CONFIG),
 * so systemd's RestartPreventExitStatus=78 stops a bad config from restart-looping.
 */
import { parseArgs } from "node:util";
import {
  COMMANDS,
  type CommandSpec,
  type ConfigMode,
  checkOptions,
  commandHelp,
  GROUPS,
  overview,
  resolveCommand,
  usageLine,
  wantsHelp,
} from "./cli/commands.js";
import type { CliIO } from "./cli/io.js";
import { ConfigError, type LoadedConfig, loadConfig } from "./config/load.js";
import { EdgehookError, ExitCode } from "./errors.js";
import type { LogFormat } from "./ops/logger.js";
import { describePolledSources } from "./sources/polled.js";
import { version } from "./version.js";

// For callers outside src/cli (main.ts, tests); modules under src/cli import ./cli/io.js, since cli.ts imports them.
export type { CliIO };
export { version };

export async function runCli(argv: string[], io: CliIO): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined) {
    io.err(overview());
    return ExitCode.USAGE;
  }
  if (command === "--help" || command === "-h" || command === "help") {
    if (command === "help" && rest.length > 0) {
      const found = resolveCommand(wantsHelp(rest) ? ["help"] : rest);
      if ("error" in found) return usage(io, found.error);
      io.out(commandHelp(found.spec));
      return ExitCode.OK;
    }
    io.out(overview());
    return ExitCode.OK;
  }
  if (command === "--version") {
    io.out(version());
    return ExitCode.OK;
  }
  const found = resolveCommand(argv);
  if ("error" in found) {
    // `edgehook queue --help`: the group's commands.
    if (found.group && wantsHelp(argv.slice(1))) {
      io.out(groupHelp(found.group));
      return ExitCode.OK;
    }
    return usage(io, found.error, found.group);
  }
  const { spec, rest: args } = found;
  if (wantsHelp(args)) {
    io.out(commandHelp(spec));
    return ExitCode.OK;
  }
  const bad = checkOptions(spec, args);
  if (bad) return usage(io, bad, spec.name);
  try {
    return await dispatch(spec, args, io);
  } catch (err) {
    return reportError(err, io);
  }
}

async function dispatch(spec: CommandSpec, args: string[], io: CliIO): Promise<number> {
  switch (spec.name) {
    case "run":
      return await runCommand(args, io);
    case "check":
      return await checkCommand(args, io);
    case "status": {
      const { statusCommand } = await import("./cli/status.js");
      const { loaded, args: restArgs } = loadFromArgs(args, io, spec.config);
      return await statusCommand(restArgs, loaded, io);
    }
    case "tap": {
      const { tapCommand } = await import("./cli/tap.js");
      const { loaded, args: restArgs } = loadFromArgs(args, io, spec.config);
      const abort = new AbortController();
      const offs = [io.onSignal("SIGINT", () => abort.abort()), io.onSignal("SIGTERM", () => abort.abort())];
      try {
        return await tapCommand(restArgs, loaded, { out: io.out, err: io.err, signal: abort.signal, pid: io.pid });
      } finally {
        for (const off of offs) off();
      }
    }
    case "demo": {
      const { demoCommand } = await import("./cli/demo.js");
      return await demoCommand(args, io);
    }
    case "queue stats":
    case "queue list":
    case "queue show":
    case "queue replay":
    case "queue purge": {
      const { queueCommand } = await import("./cli/queue.js");
      const { loaded, args: restArgs } = loadFromArgs(args, io, spec.config);
      return await queueCommand([spec.name.split(" ")[1] as string, ...restArgs], loaded, io.out);
    }
    case "destination enable": {
      const { destinationCommand } = await import("./cli/queue.js");
      const { loaded, args: restArgs } = loadFromArgs(args, io, spec.config);
      return await destinationCommand(["enable", ...restArgs], loaded, io.out);
    }
    case "rules test": {
      const { values } = parseArgs({
        args,
        options: { config: { type: "string", short: "c" }, readings: { type: "string" } },
      });
      if (!values.readings) return usage(io, "--readings FILE.jsonl is required", spec.name);
      const loaded = loadConfig(configPath(values.config, io.env), { env: io.env });
      const { rulesTestCommand } = await import("./cli/rules-test.js");
      return await rulesTestCommand(loaded, values.readings, io.out, io.err);
    }
    case "send-test": {
      const { sendTestCommand } = await import("./cli/send-test.js");
      const { loaded, args: restArgs } = loadFromArgs(args, io, spec.config);
      return await sendTestCommand(restArgs, loaded, io.out, io.err);
    }
    case "keygen": {
      if (args.length > 0) return usage(io, `unexpected '${args[0]}'`, spec.name);
      const { keygenCommand } = await import("./cli/receive.js");
      return keygenCommand(io.out);
    }
    case "receive": {
      const { receiveCommand } = await import("./cli/receive.js");
      const abort = new AbortController();
      const offs = [io.onSignal("SIGINT", () => abort.abort()), io.onSignal("SIGTERM", () => abort.abort())];
      try {
        return await receiveCommand(args, io.out, abort.signal);
      } finally {
        for (const off of offs) off();
      }
    }
    case "ports": {
      const { portsCommand } = await import("./cli/ports.js");
      // portsCommand writes text with its own newlines.
      return await portsCommand(args, { write: (text: string) => io.out(text.replace(/\n$/, "")) });
    }
    case "version":
      if (args.length > 0) return usage(io, `unexpected '${args[0]}'`, spec.name);
      io.out(version());
      return ExitCode.OK;
    default:
      throw new Error(`command ${spec.name} has no handler`);
  }
}

/** A usage error: the problem, then the usage of the command (or the overview). */
function usage(io: CliIO, why: string, command?: string): number {
  io.err(`edgehook: ${why}`);
  const spec = COMMANDS.find((c) => c.name === command);
  if (spec) io.err(`usage: ${usageLine(spec)}   (edgehook ${spec.name} --help)`);
  else if (command && GROUPS.has(command)) io.err(groupHelp(command));
  else io.err("Run 'edgehook help' for the list of commands.");
  return ExitCode.USAGE;
}

function groupHelp(group: string): string {
  return [
    `edgehook ${group} — commands:`,
    ...COMMANDS.filter((c) => c.name.startsWith(`${group} `)).map((c) => `  ${usageLine(c)}\n      ${c.summary}`),
  ].join("\n");
}

function reportError(err: unknown, io: CliIO): number {
  if (err instanceof ConfigError) {
    for (const p of err.problems) io.err(`${p.file}:${p.line}:${p.col}: ${p.key ? `${p.key}: ` : ""}${p.message}`);
    return ExitCode.CONFIG;
  }
  if (err instanceof EdgehookError) {
    io.err(`edgehook: ${err.message} [${err.code}]`);
    if (err.code === "EDGEHOOK_CONFIG_UNREADABLE") return ExitCode.CONFIG;
    if (err.code === "EDGEHOOK_USAGE") return ExitCode.USAGE;
    return ExitCode.FAILURE;
  }
  if (err instanceof TypeError && (err as NodeJS.ErrnoException).code?.startsWith("ERR_PARSE_ARGS")) {
    return usage(io, err.message);
  }
  io.err(`edgehook: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  return ExitCode.FAILURE;
}

function configPath(given: string | undefined, env: NodeJS.ProcessEnv): string {
  return given ?? env.EDGEHOOK_CONFIG ?? "/etc/edgehook/agent.yaml";
}

/**
 * Pulls `--config FILE` out of the arguments and loads it; the rest goes to the subcommand.
 * `operator` mode reads no secret (see ConfigMode); `tap` and other read-only commands reuse it.
 */
export function loadFromArgs(
  args: string[],
  io: Pick<CliIO, "env">,
  mode: ConfigMode = "full",
): { loaded: LoadedConfig; args: string[] } {
  const restArgs: string[] = [];
  let file: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (a === "--config" || a === "-c") file = args[++i];
    else if (a.startsWith("--config=")) file = a.slice("--config=".length);
    else restArgs.push(a);
  }
  return {
    loaded: loadConfig(configPath(file, io.env), { env: io.env, secrets: mode !== "operator" }),
    args: restArgs,
  };
}

async function checkCommand(args: string[], io: CliIO): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { config: { type: "string", short: "c" }, explain: { type: "boolean" } },
  });
  const file = configPath(values.config, io.env);
  const loaded = loadConfig(file, { env: io.env });
  for (const w of loaded.warnings) io.err(`warning: ${w}`);
  const c = loaded.config;
  io.out(
    `${file}: ok — agent ${c.agent.id}, ${c.mqtt ? `${c.mqtt.subscriptions.length} MQTT subscription(s), ` : ""}${c.serial.length} serial port(s), ${describePolledSources(c)}${c.rules.length} rule(s), ${Object.keys(c.destinations).length} destination(s)`,
  );
  if (values.explain) {
    const { explainSubscriptions } = await import("./cli/explain.js");
    io.out(explainSubscriptions(c));
  }
  return ExitCode.OK;
}

async function runCommand(args: string[], io: CliIO): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { config: { type: "string", short: "c" }, "log-format": { type: "string" } },
  });
  const formatArg = values["log-format"];
  if (formatArg !== undefined && !["auto", "json", "pretty"].includes(formatArg)) {
    return usage(io, `--log-format must be auto, json or pretty (is '${formatArg}')`, "run");
  }
  const file = configPath(values.config, io.env);
  const loaded = loadConfig(file, { env: io.env });
  const { Agent } = await import("./agent.js");
  const { createLogger, createPrettyLogger, resolveLogFormat, useColor } = await import("./ops/logger.js");
  const { SdNotify } = await import("./ops/sd-notify.js");
  const { systemClock } = await import("./clock.js");
  const isTTY = io.isTTY === true;
  const format = resolveLogFormat(
    (formatArg as LogFormat | undefined) ?? loaded.config.agent.log_format,
    io.env,
    isTTY,
  );
  const write = io.write;
  const logger =
    format === "pretty" && write
      ? createPrettyLogger(loaded.config.agent.log_level, write, useColor(io.env, isTTY))
      : createLogger(loaded.config.agent.log_level);
  for (const w of loaded.warnings) logger.warn(w);
  const notify = new SdNotify({
    env: io.env,
    logger: logger.child({ component: "systemd" }),
    clock: systemClock,
    pid: io.pid,
  });
  const agent = new Agent({ loaded, logger, env: io.env });

  let stopping: Promise<void> | undefined;
  const stop = (signal: string) => {
    if (stopping) {
      // A second signal: exit now. Everything committed is already durable on disk.
      logger.warn({ signal }, "second stop signal: exiting at once");
      logger.flush();
      io.exitNow(ExitCode.OK);
      return;
    }
    logger.info({ signal }, "stopping");
    stopping = notify.stopping().then(() => agent.stop());
  };
  const offs = [
    io.onSignal("SIGTERM", () => stop("SIGTERM")),
    io.onSignal("SIGINT", () => stop("SIGINT")),
    io.onSignal("SIGHUP", () => onReload()),
  ];
  // systemd reads RELOADING=1/READY=1 as state changes: none before the first READY=1
  // (a SIGHUP during start-up reloads once started) and none after STOPPING=1.
  let running = false;
  let reloadWhenRunning = false;
  const onReload = () => {
    if (stopping) {
      logger.warn("SIGHUP while stopping: not reloading");
    } else if (!running) {
      reloadWhenRunning = true;
    } else {
      void notify.reloading().then(reload);
    }
  };
  const reload = async () => {
    try {
      const next = loadConfig(file, { env: io.env });
      for (const w of next.warnings) logger.warn(w);
      await agent.reload(next);
      logger.info("configuration reloaded");
    } catch (err) {
      if (err instanceof ConfigError) {
        logger.error(
          {
            problems: err.problems.map((p) => `${p.file}:${p.line}:${p.col}: ${p.key ? `${p.key}: ` : ""}${p.message}`),
          },
          "reload refused: the new configuration is invalid; the previous one keeps running",
        );
      } else if (err instanceof EdgehookError && err.code.startsWith("EDGEHOOK_CONFIG")) {
        // A file the configuration names (a TLS file) cannot be read.
        logger.error(
          { problems: [err.message], code: err.code },
          "reload refused: the new configuration is invalid; the previous one keeps running",
        );
      } else {
        logger.error({ err }, "reload failed");
      }
    } finally {
      if (!stopping) await notify.ready();
    }
  };

  try {
    await agent.start();
  } catch (err) {
    logger.fatal({ err }, "start failed");
    await agent.stop().catch(() => {});
    for (const off of offs) off();
    logger.flush();
    return err instanceof EdgehookError && err.code.startsWith("EDGEHOOK_CONFIG") ? ExitCode.CONFIG : ExitCode.FAILURE;
  }
  if (!stopping) {
    await notify.ready();
    notify.startWatchdog(() => agent.healthy());
    logger.info({ agent: loaded.config.agent.id, version: version() }, "edgehook running");
    running = true;
    if (reloadWhenRunning) onReload();
  }

  // The agent may hold no handle that keeps the event loop alive (no sources, an
  // unplugged serial port, an idle dispatcher); it runs until told to stop.
  const keepAlive = setInterval(() => {}, 2 ** 31 - 1);
  await agent.stopped();
  clearInterval(keepAlive);
  await stopping;
  await notify.stop();
  for (const off of offs) off();
  logger.info("stopped");
  await new Promise<void>((resolve) => logger.flush(() => resolve()));
  return ExitCode.OK;
}
