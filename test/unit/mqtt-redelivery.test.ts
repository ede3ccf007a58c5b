/**
 * RedeliveryTracker: which committed MQTT messages the broker may still send again,
 * driven packet by packet as the MQTT source drives it (no broker, no clock).
 */
import { describe, expect, it } from "vitest";
import { type ReceivedMessage, RedeliveryTracker } from "../../src/sources/redelivery.js";

/** Key of packet id `id` carrying `payload` (the source adds session, topic and a hash). */
const key = (id: number, payload = "35") => `mqtt:s:${id}:t/a:${payload}`;

/** Drives a tracker like the MQTT source does; `received` messages wait for `commit()`. */
class Session {
  readonly t = new RedeliveryTracker();
  #pending: ReceivedMessage[] = [];
  released: string[] = [];

  connect(sessionPresent = true): this {
    this.t.connected(sessionPresent);
    this.#collect();
    return this;
  }
  /** A QoS 1 PUBLISH arrives; true when it is recognised as a redelivery. */
  receive(id: number, payload = "35", dup = false): boolean {
    const k = key(id, payload);
    const redelivery = this.t.arrived(id, k, dup);
    if (!redelivery)
      this.#pending.push({ packetId: id, key: k, session: this.t.session, connection: this.t.connection });
    this.#collect();
    return redelivery;
  }
  /** The pending messages were committed and, if `ack`, their PUBACKs written on this connection. */
  commit(ack = true): this {
    const batch = this.#pending;
    this.#pending = [];
    for (const m of batch) this.t.committed(m);
    if (ack) for (const m of batch) if (m.connection === this.t.connection) this.t.acknowledged(m.packetId, m.key);
    this.#collect();
    return this;
  }
  /** A skipped redelivery's PUBACK was written. */
  ack(id: number, payload = "35"): this {
    this.t.acknowledged(id, key(id, payload));
    return this;
  }
  ping(): this {
    this.t.pingSent();
    return this;
  }
  pong(): this {
    this.t.pingAnswered();
    this.#collect();
    return this;
  }
  close(): this {
    this.t.closed();
    return this;
  }
  #collect(): void {
    this.released.push(...this.t.takeReleased());
  }
}

describe("RedeliveryTracker", () => {
  it("forgets a key once a PINGRESP confirms its PUBACK, so a reused packet id is new", () => {
    const s = new Session().connect();
    s.receive(7);
    s.commit().ping();
    expect(s.t.size).toBe(1);
    s.pong();
    expect(s.released).toEqual([key(7)]);
    expect(s.t.size).toBe(0);
    // 65,535 messages later the broker hands out 7 again; this one is sent again after a reconnect.
    s.close().connect();
    expect(s.receive(7, "35", true)).toBe(false);
  });

  it("recognises a message whose PUBACK was never written (the connection died during the commit)", () => {
    const s = new Session().connect();
    s.receive(7);
    s.close();
    s.commit(); // resolves after the connection is gone: no PUBACK
    s.connect(true).ping();
    expect(s.receive(7, "35", true)).toBe(true);
    expect(s.released).toEqual([]);
    // Acknowledged now, on this connection, and confirmed.
    s.ack(7).ping().pong().pong();
    expect(s.released).toEqual([key(7)]);
  });

  it("keeps a key whose PUBACK was written but not confirmed when the connection dropped", () => {
    const s = new Session().connect();
    s.receive(7);
    s.commit().ping().close();
    s.connect(true).ping();
    expect(s.receive(7, "35", true)).toBe(true);
  });

  it("releases what the broker did not send again before answering the first PINGREQ after a reconnect", () => {
    const s = new Session().connect();
    s.receive(7);
    s.receive(8, "36");
    s.commit().ping().close(); // PINGRESP lost with the connection
    s.connect(true).ping();
    expect(s.receive(8, "36", true)).toBe(true); // the broker never got this PUBACK
    s.pong(); // ... but it had 7's: 7 did not come back
    expect(s.released).toEqual([key(7)]);
    expect(s.receive(7, "35", true)).toBe(false);
  });

  it("forgets every key when the broker has no session, including messages still being committed", () => {
    const s = new Session().connect();
    s.receive(7);
    s.commit(false);
    s.receive(9); // in the pipeline when the connection drops
    s.close().connect(false);
    expect(s.released).toEqual([key(7)]);
    s.commit(false);
    expect(s.released).toEqual([key(7), key(9)]);
    expect(s.t.size).toBe(0);
    expect(s.receive(7, "35", true)).toBe(false);
  });

  it.each([
    ["without DUP", "35", false],
    ["with another payload", "36", true],
  ])("treats a message with a kept key's packet id %s as new and forgets the old key", (_, payload, dup) => {
    const s = new Session().connect();
    s.receive(7);
    s.commit(false).close().connect(true);
    expect(s.receive(7, payload, dup)).toBe(false);
    expect(s.released).toEqual([key(7)]);
  });

  it("treats a DUP on the connection that already carried the message as new (brokers redeliver only after a reconnect)", () => {
    const s = new Session().connect();
    s.receive(7);
    s.commit();
    expect(s.receive(7, "35", true)).toBe(false);
    expect(s.released).toEqual([key(7)]);
  });

  it("a PINGREQ written before a PUBACK does not confirm it", () => {
    const s = new Session().connect();
    s.ping(); // the keep-alive's
    s.receive(7);
    s.commit();
    s.pong();
    expect(s.released).toEqual([]);
    s.ping().pong();
    expect(s.released).toEqual([key(7)]);
  });

  it("recognises keys restored from the store after a restart, and forgets those that do not come back", () => {
    const s = new Session();
    s.t.restore(7, key(7));
    s.t.restore(8, key(8));
    s.connect(true).ping();
    expect(s.receive(7, "35", true)).toBe(true);
    s.pong();
    expect(s.released).toEqual([key(8)]);
    expect(s.t.size).toBe(1);
  });

  it("confirm() releases acknowledgements up to a sequence number (the PUBACK of our own later publish)", () => {
    const s = new Session().connect();
    s.receive(7);
    s.commit();
    const upTo = s.t.ackSeq;
    s.receive(8);
    s.commit();
    s.t.confirm(upTo);
    expect(s.t.takeReleased()).toEqual([key(7)]);
    expect(s.t.unconfirmed).toBe(1);
  });
});
