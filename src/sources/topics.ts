/**
 * MQTT topic filters: matching a topic (with what the wildcards took), and how two
 * filters relate, for `check`'s warning about subscriptions that hide one another.
 */

/**
 * Matches an MQTT topic against a filter; returns the segments the wildcards took
 * (`+` one segment each, `#` the rest joined by `/`), or undefined for no match.
 */
export function matchTopic(filter: string, topic: string): string[] | undefined {
  const f = filter.split("/");
  const t = topic.split("/");
  const caught: string[] = [];
  // MQTT 3.1.1 §4.7.2: wildcards at the first level do not match `$` topics.
  if (topic.startsWith("$") && (f[0] === "+" || f[0] === "#")) return undefined;
  for (let i = 0; i < f.length; i++) {
    const seg = f[i]!;
    if (seg === "#") {
      caught.push(t.slice(i).join("/"));
      return caught;
    }
    const ts = t[i];
    if (ts === undefined) return undefined;
    if (seg === "+") caught.push(ts);
    else if (seg !== ts) return undefined;
  }
  return f.length === t.length ? caught : undefined;
}

/** True when every topic `inner` matches is also matched by `outer`. */
export function filterCovers(outer: string, inner: string): boolean {
  const o = outer.split("/");
  const n = inner.split("/");
  for (let i = 0; i < o.length; i++) {
    const a = o[i]!;
    if (a === "#") return true;
    const b = n[i];
    if (b === undefined || b === "#") return false;
    if (a === "+") continue;
    if (b === "+" || a !== b) return false;
  }
  return o.length === n.length;
}

/** A topic both filters match, or undefined when they match none in common. */
export function commonTopic(a: string, b: string): string | undefined {
  const x = a.split("/");
  const y = b.split("/");
  const out: string[] = [];
  for (let i = 0; ; i++) {
    const p = x[i];
    const q = y[i];
    if (p === "#" || q === "#") {
      const rest = p === "#" ? y.slice(i) : x.slice(i);
      for (const seg of rest) out.push(seg === "+" || seg === "#" ? "x" : seg);
      return out.join("/") || undefined;
    }
    if (p === undefined || q === undefined) return p === q ? out.join("/") : undefined;
    if (p === "+") out.push(q === "+" ? "x" : q);
    else if (q === "+" || p === q) out.push(p);
    else return undefined;
  }
}
