/**
 * A min-heap of "look at this item at time t" entries, so tick() and nextDueAt() cost
 * O(log n) instead of a scan over every series. Entries are hints: an item keeps only
 * its earliest entry valid (a token), and when an entry comes due the engine looks at
 * the item's real state and schedules again if something is still ahead. That lets a
 * hot path (a reading pushing an absent_for deadline forward) skip the heap entirely.
 */
export interface Schedulable {
  /** Time of the item's valid entry, undefined when none. */
  dueAt: number | undefined;
  /** Token of the valid entry; other entries for the item are stale. */
  dueToken: number;
  /** Set when the item is dropped; its entries are then stale. */
  gone: boolean;
}

interface Entry<T> {
  at: number;
  token: number;
  item: T;
}

export class DueQueue<T extends Schedulable> {
  #heap: Entry<T>[] = [];
  #tokens = 0;

  get size(): number {
    return this.#heap.length;
  }

  /** Makes sure `item` is looked at no later than `at`. */
  schedule(item: T, at: number): void {
    if (item.dueAt !== undefined && item.dueAt <= at) return;
    const token = ++this.#tokens;
    item.dueAt = at;
    item.dueToken = token;
    this.#push({ at, token, item });
  }

  /** Earliest valid entry time. */
  peek(): number | undefined {
    this.#dropStale();
    return this.#heap[0]?.at;
  }

  /** Removes and returns the items due at `now`, earliest first; their entries are cleared. */
  takeDue(now: number): T[] {
    const out: T[] = [];
    for (;;) {
      this.#dropStale();
      const top = this.#heap[0];
      if (!top || top.at > now) break;
      this.#pop();
      top.item.dueAt = undefined;
      out.push(top.item);
    }
    return out;
  }

  clear(): void {
    this.#heap = [];
  }

  #dropStale(): void {
    for (;;) {
      const top = this.#heap[0];
      if (!top || (!top.item.gone && top.item.dueToken === top.token)) return;
      this.#pop();
    }
  }

  #push(e: Entry<T>): void {
    const h = this.#heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      const pe = h[p];
      if (pe === undefined || pe.at <= e.at) break;
      h[i] = pe;
      i = p;
    }
    h[i] = e;
  }

  #pop(): void {
    const h = this.#heap;
    const last = h.pop();
    if (last === undefined || h.length === 0) return;
    let i = 0;
    const n = h.length;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const left = h[l];
      if (left === undefined) break;
      let c = l;
      let child = left;
      const right = l + 1 < n ? h[l + 1] : undefined;
      if (right !== undefined && right.at < left.at) {
        c = l + 1;
        child = right;
      }
      if (child.at >= last.at) break;
      h[i] = child;
      i = c;
    }
    h[i] = last;
  }
}
