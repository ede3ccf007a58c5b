/**
 * `edgehook send-test DESTINATION --config FILE`: builds a test event and sends it
 * through the real path — outbox, rendering, signing, dispatcher — to one destination,
 * then prints what the receiver answered. It uses a throwaway outbox, so a running
 * agent's queue is not touched. Exit 0 only when the receiver accepted it (2xx).
 */

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { systemClock } from "../clock.js";
import type { LoadedConfig } from "../config/load.js";
import { destinationKind } from "../delivery/destination-kind.js";
import { type AttemptInfo, Dispatcher } from "../delivery/dispatcher.js";
import { ExitCode } from "../errors.js";
import { newEvent } from "../events.js";
import { silentLogger } from "../ops/logger.js";
import { Metrics } from "../ops/metrics.js";
import { seriesKey } from "../series-key.js";
import { Outbox } from "../store/outbox.js";

const PREVIEW_BYTES = 512;

export async function sendTestCommand(
  args: string[],
  loaded: LoadedConfig,
  out: (line: string) => void,
  err: (line: string) => void,
): Promise<number> {
  const name = args[0];
  const config = loaded.config;
  if (!name || args.length > 1) {
    err("usage: edgehook send-test DESTINATION --config FILE");
    return ExitCode.USAGE;
  }
  const dest = config.destinations[name];
  if (!dest) {
    err(
      `edgehook send-test: no destination '${name}' (destinations: ${Object.keys(config.destinations).join(", ") || "none"})`,
    );
    return ExitCode.FAILURE;
  }
  const now = systemClock.now();
  const event = newEvent(
    "test",
    { agent: config.agent.id, rule: "send-test", severity: "info", priority: 0, notify: [name] },
    seriesKey("send-test", "edgehook-send-test", "test"),
    now,
    now,
    {
      sensor: "edgehook-send-test",
      metric: "test",
      value: 42,
      threshold: 40,
      severity: "info",
      labels: {},
      since: new Date(now).toISOString(),
      message: `Test webhook from edgehook on ${config.agent.id}`,
    },
  );

  const dir = mkdtempSync(join(tmpdir(), "edgehook-send-test-"));
  const metrics = new Metrics();
  const logger = silentLogger();
  const outbox = new Outbox({
    file: join(dir, "outbox.db"),
    limits: config.outbox,
    clock: systemClock,
    logger,
    metrics,
  });
  let answer: AttemptInfo | undefined;
  let onAttempt!: (info: AttemptInfo) => void;
  const attempted = new Promise<AttemptInfo>((resolve) => {
    onAttempt = resolve;
  });
  // One attempt only: a 5xx is reported, not retried for hours. A batching destination
  // gets the batch body it always gets, sent at once rather than after batch.max_wait
  // (longer than we wait for an answer).
  // An MQTT destination gets its own client id here: the broker would otherwise drop the
  // running agent's connection (same id) for this one message.
  const once = {
    ...dest,
    max_attempts: 1,
    ...(dest.batch ? { batch: { ...dest.batch, max_wait: 0 } } : {}),
    ...(dest.client_id !== undefined ? { client_id: `${dest.client_id}-send-test` } : {}),
  };
  const dispatcher = new Dispatcher({
    outbox,
    destinations: { [name]: once },
    clock: systemClock,
    logger,
    metrics,
    onAttempt: (info) => onAttempt(info),
    // Relative tls.*_file paths resolve as the agent resolves them.
    baseDir: dirname(loaded.file),
  });
  try {
    outbox.open();
    await outbox.commit({ events: [event], states: [], removedStates: [] });
    out(`sending ${event.id} to ${name} (${dest.url})`);
    dispatcher.start();
    dispatcher.wake();
    const timeoutMs = dest.connect_timeout + dest.response_timeout + 1_000;
    answer = await Promise.race([
      attempted,
      new Promise<undefined>((r) => setTimeout(() => r(undefined), timeoutMs).unref()),
    ]);
    const kind = destinationKind(dest.url);
    if (answer?.status !== undefined && kind !== "webhook") {
      // A broker's acknowledgement has no headers or body to show.
      const ack = kind === "mqtt" ? "PUBACK" : "PubAck";
      if (answer.status >= 200 && answer.status < 300) {
        out(`${ack} from ${name}`);
        out(`accepted by ${name}`);
        return ExitCode.OK;
      }
      err(
        `edgehook send-test: ${name} refused the message (its ${ack} reads as HTTP ${answer.status}; see docs/destinations.md)`,
      );
      return ExitCode.FAILURE;
    }
    if (answer?.status !== undefined) {
      out(`HTTP ${answer.status}`);
      for (const [k, v] of Object.entries(answer.headers ?? {})) out(`${k}: ${Array.isArray(v) ? v.join(", ") : v}`);
      out("");
      const body = answer.body ?? Buffer.alloc(0);
      out(body.subarray(0, PREVIEW_BYTES).toString("utf8") + (body.length > PREVIEW_BYTES ? " …" : ""));
      if (answer.status >= 200 && answer.status < 300) {
        out(`accepted by ${name}`);
        return ExitCode.OK;
      }
      err(`edgehook send-test: ${name} did not accept the webhook (HTTP ${answer.status})`);
      return ExitCode.FAILURE;
    }
    if (answer?.code === "EDGEHOOK_REQUEST_UNSENDABLE") {
      err(`edgehook send-test: ${name}: ${answer.error}`);
    } else {
      err(`edgehook send-test: ${name} not reachable: ${answer?.error ?? "no answer in time"}`);
    }
    return ExitCode.FAILURE;
  } finally {
    await dispatcher.stop(0);
    outbox.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
