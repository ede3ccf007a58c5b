/**
 * Schema builders for the human units of the YAML (durations, rates, sizes), shared by
 * schema.ts and the schema parts other modules contribute (delivery/format-schema.ts),
 * which cannot import schema.ts at runtime without an import cycle.
 */
import { z } from "zod";
import { parseDuration, parseRate, parseSize } from "./units.js";

export const duration = () =>
  z.string({ error: "must be a duration like 30s" }).transform((s, ctx) => {
    const ms = parseDuration(s);
    if (ms === undefined) {
      ctx.addIssue({ code: "custom", message: "must be a duration like 30s, 5m or 2h" });
      return z.NEVER;
    }
    return ms;
  });

export const rate = () =>
  z.string({ error: "must be a rate like 20/s" }).transform((s, ctx) => {
    const r = parseRate(s);
    if (r === undefined) {
      ctx.addIssue({ code: "custom", message: "must be a rate like 20/s or 600/m" });
      return z.NEVER;
    }
    return r;
  });

export const size = () =>
  z.union([z.number().int().positive(), z.string()], { error: "must be a size like 512MB" }).transform((s, ctx) => {
    const n = typeof s === "number" ? s : parseSize(s);
    if (n === undefined || n <= 0) {
      ctx.addIssue({ code: "custom", message: "must be a size like 512MB or 64MiB" });
      return z.NEVER;
    }
    return n;
  });
