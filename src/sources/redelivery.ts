/**
 * Which committed MQTT messages the broker may still send again (issue 10): pure
 * bookkeeping for the MQTT source, no IO.
 *
 * A QoS 1/2 message whose readings were committed but whose acknowledgement the broker
 * never processed (the process died, or the connection dropped, in between) comes back
 * after the reconnect with the DUP flag and its original packet id. Its key (packet id,
 * topic, payload hash) is stored with what it caused, so it is recognised and only
 * acknowledged. But packet ids are 16 bits and a broker reuses an id as soon as it has
 * processed our acknowledgement, and sensors repeat payloads (`35`, `on`): a key kept
 * after that point would make a later, new message look like a redelivery. So a key is
 * kept only while the broker may still redeliver its message, in this session:
 *
 * - After we write an acknowledgement, we write a PINGREQ (or the keep-alive does); the
 *   broker handles a connection's packets in order, so its PINGRESP proves it processed
 *   the acknowledgements written before (MQTT 3.1.1 §3.12, 5.0 §3.12). Their keys go.
 * - After a reconnect with the session present, the broker sends the unacknowledged
 *   messages again straight after the CONNACK (MQTT 3.1.1 §4.4, 5.0 §4.4; mosquitto does
 *   so while handling the CONNECT), before it answers the first PINGREQ we write. A key
 *   whose message did not come back by that PINGRESP had its acknowledgement processed.
 * - A message arriving with a kept key's packet id but another key, or without DUP, or
 *   on the connection that already carried it, is new: that id was free again.
 * - A connect without the session (`sessionPresent: false`) makes every key meaningless:
 *   the broker forgot what it had in flight, and messages still in our pipeline from the
 *   old session are released as soon as they are committed.
 *
 * What is left: a broker that hands a freed id to a new message with the same topic and
 * payload within the one round trip between our acknowledgement and our PINGREQ, and a
 * connection lost in that same round trip before the new message was read. Brokers that
 * count ids upwards (mosquitto, aedes) cannot do that before 65,535 other ids.
 */

interface Entry {
  key: string;
  /** Connection on which the message last arrived (0: before this process started). */
  seenOn: number;
  /** Connection on which its acknowledgement was written (0: none yet). */
  ackedOn: number;
}

/** A message of the source's pipeline, as it was received. */
export interface ReceivedMessage {
  packetId: number;
  key: string;
  /** `session` when it arrived; a message of an earlier session is never redelivered. */
  session: number;
  /** Connection it arrived on. */
  connection: number;
}

export class RedeliveryTracker {
  /** Packet id → the committed message holding it, while the broker may redeliver it. */
  readonly #entries = new Map<number, Entry>();
  /** Acknowledgements written on the current connection, oldest first, with their sequence number. */
  #acked: { packetId: number; key: string; seq: number }[] = [];
  /** For each PINGREQ written on the current connection (oldest first): acknowledgements written before it. */
  #barriers: number[] = [];
  #ackSeq = 0;
  #connection = 0;
  #session = 0;
  /** Connected with the session present, and the first PINGRESP not yet read. */
  #replaying = false;
  #released: string[] = [];

  /** Number of the current connection (from 1; 0 before the first). */
  get connection(): number {
    return this.#connection;
  }

  /** Changes whenever the broker starts a new session for us. */
  get session(): number {
    return this.#session;
  }

  /** Keys that may still be redelivered. */
  get size(): number {
    return this.#entries.size;
  }

  /** Keys committed by an earlier run: may be redelivered once connected. */
  restore(packetId: number, key: string): void {
    this.#entries.set(packetId, { key, seenOn: 0, ackedOn: 0 });
  }

  connected(sessionPresent: boolean): void {
    this.#connection++;
    this.#acked = [];
    this.#barriers = [];
    this.#replaying = sessionPresent;
    if (!sessionPresent) {
      this.#session++;
      for (const e of this.#entries.values()) this.#released.push(e.key);
      this.#entries.clear();
    }
  }

  closed(): void {
    // Unconfirmed acknowledgements may not have reached the broker: their keys stay until
    // the next connection's replay shows whether the broker sends them again.
    this.#acked = [];
    this.#barriers = [];
    this.#replaying = false;
  }

  /**
   * A QoS 1/2 message arrived. True when it is a redelivery of a committed message: to be
   * acknowledged, not processed again.
   */
  arrived(packetId: number, key: string, dup: boolean): boolean {
    const e = this.#entries.get(packetId);
    if (!e) return false;
    if (dup && e.key === key && e.seenOn !== this.#connection) {
      e.seenOn = this.#connection;
      return true;
    }
    // The id was free again: the broker had processed our acknowledgement of the old one.
    this.#entries.delete(packetId);
    this.#released.push(e.key);
    return false;
  }

  /** The message's readings (and its key) were committed. */
  committed(m: ReceivedMessage): void {
    if (m.session !== this.#session) {
      // Its session is gone; the broker will never send it again.
      this.#released.push(m.key);
      return;
    }
    const e = this.#entries.get(m.packetId);
    if (e && e.key !== m.key) this.#released.push(e.key);
    this.#entries.set(m.packetId, { key: m.key, seenOn: m.connection, ackedOn: 0 });
  }

  /** Its acknowledgement (PUBACK, PUBREC) was written on the current connection. */
  acknowledged(packetId: number, key: string): void {
    const e = this.#entries.get(packetId);
    if (!e || e.key !== key) return;
    e.ackedOn = this.#connection;
    this.#acked.push({ packetId, key, seq: ++this.#ackSeq });
  }

  /** Acknowledgements written on this connection and not yet confirmed. */
  get unconfirmed(): number {
    return this.#acked.length;
  }

  /** A PINGREQ was written on the current connection. */
  pingSent(): void {
    this.#barriers.push(this.#ackSeq);
  }

  /** Whether a PINGREQ written on this connection still waits for its PINGRESP. */
  get pinging(): boolean {
    return this.#barriers.length > 0;
  }

  /** A PINGRESP was read: the broker processed everything written before its PINGREQ. */
  pingAnswered(): void {
    const upTo = this.#barriers.shift();
    if (upTo === undefined) return;
    this.confirm(upTo);
    if (this.#replaying) {
      // The broker has sent again what it had in flight; the rest had its acknowledgement.
      this.#replaying = false;
      for (const [id, e] of this.#entries) {
        if (e.seenOn !== this.#connection) {
          this.#entries.delete(id);
          this.#released.push(e.key);
        }
      }
    }
  }

  /** Sequence number of the last acknowledgement written (for confirm()). */
  get ackSeq(): number {
    return this.#ackSeq;
  }

  /** The broker processed the acknowledgements up to `seq` (a PINGRESP, or the PUBACK of a later publish of ours). */
  confirm(seq: number): void {
    const acked = this.#acked;
    let n = 0;
    for (; n < acked.length && (acked[n] as { seq: number }).seq <= seq; n++) {
      const a = acked[n] as { packetId: number; key: string };
      const e = this.#entries.get(a.packetId);
      if (e && e.key === a.key && e.ackedOn === this.#connection) {
        this.#entries.delete(a.packetId);
        this.#released.push(a.key);
      }
    }
    // One splice, not a shift per entry: a batch may hold thousands.
    if (n > 0) acked.splice(0, n);
  }

  /** Keys that can no longer be redelivered, since the last call. */
  takeReleased(): string[] {
    const r = this.#released;
    this.#released = [];
    return r;
  }
}
