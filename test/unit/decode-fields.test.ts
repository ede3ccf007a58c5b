/**
 * Every field (`values: "*"`), field selection and naming, firmware presets fed the
 * payloads their documentation shows, loose kv lines, retained messages, and what `check`
 * says about subscriptions that hide one another.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/load.js";
import { configSchema, type SerialPortConfig, type SubscriptionConfig } from "../../src/config/schema.js";
import { MqttRouter, mqttDecoder, parseKv, serialDecoder } from "../../src/sources/decode.js";
import { commonTopic, filterCovers } from "../../src/sources/topics.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

const ARRIVAL = Date.parse("2026-01-01T00:00:00Z");

function subs(...s: Record<string, unknown>[]): SubscriptionConfig[] {
  return configSchema.parse({ version: 1, agent: { id: "a" }, mqtt: { url: "mqtt://x", subscriptions: s } }).mqtt!
    .subscriptions;
}
const sub = (s: Record<string, unknown>) => subs(s)[0]!;
function port(s: Record<string, unknown>): SerialPortConfig {
  return configSchema.parse({ version: 1, agent: { id: "a" }, serial: [{ name: "dev", path: "/dev/x", ...s }] })
    .serial[0]!;
}
/** sensor/metric = value [label=...] per reading, or the reason. */
function decode(s: Record<string, unknown>, topic: string, payload: string, explain = false) {
  const r = mqttDecoder(sub(s), "mqtt", 0, { explain }).decode(topic, Buffer.from(payload), ARRIVAL);
  if (r === undefined) return "no match";
  if (!r.ok) return r.reason;
  return r.readings.map((x) => {
    const labels = Object.entries(x.labels)
      .map(([k, v]) => ` ${k}=${v}`)
      .join("");
    return `${x.sensor}/${x.metric} = ${String(x.value)}${labels}${x.ts === ARRIVAL ? "" : ` @${new Date(x.ts).toISOString()}`}`;
  });
}
const ignored = (s: Record<string, unknown>, topic: string, payload: string) => {
  const r = mqttDecoder(sub(s), "mqtt", 0, { explain: true }).decode(topic, Buffer.from(payload), ARRIVAL);
  return r?.ok ? { count: r.ignored ?? 0, fields: (r.ignoredFields ?? []).map((f) => `${f.name}:${f.why}`) } : r;
};

describe('values: "*"', () => {
  it("names nested fields by their dot path and takes numbers, booleans, numeric text and states", () => {
    expect(
      decode(
        { topic: "s/+", values: "*", states: { on: true } },
        "s/k",
        '{"a":{"b":1,"c":{"d":true}},"n":"7","w":"ON","t":"warm","x":null,"l":[1,2]}',
      ),
    ).toEqual(["k/a.b = 1", "k/a.c.d = true", "k/n = 7", "k/w = true"]);
  });
  it("counts text, nulls and lists as ignored fields and names them when explaining", () => {
    expect(ignored({ topic: "s/+", values: "*" }, "s/k", '{"a":1,"t":"warm","x":null,"l":[1,2]}')).toEqual({
      count: 3,
      fields: ["t:text", "x:null", "l:list"],
    });
  });
  it("a payload of text fields only gives no reading and no error (a button's action)", () => {
    expect(decode({ topic: "s/+", values: "*" }, "s/k", '{"action":"single"}')).toEqual([]);
    expect(decode({ topic: "s/+", values: "*" }, "s/k", "{}")).toBe("no_value");
  });
  it("include and exclude match the field name; excluded fields are not counted as ignored", () => {
    expect(
      decode(
        { topic: "s/+", values: "*", exclude: ["linkquality", "update.*"] },
        "s/k",
        '{"t":1,"linkquality":99,"update":{"v":2}}',
      ),
    ).toEqual(["k/t = 1"]);
    expect(decode({ topic: "s/+", values: "*", include: ["env.*"] }, "s/k", '{"t":1,"env":{"h":2,"p":3}}')).toEqual([
      "k/env.h = 2",
      "k/env.p = 3",
    ]);
    expect(ignored({ topic: "s/+", values: "*", exclude: ["name"] }, "s/k", '{"t":1,"name":"x"}')).toEqual({
      count: 0,
      fields: [],
    });
  });
  it("rename maps metric names last, also for metric templates and values", () => {
    expect(
      decode(
        { topic: "s/+", values: "*", rename: { water_temperature: "temperature" } },
        "s/k",
        '{"water_temperature":9}',
      ),
    ).toEqual(["k/temperature = 9"]);
    expect(
      decode(
        { topic: "s/+/+", format: "number", metric: "{2}", rename: { water_temperature: "temperature" } },
        "s/k/water_temperature",
        "9",
      ),
    ).toEqual(["k/temperature = 9"]);
  });
  it("a metric template prefixes field names and names a bare value", () => {
    expect(decode({ topic: "s/+/+", values: "*", metric: "{2}" }, "s/k/env", '{"t":1}')).toEqual(["k/env.t = 1"]);
    expect(decode({ topic: "s/+/+", values: "*", metric: "{2}" }, "s/k/t", "21.5")).toEqual(["k/t = 21.5"]);
  });
  it("does not read the sensor, metric or time fields as metrics", () => {
    expect(
      decode({ topic: "s", sensor: "{id}", values: "*", timestamp: "ts" }, "s", '{"id":5,"ts":1700000000,"t":1}'),
    ).toEqual(["5/t = 1 @2023-11-14T22:13:20.000Z"]);
  });
  it("counts the fields that a values map or value path leaves out", () => {
    expect(ignored({ topic: "s/+", values: { t: "env.t" } }, "s/k", '{"env":{"t":1,"h":2},"v":3}')).toEqual({
      count: 2,
      fields: ["env.h:not_picked", "v:not_picked"],
    });
    expect(ignored({ topic: "s/+", metric: "m", value: "v" }, "s/k", '{"v":1,"ts":2,"battery":3}')).toEqual({
      count: 2,
      fields: ["ts:not_picked", "battery:not_picked"],
    });
  });
  it("json without value or values takes every field (as serial json always did)", () => {
    expect(decode({ topic: "s/+" }, "s/k", '{"t":1,"h":2}')).toEqual(["k/t = 1", "k/h = 2"]);
  });
});

describe('values: "*" alike for MQTT json, serial json and serial kv', () => {
  const JSON_LINE =
    '{"temperature":21.5,"humidity":"40","linkquality":120,"name":"porch","env":{"co2":612,"ok":true},"history":[1,2],"error":null}';
  /** Readings as metric=value, and the ignored fields, from one decoder result. */
  const seen = (r: ReturnType<ReturnType<typeof serialDecoder>> | undefined) =>
    r?.ok
      ? {
          readings: r.readings.map((x) => `${x.sensor}/${x.metric}=${String(x.value)}`),
          ignored: r.ignored ?? 0,
          fields: (r.ignoredFields ?? []).map((f) => `${f.name}:${f.why}`),
        }
      : r;
  const viaMqtt = (extra: Record<string, unknown>, payload: string) =>
    seen(
      mqttDecoder(sub({ topic: "dev/+", sensor: "dev", values: "*", ...extra }), "mqtt", 0, { explain: true }).decode(
        "dev/x",
        Buffer.from(payload),
        ARRIVAL,
      ),
    );
  const viaSerial = (extra: Record<string, unknown>, line: string) =>
    seen(
      serialDecoder(port({ sensor: "dev", values: "*", ...extra }), "serial:dev", { explain: true })(
        Buffer.from(line),
        ARRIVAL,
      ),
    );

  it("the same JSON gives the same readings and the same ignored fields (text, lists, nulls) over MQTT and serial", () => {
    const expected = {
      readings: ["dev/temperature=21.5", "dev/humidity=40", "dev/env.co2=612", "dev/env.ok=true"],
      ignored: 3,
      fields: ["name:text", "history:list", "error:null"],
    };
    const select = { exclude: ["linkquality"] };
    expect(viaMqtt(select, JSON_LINE)).toEqual(expected);
    expect(viaSerial({ format: "json", ...select }, JSON_LINE)).toEqual(expected);
    // Serial json without values is the same as values: "*" (and so is MQTT json).
    expect(
      seen(
        serialDecoder(port({ sensor: "dev", format: "json", exclude: ["linkquality"] }), "serial:dev", {
          explain: true,
        })(Buffer.from(JSON_LINE), ARRIVAL),
      ),
    ).toEqual(expected);
  });

  it("include and exclude globs pick the same fields from a kv line as from the same JSON", () => {
    const select = { include: ["t*", "h*", "env.*"], exclude: ["*_raw"] };
    const fromJson = viaMqtt(
      select,
      '{"temp":21.5,"hum":40,"temp_raw":2150,"rssi":-60,"status":"OK","env":{"co2":612}}',
    );
    expect(fromJson).toEqual({ readings: ["dev/temp=21.5", "dev/hum=40", "dev/env.co2=612"], ignored: 0, fields: [] });
    // kv has no nesting: the same names, flat; text is ignored and counted, as in JSON.
    expect(viaSerial({ format: "kv", ...select }, "temp=21.5 hum=40 temp_raw=2150 rssi=-60 status=OK")).toEqual({
      readings: ["dev/temp=21.5", "dev/hum=40"],
      ignored: 0,
      fields: [],
    });
    expect(viaSerial({ format: "kv" }, "temp=21.5 status=OK")).toEqual({
      readings: ["dev/temp=21.5"],
      ignored: 1,
      fields: ["status:text"],
    });
    expect(viaMqtt({}, '{"temp":21.5,"status":"OK"}')).toEqual({
      readings: ["dev/temp=21.5"],
      ignored: 1,
      fields: ["status:text"],
    });
  });
});

describe("group_label and metric_case (Tasmota's sensor objects)", () => {
  const cfg = { topic: "tele/+/SENSOR", values: "*", group_label: "model", metric_case: "snake" };
  it("names metrics by the quantity, keeps the object name as a label", () => {
    expect(
      decode(
        cfg,
        "tele/t1/SENSOR",
        '{"BME280":{"Temperature":21.1,"DewPoint":9.5,"Pressure":1013.2},"PressureUnit":"hPa"}',
      ),
    ).toEqual([
      "t1/temperature = 21.1 model=BME280",
      "t1/dew_point = 9.5 model=BME280",
      "t1/pressure = 1013.2 model=BME280",
    ]);
  });
  it("tells two objects measuring the same quantity apart by sensor", () => {
    expect(
      decode(
        cfg,
        "tele/t1/SENSOR",
        '{"DS18B20-1":{"Id":"01144A0CB2AA","Temperature":22.5},"DS18B20-2":{"Id":"0B1F4A0CB2AB","Temperature":23.1},"AM2301":{"Humidity":40}}',
      ),
    ).toEqual([
      "t1/DS18B20-1/temperature = 22.5 model=DS18B20-1",
      "t1/DS18B20-2/temperature = 23.1 model=DS18B20-2",
      "t1/humidity = 40 model=AM2301",
    ]);
  });
});

describe("presets, fed the payloads of each product's documentation", () => {
  it("zigbee2mqtt: friendly names with /, every field, bridge and command topics left alone", () => {
    const s = { preset: "zigbee2mqtt" };
    // https://www.zigbee2mqtt.io/guide/usage/mqtt_topics_and_messages.html
    expect(decode(s, "zigbee2mqtt/kitchen/sensor", '{"temperature":27.34,"humidity":44.72}')).toEqual([
      "kitchen/sensor/temperature = 27.34",
      "kitchen/sensor/humidity = 44.72",
    ]);
    expect(decode(s, "zigbee2mqtt/kitchen/floor_light", '{"state":"ON","brightness":215,"color_temp":325}')).toEqual([
      "kitchen/floor_light/state = true",
      "kitchen/floor_light/brightness = 215",
      "kitchen/floor_light/color_temp = 325",
    ]);
    expect(decode(s, "zigbee2mqtt/motion", '{"occupancy":true,"last_seen":"2026-01-01T01:00:00+01:00"}')).toEqual([
      "motion/occupancy = true",
    ]);
    for (const t of [
      "zigbee2mqtt/bridge/state",
      "zigbee2mqtt/kitchen/sensor/set",
      "zigbee2mqtt/a/get",
      "zigbee2mqtt/a/availability",
    ]) {
      expect(decode(s, t, '{"state":"online"}')).toBe("no match");
    }
    expect(decode({ preset: "zigbee2mqtt", base_topic: "z2m" }, "z2m/x", '{"t":1}')).toEqual(["x/t = 1"]);
  });
  it("tasmota: SENSOR objects by quantity with the model as label, zoneless Time in the subscription's zone", () => {
    const s = { preset: "tasmota", timezone: "Europe/Berlin" };
    // https://tasmota.github.io/docs/AM2301/
    expect(
      decode(
        s,
        "tele/tasmota_1/SENSOR",
        '{"Time":"2019-01-01T00:00:00","AM2301":{"Temperature":24.6,"Humidity":58.2},"TempUnit":"C"}',
      ),
    ).toEqual([
      "tasmota_1/temperature = 24.6 model=AM2301 @2018-12-31T23:00:00.000Z",
      "tasmota_1/humidity = 58.2 model=AM2301 @2018-12-31T23:00:00.000Z",
    ]);
    expect(
      decode(
        s,
        "tele/tasmota_1/STATE",
        '{"Time":"2019-01-01T00:00:00","UptimeSec":909,"POWER":"ON","Wifi":{"RSSI":100}}',
      ),
    ).toEqual([
      "tasmota_1/uptime_sec = 909 @2018-12-31T23:00:00.000Z",
      "tasmota_1/power = true @2018-12-31T23:00:00.000Z",
      "tasmota_1/rssi = 100 model=Wifi @2018-12-31T23:00:00.000Z",
    ]);
    expect(decode(s, "tele/tasmota_1/LWT", "Online")).toBe("no match");
  });
  it("esphome: sensor = node, metric = entity, ON/OFF as booleans", () => {
    const s = { preset: "esphome" };
    expect(decode(s, "livingroom/sensor/temperature/state", "22.5")).toEqual(["livingroom/temperature = 22.5"]);
    expect(decode(s, "livingroom/binary_sensor/window/state", "ON")).toEqual(["livingroom/window = true"]);
    expect(decode(s, "livingroom/switch/relay/state", "ON")).toBe("no match");
    expect(decode({ preset: "esphome", base_topic: "home/garage" }, "home/garage/sensor/t/state", "1")).toEqual([
      "garage/t = 1",
    ]);
  });
  it("shelly: Gen1 sensor topics and Gen2 component status objects, named alike", () => {
    const s = { preset: "shelly" };
    // https://shelly-api-docs.shelly.cloud/gen1/#shelly-h-amp-t-mqtt
    expect(decode(s, "shellies/shellyht-6FFF41/sensor/temperature", "22.5")).toEqual([
      "shellyht-6FFF41/temperature = 22.5",
    ]);
    expect(decode(s, "shellies/shellydw2-1/sensor/state", "open")).toEqual(["shellydw2-1/state = true"]);
    // https://shelly-api-docs.shelly.cloud/gen2/ComponentsAndServices/Temperature#status
    expect(decode(s, "shellyplusht-b8d61a8b17cc/status/temperature:0", '{"id":0,"tC":19.8,"tF":67.6}')).toEqual([
      "shellyplusht-b8d61a8b17cc/temperature = 19.8",
    ]);
    expect(decode(s, "shellyplusht-b8d61a8b17cc/status/humidity:0", '{"id":0,"rh":42.2}')).toEqual([
      "shellyplusht-b8d61a8b17cc/humidity = 42.2",
    ]);
    expect(
      decode(
        s,
        "shellyplusht-b8d61a8b17cc/status/devicepower:0",
        '{"id":0,"battery":{"V":5.44,"percent":80},"external":{"present":false}}',
      ),
    ).toEqual([
      "shellyplusht-b8d61a8b17cc/battery_voltage = 5.44",
      "shellyplusht-b8d61a8b17cc/battery = 80",
      "shellyplusht-b8d61a8b17cc/external_power = false",
    ]);
  });
  it("a preset is ordinary keys: the user's win, and value replaces the preset's values", () => {
    const s = sub({ preset: "zigbee2mqtt", sensor: "z-{1}", exclude: ["linkquality"], labels: { site: "a" } });
    expect(s).toMatchObject({ topics: ["zigbee2mqtt/#"], sensor: "z-{1}", values: "*", exclude: ["linkquality"] });
    expect(sub({ preset: "zigbee2mqtt", metric: "t", value: "temperature" }).values).toBeUndefined();
  });
});

describe("kv lines as sketches print them", () => {
  it.each([
    ["t=21.5 h=40", { t: "21.5", h: "40" }],
    ["t:19,h:3", { t: "19", h: "3" }],
    ["Temp: 22.5 C, Hum: 40 %", { Temp: "22.5", Hum: "40" }],
    ["Pressure: 1013.2hPa", { Pressure: "1013.2" }],
    [
      "Humidity: 40.00%  Temperature: 22.50°C 72.50°F  Heat index: 22.15°C 71.87°F",
      { Humidity: "40.00", Temperature: "22.50", "Heat index": "22.15" },
    ],
    ["ts=2025-06-01T12:00:00Z t=-4.5", { ts: "2025-06-01T12:00:00Z", t: "-4.5" }],
    ["door=OPEN; t°=1", { door: "OPEN", "t°": "1" }],
  ])("%s", (line, pairs) => {
    expect(Object.fromEntries(parseKv(line))).toEqual(pairs);
  });
  it("a serial kv port renames metrics and counts text fields", () => {
    const decodeLine = serialDecoder(
      port({ format: "kv", rename: { "Heat index": "heat_index", Temperature: "temperature" } }),
    );
    const r = decodeLine(
      Buffer.from("Humidity: 40.00%  Temperature: 22.50°C 72.50°F  Heat index: 22.15°C 71.87°F\r"),
      ARRIVAL,
    );
    expect(r.ok && r.readings.map((x) => `${x.metric}=${x.value}`)).toEqual([
      "Humidity=40",
      "temperature=22.5",
      "heat_index=22.15",
    ]);
    const t = decodeLine(Buffer.from("status: OK, t: 3"), ARRIVAL);
    expect(t.ok && t.ignored).toBe(1);
  });
});

describe("retained messages", () => {
  const router = (retained?: string) =>
    new MqttRouter(
      [mqttDecoder(sub({ topic: "s/+", metric: "t", format: "number", ...(retained ? { retained } : {}) }))],
      1000,
    );
  it("are skipped by default, taken with retained: accept; live messages always count", () => {
    expect(router().decode("s/a", Buffer.from("1"), ARRIVAL, true)).toEqual({
      ok: true,
      readings: [],
      retained: "ignored",
    });
    expect(router().decode("s/a", Buffer.from("1"), ARRIVAL, false)).toMatchObject({
      ok: true,
      readings: [{ value: 1 }],
    });
    expect(router("accept").decode("s/a", Buffer.from("1"), ARRIVAL, true)).toMatchObject({ readings: [{ value: 1 }] });
  });
});

describe("overlapping subscriptions", () => {
  it("topic filter algebra", () => {
    expect(filterCovers("a/#", "a/+/c")).toBe(true);
    expect(filterCovers("a/+/c", "a/#")).toBe(false);
    expect(filterCovers("+/+", "a/b")).toBe(true);
    expect(commonTopic("a/+/c", "a/b/+")).toBe("a/b/c");
    expect(commonTopic("a/b", "a/c")).toBeUndefined();
    expect(commonTopic("a/#", "+/x/y")).toBe("a/x/y");
  });
  it("the first matching subscription takes a message; a later one is never asked", () => {
    const [a, b] = subs(
      { topic: "s/#", metric: "first", format: "number" },
      { topic: "s/+", metric: "second", format: "number" },
    );
    const r = new MqttRouter([mqttDecoder(a!, "mqtt", 0), mqttDecoder(b!, "mqtt", 1)], 1000);
    expect(r.decode("s/x", Buffer.from("1"), ARRIVAL)).toMatchObject({ readings: [{ metric: "first" }] });
  });
  it("a topic an earlier subscription ignores goes on to the next", () => {
    const [a, b] = subs(
      { preset: "zigbee2mqtt" },
      {
        topic: "zigbee2mqtt/bridge/state",
        sensor: "z2m",
        metric: "bridge",
        format: "text",
        states: { online: 1, offline: 0 },
      },
    );
    const r = new MqttRouter([mqttDecoder(a!, "mqtt", 0), mqttDecoder(b!, "mqtt", 1)], 1000);
    expect(r.decode("zigbee2mqtt/bridge/state", Buffer.from("online"), ARRIVAL)).toMatchObject({
      readings: [{ metric: "bridge", value: 1 }],
    });
  });
  const warnings = (yaml: string) =>
    parseConfig(`version: 1\nagent: { id: a }\nmqtt:\n  url: mqtt://x\n  subscriptions:\n${yaml}`, "agent.yaml")
      .warnings;
  it("check warns when a subscription is hidden by an earlier one, not when a narrower one comes first", () => {
    expect(warnings('    - { topic: "s/#", values: "*" }\n    - { topic: "s/+/t", values: "*" }\n')).toEqual([
      expect.stringMatching(
        /agent\.yaml:7:\d+: mqtt\.subscriptions\.1\.topic: s\/\+\/t never gets a message: subscriptions\.0 \(s\/#\) comes first/,
      ),
    ]);
    expect(warnings('    - { topic: "s/+/t", values: "*" }\n    - { topic: "s/#", values: "*" }\n')).toEqual([]);
    expect(warnings('    - { topic: "a/+/c", values: "*" }\n    - { topic: "a/b/+", values: "*" }\n')).toEqual([
      expect.stringMatching(
        /topics that both a\/b\/\+ and subscriptions\.0 \(a\/\+\/c\) match \(such as a\/b\/c\) go to the earlier one only/,
      ),
    ]);
    expect(
      warnings(
        "    - { preset: zigbee2mqtt }\n    - { topic: zigbee2mqtt/bridge/state, sensor: z2m, format: text, metric: s, states: { online: 1 } }\n",
      ),
    ).toEqual([]);
  });
});

describe("README and docs/devices.md examples", () => {
  const readme = readFileSync("README.md", "utf8");
  const block = (text: string, after: string, lang: string) => {
    const start = text.indexOf(after);
    const m = new RegExp(`\`\`\`${lang}\\n([\\s\\S]*?)\`\`\``).exec(text.slice(start));
    if (start < 0 || !m) throw new Error(`no ${lang} block after '${after}'`);
    return m[1] as string;
  };
  it("the README's presets load and the DHTtester line gives the readings it promises", () => {
    const presets = block(readme, "**Firmware presets.**", "yaml");
    expect(
      parseConfig(`version: 1\nagent: { id: a }\n${presets}`, "agent.yaml").config.mqtt?.subscriptions,
    ).toHaveLength(4);
    const line = block(readme, "DHTtester example prints", "").trim();
    const serial = block(readme, "heat_index 24.47):", "yaml");
    const cfg = parseConfig(`version: 1\nagent: { id: a }\n${serial}`, "agent.yaml").config.serial[0]!;
    const r = serialDecoder(cfg)(Buffer.from(line), ARRIVAL);
    expect(r.ok && r.readings.map((x) => `${x.metric}=${x.value}`)).toEqual([
      "humidity=56",
      "temperature=24.5",
      "heat_index=24.47",
    ]);
  });
  it("docs/devices.md's four-line configuration loads", () => {
    const doc = readFileSync("docs/devices.md", "utf8");
    const yaml = block(doc, "four lines that matter", "yaml").replace(
      "secret_file: ops-secret",
      `secret: ${WEBHOOK_SECRET}`,
    );
    expect(parseConfig(yaml, "agent.yaml").config.mqtt?.subscriptions[0]?.preset).toBe("zigbee2mqtt");
  });
});
