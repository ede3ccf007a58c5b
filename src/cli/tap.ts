/**
 * `edgehook tap`: what edgehook makes of live input, the first thing to run on a new
 * device (like `telegraf --test`). It connects to the configured sources read-only and
 * prints each raw MQTT message or serial line, the readings decoded from it (or the
 * decode error and why), the fields no reading took, and the rules each reading matches,
 * until Ctrl-C or `--count N`.
 *
 * Read-only towards the agent:
 * - MQTT: its own client id (`edgehook-tap-<agent>-<pid>`), a clean session, QoS 0
 *   subscriptions (nothing to acknowledge), no will and no status message. The agent's
 *   persistent session keeps everything it is owed; the broker sends tap copies.
 * - Serial: a port has one reader. Opened with an exclusive lock (as the agent does),
 *   so tap never steals lines from a running agent: when the agent holds the port, tap
 *   says so and taps the rest.
 * - Nothing is written: no outbox, no ledger, no rule state. The configuration is read
 *   without secrets (operator mode); an MQTT password comes from --password-file.
 * - Polled sources (Modbus, 1-Wire, files) are polled only with --polled, at their own
 *   `every`: reading a file or a 1-Wire probe disturbs nothing, but a Modbus device then
 *   answers a second client (some take only one TCP connection) and an RTU bus has one
 *   reader. Each poll's readings are printed with their rules; bad data and devices that
 *   do not answer are the sources' own warnings (once a minute per reason), on stderr.
 *
 * Payload text is printed escaped (safe-text.ts): a topic or a line cannot move the cursor.
 */
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import type { IClientOptions, MqttClient } from "mqtt";
import type { LoadedConfig } from "../config/load.js";
import { UNREAD_SECRET } from "../config/load.js";
import type { Config, RuleConfig, SerialPortConfig } from "../config/schema.js";
import { errnoCode, readTlsFiles } from "../config/tls-files.js";
import { ExitCode } from "../errors.js";
import { type Compound, type CompoundRuleRef, compileCompound, LatestValues, UNKNOWN } from "../rules/compound.js";
import { Deriver } from "../rules/derive.js";
import { compileGlob, type Matcher } from "../rules/glob.js";
import {
  type DecodeErrorReason,
  type DecodeResult,
  type LineDecoder,
  LineSplitter,
  MqttRouter,
  mqttDecoder,
  serialDecoder,
} from "../sources/decode.js";
import { brokerUrl, redactUrl } from "../sources/mqtt-options.js";
import type { Reading } from "../sources/reading.js";
import { safe } from "./safe-text.js";

export interface TapIO {
  out: (line: string) => void;
  err: (line: string) => void;
  signal: AbortSignal;
  pid: number;
  now?: () => number;
}

/** What each decode error means, for a person reading tap's output. */
export const REASONS: Record<DecodeErrorReason, string> = {
  not_json: "the payload is not JSON (format json)",
  no_value: "nothing at the configured value path or key, and no field to take",
  bad_number: "the value is neither a number, a boolean nor one of states",
  columns: "the line has a different number of columns than columns lists",
  no_match: "the pattern does not match the line",
  no_field: "a {placeholder} in sensor or metric has nothing to fill it (a missing field or wildcard)",
  unknown_state: "the text is none of states",
  binary: "control characters: binary data or line noise (wrong baud rate?)",
  too_long: "longer than max_line_length",
  too_large: "larger than max_payload",
  encoding: "not valid in the configured encoding",
  empty: "empty",
};

const PAYLOAD_SHOWN = 300;

/**
 * Rule names per reading: the same sensor/metric globs and labels the engine applies. A
 * `when` rule is named for the readings of the metrics it reads, with what its
 * condition is now from the values tap has seen: `freezer-door (when: true)`, or
 * `(when: unknown, no recent value of door_open)`.
 */
class RuleMatcher {
  readonly #rules: {
    name: string;
    sensor: Matcher;
    metric: Matcher;
    labels: [string, string][];
    compound: Compound | undefined;
  }[];
  readonly #latest = new LatestValues();

  constructor(rules: readonly RuleConfig[]) {
    this.#rules = rules.map((r) => ({
      name: r.name,
      sensor: compileGlob(r.match.sensor),
      metric: compileGlob(r.match.metric),
      labels: Object.entries(r.match.labels ?? {}),
      compound: compileCompound(r),
    }));
    const compound: CompoundRuleRef[] = [];
    for (const r of this.#rules) if (r.compound) compound.push({ name: r.name, compound: r.compound });
    this.#latest.setRules(compound);
  }

  names(r: Reading): string[] {
    const now = Date.now();
    if (this.#latest.watches(r.sensor, r.metric)) this.#latest.record(r, r.ts, now);
    const out: string[] = [];
    for (const x of this.#rules) {
      if (!x.sensor(r.sensor) || !x.labels.every(([k, v]) => r.labels[k] === v)) continue;
      if (x.compound === undefined) {
        if (x.metric(r.metric)) out.push(x.name);
        continue;
      }
      if (!x.compound.own.has(r.metric)) continue;
      const j = this.#latest.judge(x.compound, r.sensor, now);
      out.push(`${x.name} (when: ${j.verdict === UNKNOWN ? `unknown, ${j.reason}` : String(j.value)})`);
    }
    return out;
  }
}

export async function tapCommand(args: string[], loaded: LoadedConfig, io: TapIO): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      topic: { type: "string" },
      serial: { type: "string" },
      count: { type: "string" },
      json: { type: "boolean" },
      polled: { type: "boolean" },
      "password-file": { type: "string" },
    },
  });
  const config = loaded.config;
  const count = values.count === undefined ? undefined : Number(values.count);
  if (count !== undefined && !(Number.isInteger(count) && count > 0)) {
    io.err(`edgehook: --count must be a whole number above 0 (is '${values.count}')`);
    return ExitCode.USAGE;
  }
  const ports = pickPorts(config, values.serial, values.topic !== undefined);
  if (typeof ports === "string") {
    io.err(`edgehook: ${ports}`);
    return ExitCode.USAGE;
  }
  const tapMqtt = config.mqtt !== undefined && values.serial === undefined;
  if (values.topic !== undefined && !config.mqtt) {
    io.err("edgehook: --topic: the configuration has no mqtt section");
    return ExitCode.USAGE;
  }
  const polledNames = [
    ...config.modbus.map((b) => `modbus:${b.name}`),
    ...(config.onewire ? ["onewire"] : []),
    ...config.files.map((f) => `file:${f.name ?? f.path}`),
  ];
  // --topic and --serial narrow tap to one source; --polled adds the polled ones.
  const tapPolled = values.polled === true && values.topic === undefined && values.serial === undefined;
  if (polledNames.length > 0 && !tapPolled) {
    io.err(`not tapped (polled sources are polled with --polled): ${polledNames.join(", ")}`);
  }
  if (values.polled === true && polledNames.length === 0) {
    io.err("edgehook: --polled: the configuration has no Modbus bus, 1-Wire section or polled file");
    return ExitCode.USAGE;
  }
  if (!tapMqtt && ports.length === 0 && !tapPolled) {
    io.err("edgehook: nothing to tap: the configuration has no MQTT subscriptions or serial ports");
    return ExitCode.USAGE;
  }

  const printer = new Printer(config, io, values.json === true);
  const done = new AbortController();
  const stop = () => done.abort();
  io.signal.addEventListener("abort", stop, { once: true });
  let seen = 0;
  const counted = () => {
    seen++;
    if (count !== undefined && seen >= count) stop();
  };

  const closers: (() => Promise<void>)[] = [];
  let failures = 0;
  let started = 0;
  try {
    if (tapMqtt && config.mqtt) {
      const password = readPassword(values["password-file"], config.mqtt.password);
      if (typeof password === "object") {
        io.err(`edgehook: ${password.error}`);
        return ExitCode.USAGE;
      }
      const close = await tapMqttSource(config, loaded, values.topic, password, io, printer, counted, done.signal);
      if (close) {
        closers.push(close);
        started++;
      } else failures++;
    }
    for (const port of ports) {
      const close = await tapSerial(port, io, printer, counted, done.signal);
      if (close) {
        closers.push(close);
        started++;
      } else failures++;
    }
    if (tapPolled && !done.signal.aborted) {
      closers.push(await tapPolledSources(config, loaded, io, printer, counted));
      started++;
    }
    if (started === 0) return ExitCode.FAILURE;
    if (!done.signal.aborted) {
      io.err(
        count === undefined
          ? "tapping; Ctrl-C stops"
          : `tapping until ${count} message(s), line(s) or poll(s); Ctrl-C stops`,
      );
      await new Promise<void>((r) => done.signal.addEventListener("abort", () => r(), { once: true }));
    }
  } finally {
    io.signal.removeEventListener("abort", stop);
    for (const c of closers) await c().catch(() => {});
  }
  return failures > 0 && seen === 0 ? ExitCode.FAILURE : ExitCode.OK;
}

/**
 * Runs the configuration's polled sources with a sink that prints each poll's readings
 * (nothing is stored) and a logger that writes their warnings to stderr.
 */
async function tapPolledSources(
  config: Config,
  loaded: LoadedConfig,
  io: TapIO,
  printer: Printer,
  counted: () => void,
): Promise<() => Promise<void>> {
  const [{ polledSources }, { Metrics }, { createPrettyLogger }, { systemClock }] = await Promise.all([
    import("../sources/polled.js"),
    import("../ops/metrics.js"),
    import("../ops/logger.js"),
    import("../clock.js"),
  ]);
  const sources = await polledSources(config, {
    sink: async (readings) => {
      printer.polled(readings);
      counted();
    },
    logger: createPrettyLogger("info", (l) => io.err(l.trimEnd()), false),
    metrics: new Metrics(),
    clock: systemClock,
    baseDir: loaded.file ? resolve(loaded.file, "..") : process.cwd(),
  });
  for (const s of sources) {
    await s.start();
    io.err(`${safe(s.name)}: polling`);
  }
  return async () => {
    for (const s of sources) await s.stop().catch(() => {});
  };
}

function pickPorts(config: Config, name: string | undefined, topicOnly: boolean): SerialPortConfig[] | string {
  if (name === undefined) return topicOnly ? [] : config.serial;
  const port = config.serial.find((p) => p.name === name);
  if (!port) {
    const names = config.serial.map((p) => p.name);
    return `--serial ${safe(name)}: no serial port of this name (${names.length ? `ports: ${names.join(", ")}` : "the file has none"})`;
  }
  return [port];
}

function readPassword(file: string | undefined, configured: string | undefined) {
  if (file !== undefined) {
    try {
      return readFileSync(resolve(file), "utf8").trim();
    } catch (err) {
      return { error: `--password-file: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? err})` };
    }
  }
  // Operator mode reads no secret; a password written in the file is the placeholder.
  if (configured === undefined || configured === UNREAD_SECRET) return undefined;
  return configured;
}

// ---------------------------------------------------------------- MQTT

async function tapMqttSource(
  config: Config,
  loaded: LoadedConfig,
  topic: string | undefined,
  password: string | undefined,
  io: TapIO,
  printer: Printer,
  counted: () => void,
  done: AbortSignal,
): Promise<(() => Promise<void>) | undefined> {
  const m = config.mqtt!;
  const subs = m.subscriptions;
  const filters = topic !== undefined ? [topic] : [...new Set(subs.flatMap((s) => s.topics))];
  if (filters.length === 0) {
    io.err("mqtt: no subscriptions to tap (give --topic FILTER to look at a topic anyway)");
    return undefined;
  }
  const router = new MqttRouter(
    subs.map((s, i) => mqttDecoder(s, "mqtt", i, { explain: true })),
    m.max_payload,
  );
  let url = m.url;
  if (url === "embedded") {
    const e = m.embedded ?? { host: "127.0.0.1", port: 1883 };
    url = brokerUrl(e.host, e.port);
  }
  const clientId = `edgehook-tap-${config.agent.id}-${io.pid}`;
  const options: IClientOptions = {
    clientId,
    clean: true,
    protocolVersion: m.protocol_version,
    keepalive: Math.max(1, Math.round(m.keepalive / 1000)),
    reconnectPeriod: 0,
    connectTimeout: 10_000,
    writeCache: false,
  };
  if (m.username !== undefined) options.username = m.username;
  if (password !== undefined) options.password = password;
  const base = loaded.file ? resolve(loaded.file, "..") : process.cwd();
  try {
    Object.assign(options, readTlsFiles(m.tls, { baseDir: base, label: "mqtt.tls" }));
  } catch (err) {
    const cause = err instanceof Error ? err.cause : err;
    io.err(`mqtt: cannot read a TLS file (${errnoCode(cause) ?? cause})`);
    return undefined;
  }
  if (m.tls) options.rejectUnauthorized = m.tls.reject_unauthorized;
  const { default: mqtt } = await import("mqtt");
  let client: MqttClient;
  try {
    client = await mqtt.connectAsync(url, options);
  } catch (err) {
    const msg = (err as Error).message;
    const auth = /not authori[sz]ed|bad user ?name or password/i.test(msg);
    io.err(
      `mqtt: cannot connect to ${safe(redactUrl(url))}: ${safe(msg)}${
        auth && m.password === UNREAD_SECRET
          ? " (tap reads no secrets from the configuration: give the broker password with --password-file FILE)"
          : ""
      }${m.url === "embedded" ? " (url: embedded: the broker runs inside the agent; start the agent first)" : ""}`,
    );
    return undefined;
  }
  client.on("message", (t, payload, packet) => {
    if (done.aborted) return;
    printer.mqtt(t, payload, packet.retain, router);
    counted();
  });
  client.on("error", (err) => io.err(`mqtt: ${safe(err.message)}`));
  const granted = await client.subscribeAsync(Object.fromEntries(filters.map((f) => [f, { qos: 0 as const }])));
  const refused = granted.filter((g) => g.qos === 128).map((g) => g.topic);
  if (refused.length > 0) io.err(`mqtt: the broker refused: ${refused.map(safe).join(", ")}`);
  io.err(
    `mqtt: tapping ${safe(redactUrl(url))} as ${clientId} (clean session, QoS 0; the agent's session is untouched): ${filters.map(safe).join(", ")}`,
  );
  return () => client.endAsync(true);
}

// ---------------------------------------------------------------- serial

async function tapSerial(
  port: SerialPortConfig,
  io: TapIO,
  printer: Printer,
  counted: () => void,
  done: AbortSignal,
): Promise<(() => Promise<void>) | undefined> {
  // serialport is CommonJS: its exports are the default export's properties, in Node.js and in
  // the bundle alike (which loads it with require(), scripts/bundle.mjs).
  const { SerialPort } = (await import("serialport")).default;
  const sp = new SerialPort({
    path: port.path,
    baudRate: port.baud_rate,
    dataBits: port.data_bits,
    parity: port.parity,
    stopBits: port.stop_bits,
    autoOpen: false,
    // Exclusive, as the agent opens it: two readers would each get part of the lines.
    lock: true,
  });
  const err = await new Promise<Error | null>((r) => sp.open((e) => r(e ?? null)));
  const name = `serial:${port.name}`;
  if (err) {
    const inUse = /lock|resource temporarily unavailable|EAGAIN|EBUSY/i.test(err.message);
    io.err(
      inUse
        ? `${name}: ${safe(port.path)} is in use (the agent, or another program, holds it; a serial port has one reader). Stop the agent to tap it: sudo systemctl stop edgehook`
        : `${name}: cannot open ${safe(port.path)}: ${safe(err.message)}`,
    );
    return undefined;
  }
  const splitter = new LineSplitter(port.delimiter, port.max_line_length);
  const decode = serialDecoder(port, name, { explain: true });
  sp.on("data", (chunk: Buffer) => {
    for (const item of splitter.push(chunk)) {
      if (done.aborted) return;
      printer.line(name, item, decode);
      counted();
    }
  });
  sp.on("error", (e: Error) => io.err(`${name}: ${safe(e.message)}`));
  sp.on("close", () => {
    if (!done.aborted) io.err(`${name}: the port closed (unplugged?)`);
  });
  io.err(`${name}: tapping ${safe(port.path)} at ${port.baud_rate} baud`);
  return () => new Promise<void>((r) => (sp.isOpen ? sp.close(() => r()) : r()));
}

// ---------------------------------------------------------------- output

class Printer {
  readonly #rules: RuleMatcher;
  /** `derive:` entries, so derived metrics show as the agent would make them. */
  readonly #deriver: Deriver;
  readonly #io: TapIO;
  readonly #json: boolean;

  constructor(config: Config, io: TapIO, json: boolean) {
    this.#rules = new RuleMatcher(config.rules);
    this.#deriver = new Deriver(config.derive);
    this.#io = io;
    this.#json = json;
  }

  #now(): number {
    return this.#io.now?.() ?? Date.now();
  }

  mqtt(topic: string, payload: Buffer, retained: boolean, router: MqttRouter): void {
    const at = this.#now();
    const hit = router.route(topic);
    const res = hit ? router.decode(topic, payload, at, retained) : undefined;
    const head = {
      source: "mqtt",
      topic,
      retained,
      subscription: hit?.decoder.index,
    };
    this.#print(at, head, payload, res, hit === undefined ? "no subscription matches this topic" : undefined);
  }

  /** One poll's readings of a polled source (the sink gathers them per source). */
  polled(readings: Reading[]): void {
    const bySource = new Map<string, Reading[]>();
    for (const r of readings) bySource.set(r.source, [...(bySource.get(r.source) ?? []), r]);
    // Stamped with the poll's time (a reading's own), not when it is printed.
    for (const [source, rs] of bySource) {
      this.#print(rs[0]?.ts ?? this.#now(), { source }, undefined, { ok: true, readings: rs });
    }
  }

  line(source: string, item: { line: Buffer } | { error: "too_long" }, decode: LineDecoder): void {
    const at = this.#now();
    if ("error" in item) {
      this.#print(at, { source }, undefined, { ok: false, reason: item.error });
      return;
    }
    this.#print(at, { source }, item.line, decode(item.line, at));
  }

  /** Each decoded reading followed by what `derive:` makes of it, as the agent does. */
  #withDerived(readings: readonly Reading[], at: number): { r: Reading; derived: boolean }[] {
    const out: { r: Reading; derived: boolean }[] = [];
    for (const r of readings) {
      out.push({ r, derived: false });
      if (this.#deriver.empty) continue;
      for (const d of this.#deriver.derive(r, at)) out.push({ r: d, derived: true });
    }
    return out;
  }

  #print(
    at: number,
    head: { source: string; topic?: string; retained?: boolean; subscription?: number | undefined },
    raw: Buffer | undefined,
    res: DecodeResult | undefined,
    note?: string,
  ): void {
    const out = this.#io.out;
    const text = raw === undefined ? undefined : printable(raw);
    // A retained message the agent skips feeds no derive entry (the agent's would not either).
    const readings = !res?.ok
      ? []
      : res.retained
        ? res.readings.map((r) => ({ r, derived: false }))
        : this.#withDerived(res.readings, at);
    if (this.#json) {
      const o: Record<string, unknown> = { at: new Date(at).toISOString(), ...head, raw: text };
      if (note) o.note = note;
      if (res && !res.ok) o.error = { reason: res.reason, why: REASONS[res.reason] };
      if (res?.ok) {
        if (res.retained) o.note = "retained message skipped (retained: ignore)";
        o.readings = readings.map(({ r, derived }) => ({
          ...r,
          ts: new Date(r.ts).toISOString(),
          ...(derived ? { derived: true } : {}),
          rules: this.#rules.names(r),
        }));
        if (res.ignoredFields?.length) o.ignored = res.ignoredFields;
      }
      out(JSON.stringify(o));
      return;
    }
    const time = new Date(at).toISOString().slice(11, 23);
    const where = head.topic === undefined ? head.source : `${head.source} ${safe(head.topic)}`;
    const flags = [
      ...(head.subscription !== undefined ? [`subscriptions.${head.subscription}`] : []),
      ...(head.retained ? ["retained"] : []),
    ];
    out(`${time} ${where}${flags.length ? ` (${flags.join(", ")})` : ""}${raw ? ` ${raw.length} bytes` : ""}`);
    if (text !== undefined) out(`  ${text}`);
    if (note) {
      out(`  - ${note}`);
      return;
    }
    if (!res) return;
    if (!res.ok) {
      out(`  ✗ ${res.reason}: ${REASONS[res.reason]}`);
      return;
    }
    if (res.retained) {
      out("  - retained message skipped (retained: ignore; retained: accept takes it)");
      return;
    }
    if (readings.length === 0) out("  - no reading");
    for (const { r, derived } of readings) {
      const labels = Object.entries(r.labels);
      const rules = this.#rules.names(r);
      out(
        `  ${derived ? "⇢" : "→"} ${safe(r.sensor)} ${safe(r.metric)} = ${safe(JSON.stringify(r.value))}` +
          `${derived ? " (derived)" : ""}` +
          `${r.ts === at ? "" : ` at ${new Date(r.ts).toISOString()}`}` +
          `${labels.length ? ` {${labels.map(([k, v]) => `${safe(k)}=${safe(v)}`).join(", ")}}` : ""}` +
          `   rules: ${rules.length ? rules.map(safe).join(", ") : "(none)"}`,
      );
    }
    if (res.ignoredFields?.length) {
      out(`  ignored: ${res.ignoredFields.map((f) => `${safe(f.name)} (${WHY[f.why]})`).join(", ")}`);
    }
  }
}

const WHY = { text: "text", null: "null", list: "a list", not_picked: "not in values" } as const;

/** The raw input as one line of text, escaped and cut short. */
function printable(raw: Buffer): string {
  const s = raw.subarray(0, PAYLOAD_SHOWN).toString("utf8");
  return safe(s) + (raw.length > PAYLOAD_SHOWN ? ` … (${raw.length - PAYLOAD_SHOWN} more bytes)` : "");
}
