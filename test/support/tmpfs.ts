/**
 * A small real filesystem (tmpfs) whose disk a test can fill up and free again, for the
 * outbox's disk floor. Needs root (the tests and CI run as root).
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, statfsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export class Tmpfs {
  readonly dir: string;
  #mounted = false;
  #fillers = 0;

  constructor(readonly sizeBytes: number) {
    this.dir = mkdtempSync(join(tmpdir(), "edgehook-tmpfs-"));
  }

  mount(): void {
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${this.sizeBytes}`, "tmpfs", this.dir]);
    this.#mounted = true;
  }

  /** Bytes available to an unprivileged writer, as the agent reads it. */
  free(): number {
    const st = statfsSync(this.dir);
    return Number(st.bavail) * Number(st.bsize);
  }

  /** Writes a filler file so that about `leaveFree` bytes stay free; returns its path. */
  fill(leaveFree: number): string {
    const file = join(this.dir, `filler-${this.#fillers++}`);
    writeFileSync(file, Buffer.alloc(Math.max(0, this.free() - leaveFree)));
    return file;
  }

  unmount(): void {
    if (this.#mounted) execFileSync("umount", ["-l", this.dir]);
    this.#mounted = false;
    rmSync(this.dir, { recursive: true, force: true });
  }
}
