/**
 * RateLimitedLog: what the sources use to log bad device data "at most once a minute per
 * reason" (Modbus exceptions, CRC errors, out-of-range values, 1-Wire power-on values,
 * undecodable files) without losing the count of what it kept quiet.
 */
import { describe, expect, it } from "vitest";
import { RateLimitedLog } from "../../src/ops/logger.js";

describe("RateLimitedLog", () => {
  it("logs a reason once a minute, reports how many repeats it kept quiet, and keeps reasons apart", () => {
    let now = 1_000_000;
    const log = new RateLimitedLog(60_000, () => now);
    expect(log.shouldLog("crc")).toBe(0);
    // Every second for 59 s: quiet.
    for (let i = 1; i < 60; i++) {
      now += 1_000;
      expect(log.shouldLog("crc")).toBeUndefined();
    }
    // Another reason is not held back by the first.
    expect(log.shouldLog("exception")).toBe(0);
    expect(log.shouldLog("exception")).toBeUndefined();
    // A minute after the first line: the next line, with the 59 repeats it did not write.
    now += 1_000;
    expect(log.shouldLog("crc")).toBe(59);
    expect(log.shouldLog("crc")).toBeUndefined();
    // reset: the condition ended; the next occurrence is news again.
    log.reset("crc");
    expect(log.shouldLog("crc")).toBe(0);
  });
});
