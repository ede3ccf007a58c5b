// Helpers shared by the benches in scripts/bench/: free loopback ports, polling, medians,
// child processes tracked by PID (and killed when a bench runs over time), a private
// mosquitto, a socat pty pair and a counting loopback webhook receiver.
// Everything listens on 127.0.0.1 only.
import { spawn } from "node:child_process";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { connect, createServer as createTcpServer } from "node:net";
import { join } from "node:path";

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Median of numbers (the mean of the middle two for an even count). */
export function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** The 1, 5 and 15 minute load averages, as /proc/loadavg gives them. */
export const loadavg = () => readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");

/** A TCP port free on 127.0.0.1 just now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createTcpServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Whether something accepts TCP connections on 127.0.0.1:port. */
export const portOpen = (port) =>
  new Promise((resolve) => {
    const s = connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });

/**
 * Polls `check` every `everyMs` until it is truthy (resolves true). After `timeoutMs`:
 * throws "timed out waiting for <what>", or, with no `what`, resolves false.
 */
export async function waitFor(check, what, timeoutMs = 10_000, everyMs = 20) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > deadline) {
      if (what) throw new Error(`timed out waiting for ${what}`);
      return false;
    }
    await sleep(everyMs);
  }
}

// ---------------------------------------------------------------- children

/** Every child a bench started through track/spawnTracked, in start order. */
export const children = [];

/** Remembers `child` (to kill it by PID later) and reports its spawn error under `name`. */
export function track(child, name) {
  children.push(child);
  child.once("error", (err) => console.error(`${name}: ${err.message}`));
  return child;
}

export const spawnTracked = (cmd, args, opts) => track(spawn(cmd, args, opts), cmd);

/** SIGKILLs every tracked child that has not exited. */
export function killChildren() {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
}

/**
 * After `ms`: prints "<name>: over time, giving up", SIGKILLs the tracked children and exits 1.
 * The timer does not keep the process alive.
 */
export function overTime(name, ms) {
  const deadline = setTimeout(() => {
    console.error(`${name}: over time, giving up`);
    killChildren();
    process.exit(1);
  }, ms);
  deadline.unref();
  return deadline;
}

/** On SIGINT or SIGTERM: SIGKILLs the tracked children and exits 1. */
export function killChildrenOnSignal() {
  for (const signal of ["SIGINT", "SIGTERM"]) {
    process.once(signal, () => {
      killChildren();
      process.exit(1);
    });
  }
}

/** Keeps what `child` writes to stdout and stderr, up to about `limit` characters; returns a getter. */
export function keepOutput(child, limit) {
  let log = "";
  const keep = (d) => {
    if (log.length < limit) log += d;
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  return () => log;
}

/** The end of a bench run: SIGKILLs `kids` still running (last started first), closes `receiver`, removes `dir`. */
export function cleanUp(kids, receiver, dir) {
  for (const c of [...kids].reverse()) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  receiver.server.closeAllConnections();
  receiver.server.close();
  rmSync(dir, { recursive: true, force: true });
}

// ---------------------------------------------------------------- parts

/**
 * A private mosquitto on a free 127.0.0.1 port, its mosquitto.conf in `dir` (plus the lines
 * `extraConf`), tracked; resolves once it accepts connections.
 */
export async function startMosquitto(dir, extraConf = "", everyMs = 20) {
  const port = await freePort();
  const conf = join(dir, "mosquitto.conf");
  writeFileSync(conf, `listener ${port} 127.0.0.1\nallow_anonymous true\n${extraConf}`);
  const child = track(spawn("mosquitto", ["-c", conf], { stdio: "ignore" }), "mosquitto");
  await waitFor(() => portOpen(port), "mosquitto", 10_000, everyMs);
  return { port, child };
}

/** A socat pty pair, raw, no echo, linked at the paths `agentSide` and `benchSide`; tracked. */
export async function startPty(agentSide, benchSide) {
  track(
    spawn("socat", [`pty,raw,echo=0,link=${agentSide}`, `pty,raw,echo=0,link=${benchSide}`], { stdio: "ignore" }),
    "socat",
  );
  await waitFor(() => existsSync(agentSide) && existsSync(benchSide), "socat ptys");
  return { agentSide, benchSide };
}

/**
 * A loopback webhook receiver on a free port that counts requests (counts.requests) once each
 * body has arrived, and answers `status`, after `delayMs` if given. With `sizes`, it keeps
 * each body's size in counts.sizes.
 */
export async function startReceiver({ status = 204, delayMs, sizes = false } = {}) {
  const counts = sizes ? { requests: 0, sizes: [] } : { requests: 0 };
  const server = createServer((req, res) => {
    let size = 0;
    req.on("data", (d) => {
      size += d.length;
    });
    req.on("end", () => {
      const answer = () => {
        counts.requests++;
        counts.sizes?.push(size);
        res.writeHead(status).end();
      };
      if (delayMs === undefined) answer();
      else setTimeout(answer, delayMs);
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const port = server.address().port;
  return { server, port, url: `http://127.0.0.1:${port}/hook`, counts };
}

/** The sum of a Prometheus metric's samples (all label sets) in a /metrics text. */
export function metricSum(text, name) {
  return text
    .split("\n")
    .filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `))
    .reduce((n, l) => n + Number(l.slice(l.lastIndexOf(" ") + 1)), 0);
}
