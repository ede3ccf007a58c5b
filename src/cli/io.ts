/**
 * What a command may use of its process: environment, pid, output, signals and an
 * immediate exit. main.ts builds the real one; tests pass their own. A module of its
 * own so that commands (status, demo) can name it without importing cli.ts, which
 * imports them.
 */
export interface CliIO {
  env: NodeJS.ProcessEnv;
  pid: number;
  out: (line: string) => void;
  err: (line: string) => void;
  /** Subscribes to a process signal; returns an unsubscribe function. */
  onSignal: (signal: NodeJS.Signals, handler: () => void) => () => void;
  /** Exits at once (second SIGTERM). */
  exitNow: (code: number) => void;
  /** Whether stdout is a terminal (readable logs, colour). */
  isTTY?: boolean;
  /** Writes text as it is (pretty log lines carry their own newline). */
  write?: (text: string) => void;
}
