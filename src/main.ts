/**
 * Process concerns only: arguments in, exit codes out, signals, the systemd notify
 * socket. Everything else takes what it needs as arguments (see agent.ts, cli.ts).
 */
import { setFlagsFromString } from "node:v8";
import { runCli } from "./cli.js";

/**
 * V8 lets the old generation grow to a multiple of what survived the last full collection
 * before collecting again, up to 4× on a machine with a large heap limit (it sizes the limit
 * from the RAM it sees). Under a flood of readings most of that growth is garbage (readings
 * and events that lived through a commit), so RSS rose to 3–4× idle although the live heap
 * stayed about 30 MB. Growing by at most 20 % keeps the heap near its live size at the
 * cost of more full collections (issue 15; their CPU cost is not measured separately).
 * V8 reads this factor at every collection, so setting it at start-up takes effect.
 */
const HEAP_GROWING_PERCENT = 20;

export async function main(argv: string[]): Promise<void> {
  if (argv[0] === "run") setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
  // `edgehook queue list | head`: the reader went away; stop quietly instead of a stack trace.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on("error", (err: NodeJS.ErrnoException) => {
      if (err.code === "EPIPE") process.exit(process.exitCode ?? 0);
      throw err;
    });
  }
  const code = await runCli(argv, {
    env: process.env,
    pid: process.pid,
    out: (line) => process.stdout.write(`${line}\n`),
    err: (line) => process.stderr.write(`${line}\n`),
    onSignal: (signal, handler) => {
      process.on(signal, handler);
      return () => process.off(signal, handler);
    },
    exitNow: (code) => process.exit(code),
    isTTY: process.stdout.isTTY === true,
    write: (text) => process.stdout.write(text),
  });
  // Let stdout drain before exiting (pino writes asynchronously).
  process.exitCode = code;
  if (code !== 0) setImmediate(() => process.exit(code));
}
