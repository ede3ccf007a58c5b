/**
 * A pseudo-terminal pair from socat standing in for a USB serial device:
 * `<dir>/dev` is what edgehook opens, `<dir>/feed` is the device's side, where the
 * test writes lines. stop() (SIGKILL) is unplugging; start() again on the same links
 * is plugging it back in.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createReadStream, createWriteStream, mkdtempSync, type ReadStream, rmSync, type WriteStream } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export class SocatPty {
  readonly dir: string;
  readonly devPath: string;
  readonly feedPath: string;
  #proc: ChildProcess | undefined;
  #feed: WriteStream | undefined;
  #readers: ReadStream[] = [];

  constructor(dir = mkdtempSync(join(tmpdir(), "edgehook-pty-"))) {
    this.dir = dir;
    this.devPath = join(dir, "dev");
    this.feedPath = join(dir, "feed");
  }

  get running(): boolean {
    return this.#proc !== undefined && this.#proc.exitCode === null && this.#proc.signalCode === null;
  }

  async start(timeoutMs = 5_000): Promise<void> {
    if (this.running) return;
    // Links of an earlier pair are gone (stop() removes them); clear any left by a crash.
    rmSync(this.devPath, { force: true });
    rmSync(this.feedPath, { force: true });
    const proc = spawn(
      "socat",
      ["-d", "-d", `pty,raw,echo=0,link=${this.devPath}`, `pty,raw,echo=0,link=${this.feedPath}`],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    this.#proc = proc;
    let stderr = "";
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`socat did not start: ${stderr}`)), timeoutMs);
      proc.stderr?.on("data", (d) => {
        stderr += String(d);
        if (stderr.includes("starting data transfer loop")) {
          clearTimeout(timer);
          resolve();
        }
      });
      proc.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`socat exited with ${code}: ${stderr}`));
      });
    });
    // Written through libuv's thread pool: a blocking write to a full pty must not
    // stall the event loop that also runs the reader on the other side.
    const feed = createWriteStream(this.feedPath, { flags: "r+" });
    feed.on("error", () => {}); // the pty vanishes on unplug; writes then fail by design
    this.#feed = feed;
  }

  /** Writes bytes as the device would; resolves once they are handed to the pty. */
  write(data: string | Buffer): Promise<void> {
    const feed = this.#feed;
    if (!feed) return Promise.reject(new Error("socat is not running"));
    return new Promise((resolve, reject) => feed.write(data, (err) => (err ? reject(err) : resolve())));
  }

  /** Calls `onData` with what edgehook writes to the device (e.g. poll commands). */
  readDevice(onData: (chunk: Buffer) => void): void {
    const rs = createReadStream(this.feedPath);
    rs.on("data", (d) => onData(d as Buffer));
    rs.on("error", () => {}); // EIO once unplugged
    this.#readers.push(rs);
  }

  /** Unplugs: SIGKILL, so the ptys vanish at once as when a cable is pulled. */
  async stop(): Promise<void> {
    this.#feed?.destroy();
    this.#feed = undefined;
    for (const r of this.#readers.splice(0)) r.destroy();
    const proc = this.#proc;
    this.#proc = undefined;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill("SIGKILL");
    await exited;
    // udev removes the device node of an unplugged adapter. A link left dangling here
    // would be followed to whatever pty reuses the number next, possibly another test's.
    rmSync(this.devPath, { force: true });
    rmSync(this.feedPath, { force: true });
  }
}
