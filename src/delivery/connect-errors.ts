/**
 * Tells a request that failed because no connection could be made from one that failed
 * after its connection was made (policy.ts: the first is "offline", the second spends an
 * attempt).
 *
 * undici publishes every failure to establish a connection (TCP connect, TLS handshake,
 * proxy CONNECT tunnel, connect timeout) on the `undici:client:connectError` diagnostics
 * channel and then fails the queued requests with that same error object. Remembering those
 * objects in a WeakSet marks them exactly, whatever their code: an ECONNRESET during the TLS
 * handshake is "cannot connect", an ECONNRESET after the request was written is not. The
 * channel is process-wide; other undici users' errors land in the set too, which is harmless
 * (it only ever answers for an error object a request of ours was failed with).
 */
import { subscribe } from "node:diagnostics_channel";

const CHANNEL = "undici:client:connectError";
const failed = new WeakSet<object>();
let watching = false;

function remember(message: unknown): void {
  const error = (message as { error?: unknown } | undefined)?.error;
  if (error !== null && typeof error === "object") failed.add(error);
}

/** Starts watching undici's connect failures (idempotent; before the first request). */
export function watchConnectErrors(): void {
  if (watching) return;
  watching = true;
  subscribe(CHANNEL, remember);
}

/** True when `err` (or an error in its `cause` chain) is a failure to connect. */
export function failedToConnect(err: unknown): boolean {
  const seen = new Set<unknown>();
  let e: unknown = err;
  while (e !== null && typeof e === "object" && !seen.has(e)) {
    if (failed.has(e)) return true;
    seen.add(e);
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}
