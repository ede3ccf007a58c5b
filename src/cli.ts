/**
 * The `edgehook` command. Each subcommand returns an exit code; only main.ts turns
 * it into a process exit. Usage errors exit 64, configuration errors 78 (EX_CONFIG),
 * so systemd's RestartPreventExitStatus=78 stops a bad config from restart-looping.
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { ConfigError, type LoadedConfig, loadConfig } from "./config/load.js";
import { EdgehookError, ExitCode } from "./errors.js";

export interface CliIO {
  env: NodeJS.ProcessEnv;
  pid: number;
  out: (line: string) => void;
  err: (line: string) => void;
  /** Subscribes to a process signal; returns an unsubscribe function. */
  onSignal: (signal: NodeJS.Signals, handler: () => void) => () => void;
  /** Exits at once (second SIGTERM). */
  exitNow: (code: number) => void;
}

const USAGE = `edgehook — sensor readings to signed webhooks, with a durable outbox

Usage:
  edgehook run --config FILE            run the agent in the foreground
  edgehook check --config FILE          validate the configuration (exit 78 when invalid)
  edgehook demo [--duration 60s]        a self-contained demo: broker, sensors, receiver
  edgehook queue stats|list|show|replay|purge --config FILE
  edgehook destination enable NAME --config FILE
  edgehook rules test --config FILE --readings FILE.jsonl
  edgehook send-test DESTINATION --config FILE
  edgehook receive --port P --secret whsec_...   a local receiver that verifies and prints webhooks
  edgehook keygen                       an Ed25519 key pair for v1a signatures
  edgehook ports                        list serial ports (with /dev/serial/by-id names)
  edgehook version

--config defaults to $EDGEHOOK_CONFIG, then /etc/edgehook/agent.yaml.`;

export function version(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string };
    return pkg.version;
  } catch {
    return "0.0.0";
  }
}

export async function runCli(argv: string[], io: CliIO): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case "run":
        return await runCommand(rest, io);
      case "check":
        return checkCommand(rest, io);
      case "demo": {
        const { demoCommand } = await import("./demo.js");
        return await demoCommand(rest, io);
      }
      case "queue": {
        const { queueCommand } = await import("./cli/queue.js");
        const { loaded, args } = loadFromArgs(rest, io);
        return await queueCommand(args, loaded, io.out);
      }
      case "destination": {
        const { destinationCommand } = await import("./cli/queue.js");
        const { loaded, args } = loadFromArgs(rest, io);
        return await destinationCommand(args, loaded, io.out);
      }
      case "rules": {
        if (rest[0] !== "test") return usage(io, "edgehook rules test --config FILE --readings FILE.jsonl");
        const { values } = parseArgs({
          args: rest.slice(1),
          options: { config: { type: "string" }, readings: { type: "string" } },
        });
        if (!values.readings) return usage(io, "edgehook rules test --config FILE --readings FILE.jsonl");
        const loaded = loadConfig(configPath(values.config, io.env), { env: io.env });
        const { rulesTestCommand } = await import("./cli/rules-test.js");
        return await rulesTestCommand(loaded, values.readings, io.out, io.err);
      }
      case "send-test": {
        const { sendTestCommand } = await import("./cli/send-test.js");
        const { loaded, args } = loadFromArgs(rest, io);
        return await sendTestCommand(args, loaded, io.out, io.err);
      }
      case "keygen": {
        const { keygenCommand } = await import("./cli/receive.js");
        return keygenCommand(io.out);
      }
      case "receive": {
        const { receiveCommand } = await import("./cli/receive.js");
        const abort = new AbortController();
        const offs = [io.onSignal("SIGINT", () => abort.abort()), io.onSignal("SIGTERM", () => abort.abort())];
        try {
          return await receiveCommand(rest, io.out, abort.signal);
        } finally {
          for (const off of offs) off();
        }
      }
      case "ports": {
        const { portsCommand } = await import("./cli/ports.js");
        // portsCommand writes text with its own newlines.
        return await portsCommand(rest, { write: (text: string) => io.out(text.replace(/\n$/, "")) });
      }
      case "version":
      case "--version":
        io.out(version());
        return ExitCode.OK;
      case undefined:
      case "help":
      case "--help":
      case "-h":
        io.out(USAGE);
        return command === undefined ? ExitCode.USAGE : ExitCode.OK;
      default:
        return usage(io, `unknown command '${command}'`);
    }
  } catch (err) {
    return reportError(err, io);
  }
}

function usage(io: CliIO, why: string): number {
  io.err(`edgehook: ${why}`);
  io.err(USAGE);
  return ExitCode.USAGE;
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

/** Pulls `--config FILE` out of the arguments and loads it; the rest goes to the subcommand. */
function loadFromArgs(args: string[], io: CliIO): { loaded: LoadedConfig; args: string[] } {
  const restArgs: string[] = [];
  let file: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (a === "--config" || a === "-c") file = args[++i];
    else if (a.startsWith("--config=")) file = a.slice("--config=".length);
    else restArgs.push(a);
  }
  return { loaded: loadConfig(configPath(file, io.env), { env: io.env }), args: restArgs };
}

function checkCommand(args: string[], io: CliIO): number {
  const { values } = parseArgs({ args, options: { config: { type: "string", short: "c" } } });
  const file = configPath(values.config, io.env);
  const loaded = loadConfig(file, { env: io.env });
  for (const w of loaded.warnings) io.err(`warning: ${w}`);
  const c = loaded.config;
  io.out(
    `${file}: ok — agent ${c.agent.id}, ${c.mqtt ? `${c.mqtt.subscriptions.length} MQTT subscription(s), ` : ""}${c.serial.length} serial port(s), ${c.rules.length} rule(s), ${Object.keys(c.destinations).length} destination(s)`,
  );
  return ExitCode.OK;
}

async function runCommand(args: string[], io: CliIO): Promise<number> {
  const { values } = parseArgs({ args, options: { config: { type: "string", short: "c" } } });
  const file = configPath(values.config, io.env);
  const loaded = loadConfig(file, { env: io.env });
  const { Agent } = await import("./agent.js");
  const { createLogger } = await import("./ops/logger.js");
  const { SdNotify } = await import("./ops/sd-notify.js");
  const { systemClock } = await import("./clock.js");
  const logger = createLogger(loaded.config.agent.log_level);
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
