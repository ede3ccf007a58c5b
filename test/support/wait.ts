/**
 * Waits until `pred` holds, looking every `intervalMs`. For state another process or a
 * server owns (a receiver's log, an operator command's output), where there is no event
 * to await; where an event exists, await it instead.
 */
export async function waitUntil(
  pred: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 10_000,
  intervalMs = 20,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
