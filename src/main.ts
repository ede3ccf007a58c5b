/**
 * Process concerns only: arguments in, exit codes out, signals, the systemd notify
 * socket. Everything else takes what it needs as arguments (see agent.ts, cli.ts).
 */
import { runCli } from "./cli.js";

export async function main(argv: string[]): Promise<void> {
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
