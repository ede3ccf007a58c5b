#!/usr/bin/env node
/**
 * Modbus devices in a process of their own, for integration tests and the bench.
 *
 *   node modbus-slave.mjs tcp [PORT]   modbus-serial's ServerTCP on 127.0.0.1 (a free port when none given)
 *   node modbus-slave.mjs rtu PATH     an RTU slave on the device side of a socat pty pair
 *
 * Several unit ids live behind one process (devices on one bus, or behind one gateway).
 * Driven over the IPC channel (fork): { id, op, ... } → { id, ok, ... }:
 *   units    { units: [1, 2] }                 which unit ids answer at all
 *   set      { unit, table, address, values }  registers (16-bit words) or coils/inputs (booleans)
 *   behave   { unit, mode, code?, delayMs? }   mode: ok | silent | exception (code) | bad_crc (RTU)
 *   strict   { unit, on }                      reads touching unset addresses answer exception 2
 *   requests {}                                the read requests served so far (and clears them)
 *   attach   {}                                (RTU) open PATH again, after socat was restarted
 * Sends { ready: true, port } once listening (TCP) or attached (RTU).
 *
 * The RTU slave is written here rather than taken from modbus-serial (its ServerSerial
 * recomputes the CRC of every request instead of checking it, and cannot send a bad
 * one), so the client's CRC and framing code is tested against an independent one.
 */
import { createServer } from "node:net";
import ModbusRTU from "modbus-serial";
import { SerialPort } from "serialport";

const [mode, arg] = process.argv.slice(2);
const TABLES = { 1: "coil", 2: "discrete", 3: "holding", 4: "input" };

// ---------------------------------------------------------------- the devices

let present = new Set([1]);
const memory = new Map(); // `${unit}:${table}:${address}` → number | boolean
const behaviour = new Map(); // unit → { mode, code, delayMs }
const strict = new Set();
let served = [];
/** Answers owed at once: more than 1 means a master sent a request before the last was answered. */
let owed = 0;
let maxOwed = 0;

const key = (unit, table, address) => `${unit}:${table}:${address}`;
/** To the test over IPC; a test that went away first is no error (the callback takes it). */
const send = (msg) => process.send?.(msg, () => {});

/** The values of a read, or why not: { values } | { exception } | { silent }. */
function read(unit, fc, address, count) {
  const table = TABLES[fc];
  if (!present.has(unit) || !table) return { silent: true };
  const b = behaviour.get(unit) ?? { mode: "ok" };
  if (b.mode === "silent") return { silent: true };
  served.push({ unit, table, address, count });
  if (b.mode === "exception") return { exception: b.code ?? 4, delayMs: b.delayMs };
  const values = [];
  for (let a = address; a < address + count; a++) {
    const v = memory.get(key(unit, table, a));
    if (v === undefined && strict.has(unit)) return { exception: 2, delayMs: b.delayMs };
    values.push(v ?? (fc <= 2 ? false : 0));
  }
  return { values, delayMs: b.delayMs, badCrc: b.mode === "bad_crc" };
}

function onMessage(msg) {
  const reply = (extra = {}) => send({ id: msg.id, ok: true, ...extra });
  switch (msg.op) {
    case "units":
      present = new Set(msg.units);
      return reply();
    case "set":
      msg.values.forEach((v, i) => {
        memory.set(key(msg.unit, msg.table, msg.address + i), v);
      });
      return reply();
    case "behave":
      behaviour.set(msg.unit, { mode: msg.mode, code: msg.code, delayMs: msg.delayMs });
      return reply();
    case "strict":
      if (msg.on) strict.add(msg.unit);
      else strict.delete(msg.unit);
      return reply();
    case "requests": {
      const out = served;
      served = [];
      const most = maxOwed;
      maxOwed = owed;
      return reply({ requests: out, maxOwed: most });
    }
    case "attach":
      return attach().then(
        () => reply(),
        (err) => send({ id: msg.id, ok: false, error: String(err) }),
      );
    default:
      return send({ id: msg.id, ok: false, error: `unknown op ${msg.op}` });
  }
}
process.on("message", onMessage);
process.on("disconnect", () => process.exit(0));

// ---------------------------------------------------------------- TCP: modbus-serial's ServerTCP

function answerTcp(fc, address, count, unit, cb) {
  const r = read(unit, fc, address, count);
  if (r.silent) return; // never answers: the client times out
  later(r.delayMs, () => (r.exception ? cb({ modbusErrorCode: r.exception }) : cb(null, r.values)));
}

/** Answers after `delayMs`, keeping count of answers owed at once. */
function later(delayMs, answer) {
  owed++;
  maxOwed = Math.max(maxOwed, owed);
  const go = () => {
    owed--;
    answer();
  };
  if (delayMs) setTimeout(go, delayMs);
  else setImmediate(go);
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function startTcp(wanted) {
  const vector = {
    getMultipleHoldingRegisters: (a, n, unit, cb) => answerTcp(3, a, n, unit, cb),
    getMultipleInputRegisters: (a, n, unit, cb) => answerTcp(4, a, n, unit, cb),
    getHoldingRegister: (a, unit, cb) => answerTcp(3, a, 1, unit, (e, v) => cb(e, v?.[0])),
    getInputRegister: (a, unit, cb) => answerTcp(4, a, 1, unit, (e, v) => cb(e, v?.[0])),
    // Bits are asked one at a time; only the first of a request is recorded as the request.
    getCoil: (a, unit, cb) => bit(1, a, unit, cb),
    getDiscreteInput: (a, unit, cb) => bit(2, a, unit, cb),
  };
  for (let attempt = 0; ; attempt++) {
    const port = wanted ?? (await freePort());
    const server = new ModbusRTU.ServerTCP(vector, { host: "127.0.0.1", port, unitID: 255 });
    const ok = await new Promise((resolve) => {
      server.once("initialized", () => resolve(true));
      server.once("serverError", (err) => {
        if (wanted || attempt >= 5) {
          console.error(`modbus-slave: cannot listen on ${port}: ${err.message}`);
          process.exit(1);
        }
        resolve(false);
      });
    });
    if (ok) {
      server.on("socketError", () => {});
      send({ ready: true, port });
      return;
    }
  }
}

// The bits of one request arrive as consecutive calls; group them into one record.
let bitBatch;
function bit(fc, address, unit, cb) {
  const fresh = !bitBatch || bitBatch.fc !== fc || bitBatch.unit !== unit || bitBatch.next !== address;
  const before = served.length;
  const r = read(unit, fc, address, 1);
  if (!fresh && served.length > before) {
    served.pop();
    served[served.length - 1].count++;
  }
  bitBatch = { fc, unit, next: address + 1 };
  setImmediate(() => {
    bitBatch = undefined;
  });
  if (r.silent) return;
  const answer = () => (r.exception ? cb({ modbusErrorCode: r.exception }) : cb(null, r.values[0]));
  if (fresh) later(r.delayMs, answer);
  else setTimeout(answer, r.delayMs ?? 0);
}

// ---------------------------------------------------------------- RTU on a pty

function crc16(buf) {
  let crc = 0xffff;
  for (const b of buf) {
    crc ^= b;
    for (let i = 0; i < 8; i++) crc = crc & 1 ? (crc >>> 1) ^ 0xa001 : crc >>> 1;
  }
  return crc;
}

function frame(bytes, badCrc) {
  const out = Buffer.alloc(bytes.length + 2);
  Buffer.from(bytes).copy(out);
  out.writeUInt16LE(crc16(bytes) ^ (badCrc ? 0x5a5a : 0), bytes.length);
  return out;
}

let port;
let rx = Buffer.alloc(0);

function onRtuData(chunk) {
  rx = Buffer.concat([rx, chunk]);
  while (rx.length >= 8) {
    const req = rx.subarray(0, 8);
    if (req.readUInt16LE(6) !== crc16(req.subarray(0, 6))) {
      rx = rx.subarray(1); // not a frame start: resynchronise
      continue;
    }
    rx = rx.subarray(8);
    const unit = req[0];
    const fc = req[1];
    const address = req.readUInt16BE(2);
    const count = req.readUInt16BE(4);
    const r = read(unit, fc, address, count);
    if (r.silent) continue;
    let reply;
    if (r.exception) reply = frame(Buffer.from([unit, fc | 0x80, r.exception]), false);
    else if (fc <= 2) {
      const data = Buffer.alloc(Math.ceil(count / 8));
      r.values.forEach((v, i) => {
        if (v) data[i >> 3] |= 1 << (i & 7);
      });
      reply = frame(Buffer.concat([Buffer.from([unit, fc, data.length]), data]), r.badCrc);
    } else {
      const data = Buffer.alloc(count * 2);
      r.values.forEach((v, i) => {
        data.writeUInt16BE(v & 0xffff, i * 2);
      });
      reply = frame(Buffer.concat([Buffer.from([unit, fc, data.length]), data]), r.badCrc);
    }
    const p = port;
    later(r.delayMs, () => p?.isOpen && p.write(reply));
  }
}

async function attach() {
  if (port?.isOpen) await new Promise((r) => port.close(() => r()));
  rx = Buffer.alloc(0);
  const p = new SerialPort({ path: arg, baudRate: 9600, autoOpen: false });
  await new Promise((resolve, reject) => p.open((err) => (err ? reject(err) : resolve())));
  p.on("data", onRtuData);
  p.on("error", () => {}); // the pty vanishes when socat is killed (unplug)
  port = p;
}

if (mode === "tcp") await startTcp(arg ? Number(arg) : undefined);
else if (mode === "rtu") {
  await attach();
  send({ ready: true });
} else {
  console.error("usage: modbus-slave.mjs tcp [PORT] | rtu PATH");
  process.exit(64);
}
