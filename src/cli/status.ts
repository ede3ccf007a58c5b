/**
 * `edgehook status`: one screen of "is it working". Asks the running agent (GET
 * /api/status on http.listen); when it does not answer, reads the outbox database
 * and says the agent is down. `--json` prints the snapshot, `--watch` refreshes it.
 */
import { existsSync } from "node:fs";
import { get as httpGet } from "node:http";
import { parseArgs } from "node:util";
import type { LoadedConfig } from "../config/load.js";
import { ExitCode } from "../errors.js";
import { localUrl } from "../ops/http.js";
import { outboxPart, type StatusSnapshot } from "../ops/status.js";
import { version } from "../version.js";
import type { CliIO } from "./io.js";
import { outboxFile, withOutbox } from "./outbox-file.js";
import { safe } from "./safe-text.js";
import { formatAge, printTable } from "./table.js";

const WATCH_MS = 2_000;

/** The running agent's snapshot, or why there is none. */
export async function fetchStatus(
  loaded: LoadedConfig,
  timeoutMs = 2_000,
): Promise<{ snapshot: StatusSnapshot } | { error: string }> {
  const listen = loaded.config.http.listen;
  if (listen === false) return { error: "http.listen is false, so the agent cannot be asked" };
  if (/:0$/.test(listen.trim()))
    return { error: "http.listen has port 0 (chosen at start), so the agent cannot be found" };
  const base = localUrl(listen);
  try {
    const res = await getJson(`${base}/api/status`, timeoutMs);
    if (res.status !== 200) return { error: `${base} answered HTTP ${res.status}` };
    const snapshot = res.body as StatusSnapshot;
    if (snapshot?.agent?.id !== loaded.config.agent.id) {
      return { error: `${base} is another agent (${safe(snapshot?.agent?.id)}), not ${loaded.config.agent.id}` };
    }
    return { snapshot };
  } catch (err) {
    return { error: `no answer from ${base} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})` };
  }
}

/**
 * GET with node:http: a command started for one look should not spend a second loading
 * the fetch implementation (measured on a loaded Pi-class machine).
 */
function getJson(url: string, timeoutMs: number): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const req = httpGet(url, { timeout: timeoutMs, headers: { accept: "application/json" } }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("error", reject);
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        try {
          resolve({ status: res.statusCode ?? 0, body: res.statusCode === 200 ? JSON.parse(text) : undefined });
        } catch (err) {
          reject(err);
        }
      });
    });
    req.on("timeout", () => req.destroy(Object.assign(new Error("timed out"), { code: "timed out" })));
    req.on("error", reject);
  });
}

/** The snapshot from the agent, or from the outbox when the agent does not answer. */
export async function readStatus(loaded: LoadedConfig): Promise<{ snapshot: StatusSnapshot; why?: string }> {
  const live = await fetchStatus(loaded);
  if ("snapshot" in live) return live;
  const configured = Object.keys(loaded.config.destinations);
  const empty = {
    destinations: configured.map((name) => ({
      name,
      state: "unknown" as const,
      since: null,
      pending: 0,
      dead: 0,
      delivered: 0,
      oldest_pending_s: null,
      last_error: null,
      configured: true,
    })),
    outbox: { pending: 0, dead: 0, bytes: null },
    firing: [],
    dead_letters: [],
    recent: [],
  };
  const part = withOutbox(
    loaded,
    () => empty,
    (o) => outboxPart(o, configured, undefined),
  );
  return {
    why: live.error,
    snapshot: {
      from: "outbox",
      at: Date.now(),
      agent: {
        id: loaded.config.agent.id,
        version: version(),
        running: false,
        started_at: null,
        clock_synced: null,
        health: null,
        problems: [],
      },
      sources: [],
      ...part,
      history: [],
    },
  };
}

export async function statusCommand(args: string[], loaded: LoadedConfig, io: CliIO): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { json: { type: "boolean" }, watch: { type: "boolean" } },
    allowPositionals: false,
  });
  if (!values.watch) {
    const { snapshot, why } = await readStatus(loaded);
    if (values.json) io.out(JSON.stringify(snapshot, null, 2));
    else for (const line of renderStatus(snapshot, why, loaded)) io.out(line);
    return ExitCode.OK;
  }
  // --watch: redraw in place until Ctrl-C.
  let stop = false;
  let wake: () => void = () => {};
  const onStop = () => {
    stop = true;
    wake();
  };
  const offs = [io.onSignal("SIGINT", onStop), io.onSignal("SIGTERM", onStop)];
  try {
    while (!stop) {
      const { snapshot, why } = await readStatus(loaded);
      if (values.json) io.out(JSON.stringify(snapshot));
      else io.out(`\u001b[H\u001b[2J${renderStatus(snapshot, why, loaded).join("\n")}\n(every 2 s; Ctrl-C stops)`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, WATCH_MS);
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  } finally {
    for (const off of offs) off();
  }
  return ExitCode.OK;
}

/** The text screen. Every payload-derived text goes through safe(). */
export function renderStatus(s: StatusSnapshot, why: string | undefined, loaded: LoadedConfig): string[] {
  const now = s.at;
  const out: string[] = [];
  const a = s.agent;
  if (a.running) {
    const clock = a.clock_synced === null ? "not monitored" : a.clock_synced ? "synchronised" : "NOT synchronised";
    out.push(`edgehook ${safe(a.id)}  version ${safe(a.version)}  ${safe(a.health ?? "")}`);
    out.push(
      `  running since ${localTime(a.started_at, now)} (${formatAge(now - (a.started_at ?? now))}), clock ${clock}`,
    );
    for (const p of a.problems) out.push(`  ! ${safe(p)}`);
  } else {
    out.push(`edgehook ${safe(a.id)}  AGENT DOWN`);
    out.push(`  ${safe(why ?? "the agent did not answer")}`);
    out.push(
      existsSync(outboxFile(loaded))
        ? `  read from the outbox at ${outboxFile(loaded)}; destination states are unknown (only 'disabled' is stored)`
        : `  no outbox yet at ${outboxFile(loaded)} (the agent has not run)`,
    );
  }
  if (a.running) {
    out.push("", "SOURCES");
    if (s.sources.length === 0) out.push("  none configured");
    else
      table(out, [
        ["NAME", "STATE", "SINCE", "READINGS/MIN", "DECODE ERRORS", "READ ERRORS"],
        ...s.sources.flatMap((x) => [
          [
            safe(x.name),
            `${sourceState(x)}${x.detail ? ` (${safe(x.detail)})` : ""}`,
            localTime(x.since, now),
            x.readings_1m === null ? "-" : String(x.readings_1m),
            String(x.decode_errors),
            x.read_errors === null || x.read_errors === undefined ? "-" : String(x.read_errors),
          ],
          // Modbus units and 1-Wire probes under their source.
          ...(x.devices ?? []).map((d) => [
            `  ${safe(x.kind === "modbus" ? `unit ${d.id}` : d.id)} (${safe(d.sensor)})`,
            `${d.status}${d.detail ? ` (${safe(d.detail)})` : ""}`,
            localTime(d.since, now),
            "",
            "",
            "",
          ]),
        ]),
      ]);
  }
  out.push("", "DESTINATIONS");
  if (s.destinations.length === 0) out.push("  none configured");
  else
    table(out, [
      ["NAME", "STATE", "PENDING", "OLDEST", "DEAD", "LAST ERROR"],
      ...s.destinations.map((d) => [
        safe(d.name),
        destinationState(d, now),
        String(d.pending),
        d.oldest_pending_s === null ? "-" : formatAge(d.oldest_pending_s * 1000),
        String(d.dead),
        safe(d.last_error ?? ""),
      ]),
    ]);
  out.push("", "FIRING NOW");
  if (s.firing.length === 0) out.push("  nothing");
  else
    table(out, [
      ["RULE", "SENSOR", "METRIC", "VALUE", "SINCE"],
      ...s.firing.map((f) => [
        safe(f.rule),
        safe(f.sensor),
        safe(f.metric),
        safe(typeof f.value === "object" ? JSON.stringify(f.value) : f.value),
        `${localTime(f.since, now)}${f.phase === "firing" ? "" : ` (${f.phase})`}`,
      ]),
    ]);
  out.push("", "RECENT DEAD LETTERS");
  if (s.dead_letters.length === 0) out.push("  none");
  else
    table(out, [
      ["EVENT", "DESTINATION", "SERIES", "DIED", "REASON"],
      ...s.dead_letters.map((r) => [
        safe(r.event_id),
        safe(r.destination),
        safe(r.series),
        localTime(r.settled_at, now),
        safe(r.last ?? ""),
      ]),
    ]);
  return out;
}

/** What "up" means for each kind of source (the status page says the same). */
const UP: Record<string, string> = {
  mqtt: "connected",
  serial: "open",
  modbus: "bus open",
  onewire: "bus present",
  file: "reading",
};

/** `connected`, `open`, `bus open`, ... or the status when not up (the detail says more). */
export function sourceState(x: StatusSnapshot["sources"][number]): string {
  return x.status === "up" ? (UP[x.kind] ?? "up") : safe(x.status);
}

/** `up`, `down (since 10:02:11)`, `disabled (since …)` or `unknown (agent down)`. */
export function destinationState(d: StatusSnapshot["destinations"][number], now: number): string {
  switch (d.state) {
    case "up":
      return "up";
    case "down":
      return `down (since ${localTime(d.since, now)})`;
    case "disabled":
      return d.since === null ? "disabled" : `disabled (since ${localTime(d.since, now)})`;
    default:
      return "unknown (agent down)";
  }
}

/** Local time: `10:02:11` today, `2026-11-28 10:02` otherwise. */
export function localTime(ms: number | null, now: number): string {
  if (ms === null) return "-";
  const d = new Date(ms);
  const pad = (n: number) => String(n).padStart(2, "0");
  const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (new Date(now).toDateString() === d.toDateString()) return hms;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${hms.slice(0, 5)}`;
}

function table(out: string[], rows: string[][]): void {
  printTable((line) => out.push(`  ${line}`), rows);
}
