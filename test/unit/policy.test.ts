import { describe, expect, it } from "vitest";
import {
  DEFAULT_RETRY_SCHEDULE,
  type Decision,
  decide,
  describeError,
  OfflineProbe,
  type Outcome,
  parseRetryAfter,
  retryDelay,
  TokenBucket,
} from "../../src/delivery/policy.js";
import { RenderError } from "../../src/delivery/render.js";
import { FakeClock } from "../support/fake-clock.js";

const NOW = Date.parse("2026-01-01T00:00:00Z");
const policy = { retry_schedule: DEFAULT_RETRY_SCHEDULE, max_attempts: 8 };
const mid = () => 0.5; // no jitter

function errWith(code: string, wrapped = false): Error {
  const inner = Object.assign(new Error(`boom ${code}`), { code });
  return wrapped ? Object.assign(new TypeError("fetch failed"), { cause: inner }) : inner;
}

describe("decide", () => {
  const cases: { name: string; outcome: Outcome; attempts?: number; expect: Partial<Decision> }[] = [
    { name: "200", outcome: { kind: "response", status: 200 }, expect: { action: "delivered", class: "2xx" } },
    { name: "204", outcome: { kind: "response", status: 204 }, expect: { action: "delivered", class: "2xx" } },
    {
      name: "500 → retry after 5 s",
      outcome: { kind: "response", status: 500 },
      expect: { action: "retry", class: "5xx", nextAt: NOW + 5_000 },
    },
    {
      name: "503 on 2nd attempt → 5 m",
      outcome: { kind: "response", status: 503 },
      attempts: 1,
      expect: { action: "retry", nextAt: NOW + 300_000 },
    },
    {
      name: "408 retries",
      outcome: { kind: "response", status: 408 },
      expect: { action: "retry", class: "4xx", nextAt: NOW + 5_000 },
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
      expect: { action: "retry", nextAt: NOW + 5_000 },
    },
    {
      name: "500 on the last allowed attempt → dead",
      outcome: { kind: "response", status: 500 },
      attempts: 7,
      expect: { action: "dead", class: "5xx", disable: false },
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
    {
      name: "connection refused → offline",
      outcome: { kind: "error", error: errWith("ECONNREFUSED") },
      attempts: 7,
      expect: { action: "offline", class: "offline", error: "connection refused (ECONNREFUSED)" },
    },
    {
      name: "reset wrapped in cause → offline",
      outcome: { kind: "error", error: errWith("ECONNRESET", true) },
      expect: { action: "offline", error: "connection reset (ECONNRESET)" },
    },
    {
      name: "DNS failure → offline",
      outcome: { kind: "error", error: errWith("ENOTFOUND") },
      expect: { action: "offline" },
    },
    {
      name: "headers timeout → offline",
      outcome: { kind: "error", error: errWith("UND_ERR_HEADERS_TIMEOUT") },
      expect: { action: "offline", error: "response timeout (no headers) (UND_ERR_HEADERS_TIMEOUT)" },
    },
    {
      name: "connect timeout → offline",
      outcome: { kind: "error", error: errWith("UND_ERR_CONNECT_TIMEOUT") },
      expect: { action: "offline" },
    },
    {
      name: "socket closed → offline",
      outcome: { kind: "error", error: errWith("UND_ERR_SOCKET") },
      expect: { action: "offline" },
    },
    {
      name: "TLS certificate problem → offline, named",
      outcome: { kind: "error", error: errWith("DEPTH_ZERO_SELF_SIGNED_CERT") },
      expect: { action: "offline", error: "TLS: DEPTH_ZERO_SELF_SIGNED_CERT" },
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
      const d = decide(c.outcome, { attempts: c.attempts ?? 0, policy, now: NOW, random: mid });
      expect(d).toMatchObject(c.expect);
    });
  }

  it("never spends the last attempt on an offline outcome", () => {
    const d = decide(
      { kind: "error", error: errWith("ECONNREFUSED") },
      { attempts: 99, policy, now: NOW, random: mid },
    );
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

  it("defaults to 5s, 5m, 30m, 2h, 5h, 10h", () => {
    expect([1, 2, 3, 4, 5, 6, 7].map((n) => retryDelay(DEFAULT_RETRY_SCHEDULE, n, mid))).toEqual([
      5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000,
    ]);
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

describe("OfflineProbe", () => {
  it("allows one probe at a time, 1 s doubling up to 60 s", () => {
    const clock = new FakeClock();
    const p = new OfflineProbe(clock);
    p.reset();
    expect(p.begin()).toBe(false);
    expect(p.waitMs()).toBe(1_000);
    const waits: number[] = [];
    for (let i = 0; i < 9; i++) {
      const w = p.waitMs() as number;
      waits.push(w);
      clock.advance(w);
      expect(p.begin()).toBe(true);
      // Only one probe in flight.
      expect(p.begin()).toBe(false);
      expect(p.waitMs()).toBeUndefined();
      p.failed();
    }
    expect(waits).toEqual([1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]);
  });

  it("starts over at 1 s after the next outage", () => {
    const clock = new FakeClock();
    const p = new OfflineProbe(clock);
    p.reset();
    for (let i = 0; i < 5; i++) {
      clock.advance(p.waitMs() as number);
      p.begin();
      p.failed();
    }
    expect(p.intervalMs).toBe(32_000);
    p.reset();
    expect(p.waitMs()).toBe(1_000);
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
