import { describe, expect, it } from "vitest";
import {
  DEFAULT_MAX_ATTEMPTS,
  DEFAULT_RETRY_SCHEDULE,
  type Decision,
  decide,
  describeError,
  errorKind,
  FLAP_LINES,
  FLAP_WINDOW_MS,
  OfflineProbe,
  OutageLog,
  type Outcome,
  PROBE_NEW_WORK_GAP_MS,
  parseRetryAfter,
  retryDelay,
  TokenBucket,
  timeToDead,
} from "../../src/delivery/policy.js";
import { RenderError } from "../../src/delivery/render.js";
import { FakeClock } from "../support/fake-clock.js";

const NOW = Date.parse("2026-01-01T00:00:00Z");
const policy = { retry_schedule: DEFAULT_RETRY_SCHEDULE, max_attempts: DEFAULT_MAX_ATTEMPTS };
const mid = () => 0.5; // no jitter

function errWith(code: string, wrapped = false): Error {
  const inner = Object.assign(new Error(`boom ${code}`), { code });
  return wrapped ? Object.assign(new TypeError("fetch failed"), { cause: inner }) : inner;
}

/** A transport error at a stage: "connect" (no connection made) or "request" (sent, then failed). */
function failed(code: string, stage: "connect" | "request", wrapped = false): Outcome {
  return { kind: "error", error: errWith(code, wrapped), stage };
}

describe("decide", () => {
  const cases: { name: string; outcome: Outcome; attempts?: number; resent?: boolean; expect: Partial<Decision> }[] = [
    { name: "200", outcome: { kind: "response", status: 200 }, expect: { action: "delivered", class: "2xx" } },
    { name: "204", outcome: { kind: "response", status: 204 }, expect: { action: "delivered", class: "2xx" } },
    {
      name: "500 → retry after 250 ms, counted",
      outcome: { kind: "response", status: 500 },
      expect: { action: "retry", class: "5xx", nextAt: NOW + 250, counted: true },
    },
    {
      name: "503 on 2nd attempt → 500 ms",
      outcome: { kind: "response", status: 503 },
      attempts: 1,
      expect: { action: "retry", nextAt: NOW + 500 },
    },
    {
      name: "503 on 8th attempt → 5 m",
      outcome: { kind: "response", status: 503 },
      attempts: 7,
      expect: { action: "retry", nextAt: NOW + 300_000 },
    },
    {
      name: "408 retries",
      outcome: { kind: "response", status: 408 },
      expect: { action: "retry", class: "4xx", nextAt: NOW + 250 },
    },
    {
      name: "429 with Retry-After: 120",
      outcome: { kind: "response", status: 429, retryAfter: "120" },
      expect: { action: "retry", class: "4xx", nextAt: NOW + 120_000 },
    },
    {
      name: "503 with Retry-After HTTP date",
      outcome: { kind: "response", status: 503, retryAfter: new Date(NOW + 90_000).toUTCString() },
      expect: { action: "retry", nextAt: NOW + 90_000 },
    },
    {
      name: "Retry-After 0 is clamped to 1 s",
      outcome: { kind: "response", status: 429, retryAfter: "0" },
      expect: { action: "retry", nextAt: NOW + 1_000 },
    },
    {
      name: "Retry-After of a day is clamped to 1 h",
      outcome: { kind: "response", status: 429, retryAfter: "86400" },
      expect: { action: "retry", nextAt: NOW + 3_600_000 },
    },
    {
      name: "garbage Retry-After falls back to the schedule",
      outcome: { kind: "response", status: 429, retryAfter: "soon" },
      expect: { action: "retry", nextAt: NOW + 250 },
    },
    {
      name: "500 on the last allowed attempt → dead",
      outcome: { kind: "response", status: 500 },
      attempts: DEFAULT_MAX_ATTEMPTS - 1,
      expect: {
        action: "dead",
        class: "5xx",
        disable: false,
        reason: `HTTP 500 after ${DEFAULT_MAX_ATTEMPTS} attempts`,
      },
    },
    {
      name: "301 → retry with a clear error",
      outcome: { kind: "response", status: 301 },
      expect: { action: "retry", class: "3xx", error: "HTTP 301: redirect not followed (fix the destination url)" },
    },
    {
      name: "400 → dead at once",
      outcome: { kind: "response", status: 400 },
      expect: { action: "dead", class: "4xx", disable: false },
    },
    { name: "401 → dead at once", outcome: { kind: "response", status: 401 }, expect: { action: "dead" } },
    { name: "404 → dead at once", outcome: { kind: "response", status: 404 }, expect: { action: "dead" } },
    {
      name: "410 → dead and disable",
      outcome: { kind: "response", status: 410 },
      expect: { action: "dead", class: "4xx", disable: true },
    },
    // Cannot connect: offline, no attempt spent, whatever the count.
    {
      name: "connection refused → offline",
      outcome: failed("ECONNREFUSED", "connect"),
      attempts: 13,
      expect: { action: "offline", class: "offline", error: "connection refused (ECONNREFUSED)" },
    },
    {
      name: "DNS failure → offline",
      outcome: failed("ENOTFOUND", "connect"),
      expect: { action: "offline", error: "DNS lookup failed (ENOTFOUND)" },
    },
    {
      name: "temporary DNS failure → offline",
      outcome: failed("EAI_AGAIN", "connect"),
      expect: { action: "offline" },
    },
    {
      name: "connect timeout → offline",
      outcome: failed("UND_ERR_CONNECT_TIMEOUT", "connect"),
      expect: { action: "offline", error: "connect timeout (UND_ERR_CONNECT_TIMEOUT)" },
    },
    { name: "host unreachable → offline", outcome: failed("EHOSTUNREACH", "connect"), expect: { action: "offline" } },
    { name: "network unreachable → offline", outcome: failed("ENETUNREACH", "connect"), expect: { action: "offline" } },
    {
      name: "reset while connecting (RST on accept, or during the TLS handshake) → offline",
      outcome: failed("ECONNRESET", "connect"),
      expect: { action: "offline", error: "connection reset (ECONNRESET)" },
    },
    {
      name: "TLS certificate problem → offline, named",
      outcome: failed("DEPTH_ZERO_SELF_SIGNED_CERT", "connect"),
      expect: { action: "offline", error: "TLS: DEPTH_ZERO_SELF_SIGNED_CERT" },
    },
    {
      name: "TLS to a plain-HTTP port → offline",
      outcome: failed("ERR_SSL_WRONG_VERSION_NUMBER", "connect"),
      expect: { action: "offline", error: "TLS: ERR_SSL_WRONG_VERSION_NUMBER" },
    },
    {
      name: "an unknown error while connecting (e.g. proxy tunnel refused) → offline",
      outcome: {
        kind: "error",
        error: new Error("Proxy response (502) !== 200 when HTTP Tunneling"),
        stage: "connect",
      },
      expect: { action: "offline", error: "Proxy response (502) !== 200 when HTTP Tunneling" },
    },
    {
      name: "a code only connecting produces → offline even if reported at the request stage",
      outcome: failed("ECONNREFUSED", "request", true),
      expect: { action: "offline" },
    },
    // Sent, then closed before an answer: once at once for free, then counted.
    {
      name: "other side closed after sending → sent again at once, not counted",
      outcome: failed("UND_ERR_SOCKET", "request"),
      attempts: 3,
      expect: {
        action: "retry",
        class: "no_response",
        nextAt: NOW,
        counted: false,
        error: "socket closed by the other side (UND_ERR_SOCKET)",
      },
    },
    {
      name: "reset after sending (wrapped in cause) → sent again at once",
      outcome: failed("ECONNRESET", "request", true),
      expect: {
        action: "retry",
        class: "no_response",
        nextAt: NOW,
        counted: false,
        error: "connection reset (ECONNRESET)",
      },
    },
    {
      name: "reset after sending, already resent once → counted, on the schedule",
      outcome: failed("ECONNRESET", "request"),
      resent: true,
      expect: { action: "retry", class: "no_response", nextAt: NOW + 250, counted: true },
    },
    {
      name: "EPIPE after sending, already resent, on the 2nd attempt → 500 ms",
      outcome: failed("EPIPE", "request"),
      attempts: 1,
      resent: true,
      expect: { action: "retry", nextAt: NOW + 500, counted: true },
    },
    {
      name: "an unknown error once connected counts like a reset",
      outcome: { kind: "error", error: new Error("weird"), stage: "request" },
      resent: true,
      expect: { action: "retry", class: "no_response", counted: true, error: "weird" },
    },
    {
      name: "reset after sending on the last allowed attempt → dead",
      outcome: failed("ECONNRESET", "request"),
      attempts: DEFAULT_MAX_ATTEMPTS - 1,
      resent: true,
      expect: {
        action: "dead",
        class: "no_response",
        reason: `connection reset (ECONNRESET) after ${DEFAULT_MAX_ATTEMPTS} attempts`,
      },
    },
    // Sent, no answer in time: counted at once (a slow receiver is not hammered twice).
    {
      name: "response timeout (no headers) → counted retry",
      outcome: failed("UND_ERR_HEADERS_TIMEOUT", "request"),
      expect: {
        action: "retry",
        class: "no_response",
        nextAt: NOW + 250,
        counted: true,
        error: "response timeout (no headers) (UND_ERR_HEADERS_TIMEOUT)",
      },
    },
    {
      name: "body timeout → counted retry",
      outcome: failed("UND_ERR_BODY_TIMEOUT", "request"),
      expect: { action: "retry", counted: true },
    },
    {
      name: "response timeout on the last allowed attempt → dead",
      outcome: failed("UND_ERR_HEADERS_TIMEOUT", "request"),
      attempts: DEFAULT_MAX_ATTEMPTS - 1,
      expect: { action: "dead", class: "no_response" },
    },
    {
      name: "request cannot be built → dead at once, not offline",
      outcome: { kind: "unsendable", error: new RenderError("the stored body is not JSON") },
      expect: {
        action: "dead",
        class: "unsendable",
        reason: "cannot build the request: the stored body is not JSON",
        disable: false,
      },
    },
    {
      name: "unsendable is dead even with attempts left and whatever was thrown",
      outcome: { kind: "unsendable", error: "weird" },
      attempts: 0,
      expect: { action: "dead", class: "unsendable", reason: "cannot build the request: weird" },
    },
  ];

  for (const c of cases) {
    it(c.name, () => {
      const d = decide(c.outcome, {
        attempts: c.attempts ?? 0,
        policy,
        now: NOW,
        random: mid,
        resent: c.resent ?? false,
      });
      expect(d).toMatchObject(c.expect);
    });
  }

  it("never spends the last attempt on an offline outcome", () => {
    const d = decide(failed("ECONNREFUSED", "connect"), { attempts: 99, policy, now: NOW, random: mid });
    expect(d.action).toBe("offline");
  });

  it("max_attempts 1 makes the first 5xx final", () => {
    const d = decide(
      { kind: "response", status: 502 },
      { attempts: 0, policy: { ...policy, max_attempts: 1 }, now: NOW, random: mid },
    );
    expect(d).toMatchObject({ action: "dead", reason: "HTTP 502 after 1 attempts" });
  });
});

describe("retryDelay", () => {
  const schedule = [5_000, 300_000, 1_800_000];
  it.each([
    [1, 5_000],
    [2, 300_000],
    [3, 1_800_000],
    [4, 1_800_000],
    [20, 1_800_000],
  ])("after %i counted attempts waits %i ms (last entry repeats)", (n, ms) => {
    expect(retryDelay(schedule, n, mid)).toBe(ms);
  });

  it("jitters by ±20 %", () => {
    expect(retryDelay(schedule, 1, () => 0)).toBe(4_000);
    expect(retryDelay(schedule, 1, () => 0.999999)).toBe(6_000);
    expect(retryDelay(schedule, 2, () => 0.25)).toBe(270_000);
  });

  it("defaults to six quick tries in 20 s, then 30s, 5m, 30m, 2h, 5h, 10h", () => {
    expect(Array.from({ length: 13 }, (_, i) => retryDelay(DEFAULT_RETRY_SCHEDULE, i + 1, mid))).toEqual([
      250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000,
    ]);
  });

  it("with the default max_attempts a delivery is dead about 27.6 h after its first try, as before", () => {
    const before = timeToDead({
      retry_schedule: [5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000],
      max_attempts: 8,
    });
    const now = timeToDead({ retry_schedule: DEFAULT_RETRY_SCHEDULE, max_attempts: DEFAULT_MAX_ATTEMPTS });
    expect(before / 3_600_000).toBeCloseTo(27.58, 1);
    expect(Math.abs(now - before)).toBeLessThan(60_000);
  });
});

describe("parseRetryAfter", () => {
  it.each([
    [undefined, undefined],
    ["", undefined],
    ["abc", undefined],
    ["-5", undefined],
    ["1", 1_000],
    [" 30 ", 30_000],
    ["3600", 3_600_000],
    ["7200", 3_600_000],
    ["0", 1_000],
  ])("%j → %j", (v, ms) => {
    expect(parseRetryAfter(v, NOW)).toBe(ms);
  });

  it("reads an HTTP date relative to now, clamped", () => {
    expect(parseRetryAfter("Thu, 01 Jan 2026 00:02:00 GMT", NOW)).toBe(120_000);
    expect(parseRetryAfter("Wed, 31 Dec 2025 23:00:00 GMT", NOW)).toBe(1_000);
    expect(parseRetryAfter("Fri, 02 Jan 2026 00:00:00 GMT", NOW)).toBe(3_600_000);
  });
});

describe("describeError", () => {
  it("names unknown errors by message without throwing on odd values", () => {
    expect(describeError(new Error("weird"))).toBe("weird");
    expect(describeError("x")).toBe("x");
    const loop: { code?: string; cause?: unknown } = {};
    loop.cause = loop;
    expect(describeError(loop)).toBe("[object Object]");
  });
});

describe("errorKind", () => {
  it.each([
    ["ECONNREFUSED", "connect", "unreachable"],
    ["ECONNRESET", "connect", "unreachable"],
    ["ECONNRESET", "request", "closed"],
    ["UND_ERR_SOCKET", "request", "closed"],
    ["EPIPE", "request", "closed"],
    ["UND_ERR_HEADERS_TIMEOUT", "request", "timeout"],
    ["UND_ERR_BODY_TIMEOUT", "request", "timeout"],
    ["ETIMEDOUT", "request", "timeout"],
    ["ETIMEDOUT", "connect", "unreachable"],
    ["ENOTFOUND", "request", "unreachable"],
    ["UND_ERR_CONNECT_TIMEOUT", "request", "unreachable"],
    ["CERT_HAS_EXPIRED", "request", "unreachable"],
    ["ERR_TLS_CERT_ALTNAME_INVALID", "request", "unreachable"],
  ] as const)("%s at the %s stage is %s", (code, stage, kind) => {
    expect(errorKind({ error: errWith(code, true), stage })).toBe(kind);
  });
});

describe("OfflineProbe", () => {
  it("allows one probe at a time, 0.75 to 1 s apart however long the outage", () => {
    const clock = new FakeClock();
    let draw = 0;
    const p = new OfflineProbe(clock, () => draw);
    p.reset();
    expect(p.begin()).toBe(false);
    expect(p.waitMs()).toBe(1_000);
    const waits: number[] = [];
    for (let i = 0; i < 600; i++) {
      draw = (i % 5) / 5; // 0 .. 0.8: intervals 1000 .. 800 ms
      const w = p.waitMs() as number;
      waits.push(w);
      clock.advance(w);
      expect(p.begin()).toBe(true);
      // Only one probe in flight.
      expect(p.begin()).toBe(false);
      expect(p.waitMs()).toBeUndefined();
      clock.advance(3); // a refused connect takes a few ms
      p.failed();
    }
    expect(Math.max(...waits)).toBeLessThanOrEqual(1_000);
    expect(Math.min(...waits)).toBeGreaterThanOrEqual(750 - 3);
  });

  it("a probe slower than the interval (connect timeout) is followed by the next one soon, not at once", () => {
    const clock = new FakeClock();
    const p = new OfflineProbe(clock, () => 0);
    p.reset();
    clock.advance(1_000);
    expect(p.begin()).toBe(true);
    clock.advance(10_000);
    p.failed();
    expect(p.waitMs()).toBe(PROBE_NEW_WORK_GAP_MS);
  });

  it("new work probes early, but not sooner than the gap after the last probe", () => {
    const clock = new FakeClock();
    const p = new OfflineProbe(clock, () => 0);
    p.reset();
    expect(p.waitMs(true)).toBe(PROBE_NEW_WORK_GAP_MS);
    clock.advance(PROBE_NEW_WORK_GAP_MS);
    expect(p.begin(false)).toBe(false);
    expect(p.begin(true)).toBe(true);
    clock.advance(2);
    p.failed();
    expect(p.waitMs(false)).toBe(998);
    expect(p.waitMs(true)).toBe(PROBE_NEW_WORK_GAP_MS);
  });

  it("released (nothing learned) may probe again at once", () => {
    const clock = new FakeClock();
    const p = new OfflineProbe(clock, () => 0);
    p.reset();
    clock.advance(1_000);
    p.begin();
    p.released();
    expect(p.waitMs()).toBe(0);
  });
});

describe("OutageLog", () => {
  /** Simulates outages of `downMs` every `everyMs`; returns what was logged. */
  function flap(log: OutageLog, clock: FakeClock, n: number, downMs: number, everyMs: number) {
    const lines: string[] = [];
    for (let i = 0; i < n; i++) {
      const d = log.down();
      if (d.summary) lines.push(`summary ${d.summary.outages}`);
      if (d.log) lines.push("down");
      clock.advance(downMs);
      if (log.up(downMs)) lines.push(`up ${downMs}`);
      clock.advance(everyMs - downMs);
      const s = log.due();
      if (s) lines.push(`summary ${s.outages} ${s.downMs}`);
    }
    return lines;
  }

  it("logs every outage and its end, however short, when they are rare", () => {
    const clock = new FakeClock();
    const log = new OutageLog(clock);
    expect(flap(log, clock, 4, 300, 70_000)).toEqual([
      "down",
      "up 300",
      "down",
      "up 300",
      "down",
      "up 300",
      "down",
      "up 300",
    ]);
  });

  it("a receiver in a restart loop: three outages line by line, then one summary per minute", () => {
    const clock = new FakeClock();
    const log = new OutageLog(clock);
    // 30 outages of 400 ms, one every 2 s: 60 s.
    const lines = flap(log, clock, 30, 400, 2_000);
    expect(lines.slice(0, 6)).toEqual(["down", "up 400", "down", "up 400", "down", "up 400"]);
    expect(lines.slice(6)).toEqual([`summary ${30 - FLAP_LINES} ${(30 - FLAP_LINES) * 400}`]);
    // The next window starts line by line again.
    expect(flap(log, clock, 1, 400, 2_000)).toEqual(["down", "up 400"]);
  });

  it("a quiet outage that outlasts the window is in the summary, and its end is logged", () => {
    const clock = new FakeClock();
    const log = new OutageLog(clock);
    flap(log, clock, FLAP_LINES, 100, 1_000);
    expect(log.down().log).toBe(false);
    clock.advance(FLAP_WINDOW_MS);
    expect(log.due(true)).toMatchObject({ outages: 1, downMs: FLAP_WINDOW_MS });
    expect(log.up(FLAP_WINDOW_MS + 10)).toBe(true);
  });
});

describe("TokenBucket", () => {
  it("allows a burst of one second, then refills at the rate", () => {
    const clock = new FakeClock();
    const b = new TokenBucket(10, clock);
    expect(b.available()).toBe(10);
    b.take(10);
    expect(b.available()).toBe(0);
    expect(b.waitMs()).toBe(100);
    clock.advance(100);
    expect(b.available()).toBe(1);
    clock.advance(10_000);
    expect(b.available()).toBe(10);
  });

  it("handles rates below one per second", () => {
    const clock = new FakeClock();
    const b = new TokenBucket(0.5, clock);
    expect(b.available()).toBe(1);
    b.take(1);
    expect(b.waitMs()).toBe(2_000);
    clock.advance(1_999);
    expect(b.available()).toBe(0);
    clock.advance(1);
    expect(b.available()).toBe(1);
  });
});
