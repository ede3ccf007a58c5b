/**
 * Every preset rendered from a realistic firing and resolved event, checked against
 * the body shape and limits its receiver documents (see src/delivery/presets.ts for
 * the references).
 */
import { describe, expect, it } from "vitest";
import { render } from "../../src/delivery/render.js";
import type { EventBody } from "../../src/events.js";
import { bytes, destFrom, firing, resolved } from "./render-fixtures.js";

const json = (b: Buffer) => JSON.parse(b.toString("utf8")) as Record<string, unknown>;

function renderPreset(preset: string, body: EventBody, extra = "", url?: string) {
  const dest = destFrom(`    preset: ${preset}\n${extra}`, url);
  const r = render(bytes(body), dest);
  return { r, out: json(r.body), dest };
}

describe("slack preset (incoming webhook: text + blocks)", () => {
  it("firing: text names severity, sensor, value, threshold and since", () => {
    const { r, out } = renderPreset("slack", firing);
    expect(r.contentType).toBe("application/json");
    expect(typeof out.text).toBe("string");
    expect(out.text).toBe("🔴 CRITICAL: boiler/temp is 81.456 (threshold 80) since 2026-01-01 11:58 UTC");
    const blocks = out.blocks as { type: string; text?: { type: string; text: string }; elements?: unknown[] }[];
    expect(blocks.map((b) => b.type)).toEqual(["section", "context"]);
    expect(blocks[0]?.text?.type).toBe("mrkdwn");
    expect(blocks[0]?.text?.text).toContain("*boiler/temp*");
    expect(blocks[0]?.text?.text.length).toBeLessThanOrEqual(3000);
    expect(JSON.stringify(blocks[1])).toContain("room=cellar");
  });

  it("resolved says so and when the alert had started", () => {
    const { out } = renderPreset("slack", resolved);
    expect(out.text).toBe("✅ RESOLVED: boiler/temp is 74.9 (threshold 80) was firing since 2026-01-01 11:58 UTC");
  });

  it("escapes & < > so data cannot form links or mentions", () => {
    const ev = { ...firing, data: { ...firing.data, sensor: "<!channel> & <http://x|y>" } };
    const { out } = renderPreset("slack", ev);
    expect(out.text).toContain("&lt;!channel&gt; &amp; &lt;http://x|y&gt;");
    expect(JSON.stringify(out)).not.toContain("<!channel>");
  });

  it("is unsigned unless a secret is given, and needs no signature: none", () => {
    const { dest } = renderPreset("slack", firing);
    expect(dest.secret).toBeUndefined();
  });
});

describe("discord preset (execute webhook: content + embeds)", () => {
  function checkDiscordLimits(out: Record<string, unknown>) {
    expect(typeof out.content).toBe("string");
    expect((out.content as string).length).toBeLessThanOrEqual(2000);
    const embeds = out.embeds as Record<string, unknown>[];
    expect(embeds.length).toBeLessThanOrEqual(10);
    let total = 0;
    for (const e of embeds) {
      expect((e.title as string).length).toBeLessThanOrEqual(256);
      expect((e.description as string).length).toBeLessThanOrEqual(4096);
      expect(Number.isInteger(e.color) && (e.color as number) >= 0 && (e.color as number) <= 0xffffff).toBe(true);
      const fields = e.fields as { name: string; value: string; inline: boolean }[];
      expect(fields.length).toBeLessThanOrEqual(25);
      for (const f of fields) {
        expect(f.name.length).toBeGreaterThan(0);
        expect(f.value.length).toBeGreaterThan(0);
        expect(f.value.length).toBeLessThanOrEqual(1024);
        total += f.name.length + f.value.length;
      }
      total += (e.title as string).length + (e.description as string).length;
    }
    expect(total).toBeLessThanOrEqual(6000);
    expect(out.allowed_mentions).toEqual({ parse: [] });
  }

  it("firing: content line, red embed with value, threshold and time", () => {
    const { out } = renderPreset("discord", firing);
    checkDiscordLimits(out);
    expect(out.content).toBe("🔴 CRITICAL: boiler/temp is 81.456 (threshold 80) since 2026-01-01 11:58 UTC");
    const e = (out.embeds as Record<string, unknown>[])[0] as Record<string, unknown>;
    expect(e.title).toBe("CRITICAL: boiler/temp");
    expect(e.color).toBe(0xd93f0b);
    expect(e.timestamp).toBe("2026-01-01T12:00:05.000Z");
    expect(e.fields).toContainEqual({ name: "Value", value: "81.456", inline: true });
    expect(e.fields).toContainEqual({ name: "Threshold", value: "80", inline: true });
  });

  it("resolved is green", () => {
    const { out } = renderPreset("discord", resolved);
    checkDiscordLimits(out);
    expect(((out.embeds as Record<string, unknown>[])[0] as Record<string, unknown>).color).toBe(0x2eb67d);
    expect(out.content).toMatch(/^✅ RESOLVED: boiler\/temp is 74\.9/);
  });

  it("stays within Discord's limits with a huge sensor name and escapes markdown", () => {
    const ev = {
      ...firing,
      data: { ...firing.data, sensor: `__x__${"s".repeat(5000)}`, labels: { a: "b".repeat(3000) } },
    };
    const { out } = renderPreset("discord", ev);
    checkDiscordLimits(out);
    expect(out.content).toMatch(/^🔴 CRITICAL: \\_\\_x\\_\\_s/);
    const embed = (out.embeds as Record<string, unknown>[])[0] as Record<string, unknown>;
    expect(embed.title).toMatch(/^CRITICAL: \\_\\_x\\_\\_s+…$/);
  });
});

describe("teams preset (Workflows webhook with an Adaptive Card)", () => {
  it("wraps an Adaptive Card in a message attachment", () => {
    const { out } = renderPreset("teams", firing);
    expect(out.type).toBe("message");
    const att = (out.attachments as Record<string, unknown>[])[0] as Record<string, unknown>;
    expect(att.contentType).toBe("application/vnd.microsoft.card.adaptive");
    const card = att.content as Record<string, unknown>;
    expect(card.type).toBe("AdaptiveCard");
    expect(card.$schema).toBe("http://adaptivecards.io/schemas/adaptive-card.json");
    expect(card.version).toBe("1.4");
    const body = card.body as Record<string, unknown>[];
    expect(body.map((b) => b.type)).toEqual(["TextBlock", "TextBlock", "FactSet"]);
    expect(body[0]).toMatchObject({ text: "🔴 CRITICAL: boiler/temp", color: "Attention", wrap: true });
    const facts = (body[2] as { facts: { title: string; value: string }[] }).facts;
    expect(facts).toContainEqual({ title: "Value", value: "81.456" });
    expect(facts.every((f) => typeof f.title === "string" && typeof f.value === "string")).toBe(true);
  });

  it("resolved is shown in the Good colour", () => {
    const { out } = renderPreset("teams", resolved);
    const card = ((out.attachments as Record<string, unknown>[])[0] as { content: { body: { color?: string }[] } })
      .content;
    expect(card.body[0]?.color).toBe("Good");
  });
});

describe("ntfy preset (JSON publishing)", () => {
  it("takes the topic from the URL path and posts to the server root", () => {
    const { r, out } = renderPreset("ntfy", firing, "", "https://ntfy.sh/cellar-alerts");
    expect(r.url).toBe("https://ntfy.sh/");
    expect(out).toEqual({
      topic: "cellar-alerts",
      title: "CRITICAL: boiler/temp",
      message:
        "is 81.456 (threshold 80) since 2026-01-01 11:58 UTC\nrule boiler-hot on pi-cellar\nroom=cellar, site=home",
      priority: 5,
      tags: ["rotating_light", "critical"],
    });
  });

  it("ntfy_topic names the topic; the URL is the (proxied) server root", () => {
    const { r, out } = renderPreset("ntfy", firing, "    ntfy_topic: boiler\n", "https://example.org/ntfy/");
    expect(r.url).toBeUndefined();
    expect(out.topic).toBe("boiler");
  });

  it("priority follows severity (info 3, warning 4, critical 5); resolved is default priority", () => {
    const p = (severity: string) =>
      renderPreset("ntfy", { ...firing, data: { ...firing.data, severity } }, "", "https://ntfy.sh/t").out.priority;
    expect([p("info"), p("warning"), p("critical")]).toEqual([3, 4, 5]);
    const r = renderPreset("ntfy", resolved, "", "https://ntfy.sh/t").out;
    expect(r.priority).toBe(3);
    expect(r.tags).toEqual(["white_check_mark", "critical"]);
  });

  it("a URL without a topic and no ntfy_topic is a config error", () => {
    expect(() => destFrom("    preset: ntfy\n", "https://ntfy.sh/")).toThrow(/preset ntfy needs the topic/);
  });
});

describe("homeassistant preset (webhook trigger, flat JSON)", () => {
  it("sends the fields an automation reads as trigger.json.*", () => {
    const ev = { ...firing, data: { ...firing.data, zone: "basement" } };
    const { out } = renderPreset("homeassistant", ev, "", "http://homeassistant.local:8123/api/webhook/edgehook-x");
    expect(out).toEqual({
      zone: "basement",
      type: "alert.firing",
      state: "firing",
      agent: "pi-cellar",
      rule: "boiler-hot",
      sensor: "boiler",
      metric: "temp",
      value: 81.456,
      threshold: 80,
      severity: "critical",
      since: "2026-01-01T11:58:00.000Z",
      timestamp: "2026-01-01T12:00:05.000Z",
      labels: { room: "cellar", site: "home" },
      message: "CRITICAL: boiler/temp is 81.456 (threshold 80) since 2026-01-01 11:58 UTC",
    });
    for (const [k, v] of Object.entries(out))
      if (k !== "labels") expect(typeof v === "object" && v !== null).toBe(false);
  });

  it("resolved has state resolved", () => {
    expect(renderPreset("homeassistant", resolved).out.state).toBe("resolved");
  });
});

describe("presets for other event types", () => {
  it.each([
    [
      { type: "sensor.silent", data: { sensor: "boiler", metric: "temp", since: "2026-01-01T10:00:00Z" } },
      "SILENT: boiler/temp has sent nothing since 2026-01-01 10:00 UTC",
    ],
    [{ type: "sensor.returned", data: { sensor: "boiler", metric: "temp" } }, "BACK: boiler/temp reports again"],
    [
      {
        type: "sensor.silent",
        data: { sensor: "boiler", metric: "temp", last_seen: "2026-01-01T09:59:00Z", since: "2026-01-01T10:09:00Z" },
      },
      "SILENT: boiler/temp has sent nothing since 2026-01-01 09:59 UTC",
    ],
    [
      { type: "sensor.silent", data: { sensor: "boiler", metric: "temp", last_seen: null, absent_for_s: 5400 } },
      "SILENT: boiler/temp has sent nothing for 1h30m",
    ],
    [
      { type: "readings", data: { rule: "forward-all", count: 12, readings: [] } },
      "READINGS: forward-all sent 12 readings",
    ],
    [{ type: "reading", data: { sensor: "boiler", metric: "temp", value: 21.5 } }, "READING: boiler/temp is 21.5"],
    [{ type: "test", data: { agent: "pi-cellar" } }, "TEST: test webhook from pi-cellar"],
    [{ type: "alert.repeat", data: { ...firing.data } }, "CRITICAL (still firing): boiler/temp is 81.456"],
  ])("%j", (ev, expected) => {
    const body = { timestamp: "2026-01-01T12:00:00Z", ...ev } as EventBody;
    expect(renderPreset("homeassistant", body).out.message).toContain(expected);
    expect(renderPreset("slack", body).out.text).toContain(expected);
  });

  it("a body with odd types still renders every preset (bad input never stops delivery)", () => {
    const weird = { type: "reading", timestamp: 5, data: { sensor: 1, value: { a: 1 }, labels: "x", severity: "?" } };
    for (const p of ["slack", "discord", "teams", "ntfy", "homeassistant"]) {
      const dest = destFrom(`    preset: ${p}\n`, "https://ntfy.sh/t");
      expect(() => json(render(Buffer.from(JSON.stringify(weird)), dest).body)).not.toThrow();
    }
  });
});

it("every preset renders the same bytes on every attempt", () => {
  for (const p of ["slack", "discord", "teams", "ntfy", "homeassistant"]) {
    const dest = destFrom(`    preset: ${p}\n`, "https://ntfy.sh/t");
    expect(render(bytes(firing), dest).body.equals(render(bytes(firing), dest).body)).toBe(true);
  }
});
