/**
 * The status page (GET /): server-rendered HTML, readable on a phone, that shows what
 * `edgehook status` shows plus the outbox depth over the last hour (inline SVG) and the
 * newest deliveries. A small inline script polls /api/status and re-renders the same
 * way: `view` is serialised into the page (Function.prototype.toString), so the server
 * and the browser share one renderer. No build step, nothing loaded from elsewhere, no
 * secret (the snapshot holds none) and no action.
 */
import type { StatusSnapshot } from "./status.js";

/** How often the page asks for a new snapshot. */
export const POLL_MS = 3_000;

/**
 * The page body for a snapshot. Self-contained (no imports, no closures): it also runs
 * in the browser. Every text from outside (names, errors, values) goes through `esc`.
 */
export function view(s: StatusSnapshot, now: number): string {
  const esc = (v: unknown): string =>
    String(v ?? "").replace(
      // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are escaped
      /[&<>"'\u0000-\u001f\u007f-\u009f]/g,
      (c) =>
        ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c] ??
        `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
    );
  const time = (ms: number | null | undefined): string => {
    if (ms === null || ms === undefined) return "–";
    const d = new Date(ms);
    const sameDay = new Date(now).toDateString() === d.toDateString();
    return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
  };
  const age = (sec: number | null | undefined): string => {
    if (sec === null || sec === undefined) return "–";
    const x = Math.max(0, Math.round(sec));
    if (x < 60) return `${x}s`;
    if (x < 3600) return `${Math.floor(x / 60)}m${x % 60 ? ` ${x % 60}s` : ""}`;
    if (x < 86400) return `${Math.floor(x / 3600)}h ${Math.floor((x % 3600) / 60)}m`;
    return `${Math.floor(x / 86400)}d ${Math.floor((x % 86400) / 3600)}h`;
  };
  const badge = (text: string, kind: string): string => `<span class="b ${esc(kind)}">${esc(text)}</span>`;
  const table = (head: string[], rows: string[][], empty: string): string =>
    rows.length === 0
      ? `<p class="empty">${esc(empty)}</p>`
      : `<div class="scroll"><table><thead><tr>${head.map((h) => `<th>${esc(h)}</th>`).join("")}</tr></thead><tbody>${rows
          .map((r) => `<tr>${r.map((c) => `<td>${c}</td>`).join("")}</tr>`)
          .join("")}</tbody></table></div>`;

  const a = s.agent;
  const health = a.running ? (a.health ?? "unknown") : "agent down";
  const healthKind = !a.running ? "bad" : a.health === "ok" ? "ok" : a.health === "degraded" ? "warn" : "bad";
  const clock = a.clock_synced === null ? "not monitored" : a.clock_synced ? "synchronised" : "NOT synchronised";
  const header = `<header><h1>edgehook <span class="id">${esc(a.id)}</span></h1>
<p>${badge(health, healthKind)} version ${esc(a.version)} · ${
    a.running ? `up since ${esc(time(a.started_at))}` : "not running: read from the outbox"
  } · clock ${esc(clock)}</p>${
    a.problems.length ? `<ul class="problems">${a.problems.map((p) => `<li>${esc(p)}</li>`).join("")}</ul>` : ""
  }</header>`;

  // What "up" means depends on the kind: a broker connection, an open port, a Modbus bus
  // open, a 1-Wire bus present, a polled file read. Devices (Modbus units, 1-Wire probes)
  // are listed under their source, each up or down.
  const UP: Record<string, string> = {
    mqtt: "connected",
    serial: "open",
    modbus: "bus open",
    onewire: "bus present",
    file: "reading",
  };
  const sources = table(
    ["Source", "State", "Since", "Readings/min", "Decode errors", "Read errors"],
    s.sources.map((x) => {
      const devs = x.devices ?? [];
      const down = devs.some((d) => d.status !== "up");
      // A bus that works with a unit or probe down: its detail says how many, the list which.
      const state = x.status === "up" ? badge(UP[x.kind] ?? "up", down ? "warn" : "ok") : badge(x.status, "bad");
      const list = devs.length
        ? `<ul class="devs">${devs
            .map(
              (d) =>
                `<li data-device="${esc(`${x.name}/${d.id}`)}">${badge(d.status, d.status === "up" ? "ok" : "bad")} ${esc(
                  x.kind === "modbus" ? `unit ${d.id}` : d.id,
                )} · ${esc(d.sensor)}${d.detail ? ` <small>${esc(d.detail)}</small>` : ""}</li>`,
            )
            .join("")}</ul>`
        : "";
      return [
        esc(x.name),
        state + (x.detail ? ` <small>${esc(x.detail)}</small>` : "") + list,
        esc(time(x.since)),
        esc(x.readings_1m ?? "–"),
        esc(x.decode_errors),
        esc(x.read_errors ?? "–"),
      ];
    }),
    a.running ? "No sources configured." : "Sources are unknown while the agent is down.",
  );

  const destinations = table(
    ["Destination", "State", "Pending", "Oldest", "Dead", "Delivered"],
    s.destinations.map((d) => [
      `${esc(d.name)}${d.last_error ? `<br><small class="err">${esc(d.last_error)}</small>` : ""}`,
      d.state === "down"
        ? `${badge("down", "bad")} <small>since ${esc(time(d.since))}</small>`
        : d.state === "disabled"
          ? `${badge("disabled", "bad")}${d.since ? ` <small>since ${esc(time(d.since))}</small>` : ""}`
          : d.state === "up"
            ? badge("up", "ok")
            : badge("unknown", "warn"),
      `<span class="num" data-pending="${esc(d.name)}">${esc(d.pending)}</span>`,
      esc(age(d.oldest_pending_s)),
      esc(d.dead),
      esc(d.delivered),
    ]),
    "No destinations.",
  );

  const firing = table(
    ["Rule", "Sensor", "Metric", "Value", "Since"],
    s.firing.map((f) => [
      esc(f.rule),
      esc(f.sensor),
      esc(f.metric),
      esc(typeof f.value === "object" ? JSON.stringify(f.value) : f.value),
      `${esc(time(f.since))}${f.phase === "firing" ? "" : ` <small>${esc(f.phase)}</small>`}`,
    ]),
    "Nothing is firing.",
  );

  // Outbox depth over the last hour (or since the agent started, when that is shorter).
  const W = 400;
  const H = 120;
  const first = s.history[0]?.at ?? now;
  const t0 = Math.max(now - 3_600_000, Math.min(first, now - 60_000));
  const span = now - t0;
  const pts = s.history.filter((p) => p.at >= t0);
  const max = Math.max(1, ...pts.map((p) => p.pending));
  const x = (t: number) => (((t - t0) / span) * W).toFixed(1);
  const y = (v: number) => (H - 20 - (v / max) * (H - 40)).toFixed(1);
  const line = pts.map((p) => `${x(p.at)},${y(p.pending)}`).join(" ");
  const base = H - 20;
  const area =
    pts.length > 1 ? `${x(pts[0]?.at ?? now)},${base} ${line} ${x(pts[pts.length - 1]?.at ?? now)},${base}` : "";
  const ago = span >= 3_590_000 ? "1 h ago" : `${Math.max(1, Math.round(span / 60_000))} min ago`;
  const chart = a.running
    ? `<svg class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="pending deliveries over the last hour">
<line x1="0" y1="${base}" x2="${W}" y2="${base}" class="axis"/><line x1="0" y1="20" x2="${W}" y2="20" class="grid"/>
${area ? `<polygon points="${area}" class="area"/>` : ""}${line ? `<polyline points="${line}" class="line"/>` : ""}
<text x="2" y="14">${esc(max)} pending</text><text x="2" y="${H - 4}">${esc(ago)}</text><text x="${W - 2}" y="${H - 4}" text-anchor="end">now: ${esc(s.outbox.pending)} pending</text>
</svg>`
    : `<p class="empty">The chart needs the running agent.</p>`;

  const deliveries = (rows: StatusSnapshot["recent"], empty: string) =>
    table(
      ["Created", "State", "Series", "Destination", "Attempts", "Type", "Last"],
      rows.map((r) => [
        esc(time(r.created_at)),
        badge(r.state, r.state === "delivered" ? "ok" : r.state === "dead" ? "bad" : "warn"),
        esc(r.series),
        esc(r.destination),
        esc(r.attempts),
        esc(r.type),
        `<small class="wide">${esc(r.last ?? "")}</small>`,
      ]),
      empty,
    );

  return `${header}
<section><h2>Destinations</h2>${destinations}</section>
<section><h2>Outbox</h2><p>${esc(s.outbox.pending)} pending · ${esc(s.outbox.dead)} dead${
    s.outbox.bytes === null
      ? ""
      : ` · ${esc(s.outbox.bytes < 1048576 ? `${Math.ceil(s.outbox.bytes / 1024)} KB` : `${(s.outbox.bytes / 1048576).toFixed(1)} MB`)} of events`
  }</p>${chart}</section>
<section><h2>Firing now</h2>${firing}</section>
<section><h2>Sources</h2>${sources}</section>
<section><h2>Last ${esc(s.recent.length)} deliveries</h2>${deliveries(s.recent, "No events yet.")}</section>
<section><h2>Dead letters</h2>${deliveries(s.dead_letters, "No dead letters.")}</section>
<footer>Updated ${esc(time(s.at))}${s.from === "agent" ? "" : " (from the outbox)"} · read-only</footer>`;
}

const STYLE = `
:root{color-scheme:light dark;--fg:#1b1f24;--bg:#fafbfc;--mut:#5b636d;--line:#d8dde3;--ok:#1a7f37;--warn:#9a6700;--bad:#cf222e}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--bg:#0d1117;--mut:#9aa5b1;--line:#30363d;--ok:#3fb950;--warn:#d29922;--bad:#f85149}}
*{box-sizing:border-box}body{margin:0 auto;max-width:60rem;padding:.75rem;font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
h1{font-size:1.3rem;margin:.2rem 0}h1 .id{color:var(--mut);font-weight:normal}h2{font-size:1.05rem;margin:1.2rem 0 .4rem;border-bottom:1px solid var(--line)}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-size:.9rem}th,td{text-align:left;padding:.25rem .5rem .25rem 0;border-bottom:1px solid var(--line);vertical-align:top;white-space:nowrap}
td small{white-space:normal;color:var(--mut)}.num{font-variant-numeric:tabular-nums}
.b{display:inline-block;padding:0 .45rem;border-radius:.6rem;font-size:.8rem;font-weight:600;color:#fff}.b.ok{background:var(--ok)}.b.warn{background:var(--warn)}.b.bad{background:var(--bad)}
.empty,footer{color:var(--mut)}.problems{color:var(--bad);margin:.3rem 0;padding-left:1.2rem}
.chart{width:100%;max-width:40rem;height:auto;display:block}.chart .axis{stroke:var(--line)}.chart .line{fill:none;stroke:var(--warn);stroke-width:2}.chart .area{fill:var(--warn);opacity:.15}.chart text{fill:var(--mut);font-size:13px}.chart .grid{stroke:var(--line);stroke-dasharray:3 3}small.err{color:var(--bad)}small.wide{display:inline-block;min-width:14rem}
.devs{list-style:none;margin:.2rem 0 0;padding:0;white-space:normal}.devs li{margin:.1rem 0}
footer{margin-top:1.5rem;font-size:.8rem}`;

/** The whole page for a snapshot. */
export function renderPage(s: StatusSnapshot): string {
  const script = `const view=${view.toString()};
let failures=0;
async function poll(){try{const r=await fetch("/api/status",{cache:"no-store",credentials:"same-origin"});
if(!r.ok)throw new Error("HTTP "+r.status);const s=await r.json();document.getElementById("app").innerHTML=view(s,Date.now());
document.title=(s.agent.health&&s.agent.health!=="ok"?"("+s.agent.health+") ":"")+"edgehook "+s.agent.id;failures=0;
document.getElementById("conn").textContent="";}catch(e){failures++;document.getElementById("conn").textContent="The agent does not answer ("+String(e.message||e)+"); retrying.";}
setTimeout(poll,${POLL_MS});}
poll();`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>edgehook ${escapeHtml(s.agent.id)}</title><style>${STYLE}</style></head>
<body><p id="conn" class="problems" role="status"></p><main id="app">${view(s, s.at)}</main>
<script>${script.replace(/<\/(script)/gi, "<\\/$1")}</script></body></html>
`;
}

function escapeHtml(v: string): string {
  return v.replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c] ?? c,
  );
}
