/** `edgehook send-test` in-process against a real receiver. */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sendTestCommand } from "../../src/cli/send-test.js";
import { loadConfig } from "../../src/config/load.js";
import { tempDir, writeConfig } from "../support/agent-process.js";
import { NatsServer } from "../support/nats-server.js";
import { Receiver } from "../support/receiver.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

describe("send-test", () => {
  const receiver = new Receiver(WEBHOOK_SECRET);
  beforeAll(() => receiver.start());
  afterAll(() => receiver.stop());

  it("sends at once to a batching destination instead of waiting max_wait for the batch to fill", async () => {
    const file = writeConfig(
      tempDir(),
      `version: 1
agent: { id: batch-pi, data_dir: ./data }
destinations:
  ops:
    url: ${receiver.url}
    secret: ${WEBHOOK_SECRET}
    connect_timeout: 1s
    response_timeout: 1s
    batch: { max_events: 10, max_wait: 30s }
`,
    );
    const out: string[] = [];
    const err: string[] = [];
    const t0 = Date.now();
    const code = await sendTestCommand(
      ["ops"],
      loadConfig(file, { env: {} }),
      (l) => out.push(l),
      (l) => err.push(l),
    );
    expect(err).toEqual([]);
    expect(code).toBe(0);
    expect(Date.now() - t0).toBeLessThan(3_000);
    expect(receiver.accepted.at(-1)?.verified).toBe(true);
    // Still the batch body the receiver will get from the agent.
    expect(receiver.accepted.at(-1)?.json).toMatchObject({ data: { events: [{ type: "test" }] } });
  });

  it("reads a relative tls file next to the configuration, as the agent does", async () => {
    const dir = tempDir();
    // Read at start; not used for an http:// receiver.
    writeFileSync(join(dir, "receiver-ca.pem"), "placeholder\n");
    const file = writeConfig(
      dir,
      `version: 1
agent: { id: tls-pi, data_dir: ./data }
destinations:
  ops:
    url: ${receiver.url}
    secret: ${WEBHOOK_SECRET}
    tls: { ca_file: receiver-ca.pem }
`,
    );
    const err: string[] = [];
    const code = await sendTestCommand(
      ["ops"],
      loadConfig(file, { env: {} }),
      () => {},
      (l) => err.push(l),
    );
    expect(err).toEqual([]);
    expect(code).toBe(0);
  });

  it("says the request cannot be built (not that the receiver is unreachable) when a header value is invalid", async () => {
    const file = writeConfig(
      tempDir(),
      `version: 1
agent: { id: header-pi, data_dir: ./data }
destinations:
  ops:
    url: ${receiver.url}
    secret: ${WEBHOOK_SECRET}
    headers: { x-note: "two\\nlines" }
`,
    );
    const before = receiver.accepted.length;
    const err: string[] = [];
    const code = await sendTestCommand(
      ["ops"],
      loadConfig(file, { env: {} }),
      () => {},
      (l) => err.push(l),
    );
    expect(code).toBe(1);
    expect(err).toEqual([expect.stringMatching(/^edgehook send-test: ops: cannot build the request: /)]);
    expect(receiver.accepted.length).toBe(before);
  });

  it("sends to a nats:// destination and says the stream acknowledged it", async () => {
    const nats = new NatsServer();
    await nats.start();
    try {
      const file = writeConfig(
        tempDir(),
        `version: 1
agent: { id: fleet-pi, data_dir: ./data }
destinations:
  stream: { url: "${nats.url}", subject: "edgehook.{agent}.{type}", stream: EH, create_stream: true, secret: ${WEBHOOK_SECRET} }
`,
      );
      const out: string[] = [];
      const err: string[] = [];
      const code = await sendTestCommand(
        ["stream"],
        loadConfig(file, { env: {} }),
        (l) => out.push(l),
        (l) => err.push(l),
      );
      expect(err).toEqual([]);
      expect(code).toBe(0);
      expect(out.slice(1)).toEqual(["PubAck from stream", "accepted by stream"]);
    } finally {
      await nats.stop();
    }
  });
});
