/**
 * `edgehook receive` against real HTTP POSTs on 127.0.0.1, signed by the
 * `standardwebhooks` package (not by edgehook's own code) for v1.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { Webhook } from "standardwebhooks";
import { afterEach, describe, expect, it } from "vitest";
import { keygenCommand, type RunningReceiver, receiveCommand, startReceiver } from "../../src/cli/receive.js";
import { generateSigningKey, signV1a } from "../../src/delivery/sign-v1a.js";
import { BIN } from "../support/agent-process.js";
import { track } from "../support/children.js";
import { TERMINAL_CONTROL } from "../support/terminal.js";

const secret = `whsec_${randomBytes(24).toString("base64")}`;
const body = JSON.stringify({
  type: "alert.firing",
  timestamp: "2026-01-01T12:00:05.000Z",
  data: {
    agent: "pi",
    rule: "hot",
    sensor: "boiler",
    metric: "temp",
    value: 81.456,
    threshold: 80,
    severity: "critical",
  },
});

function signed(payload: string, id = "msg_test1", at = new Date()): Record<string, string> {
  const wh = new Webhook(secret);
  return {
    "content-type": "application/json",
    "webhook-id": id,
    "webhook-timestamp": String(Math.floor(at.getTime() / 1000)),
    "webhook-signature": wh.sign(id, at, payload),
  };
}

let running: RunningReceiver | undefined;
afterEach(async () => {
  await running?.stop();
  running = undefined;
});

describe("startReceiver", () => {
  it("verifies a valid webhook, prints one line, answers --status", async () => {
    const lines: string[] = [];
    running = await startReceiver({ port: 0, secret, status: 202, keep: 10, out: (l) => lines.push(l) });
    expect(running.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
    const res = await fetch(running.url, { method: "POST", headers: signed(body), body });
    expect(res.status).toBe(202);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ msg_test1 alert\.firing boiler\/temp=81\.456 \(threshold 80, critical\) verified v1 → 202$/,
    );
    expect(running.received[0]?.verification).toEqual({ ok: true, scheme: "v1" });
  });

  it("a tampered body, a wrong secret or an old timestamp is INVALID and answered 401", async () => {
    const lines: string[] = [];
    running = await startReceiver({ port: 0, secret, keep: 10, out: (l) => lines.push(l) });
    const tampered = body.replace("81.456", "21.0");
    const r1 = await fetch(running.url, { method: "POST", headers: signed(body), body: tampered });
    const other = new Webhook(`whsec_${randomBytes(24).toString("base64")}`);
    const now = new Date();
    const h2 = { ...signed(body), "webhook-signature": other.sign("msg_test1", now, body) };
    const r2 = await fetch(running.url, { method: "POST", headers: h2, body });
    const old = new Date(Date.now() - 10 * 60_000);
    const r3 = await fetch(running.url, { method: "POST", headers: signed(body, "msg_old", old), body });
    const { "webhook-signature": _, ...unsigned } = signed(body);
    const r4 = await fetch(running.url, { method: "POST", headers: unsigned, body });
    expect([r1.status, r2.status, r3.status, r4.status]).toEqual([401, 401, 401, 401]);
    expect(lines[0]).toMatch(/boiler\/temp=21 .*INVALID signature: no signature matches → 401$/);
    expect(lines[1]).toMatch(/INVALID signature: no signature matches REPEAT \(webhook-id first seen .*\) → 401$/);
    expect(lines[2]).toMatch(/msg_old .*INVALID signature: timestamp too old \(60\ds\) → 401$/);
    expect(lines[3]).toMatch(/INVALID signature: missing webhook-signature REPEAT \(.*\) → 401$/);
    expect(running.received.every((r) => !r.verification.ok)).toBe(true);
  });

  it("verifies v1a with --public-key, and a gzip body after inflating it", async () => {
    const lines: string[] = [];
    const pair = generateSigningKey();
    running = await startReceiver({ port: 0, publicKey: pair.publicKey, out: (l) => lines.push(l) });
    const ts = Math.floor(Date.now() / 1000);
    const headers = {
      "content-type": "application/json",
      "content-encoding": "gzip",
      "webhook-id": "msg_a",
      "webhook-timestamp": String(ts),
      "webhook-signature": signV1a(pair.secret, "msg_a", ts, Buffer.from(body)),
    };
    const res = await fetch(running.url, { method: "POST", headers, body: gzipSync(body) });
    expect(res.status).toBe(200);
    expect(lines[0]).toMatch(/msg_a alert\.firing boiler\/temp=81\.456 .* verified v1a → 200$/);
  });

  it("--verbose prints the JSON body; a preset body is summarised by its text", async () => {
    const lines: string[] = [];
    running = await startReceiver({ port: 0, verbose: true, out: (l) => lines.push(l) });
    const slack = JSON.stringify({ text: 'CRITICAL: boiler "hot"\nnow' });
    const res = await fetch(running.url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: slack,
    });
    expect(res.status).toBe(200);
    expect(lines[0]).toMatch(
      / - - "CRITICAL: boiler \\"hot\\"\\nnow" not verified \(no --secret or --public-key\) → 200$/,
    );
    expect(lines.slice(1)).toEqual(["  {", '    "text": "CRITICAL: boiler \\"hot\\"\\nnow"', "  }"]);
  });
});

describe("receive, left running", () => {
  it("marks a repeated webhook-id (a redelivery or a replay) and still answers it", async () => {
    const lines: string[] = [];
    running = await startReceiver({ port: 0, secret, out: (l) => lines.push(l) });
    for (const id of ["msg_a", "msg_b", "msg_a"]) {
      const res = await fetch(running.url, { method: "POST", headers: signed(body, id), body });
      expect(res.status).toBe(200);
    }
    expect(lines[0]).not.toContain("REPEAT");
    expect(lines[1]).not.toContain("REPEAT");
    expect(lines[2]).toMatch(/ msg_a .*verified v1 REPEAT \(webhook-id first seen \d{4}-\d\d-\d\dT[\d:]+Z\) → 200$/);
    // It keeps nothing unless asked to.
    expect(running.received).toEqual([]);
  });

  it("without keys, refuses a timestamp outside its tolerance (400); --tolerance widens it", async () => {
    const lines: string[] = [];
    running = await startReceiver({ port: 0, out: (l) => lines.push(l) });
    const at = (offsetS: number) => ({
      "webhook-id": `msg_${offsetS}`,
      "webhook-timestamp": String(Math.floor(Date.now() / 1000) + offsetS),
    });
    const statuses = [];
    for (const off of [0, -600, 600]) {
      statuses.push((await fetch(running.url, { method: "POST", headers: at(off), body })).status);
    }
    // No webhook-timestamp at all (a preset such as Slack's): nothing to check.
    statuses.push((await fetch(running.url, { method: "POST", body })).status);
    expect(statuses).toEqual([200, 400, 400, 200]);
    expect(lines[1]).toMatch(/REJECTED: timestamp too old \(60\ds, tolerance 300s\) → 400$/);
    expect(lines[2]).toMatch(/REJECTED: timestamp in the future \(600s, tolerance 300s\) → 400$/);
    await running.stop();

    const wide: string[] = [];
    let url = "";
    const ac = new AbortController();
    const done = receiveCommand(
      ["--port", "0", "--tolerance", "1h"],
      (l) => {
        wide.push(l);
        url = /listening on (\S+)/.exec(l)?.[1] ?? url;
      },
      ac.signal,
    );
    await expect.poll(() => url, { timeout: 5000 }).not.toBe("");
    expect((await fetch(url, { method: "POST", headers: at(-600), body })).status).toBe(200);
    ac.abort();
    await done;
    running = undefined;
  });

  it("prints payload text with control characters escaped: a sensor name cannot clear the screen or fake a line", async () => {
    const lines: string[] = [];
    running = await startReceiver({ port: 0, verbose: true, out: (l) => lines.push(l) });
    const evil = JSON.stringify({
      type: "alert.firing",
      data: { sensor: "x\u001b[2J\nFAKE ROW", metric: "t", value: 1 },
    });
    await fetch(running.url, { method: "POST", headers: { "webhook-id": "msg_evil" }, body: evil });
    const text = lines.join("\n");
    expect(text).not.toMatch(TERMINAL_CONTROL);
    expect(lines[0]).toContain("x\\e[2J\\nFAKE ROW/t=1");
    expect(lines.some((l) => l.startsWith("FAKE ROW"))).toBe(false);
  });

  it("holds no request bodies: memory stays flat under 30 requests of 9 MB", async () => {
    const proc = spawn(process.execPath, [BIN, "receive", "--port", "0"], { stdio: ["ignore", "pipe", "pipe"] });
    track(proc);
    try {
      let out = "";
      proc.stdout.on("data", (d: Buffer) => {
        out += d.toString();
      });
      await expect.poll(() => /listening on (\S+)/.exec(out)?.[1], { timeout: 10_000 }).toBeTruthy();
      const url = /listening on (\S+)/.exec(out)?.[1] as string;
      const big = JSON.stringify({ type: "reading", data: { blob: "x".repeat(9 * 1024 * 1024) } });
      const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${proc.pid}/status`, "utf8"))?.[1]) / 1024;
      const samples: number[] = [];
      for (let i = 0; i < 30; i++) {
        const res = await fetch(url, { method: "POST", headers: { "webhook-id": `msg_${i}` }, body: big });
        expect(res.status).toBe(200);
        samples.push(rss());
      }
      expect(out.match(/ msg_\d+ reading /g)).toHaveLength(30);
      // Holding the bodies grows by 9 MB a request (85 -> 663 MB measured); without them RSS
      // moves with garbage collection around a few requests' worth.
      const base = samples[0] as number;
      const tail = Math.max(...samples.slice(-10));
      expect(tail, `RSS MB per request: ${samples.map((x) => x.toFixed(0)).join(" ")}`).toBeLessThan(base + 150);
    } finally {
      proc.kill("SIGKILL");
    }
  });
});

describe("receiveCommand", () => {
  it("listens, prints each webhook and stops after --count", async () => {
    const lines: string[] = [];
    let url = "";
    const done = receiveCommand(["--port", "0", "--secret", secret, "--count", "2"], (l) => {
      lines.push(l);
      const m = /listening on (\S+)/.exec(l);
      if (m) url = m[1] as string;
    });
    await expect.poll(() => url, { timeout: 5000 }).not.toBe("");
    for (const id of ["msg_1", "msg_2"]) {
      const res = await fetch(url, { method: "POST", headers: signed(body, id), body });
      expect(res.status).toBe(200);
    }
    await expect(done).resolves.toBe(0);
    expect(lines.filter((l) => l.includes("verified v1"))).toHaveLength(2);
  });

  it("stops when its signal aborts", async () => {
    const ac = new AbortController();
    const lines: string[] = [];
    const done = receiveCommand(["--port", "0"], (l) => lines.push(l), ac.signal);
    await expect.poll(() => lines.length, { timeout: 5000 }).toBeGreaterThan(0);
    expect(lines[0]).toMatch(/no keys: signatures are not checked/);
    ac.abort();
    await expect(done).resolves.toBe(0);
  });

  it.each([
    [["--port", "x"], /--port must be/],
    [["--secret", "nope"], /--secret must be whsec_/],
    [["--public-key", "whpk_abc"], /--public-key/],
    [["--status", "99"], /--status must be/],
    [["--bogus"], /Unknown option/],
  ])("usage error %j → exit 64", async (args, message) => {
    const lines: string[] = [];
    await expect(receiveCommand(args, (l) => lines.push(l))).resolves.toBe(64);
    expect(lines.join("\n")).toMatch(message);
  });

  it("keygen prints a v1 secret and a v1a key pair", () => {
    const lines: string[] = [];
    expect(keygenCommand((l) => lines.push(l))).toBe(0);
    expect(lines.join("\n")).toMatch(/secret: whsec_[A-Za-z0-9+/]{43}=\n/);
    expect(lines.join("\n")).toMatch(/ed25519 secret key: whsk_.*\n.*ed25519 public key: whpk_/s);
  });
});
