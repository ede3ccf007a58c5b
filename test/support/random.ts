/**
 * A seeded pseudo-random sequence for tests that walk a random mix of operations and must
 * replay the same mix on every run (mulberry32: 32-bit state, exact in JavaScript numbers).
 * `rand(n)` is an integer in [0, n).
 */
export function seededRandom(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) % n) | 0;
  };
}
