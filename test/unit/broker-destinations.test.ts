import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createUser } from "@nats-io/nkeys";
import { describe, expect, it } from "vitest";
import { configSchema, type DestinationConfig } from "../../src/config/schema.js";
import { ackStatus } from "../../src/delivery/mqtt-transport.js";
import { natsTransport } from "../../src/delivery/nats-transport.js";
import { compileTopic } from "../../src/delivery/topic.js";
import { configProblems } from "../support/config-problems.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

const envelope = {
  type: "alert.firing",
  timestamp: "2026-01-01T00:00:00.000Z",
  data: { agent: "pi 7", rule: "hot", sensor: "hall/#1", metric: "temp*", labels: { site: "a.b" } },
};

function render(template: string, kind: "mqtt" | "nats"): string {
  const r = compileTopic(template, kind);
  if (!r.ok) throw new Error(r.problem);
  return r.topic.render(envelope, "msg_01");
}

describe("topic and subject templates", () => {
  it.each([
    ["edgehook/{agent}/{type}/{sensor}", "mqtt", "edgehook/pi_7/alert.firing/hall/_1"],
    ["edgehook/{id}", "mqtt", "edgehook/msg_01"],
    ["e/{labels.site}/{labels.none}/{severity}", "mqtt", "e/a.b/_/_"],
    ["edgehook.{agent}.{type}.{metric}", "nats", "edgehook.pi_7.alert.firing.temp_"],
    ["edgehook.{labels.none}.{id}", "nats", "edgehook._.msg_01"],
  ] as const)("%s (%s) → %s", (template, kind, want) => {
    expect(render(template, kind)).toBe(want);
  });

  it("gives the literal prefix (create_stream captures it)", () => {
    const r = compileTopic("edgehook.{agent}.{type}", "nats");
    expect(r.ok && r.topic.prefix).toBe("edgehook.");
  });

  it.each([
    ["a/{nope}", "mqtt", "{nope} is not a placeholder"],
    ["a/+/{agent}", "mqtt", "must not contain +, #"],
    ["a/{agent", "mqtt", "unmatched"],
    ["a.>", "nats", "must not contain *, >"],
    ["a..{agent}", "nats", "empty token"],
  ] as const)("refuses %s (%s)", (template, kind, problem) => {
    const r = compileTopic(template, kind);
    expect(r.ok).toBe(false);
    expect(r.ok ? "" : r.problem).toContain(problem);
  });
});

describe("MQTT 5 ack reason codes", () => {
  it.each([
    [0x00, 200],
    [0x10, 200],
    [0x87, 403],
    [0x90, 400],
    [0x97, 429],
    [0x80, 503],
  ])("0x%s → %s", (rc, status) => {
    expect(ackStatus(rc)).toBe(status);
  });
});

const base = `version: 1\nagent: { id: pi }\ndestinations:\n`;

describe("destination kinds by URL scheme", () => {
  it("accepts an mqtts destination with a topic and a nats destination with a subject", () => {
    expect(
      configProblems(
        `${base}  m:\n    url: mqtts://127.0.0.1:8883\n    topic: e/{agent}/{type}\n    secret: ${WEBHOOK_SECRET}\n    tls: { ca_file: ca.pem }\n` +
          `  n:\n    url: nats://127.0.0.1:4222\n    subject: e.{agent}.{type}\n    stream: EH\n    create_stream: true\n    secret: ${WEBHOOK_SECRET}\n`,
      ),
    ).toEqual([]);
  });

  it("needs topic / subject, and refuses keys of another kind", () => {
    expect(
      configProblems(
        `${base}  m:\n    url: mqtt://h:1883\n    secret: ${WEBHOOK_SECRET}\n    subject: x\n    batch: { max_events: 2, max_wait: 1s }\n`,
      ),
    ).toEqual([
      "5:5: destinations.m: needs topic, e.g. edgehook/{agent}/{type}/{sensor}",
      "7:14: destinations.m.subject: applies to nats:// destinations only (is 'x')",
      "8:12: destinations.m.batch: applies to http(s):// webhooks only; a broker destination publishes the standard envelope",
    ]);
  });

  it("a webhook refuses broker keys", () => {
    expect(
      configProblems(`${base}  w:\n    url: https://h/x\n    secret: ${WEBHOOK_SECRET}\n    topic: a/b\n`),
    ).toEqual(["7:12: destinations.w.topic: applies to mqtt:// and mqtts:// destinations only (is 'a/b')"]);
  });

  it("MQTT 3.1.1 needs no secret and refuses one; create_stream needs stream", () => {
    expect(configProblems(`${base}  m:\n    url: mqtt://h:1883\n    topic: a/b\n    protocol_version: 4\n`)).toEqual(
      [],
    );
    expect(
      configProblems(
        `${base}  m:\n    url: mqtt://h:1883\n    topic: a/b\n    protocol_version: 4\n    secret: ${WEBHOOK_SECRET}\n`,
      ),
    ).toEqual([
      "8:13: destinations.m.secret: MQTT 3.1.1 (protocol_version 4) has no user properties to carry a signature; use protocol_version 5, or remove secret",
    ]);
    expect(
      configProblems(
        `${base}  n:\n    url: nats://h:4222\n    subject: a.b\n    signature: none\n    create_stream: true\n`,
      ),
    ).toEqual(["8:20: destinations.n.create_stream: needs stream (the name to create) (is 'true')"]);
  });

  it("refuses other schemes", () => {
    expect(configProblems(`${base}  k:\n    url: kafka://h:9092\n    signature: none\n`)).toEqual([
      "5:10: destinations.k.url: must be an http://, https://, mqtt://, mqtts:// or nats:// URL (is 'kafka://h:9092')",
    ]);
  });
});

describe("nats credentials_file and nkey_file", () => {
  // Resolved like every *_file key: $CREDENTIALS_DIRECTORY (systemd LoadCredential=) first,
  // then beside the configuration file.
  const seed = new TextDecoder().decode(createUser().getSeed());
  const dest = (key: "credentials_file" | "nkey_file"): DestinationConfig => {
    const parsed = configSchema.parse({
      version: 1,
      agent: { id: "pi" },
      destinations: { fleet: { url: "nats://127.0.0.1:4222", subject: "edgehook.{agent}", [key]: "device.key" } },
    });
    const d = parsed.destinations.fleet;
    if (!d) throw new Error("no destination");
    return d;
  };

  it.each(["credentials_file", "nkey_file"] as const)("%s relative: found in $CREDENTIALS_DIRECTORY", (key) => {
    const configDir = mkdtempSync(join(tmpdir(), "edgehook-cfg-"));
    const credDir = mkdtempSync(join(tmpdir(), "edgehook-cred-"));
    writeFileSync(join(credDir, "device.key"), `${seed}\n`);
    expect(() =>
      natsTransport.create(dest(key), { baseDir: configDir, env: { CREDENTIALS_DIRECTORY: credDir } }),
    ).not.toThrow();
    expect(() => natsTransport.create(dest(key), { baseDir: configDir, env: {} })).toThrow(
      /cannot read device\.key \(looked in .*edgehook-cfg-.*device\.key\)/,
    );
    // Beside the configuration file still works.
    writeFileSync(join(configDir, "device.key"), `${seed}\n`);
    expect(() => natsTransport.create(dest(key), { baseDir: configDir, env: {} })).not.toThrow();
  });
});
