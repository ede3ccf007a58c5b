/**
 * Every `edgehook` command in one table: the help text, the options a command accepts
 * (unknown ones are refused with a "did you mean"), and how much of the configuration
 * it needs. cli.ts resolves a command here before anything reads a file, so
 * `edgehook COMMAND --help` works without a configuration.
 */
import { didYouMean } from "../suggest.js";

/**
 * - `full`: the whole configuration, secrets included (run, send-test, check).
 * - `operator`: the configuration without reading any secret (`secret`, `*_file`):
 *   the operator commands work as a user who cannot read the credentials.
 * - `none`: no configuration.
 */
export type ConfigMode = "full" | "operator" | "none";

export interface OptionSpec {
  /** Takes a value (`--limit 20`), shown as this placeholder; a flag otherwise. */
  value?: string;
  short?: string;
  help: string;
}

export interface CommandSpec {
  /** Words that name it: "queue stats". */
  name: string;
  /** Positional arguments as shown in the usage line. */
  args?: string;
  summary: string;
  options: Record<string, OptionSpec>;
  example: string;
  config: ConfigMode;
  /** More lines for `--help`. */
  details?: string;
}

const CONFIG: OptionSpec = {
  value: "FILE",
  short: "c",
  help: "configuration file (default $EDGEHOOK_CONFIG, then /etc/edgehook/agent.yaml)",
};
const JSON_OPT: OptionSpec = { help: "print JSON for scripts" };

export const COMMANDS: readonly CommandSpec[] = [
  {
    name: "run",
    summary: "run the agent in the foreground (systemd starts it this way)",
    options: {
      config: CONFIG,
      "log-format": { value: "auto|json|pretty", help: "log format (default agent.log_format, auto)" },
    },
    example: "edgehook run --config /etc/edgehook/agent.yaml",
    config: "full",
    details: "Logs are JSON lines under systemd or in a pipe, short readable lines in a terminal.",
  },
  {
    name: "check",
    summary: "validate the configuration (exit 78 when invalid)",
    options: {
      config: CONFIG,
      explain: { help: "also print each MQTT subscription as it runs: its preset expanded, defaults filled in" },
    },
    example: "edgehook check --config agent.yaml --explain",
    config: "full",
  },
  {
    name: "status",
    summary: "one screen: agent, sources, destinations, what is firing, recent dead letters",
    options: {
      config: CONFIG,
      json: JSON_OPT,
      watch: { help: "refresh every 2 seconds until Ctrl-C" },
    },
    example: "sudo -u edgehook edgehook status --config /etc/edgehook/agent.yaml",
    config: "operator",
    details:
      "Asks the running agent (http.listen); when it does not answer, reads the outbox and says the agent is down.",
  },
  {
    name: "tap",
    summary: "show live input and what edgehook makes of it: readings, decode errors, matching rules",
    options: {
      config: CONFIG,
      topic: { value: "FILTER", help: "only this MQTT topic filter (no serial ports)" },
      serial: { value: "NAME", help: "only this serial port (no MQTT)" },
      count: { value: "N", help: "stop after N messages, lines or polls (default: until Ctrl-C)" },
      json: { help: "one JSON object per message or line" },
      polled: { help: "also poll the Modbus buses, 1-Wire probes and files, and print each poll's readings" },
      "password-file": { value: "FILE", help: "the MQTT broker password (tap reads no secret from the configuration)" },
    },
    example: "edgehook tap --config /etc/edgehook/agent.yaml --topic 'zigbee2mqtt/#' --count 5",
    config: "operator",
    details: [
      "Read-only beside a running agent: its own MQTT client id, a clean session and QoS 0, so the",
      "agent's session and outbox are untouched. A serial port has one reader: while the agent holds",
      "it, tap says so (stop the agent to tap the port). Modbus, 1-Wire and files are polled only",
      "with --polled: a Modbus device then answers a second client, and an RTU bus, like a serial",
      "port, has one reader (stop the agent to tap it).",
    ].join("\n"),
  },
  {
    name: "demo",
    summary: "a self-contained demo: broker, sensors, receiver",
    options: {
      duration: { value: "DURATION", help: "how long to run, on the demo's timeline (default 40s)" },
      speed: { value: "FACTOR", help: "play the timeline this many times faster, 0.1 to 20 (default 1)" },
    },
    example: "edgehook demo --duration 60s",
    config: "none",
  },
  {
    name: "queue stats",
    summary: "pending, dead and delivered webhooks per destination, and whether it is up",
    options: { config: CONFIG, json: JSON_OPT },
    example: "sudo -u edgehook edgehook queue stats",
    config: "operator",
  },
  {
    name: "queue list",
    summary: "deliveries, newest first",
    options: {
      state: { value: "pending|dead|delivered", help: "only deliveries in this state" },
      destination: { value: "NAME", help: "only deliveries to this destination" },
      limit: { value: "N", help: "at most N rows (default 50)" },
      json: JSON_OPT,
      config: CONFIG,
    },
    example: "edgehook queue list --state dead --limit 20",
    config: "operator",
  },
  {
    name: "queue show",
    args: "EVENT_ID",
    summary: "one event: its body and every delivery attempt",
    options: { json: JSON_OPT, config: CONFIG },
    example: "edgehook queue show 01J9Z8Q4M6W1Y3V5T7R9P2K4N6",
    config: "operator",
  },
  {
    name: "queue replay",
    args: "EVENT_ID",
    summary: "put dead deliveries back to pending (one event, or all of a destination with --dead)",
    options: {
      destination: { value: "NAME", help: "every dead delivery of this destination (with --dead)" },
      dead: { help: "with --destination: replay its dead deliveries" },
      config: CONFIG,
    },
    example: "edgehook queue replay --destination ops --dead",
    config: "operator",
  },
  {
    name: "queue purge",
    summary: "delete settled deliveries older than a duration (never pending ones)",
    options: {
      "older-than": { value: "DURATION", help: "required, e.g. 7d" },
      state: { value: "delivered|dead", help: "only this state (repeatable; default both)" },
      config: CONFIG,
    },
    example: "edgehook queue purge --older-than 7d --state delivered",
    config: "operator",
  },
  {
    name: "destination enable",
    args: "NAME",
    summary: "resume a destination that was disabled (after HTTP 410 Gone)",
    options: { config: CONFIG },
    example: "edgehook destination enable ops",
    config: "operator",
  },
  {
    name: "rules test",
    summary: "run the rules over recorded readings and print the events they would send",
    options: { config: CONFIG, readings: { value: "FILE.jsonl", help: "one reading per line (required)" } },
    example: "edgehook rules test --config agent.yaml --readings readings.jsonl",
    config: "full",
  },
  {
    name: "send-test",
    args: "DESTINATION",
    summary: "sign and send one test webhook to a destination and print the answer",
    options: { config: CONFIG },
    example: "edgehook send-test ops --config agent.yaml",
    config: "full",
  },
  {
    name: "receive",
    summary: "a local receiver that verifies and prints webhooks",
    options: {
      port: { value: "P", help: "port (default 9781; 0 picks a free one)" },
      host: { value: "ADDR", help: "address to listen on (default 127.0.0.1)" },
      secret: { value: "whsec_...", help: "v1 secret to verify with (repeatable)" },
      "public-key": { value: "whpk_...", help: "v1a public key to verify with (repeatable)" },
      status: { value: "CODE", help: "HTTP status to answer (default 200)" },
      count: { value: "N", help: "exit after N webhooks" },
      tolerance: { value: "DURATION", help: "reject timestamps further off than this (default 5m)" },
      verbose: { short: "v", help: "print headers and bodies" },
    },
    example: "edgehook receive --port 9781 --secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    config: "none",
  },
  {
    name: "keygen",
    summary: "a v1 secret and an Ed25519 key pair for v1a signatures",
    options: {},
    example: "edgehook keygen",
    config: "none",
  },
  {
    name: "ports",
    summary: "list serial ports (with their /dev/serial/by-id names)",
    options: { json: JSON_OPT },
    example: "edgehook ports",
    config: "none",
  },
  {
    name: "version",
    summary: "print the version",
    options: {},
    example: "edgehook version",
    config: "none",
  },
  {
    name: "help",
    args: "[COMMAND]",
    summary: "this overview, or the help of one command",
    options: {},
    example: "edgehook help queue stats",
    config: "none",
  },
];

/** Words that start a command with subcommands ("queue", "destination", "rules"). */
export const GROUPS: ReadonlySet<string> = new Set(
  COMMANDS.filter((c) => c.name.includes(" ")).map((c) => c.name.split(" ")[0] as string),
);

const HELP: OptionSpec = { short: "h", help: "show this help" };

export interface Resolved {
  spec: CommandSpec;
  /** The arguments after the command words. */
  rest: string[];
}

/**
 * Finds the command that `argv` names. Returns an error message (with a "did you mean")
 * for an unknown command; `group` is set when only a group word was given.
 */
export function resolveCommand(argv: readonly string[]): Resolved | { error: string; group?: string } {
  const [first, second] = argv;
  if (first === undefined) return { error: "no command given" };
  if (GROUPS.has(first)) {
    const subs = COMMANDS.filter((c) => c.name.startsWith(`${first} `));
    const spec = subs.find((c) => c.name === `${first} ${second}`);
    if (spec) return { spec, rest: argv.slice(2) };
    const names = subs.map((c) => c.name.split(" ")[1] as string);
    if (second === undefined || second.startsWith("-")) {
      return { error: `${first} needs a subcommand: ${names.join(", ")}`, group: first };
    }
    return { error: `unknown ${first} command '${second}'${didYouMean(second, names)}`, group: first };
  }
  const spec = COMMANDS.find((c) => c.name === first && !GROUPS.has(first));
  if (spec) return { spec, rest: argv.slice(1) };
  const names = [...COMMANDS.map((c) => c.name.split(" ")[0] as string)];
  return { error: `unknown command '${first}'${didYouMean(first, new Set(names))}` };
}

/** True when the arguments ask for help (`-h`/`--help` before any `--`). */
export function wantsHelp(args: readonly string[]): boolean {
  for (const a of args) {
    if (a === "--") return false;
    if (a === "-h" || a === "--help") return true;
  }
  return false;
}

/**
 * Checks every option against the command's table entry: an unknown one gets an error
 * naming the nearest known option. Values are not checked here.
 */
export function checkOptions(spec: CommandSpec, args: readonly string[]): string | undefined {
  const options = spec.options;
  const byShort = new Map(
    Object.entries(options)
      .filter(([, o]) => o.short)
      .map(([k, o]) => [o.short as string, k]),
  );
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (a === "--") return undefined;
    if (a === "-" || !a.startsWith("-") || /^-\d/.test(a)) continue;
    let name: string;
    let inline = false;
    if (a.startsWith("--")) {
      const eq = a.indexOf("=");
      name = eq >= 0 ? a.slice(2, eq) : a.slice(2);
      inline = eq >= 0;
    } else {
      const long = byShort.get(a.slice(1, 2));
      if (!long || a.length > 2) {
        return `unknown option '${a}' for edgehook ${spec.name}${optionHint(a, options)}`;
      }
      name = long;
    }
    const opt = options[name];
    if (!opt) return `unknown option '--${name}' for edgehook ${spec.name}${optionHint(`--${name}`, options)}`;
    if (opt.value !== undefined && !inline) i++;
  }
  return undefined;
}

function optionHint(given: string, options: Record<string, OptionSpec>): string {
  const names = Object.keys(options).map((k) => `--${k}`);
  const hint = didYouMean(given, names);
  if (hint) return hint;
  return names.length ? ` (options: ${names.join(", ")})` : " (it takes no options)";
}

export function usageLine(spec: CommandSpec): string {
  const opts = Object.entries(spec.options).map(([k, o]) => `[--${k}${o.value ? ` ${o.value}` : ""}]`);
  return ["edgehook", spec.name, ...(spec.args ? [spec.args] : []), ...opts].join(" ");
}

/** The text of `edgehook COMMAND --help`. */
export function commandHelp(spec: CommandSpec): string {
  const lines = [`edgehook ${spec.name} — ${spec.summary}`, "", `Usage: ${usageLine(spec)}`];
  if (spec.details) lines.push("", spec.details);
  const entries = [...Object.entries(spec.options), ["help", HELP] as const];
  const labels = entries.map(([k, o]) => `${o.short ? `-${o.short}, ` : "    "}--${k}${o.value ? ` ${o.value}` : ""}`);
  const width = Math.max(...labels.map((l) => l.length));
  lines.push("", "Options:");
  entries.forEach(([, o], i) => {
    lines.push(`  ${(labels[i] as string).padEnd(width)}  ${o.help}`);
  });
  lines.push("", "Example:", `  ${spec.example}`);
  return lines.join("\n");
}

/** The text of `edgehook help`. */
export function overview(): string {
  const width = Math.max(...COMMANDS.map((c) => `${c.name}${c.args ? ` ${c.args}` : ""}`.length));
  return [
    "edgehook — sensor readings to signed webhooks, with a durable outbox",
    "",
    "Usage: edgehook COMMAND [options]      (edgehook COMMAND --help for its options)",
    "",
    "Commands:",
    ...COMMANDS.map((c) => `  ${`${c.name}${c.args ? ` ${c.args}` : ""}`.padEnd(width)}  ${c.summary}`),
    "",
    "--config defaults to $EDGEHOOK_CONFIG, then /etc/edgehook/agent.yaml.",
    "Operator commands (status, queue, destination) read no secret: run them as the edgehook user,",
    "  sudo -u edgehook edgehook status",
  ].join("\n");
}
