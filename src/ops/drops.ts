/**
 * Things dropped on purpose, reported as "dropped N since the last report" (design
 * invariant 7: no rate limit swallows a count). The first drop after a quiet spell is
 * reported at once; later ones are summed and reported when `poll()` finds the interval
 * over (the owner polls on its housekeeping cadence), and whatever is left at `flush()`
 * (on stop). Every drop is in exactly one report.
 */

export interface DropSummary {
  /** Everything dropped since the last report. */
  dropped: number;
  /** reason → count. */
  reasons: Record<string, number>;
  /** where (a destination, a source) → reason → count. */
  by: Record<string, Record<string, number>>;
  /** Seconds covered by this report (since the previous one, or since the first drop). */
  periodS: number;
}

export class DropTally {
  readonly #intervalMs: number;
  readonly #now: () => number;
  readonly #report: (summary: DropSummary) => void;
  #counts = new Map<string, Map<string, number>>();
  #total = 0;
  #lastReport = Number.NEGATIVE_INFINITY;
  #periodStart = 0;

  constructor(intervalMs: number, now: () => number, report: (summary: DropSummary) => void) {
    this.#intervalMs = intervalMs;
    this.#now = now;
    this.#report = report;
  }

  /** Counts `n` drops of `reason` at `where`; reports at once after a quiet spell. */
  add(reason: string, where: string, n: number): void {
    if (!(n > 0)) return;
    const now = this.#now();
    if (this.#total === 0 && !Number.isFinite(this.#lastReport)) this.#periodStart = now;
    let m = this.#counts.get(where);
    if (!m) {
      m = new Map();
      this.#counts.set(where, m);
    }
    m.set(reason, (m.get(reason) ?? 0) + n);
    this.#total += n;
    if (now - this.#lastReport >= this.#intervalMs) this.flush();
  }

  /** Drops counted and not yet reported. */
  get unreported(): number {
    return this.#total;
  }

  /** Reports what accumulated once the interval since the last report is over. */
  poll(): void {
    if (this.#total > 0 && this.#now() - this.#lastReport >= this.#intervalMs) this.flush();
  }

  /** Reports whatever accumulated now (at stop). */
  flush(): void {
    if (this.#total === 0) return;
    const now = this.#now();
    const reasons: Record<string, number> = {};
    const by: Record<string, Record<string, number>> = {};
    for (const [where, m] of this.#counts) {
      const entry: Record<string, number> = {};
      for (const [reason, n] of m) {
        entry[reason] = n;
        reasons[reason] = (reasons[reason] ?? 0) + n;
      }
      by[where] = entry;
    }
    const start = Number.isFinite(this.#lastReport) ? this.#lastReport : this.#periodStart;
    const summary: DropSummary = {
      dropped: this.#total,
      reasons,
      by,
      periodS: Math.max(0, Math.round((now - start) / 1000)),
    };
    this.#counts = new Map();
    this.#total = 0;
    this.#lastReport = now;
    this.#report(summary);
  }
}

/** `max_bytes: 54000 (ops 50000, backup 4000)`: one part per reason. */
export function describeDrops(s: DropSummary): string {
  return Object.entries(s.reasons)
    .map(([reason, n]) => {
      const where = Object.entries(s.by)
        .filter(([, m]) => (m[reason] ?? 0) > 0)
        .map(([w, m]) => `${w} ${m[reason]}`);
      return `${reason}: ${n} (${where.join(", ")})`;
    })
    .join("; ");
}
