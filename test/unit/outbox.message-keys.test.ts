/**
 * The outbox's keys of committed MQTT messages the broker may still redeliver: stored
 * with the batch they belong to, deleted once released — riding on the next transaction,
 * or batched shortly after — and the sessions edgehook has had. Real SQLite files.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { configSchema } from "../../src/config/schema.js";
import type { CommitBatch } from "../../src/events.js";
import { silentLogger } from "../../src/ops/logger.js";
import { Metrics } from "../../src/ops/metrics.js";
import { RELEASE_DELAY_MS } from "../../src/store/message-keys.js";
import { Outbox } from "../../src/store/outbox.js";
import { FakeClock } from "../support/fake-clock.js";

let dir: string;
let file: string;
let clock: FakeClock;
const open: Outbox[] = [];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "edgehook-keys-"));
  file = join(dir, "outbox.db");
  clock = new FakeClock();
});
afterEach(() => {
  for (const o of open.splice(0)) o.close();
  rmSync(dir, { recursive: true, force: true });
});

function outbox(): Outbox {
  const o = new Outbox({
    file,
    limits: { ...configSchema.parse({ version: 1, agent: { id: "t" } }).outbox, commit_delay: 0 },
    clock,
    logger: silentLogger(),
    metrics: new Metrics(),
  });
  o.open();
  open.push(o);
  return o;
}

/** A batch that writes something (a rule state), carrying message keys. */
const batch = (keys: string[], series = "s"): CommitBatch => ({
  events: [],
  states: [{ rule: "r", series, version: "1", state: 1 }],
  removedStates: [],
  messageKeys: keys,
});

/** What is in the file, read by another connection. */
function stored(): string[] {
  const db = new Database(file, { readonly: true });
  try {
    return (db.prepare("SELECT key FROM source_messages ORDER BY key").pluck().all() as string[]).sort();
  } finally {
    db.close();
  }
}

describe("outbox message keys", () => {
  it("stores keys in the transaction of their batch and lists them after a restart", async () => {
    const o = outbox();
    await o.commit(batch(["mqtt:a:1:t:x", "mqtt:a:2:t:x"]));
    expect(stored()).toEqual(["mqtt:a:1:t:x", "mqtt:a:2:t:x"]);
    o.close();
    expect(outbox().messageKeys().sort()).toEqual(["mqtt:a:1:t:x", "mqtt:a:2:t:x"]);
  });

  it("deletes released keys with the next transaction, whatever it is for", async () => {
    const o = outbox();
    await o.commit(batch(["mqtt:a:1:t:x", "mqtt:a:2:t:x"]));
    const before = o.transactionCount;
    o.releaseMessageKeys(["mqtt:a:1:t:x"]);
    expect(o.messageKeys()).toEqual(["mqtt:a:2:t:x"]);
    expect(stored()).toHaveLength(2);
    await o.commit(batch(["mqtt:a:3:t:x"], "s2"));
    expect(o.transactionCount - before).toBe(1);
    expect(stored()).toEqual(["mqtt:a:2:t:x", "mqtt:a:3:t:x"]);
    // Nothing is left for the delayed write.
    clock.advance(RELEASE_DELAY_MS);
    expect(o.transactionCount - before).toBe(1);
  });

  it("deletes them in one write of its own when no transaction comes within the delay", async () => {
    const o = outbox();
    await o.commit(batch(["mqtt:a:1:t:x", "mqtt:a:2:t:x"]));
    const before = o.transactionCount;
    o.releaseMessageKeys(["mqtt:a:1:t:x"]);
    o.releaseMessageKeys(["mqtt:a:2:t:x"]);
    clock.advance(RELEASE_DELAY_MS - 1);
    expect(stored()).toHaveLength(2);
    clock.advance(1);
    expect(stored()).toEqual([]);
    expect(o.transactionCount - before).toBe(1);
  });

  it("writes nothing for keys it never stored (a reading that changed nothing)", () => {
    const o = outbox();
    const before = o.transactionCount;
    o.releaseMessageKeys(["mqtt:a:9:t:x"]);
    clock.advance(RELEASE_DELAY_MS * 10);
    expect(o.transactionCount).toBe(before);
  });

  it("keeps a key released and stored again by the same transaction", async () => {
    const o = outbox();
    await o.commit(batch(["mqtt:a:1:t:x"]));
    o.releaseMessageKeys(["mqtt:a:1:t:x"]);
    await o.commit(batch(["mqtt:a:1:t:x"], "s2"));
    expect(stored()).toEqual(["mqtt:a:1:t:x"]);
    expect(o.messageKeys()).toEqual(["mqtt:a:1:t:x"]);
  });

  it("deletes released keys when it closes", async () => {
    const o = outbox();
    await o.commit(batch(["mqtt:a:1:t:x"]));
    o.releaseMessageKeys(["mqtt:a:1:t:x"]);
    o.close();
    expect(stored()).toEqual([]);
  });

  it("remembers the sessions it had, and the broker's drop count, across restarts", () => {
    const o = outbox();
    expect(o.session("mqtt:edgehook-pi")).toBeUndefined();
    o.rememberSession("mqtt:edgehook-pi", {});
    expect(o.session("mqtt:edgehook-pi")).toEqual({});
    o.rememberSession("mqtt:edgehook-pi", { brokerDropped: 485 });
    o.close();
    const again = outbox();
    expect(again.session("mqtt:edgehook-pi")).toEqual({ brokerDropped: 485 });
    expect(again.session("mqtt:other")).toBeUndefined();
  });

  it("drops the keys an older edgehook kept (up to 100,000, outliving their packet ids) when it upgrades the file", () => {
    // A file as schema 2 left it: the current schema with the old key table and no body checksums.
    outbox().close();
    const old = new Database(file);
    old.exec(`ALTER TABLE events DROP COLUMN body_crc; DROP TABLE source_messages; DROP TABLE source_sessions;
              CREATE TABLE source_messages (key TEXT PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID;
              CREATE INDEX source_messages_by_age ON source_messages (at);
              INSERT INTO source_messages VALUES ('mqtt:7:t/a:hash', 1), ('mqtt:8:t/a:hash', 2);`);
    old.pragma("user_version = 2");
    old.close();
    const o = outbox();
    expect(o.messageKeys()).toEqual([]);
    expect(stored()).toEqual([]);
  });
});
