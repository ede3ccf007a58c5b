/**
 * The health/metrics server on a real loopback socket (port 0).
 */
import { readFileSync } from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import { EdgehookError } from "../../src/errors.js";
import { evaluateHealth, type HealthInput, type HealthReport } from "../../src/ops/health.js";
import { accessOf, HttpServer, isLoopback, localUrl, parseListen, sha256 } from "../../src/ops/http.js";
import { silentLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import { view } from "../../src/ops/page.js";
import type { StatusSnapshot } from "../../src/ops/status.js";

function input(over: Partial<HealthInput> = {}): HealthInput {
  return {
    agent: "pi-greenhouse",
    uptimeMs: 93_500,
    database: "open",
    loop: { alive: true, idleMs: 200 },
    sources: [{ name: "mqtt", kind: "mqtt", status: "up", since: 1_700_000_000_000 }],
    destinations: { ops: { state: "up", pending: 2, dead: 0, oldest_pending_s: 4 } },
    outbox: { pending: 2, dead: 0, bytes: 81_920, oldest_pending_s: 4 },
    ...over,
  };
}

let server: HttpServer | undefined;
afterEach(async () => {
  await server?.stop();
  server = undefined;
});

async function serve(health: () => HealthReport, metrics = new Metrics(), listen = "127.0.0.1:0"): Promise<string> {
  server = new HttpServer({ listen, metrics, health, logger: silentLogger() });
  const { port } = await server.start();
  expect(port).toBeGreaterThan(0);
  return listen.startsWith("[") ? `http://[::1]:${port}` : `http://127.0.0.1:${port}`;
}

// ---------------------------------------------------------------- Prometheus text, strictly

interface Family {
  type: string;
  help: string;
  samples: { name: string; labels: Record<string, string>; value: number }[];
}

const NAME = "[a-zA-Z_:][a-zA-Z0-9_:]*";
const VALUE = /^(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|NaN|[+-]Inf)$/;

/** Parses the Prometheus text exposition format 0.0.4; throws on any line it does not accept. */
function parsePrometheus(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  expect(text.endsWith("\n")).toBe(true);
  for (const [i, line] of text.slice(0, -1).split("\n").entries()) {
    const where = `line ${i + 1}: ${line}`;
    if (line === "") continue;
    let m = new RegExp(`^# HELP (${NAME}) (.*)$`).exec(line);
    if (m) {
      const f = families.get(m[1]!) ?? { type: "", help: "", samples: [] };
      if (f.help) throw new Error(`second HELP, ${where}`);
      f.help = m[2]!;
      families.set(m[1]!, f);
      continue;
    }
    m = new RegExp(`^# TYPE (${NAME}) (counter|gauge|histogram|summary|untyped)$`).exec(line);
    if (m) {
      const f = families.get(m[1]!) ?? { type: "", help: "", samples: [] };
      if (f.type || f.samples.length) throw new Error(`TYPE after samples or twice, ${where}`);
      f.type = m[2]!;
      families.set(m[1]!, f);
      continue;
    }
    if (line.startsWith("#")) throw new Error(`unknown comment, ${where}`);
    m = new RegExp(`^(${NAME})(?:\\{(.*)\\})? (\\S+)(?: (-?\\d+))?$`).exec(line);
    if (!m) throw new Error(`not a sample, ${where}`);
    const [, name, labelText, valueText] = m;
    if (!VALUE.test(valueText!)) throw new Error(`bad value, ${where}`);
    const labels: Record<string, string> = {};
    if (labelText) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)/gy;
      let consumed = 0;
      for (const lm of labelText.matchAll(re)) {
        labels[lm[1]!] = lm[2]!;
        consumed += lm[0].length;
      }
      if (consumed !== labelText.length) throw new Error(`bad labels, ${where}`);
    }
    const family =
      families.get(name!) ??
      families.get(name!.replace(/_(bucket|sum|count)$/, "")) ??
      families.get(name!.replace(/_total$/, ""));
    if (!family) throw new Error(`sample of an undeclared metric, ${where}`);
    if (name!.endsWith("_bucket") && !("le" in labels)) throw new Error(`bucket without le, ${where}`);
    family.samples.push({ name: name!, labels, value: Number(valueText) });
  }
  for (const [name, f] of families) {
    if (!f.type || !f.help) throw new Error(`${name} lacks TYPE or HELP`);
  }
  return families;
}

/** Every metric name declared in src/ops/metrics.ts, read from the source as a user would. */
function declaredMetricNames(): string[] {
  const source = readFileSync(new URL("../../src/ops/metrics.ts", import.meta.url), "utf8");
  const names = [...source.matchAll(/name: "(edgehook_[a-z_]+)"/g)].map((m) => m[1]!);
  expect(names.length).toBeGreaterThanOrEqual(12);
  return names;
}

// ---------------------------------------------------------------- tests

describe("GET /healthz", () => {
  it("answers 200 with the report when healthy", async () => {
    const base = await serve(() => evaluateHealth(input()));
    const res = await fetch(`${base}/healthz`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("application/json");
    const body = await res.json();
    expect(body).toEqual({
      status: "ok",
      agent: "pi-greenhouse",
      uptime_s: 93,
      database: "open",
      loop_idle_s: 0,
      sources: [{ name: "mqtt", kind: "mqtt", status: "up", since: 1_700_000_000_000 }],
      destinations: { ops: { state: "up", pending: 2, dead: 0, oldest_pending_s: 4 } },
      outbox: { pending: 2, dead: 0, bytes: 81_920, oldest_pending_s: 4 },
      problems: [],
    });
  });

  it("answers 200 'degraded' when only a source or destination is down (offline is not failure)", async () => {
    const base = await serve(() =>
      evaluateHealth(
        input({
          sources: [{ name: "serial:arduino", kind: "serial", status: "down", since: 1, detail: "ENOENT" }],
          destinations: { ops: { state: "down", pending: 40, dead: 0, oldest_pending_s: 600 } },
        }),
      ),
    );
    const res = await fetch(`${base}/healthz`);
    expect(res.status).toBe(200);
    const body = (await res.json()) as HealthReport;
    expect(body.status).toBe("degraded");
    expect(body.problems).toEqual(["source serial:arduino is down: ENOENT", "destination ops is down"]);
  });

  it("answers 503 when the database is not open or the loop stopped", async () => {
    let report = evaluateHealth(input({ database: "closed" }));
    const base = await serve(() => report);
    let res = await fetch(`${base}/healthz`);
    expect(res.status).toBe(503);
    expect(((await res.json()) as HealthReport).problems).toEqual(["database is closed"]);

    report = evaluateHealth(input({ loop: { alive: false, idleMs: 95_000 } }));
    res = await fetch(`${base}/healthz`);
    expect(res.status).toBe(503);
    expect(((await res.json()) as HealthReport).problems).toEqual(["processing loop silent for 95 s"]);

    report = evaluateHealth(input());
    res = await fetch(`${base}/healthz?verbose=1`);
    expect(res.status).toBe(200);
  });

  it("answers 503 when assembling the report throws", async () => {
    const base = await serve(() => {
      throw new Error("database handle gone");
    });
    const res = await fetch(`${base}/healthz`);
    expect(res.status).toBe(503);
    expect(await res.json()).toEqual({
      status: "failing",
      problems: ["health check failed: Error: database handle gone"],
    });
  });
});

describe("GET /metrics", () => {
  it("is checked by a parser that rejects malformed exposition text", () => {
    const ok = '# HELP a_total A.\n# TYPE a_total counter\na_total{x="1",y="q\\""} 2\n';
    expect(parsePrometheus(ok).get("a_total")?.samples[0]?.labels).toEqual({ x: "1", y: 'q\\"' });
    for (const bad of [
      "b 1\n",
      "# HELP a A.\n# TYPE a gauge\na one\n",
      '# HELP a A.\n# TYPE a gauge\na{x="1" y="2"} 1\n',
      "# HELP a A.\na 1\n",
      "# HELP a A.\n# TYPE a gauge\na 1",
    ]) {
      expect(() => parsePrometheus(bad), bad).toThrow();
    }
  });

  it("serves valid Prometheus text with every edgehook metric and the process metrics", async () => {
    const metrics = new Metrics();
    metrics.readings.inc({ source: "mqtt" }, 3);
    metrics.deliveryLatency.observe({ destination: "ops" }, 0.042);
    metrics.decodeErrors.inc({ source: 'serial:a"b', reason: "not\nnumber" });
    const base = await serve(() => evaluateHealth(input()), metrics);
    const res = await fetch(`${base}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe(metrics.registry.contentType);
    const families = parsePrometheus(await res.text());

    for (const name of declaredMetricNames()) expect(families.has(name), name).toBe(true);
    expect(families.get("edgehook_readings_total")?.samples).toEqual([
      { name: "edgehook_readings_total", labels: { source: "mqtt" }, value: 3 },
    ]);
    expect(families.get("edgehook_delivery_duration_seconds")?.type).toBe("histogram");
    const count = families
      .get("edgehook_delivery_duration_seconds")
      ?.samples.find((s) => s.name === "edgehook_delivery_duration_seconds_count");
    expect(count?.value).toBe(1);

    for (const name of [
      "edgehook_process_cpu_seconds_total",
      "edgehook_process_resident_memory_bytes",
      "edgehook_process_open_fds",
      "edgehook_nodejs_heap_size_used_bytes",
      "edgehook_nodejs_version_info",
      "edgehook_nodejs_eventloop_lag_seconds",
    ]) {
      expect(families.has(name), name).toBe(true);
    }
    const rss = families.get("edgehook_process_resident_memory_bytes")?.samples[0]?.value ?? 0;
    expect(rss).toBeGreaterThan(10 * 1024 * 1024);
    // The histogram-based lag metrics poll every 10 ms; they must not be there.
    expect([...families.keys()].filter((n) => n.startsWith("edgehook_nodejs_eventloop_lag_"))).toEqual([
      "edgehook_nodejs_eventloop_lag_seconds",
    ]);
    // Every series is ours.
    expect([...families.keys()].filter((n) => !n.startsWith("edgehook_"))).toEqual([]);
  });

  it("can be started twice on the same Metrics (process metrics registered once)", async () => {
    const metrics = new Metrics();
    await serve(() => evaluateHealth(input()), metrics);
    await server!.stop();
    const base = await serve(() => evaluateHealth(input()), metrics);
    expect((await fetch(`${base}/metrics`)).status).toBe(200);
  });
});

describe("routing and binding", () => {
  it("answers 404 elsewhere and 405 to other methods", async () => {
    const base = await serve(() => evaluateHealth(input()));
    expect((await fetch(`${base}/`)).status).toBe(404);
    expect((await fetch(`${base}/healthz/x`)).status).toBe(404);
    const post = await fetch(`${base}/metrics`, { method: "POST", body: "x" });
    expect(post.status).toBe(405);
    expect(post.headers.get("allow")).toBe("GET, HEAD");
    const head = await fetch(`${base}/healthz`, { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(await head.text()).toBe("");
  });

  it("listens on IPv6 loopback when told", async () => {
    const base = await serve(() => evaluateHealth(input()), new Metrics(), "[::1]:0");
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
  });

  it("reports a port in use clearly", async () => {
    const base = await serve(() => evaluateHealth(input()));
    const port = new URL(base).port;
    const second = new HttpServer({
      listen: `127.0.0.1:${port}`,
      metrics: new Metrics(),
      health: () => evaluateHealth(input()),
      logger: silentLogger(),
    });
    await expect(second.start()).rejects.toThrow(/EADDRINUSE.*change http\.listen/);
  });

  it("stop() closes idle keep-alive connections promptly", async () => {
    const base = await serve(() => evaluateHealth(input()));
    await (await fetch(`${base}/healthz`)).text();
    const t0 = Date.now();
    await server!.stop();
    server = undefined;
    expect(Date.now() - t0).toBeLessThan(1_000);
    await expect(fetch(`${base}/healthz`)).rejects.toThrow();
  });
});

describe("the status page and /api/status", () => {
  const snapshot: StatusSnapshot = {
    from: "agent",
    at: Date.now(),
    agent: {
      id: "pi-<1>",
      version: "1.2.3",
      running: true,
      started_at: Date.now() - 60_000,
      clock_synced: true,
      health: "degraded",
      problems: ["destination ops is down"],
    },
    sources: [
      {
        name: "mqtt",
        kind: "mqtt",
        status: "up",
        since: Date.now(),
        readings_1m: 12,
        decode_errors: 1,
        read_errors: null,
      },
    ],
    destinations: [
      {
        name: "ops",
        state: "down",
        since: Date.now() - 5_000,
        pending: 7,
        dead: 1,
        delivered: 3,
        oldest_pending_s: 5,
        last_error: "connection refused",
        configured: true,
      },
    ],
    outbox: { pending: 7, dead: 1, bytes: 4096 },
    firing: [
      {
        rule: "hot",
        sensor: "<script>alert(1)</script>\u001b[2J",
        metric: "t",
        phase: "firing",
        value: 31,
        since: Date.now(),
      },
    ],
    dead_letters: [],
    recent: [],
    history: [
      { at: Date.now() - 30_000, pending: 2 },
      { at: Date.now(), pending: 7 },
    ],
  };
  async function serveStatus(token?: string): Promise<string> {
    server = new HttpServer({
      listen: "127.0.0.1:0",
      metrics: new Metrics(),
      health: () => evaluateHealth(input()),
      status: async () => snapshot,
      token,
      logger: silentLogger(),
    });
    const { port } = await server.start();
    return `http://127.0.0.1:${port}`;
  }

  it("serves the page and the JSON on loopback, with a token configured or not", async () => {
    for (const token of [undefined, "t0k"]) {
      const base = await serveStatus(token);
      const api = await fetch(`${base}/api/status`);
      expect(api.status).toBe(200);
      expect(await api.json()).toEqual(snapshot);
      const page = await fetch(`${base}/`);
      expect(page.status).toBe(200);
      expect(page.headers.get("content-type")).toBe("text/html; charset=utf-8");
      expect(page.headers.get("content-security-policy")).toContain("default-src 'none'");
      const html = await page.text();
      expect(html).toContain('data-pending="ops">7<');
      expect(html).toMatch(/class="b bad">down</);
      // Names from payloads cannot inject markup or terminal controls.
      expect(html).not.toContain("<script>alert(1)");
      expect(html).toContain("&lt;script&gt;alert(1)&lt;/script&gt;\\u001b[2J");
      expect(html).toContain("pi-&lt;1&gt;");
      expect(html).not.toMatch(/https?:\/\/(?!127\.0\.0\.1)/);
      await server?.stop();
      server = undefined;
    }
  });

  it("names what up means per kind of source and lists Modbus units and 1-Wire probes, each up or down", () => {
    const now = Date.now();
    const html = view(
      {
        ...snapshot,
        sources: [
          {
            name: "mqtt",
            kind: "mqtt",
            status: "up",
            since: now,
            readings_1m: 12,
            decode_errors: 1,
            read_errors: null,
          },
          {
            name: "modbus:plant",
            kind: "modbus",
            status: "up",
            since: now,
            detail: "1 of 2 devices not answering",
            readings_1m: 30,
            decode_errors: 2,
            read_errors: 7,
            devices: [
              { id: "1", sensor: "boiler", status: "up", since: now },
              { id: "2", sensor: "tank", status: "down", since: now, detail: "timeout" },
            ],
          },
          {
            name: "onewire",
            kind: "onewire",
            status: "up",
            since: now,
            readings_1m: 2,
            decode_errors: 0,
            read_errors: 0,
            devices: [{ id: "28-0316a2795fff", sensor: "cellar", status: "up", since: now }],
          },
          {
            name: "file:/sys/class/thermal/thermal_zone0/temp",
            kind: "file",
            status: "down",
            since: now,
            detail: "ENOENT",
            readings_1m: 0,
            decode_errors: 0,
            read_errors: 3,
          },
        ],
      },
      now,
    );
    const section = html.slice(html.indexOf("<h2>Sources</h2>"), html.indexOf("<h2>Last "));
    const rows = section.split("<tr>").slice(2);
    const text = (r: string | undefined) =>
      (r ?? "")
        .replace(/<[^>]+>/g, " ")
        .replace(/\s+/g, " ")
        .trim();
    expect(section).toContain("<th>Read errors</th>");
    expect(text(rows[0])).toMatch(/^mqtt connected .* 12 1 –$/);
    // A bus that works with one unit silent: a warning badge, the detail, and which unit.
    expect(rows[1]).toContain('class="b warn">bus open<');
    expect(text(rows[1])).toMatch(
      /^modbus:plant bus open 1 of 2 devices not answering up unit 1 · boiler down unit 2 · tank timeout .* 30 2 7$/,
    );
    expect(rows[1]).toContain('data-device="modbus:plant/2"><span class="b bad">down</span>');
    expect(text(rows[2])).toMatch(/^onewire bus present up 28-0316a2795fff · cellar .* 2 0 0$/);
    expect(text(rows[3])).toMatch(/^file:\/sys\/class\/thermal\/thermal_zone0\/temp down ENOENT .* 0 0 3$/);
  });

  it("?token= moves the token into a cookie and out of the address bar", async () => {
    const base = await serveStatus("t0k");
    const res = await fetch(`${base}/?token=t0k`, { redirect: "manual" });
    expect(res.status).toBe(303);
    expect(res.headers.get("location")).toBe("/");
    expect(res.headers.get("set-cookie")).toBe("edgehook_token=t0k; HttpOnly; SameSite=Strict; Path=/");
  });

  it.each([
    ["127.0.0.1", undefined, undefined, "ok"],
    ["127.8.9.10", "t0k", undefined, "ok"],
    ["::1", "t0k", "wrong", "ok"],
    ["::ffff:127.0.0.1", "t0k", undefined, "ok"],
    ["192.0.2.7", undefined, undefined, "no-token"],
    ["192.0.2.7", undefined, "anything", "no-token"],
    ["192.0.2.7", "t0k", undefined, "denied"],
    ["192.0.2.7", "t0k", "t0K", "denied"],
    ["2001:db8::7", "t0k", "t0k", "ok"],
    ["::ffff:192.0.2.7", "t0k", "t0k", "ok"],
  ] as const)("a request from %s (token %s, given %s) is %s", (remote, token, given, want) => {
    expect(accessOf(remote, token === undefined ? undefined : sha256(token), given)).toBe(want);
  });

  it("a local client reaches a wildcard listener on loopback", () => {
    expect(localUrl("0.0.0.0:9780")).toBe("http://127.0.0.1:9780");
    expect(localUrl("[::]:9780")).toBe("http://[::1]:9780");
    expect(localUrl("[::1]:9780")).toBe("http://[::1]:9780");
    expect(localUrl("9780")).toBe("http://127.0.0.1:9780");
    expect(isLoopback("localhost")).toBe(true);
    expect(isLoopback("10.0.0.1")).toBe(false);
  });
});

describe("parseListen", () => {
  it.each([
    ["127.0.0.1:9780", { host: "127.0.0.1", port: 9780 }],
    ["[::1]:9780", { host: "::1", port: 9780 }],
    ["0.0.0.0:0", { host: "0.0.0.0", port: 0 }],
    ["localhost:80", { host: "localhost", port: 80 }],
    [":9780", { host: "127.0.0.1", port: 9780 }],
    ["9780", { host: "127.0.0.1", port: 9780 }],
  ])("%s", (text, expected) => {
    expect(parseListen(text)).toEqual(expected);
  });

  it.each(["", "127.0.0.1", "127.0.0.1:70000", "::1:9780", "host:port", "[::1]", "a b:1"])("rejects %j", (text) => {
    let err: unknown;
    try {
      parseListen(text);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(EdgehookError);
    expect((err as EdgehookError).code).toBe("EDGEHOOK_CONFIG_INVALID");
    expect((err as EdgehookError).message).toMatch(/^http\.listen: must be host:port/);
  });
});
