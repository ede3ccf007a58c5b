/**
 * `edgehook queue stats|list|show|replay|purge` and `edgehook destination enable`:
 * operator commands on the outbox database, safe while the agent runs (WAL lets this
 * second process read and write; busy_timeout waits for the agent's transactions).
 * They never run the integrity check or move the file: that is the agent's job.
 *
 * Exit codes: 0 ok, 64 usage (with a usage line), 1 not found.
 */
import { existsSync } from "node:fs";
import { type ParseArgsConfig, parseArgs } from "node:util";
import type { LoadedConfig } from "../config/load.js";
import { parseDuration } from "../config/units.js";
import { ExitCode } from "../errors.js";
import { seriesLabel } from "../series-key.js";
import type { Outbox } from "../store/outbox.js";
import type { DeliveryListing, DeliveryState } from "../store/types.js";
import { outboxFile, withOutbox } from "./outbox-file.js";
import { safe, safeLines } from "./safe-text.js";
import { destinationState, fetchStatus } from "./status.js";
import { formatAge, printTable } from "./table.js";

type Out = (line: string) => void;

const USAGE = {
  stats: "usage: edgehook queue stats [--json] --config FILE",
  list: "usage: edgehook queue list [--state pending|dead|delivered] [--destination NAME] [--limit N] [--json] --config FILE",
  show: "usage: edgehook queue show EVENT_ID [--json] --config FILE",
  replay: "usage: edgehook queue replay EVENT_ID | --destination NAME --dead --config FILE",
  purge: "usage: edgehook queue purge --older-than 7d [--state delivered|dead] --config FILE",
  queue: "usage: edgehook queue stats|list|show|replay|purge [options] --config FILE",
  destination: "usage: edgehook destination enable NAME --config FILE",
};

function usage(out: Out, line: string, problem?: string): number {
  if (problem) out(`edgehook: ${problem}`);
  out(line);
  return ExitCode.USAGE;
}

function parse(args: string[], options: NonNullable<ParseArgsConfig["options"]>) {
  return parseArgs({ args, options, allowPositionals: true, strict: true });
}

export async function queueCommand(args: string[], loaded: LoadedConfig, out: Out): Promise<number> {
  const [sub, ...rest] = args;
  try {
    switch (sub) {
      case "stats":
        return await stats(rest, loaded, out);
      case "list":
        return list(rest, loaded, out);
      case "show":
        return show(rest, loaded, out);
      case "replay":
        return replay(rest, loaded, out);
      case "purge":
        return purge(rest, loaded, out);
      default:
        return usage(out, USAGE.queue, sub === undefined ? undefined : `unknown queue command '${sub}'`);
    }
  } catch (err) {
    // parseArgs throws TypeError with code ERR_PARSE_ARGS_* on unknown or malformed options.
    if ((err as { code?: string }).code?.startsWith("ERR_PARSE_ARGS")) {
      return usage(out, USAGE[sub as keyof typeof USAGE] ?? USAGE.queue, (err as Error).message);
    }
    throw err;
  }
}

async function stats(args: string[], loaded: LoadedConfig, out: Out): Promise<number> {
  const { values, positionals } = parse(args, { json: { type: "boolean" } });
  if (positionals.length > 0) return usage(out, USAGE.stats, `unexpected '${positionals[0]}'`);
  const rows = withOutbox(
    loaded,
    () => ({ stats: [], flags: {} }),
    (o) => ({ stats: o.stats(), flags: o.destinationFlags() }),
  );
  // Up or down is known only to the running agent; only "disabled" is stored.
  const live = await fetchStatus(loaded);
  const liveDest = "snapshot" in live ? live.snapshot.destinations : undefined;
  const names = new Set([...Object.keys(loaded.config.destinations), ...rows.stats.map((s) => s.destination)]);
  const table = [...names].sort().map((destination) => {
    const s = rows.stats.find((x) => x.destination === destination);
    const flag = (rows.flags as ReturnType<Outbox["destinationFlags"]>)[destination];
    const l = liveDest?.find((d) => d.name === destination);
    const state = l && l.state !== "unknown" ? l.state : flag?.disabled ? "disabled" : "unknown";
    const since = l?.since ?? (flag?.disabled ? (flag.since ?? null) : null);
    return {
      destination,
      configured: destination in loaded.config.destinations,
      state,
      since,
      agentRunning: liveDest !== undefined,
      enabled: !flag?.disabled,
      ...(flag?.disabled ? { disabledReason: flag.reason ?? null, disabledSince: flag.since ?? null } : {}),
      pending: s?.pending ?? 0,
      dead: s?.dead ?? 0,
      delivered: s?.delivered ?? 0,
      oldestPendingAgeMs: s?.oldestPendingAgeMs ?? null,
    };
  });
  if (values.json) {
    out(JSON.stringify(table, null, 2));
    return ExitCode.OK;
  }
  if (!existsSync(outboxFile(loaded))) out(`no outbox yet at ${outboxFile(loaded)} (the agent has not run)`);
  if ("error" in live) out(`agent not answering (${live.error}): up/down is unknown`);
  const now = Date.now();
  printTable(out, [
    ["DESTINATION", "STATE", "PENDING", "DEAD", "DELIVERED", "OLDEST PENDING"],
    ...table.map((t) => [
      safe(t.destination),
      !t.configured && t.state !== "disabled"
        ? "not in config"
        : t.state === "disabled"
          ? `disabled (${safe(t.disabledReason ?? "no reason")}${t.since ? `, since ${iso(t.since)}` : ""})`
          : destinationState(
              {
                name: t.destination,
                state: t.state as "up" | "down" | "unknown",
                since: t.since,
                pending: 0,
                dead: 0,
                delivered: 0,
                oldest_pending_s: null,
                last_error: null,
                configured: t.configured,
              },
              now,
            ),
      String(t.pending),
      String(t.dead),
      String(t.delivered),
      t.oldestPendingAgeMs === null ? "-" : formatAge(t.oldestPendingAgeMs),
    ]),
  ]);
  return ExitCode.OK;
}

const STATES: readonly DeliveryState[] = ["pending", "delivered", "dead"];

function list(args: string[], loaded: LoadedConfig, out: Out): number {
  const { values, positionals } = parse(args, {
    state: { type: "string" },
    destination: { type: "string" },
    limit: { type: "string" },
    json: { type: "boolean" },
  });
  if (positionals.length > 0) return usage(out, USAGE.list, `unexpected '${positionals[0]}'`);
  const state = values.state as string | undefined;
  if (state !== undefined && !STATES.includes(state as DeliveryState)) {
    return usage(out, USAGE.list, `--state must be pending, dead or delivered (is '${state}')`);
  }
  const limit = values.limit === undefined ? 50 : Number(values.limit);
  if (!Number.isInteger(limit) || limit <= 0) {
    return usage(out, USAGE.list, `--limit must be a positive whole number (is '${String(values.limit)}')`);
  }
  const rows = withOutbox(
    loaded,
    () => [] as DeliveryListing[],
    (o) =>
      o.list({
        limit,
        ...(state ? { state: state as DeliveryState } : {}),
        ...(values.destination ? { destination: values.destination as string } : {}),
      }),
  );
  if (values.json) {
    out(
      JSON.stringify(
        rows.map((r) => ({ ...r, series: seriesLabel(r.series) })),
        null,
        2,
      ),
    );
    return ExitCode.OK;
  }
  const now = Date.now();
  printTable(out, [
    ["EVENT", "DESTINATION", "STATE", "ATTEMPTS", "AGE", "TYPE", "SERIES", "LAST"],
    ...rows.map((r) => [
      safe(r.eventId),
      safe(r.destination),
      r.state,
      String(r.attempts),
      formatAge(now - r.createdAt),
      safe(r.type),
      safe(seriesLabel(r.series)),
      safe(lastOutcome(r)),
    ]),
  ]);
  return ExitCode.OK;
}

function show(args: string[], loaded: LoadedConfig, out: Out): number {
  const { values, positionals } = parse(args, { json: { type: "boolean" } });
  const [id, extra] = positionals;
  if (!id || extra !== undefined) return usage(out, USAGE.show);
  const detail = withOutbox(
    loaded,
    () => undefined,
    (o) => o.show(id),
  );
  if (!detail) {
    out(`edgehook: no event '${id}' in the outbox (delivered rows are kept for outbox.keep_delivered)`);
    return ExitCode.FAILURE;
  }
  let body: unknown = detail.body;
  try {
    body = JSON.parse(detail.body);
  } catch {
    // stored bytes are shown as they are
  }
  if (values.json) {
    out(JSON.stringify({ ...detail, series: seriesLabel(detail.series), body }, null, 2));
    return ExitCode.OK;
  }
  out(`event     ${safe(detail.id)}`);
  out(`type      ${safe(detail.type)}`);
  out(`rule      ${safe(detail.rule)}`);
  out(`series    ${safe(seriesLabel(detail.series))}`);
  out(`severity  ${detail.severity} (priority ${detail.priority})`);
  out(`created   ${iso(detail.createdAt)}`);
  out("body");
  // JSON.stringify escapes control characters inside strings; a body that is not JSON is shown escaped.
  for (const line of typeof body === "string" ? safeLines(body) : safeLines(JSON.stringify(body, null, 2)))
    out(`  ${line}`);
  for (const d of detail.deliveries) {
    const when =
      d.state === "pending"
        ? d.nextAt !== null && d.nextAt > Date.now()
          ? `, next attempt ${iso(d.nextAt)}`
          : ", due now"
        : d.settledAt !== null
          ? ` at ${iso(d.settledAt)}`
          : "";
    out(
      `delivery  ${safe(d.destination)}: ${d.state}${when}, ${d.attempts} attempt(s)${d.reason ? `, reason: ${safe(d.reason)}` : ""}`,
    );
    for (const a of d.history) {
      out(
        `  ${iso(a.at)}  ${a.status === undefined ? "no answer" : `HTTP ${a.status}`}  ${a.durationMs} ms${a.error ? `  ${safe(a.error)}` : ""}`,
      );
    }
  }
  return ExitCode.OK;
}

function replay(args: string[], loaded: LoadedConfig, out: Out): number {
  const { values, positionals } = parse(args, { destination: { type: "string" }, dead: { type: "boolean" } });
  const [id, extra] = positionals;
  if (extra !== undefined) return usage(out, USAGE.replay, `unexpected '${extra}'`);
  if (id !== undefined) {
    if (values.destination !== undefined || values.dead)
      return usage(out, USAGE.replay, "give an event id or --destination, not both");
    const result = withOutbox(
      loaded,
      () => undefined,
      (o) => (o.show(id) ? o.replay({ eventId: id }) : undefined),
    );
    if (result === undefined) {
      out(`edgehook: no event '${id}' in the outbox`);
      return ExitCode.FAILURE;
    }
    out(
      result === 0
        ? `${id}: nothing to replay (its deliveries are still pending)`
        : `${id}: ${result} deliver${result === 1 ? "y" : "ies"} back to pending`,
    );
    return ExitCode.OK;
  }
  const destination = values.destination as string | undefined;
  if (!destination || !values.dead) return usage(out, USAGE.replay);
  const known =
    destination in loaded.config.destinations ||
    withOutbox(
      loaded,
      () => false,
      (o) => o.stats().some((s) => s.destination === destination),
    );
  if (!known) {
    out(`edgehook: no destination '${destination}' in the configuration or the outbox`);
    return ExitCode.FAILURE;
  }
  const n = withOutbox(
    loaded,
    () => 0,
    (o) => o.replay({ destination, state: "dead" }),
  );
  out(`${destination}: ${n} dead deliver${n === 1 ? "y" : "ies"} back to pending`);
  return ExitCode.OK;
}

function purge(args: string[], loaded: LoadedConfig, out: Out): number {
  const { values, positionals } = parse(args, {
    "older-than": { type: "string" },
    state: { type: "string", multiple: true },
  });
  if (positionals.length > 0) return usage(out, USAGE.purge, `unexpected '${positionals[0]}'`);
  const olderThan = values["older-than"] as string | undefined;
  if (olderThan === undefined) return usage(out, USAGE.purge, "--older-than is required");
  const ms = parseDuration(olderThan);
  if (ms === undefined)
    return usage(out, USAGE.purge, `--older-than must be a duration like 7d or 12h (is '${olderThan}')`);
  const states = (values.state as string[] | undefined) ?? ["delivered", "dead"];
  for (const s of states) {
    if (s !== "delivered" && s !== "dead") {
      return usage(
        out,
        USAGE.purge,
        `--state must be delivered or dead (is '${s}'); pending deliveries are never purged`,
      );
    }
  }
  const n = withOutbox(
    loaded,
    () => 0,
    (o) => o.purge({ olderThanMs: ms, states: states as ("delivered" | "dead")[] }),
  );
  out(`purged ${n} ${states.join("/")} deliver${n === 1 ? "y" : "ies"} settled more than ${olderThan} ago`);
  return ExitCode.OK;
}

export async function destinationCommand(args: string[], loaded: LoadedConfig, out: Out): Promise<number> {
  const [sub, name, extra] = args;
  if (sub !== "enable" || !name || extra !== undefined || name.startsWith("-")) return usage(out, USAGE.destination);
  const result = withOutbox(
    loaded,
    () => ({ known: name in loaded.config.destinations, enabled: false }),
    (o) => {
      const known = name in loaded.config.destinations || name in o.destinationFlags();
      return { known, enabled: known && o.enableDestination(name) };
    },
  );
  if (!result.known) {
    out(`edgehook: no destination '${name}' in the configuration`);
    return ExitCode.FAILURE;
  }
  out(
    result.enabled
      ? `${name}: enabled; the running agent resumes deliveries to it`
      : `${name}: was not disabled; nothing to do`,
  );
  return ExitCode.OK;
}

// ---------------------------------------------------------------- formatting

function lastOutcome(r: DeliveryListing): string {
  if (r.reason) return r.reason;
  if (r.lastStatus !== null) return `HTTP ${r.lastStatus}${r.lastError ? ` ${r.lastError}` : ""}`;
  return r.lastError ?? "";
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}
