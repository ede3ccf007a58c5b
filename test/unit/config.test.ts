import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { z } from "zod";
import { loadConfig, parseConfig } from "../../src/config/load.js";
import { configSchema } from "../../src/config/schema.js";
import { configProblems } from "../support/config-problems.js";
import { WEBHOOK_SECRET } from "../support/secrets.js";

const env = { OPS_WEBHOOK_SECRET: WEBHOOK_SECRET };
const ENV_REF = "$" + "{OPS_WEBHOOK_SECRET}";

const ISSUE_EXAMPLE = `version: 1
agent:
  id: greenhouse-pi-01
  data_dir: ./data
mqtt:
  url: mqtt://127.0.0.1:1883        # or mqtts://..., or "embedded" to host a broker in-process
  subscriptions:
    - topic: sensors/+/temperature
      sensor: "{1}"                 # the first + segment of the topic
      metric: temperature
      format: json
      value: value                  # dot path of the number in the JSON payload
      timestamp: ts                 # optional: epoch ms or ISO 8601
destinations:
  ops:
    url: http://127.0.0.1:8080/hooks
    secret: \${OPS_WEBHOOK_SECRET}   # whsec_... (Standard Webhooks)
rules:
  - name: too-hot
    match: { metric: temperature }
    above: 30
    clear_below: 28
    severity: warning
    notify: [ops]
`;

const problems = (text: string, e: NodeJS.ProcessEnv = env) => configProblems(text, e);

describe("config", () => {
  it("accepts the file from the foundation issue as written, with defaults filled in", () => {
    const { config } = parseConfig(ISSUE_EXAMPLE, "/etc/edgehook/agent.yaml", { env });
    expect(config.agent.id).toBe("greenhouse-pi-01");
    expect(config.destinations.ops?.secret).toBe(WEBHOOK_SECRET);
    expect(config.rules[0]?.above).toBe(30);
    expect(config.mqtt?.subscriptions[0]?.qos).toBe(1);
    expect(config.outbox.max_age).toBe(7 * 86_400_000);
    expect(Object.isFrozen(config.rules[0])).toBe(true);
  });

  it("accepts config/agent.example.yaml", () => {
    const loaded = loadConfig("config/agent.example.yaml", { env });
    expect(loaded.config.rules.length).toBeGreaterThan(0);
  });

  it("reports every problem with line, column, dotted key and the offending value", () => {
    const text = `version: 1
agent:
  id: pi
  shutdown_timeout: ten
  colour: blue
destinations:
  ops:
    url: http://127.0.0.1:8080/hooks
    secret: ${WEBHOOK_SECRET}
    timeout: 3s
rules:
  - name: hot
    above: thirty
    notify: [ops]
`;
    expect(problems(text)).toEqual([
      "4:21: agent.shutdown_timeout: must be a duration like 30s, 5m or 2h (is 'ten')",
      "5:3: agent.colour: unknown key",
      "10:5: destinations.ops.timeout: unknown key",
      "13:12: rules.0.above: must be a number (is 'thirty')",
    ]);
  });

  it("names a rule's missing destination at its position", () => {
    const text = ISSUE_EXAMPLE.replace("notify: [ops]", "notify: [ops, pager]");
    expect(problems(text)).toEqual([
      "24:19: rules.0.notify.1: no destination of this name (destinations: ops) (is 'pager')",
    ]);
  });

  it("checks http.listen as `run` parses it, so `check` and `run` agree", () => {
    expect(problems(`${ISSUE_EXAMPLE}http: { listen: "localhost" }\n`)).toEqual([
      "25:17: http.listen: must be host:port like 127.0.0.1:9780 or [::1]:9780 (is 'localhost')",
    ]);
    expect(problems(`${ISSUE_EXAMPLE}http: { listen: "0.0.0.0:9780" }\n`)).toEqual([]);
  });

  it("reports a rule's missing destination together with schema problems", () => {
    const text = ISSUE_EXAMPLE.replace("notify: [ops]", "notify: [pager]").replace("above: 30", "above: thirty");
    expect(problems(text)).toEqual([
      "21:12: rules.0.above: must be a number (is 'thirty')",
      "24:14: rules.0.notify.0: no destination of this name (destinations: ops) (is 'pager')",
    ]);
  });

  it("reports broken YAML with its position", () => {
    const out = problems("version: 1\nagent:\n  id: [unclosed\n");
    expect(out.length).toBeGreaterThan(0);
    expect(out[0]).toMatch(/^\d+:\d+: : YAML syntax/);
  });

  it("reports a missing required key and a missing environment variable", () => {
    expect(problems("version: 1\nagent:\n  data_dir: x\n")).toEqual(["3:3: agent.id: is required"]);
    expect(problems(ISSUE_EXAMPLE, {})).toEqual([
      "17:13: destinations.ops.secret: environment variable OPS_WEBHOOK_SECRET is not set",
    ]);
  });

  it("reads secret_file from CREDENTIALS_DIRECTORY, then next to the config file", () => {
    const dir = mkdtempSync(join(tmpdir(), "edgehook-cfg-"));
    const creds = mkdtempSync(join(tmpdir(), "edgehook-creds-"));
    writeFileSync(join(creds, "ops-secret"), `${WEBHOOK_SECRET}\n`);
    const file = join(dir, "agent.yaml");
    writeFileSync(file, ISSUE_EXAMPLE.replace(`secret: ${ENV_REF}`, "secret_file: ops-secret"));
    const loaded = loadConfig(file, { env: { CREDENTIALS_DIRECTORY: creds } });
    expect(loaded.config.destinations.ops?.secret).toBe(WEBHOOK_SECRET);
    expect(() => loadConfig(file, { env: {} })).toThrow(/destinations\.ops\.secret_file: file not found/);
  });

  it("warns about a plaintext secret in a file every user can read", () => {
    const dir = mkdtempSync(join(tmpdir(), "edgehook-cfg-"));
    const file = join(dir, "agent.yaml");
    writeFileSync(file, ISSUE_EXAMPLE.replace(ENV_REF, WEBHOOK_SECRET));
    chmodSync(file, 0o644);
    expect(loadConfig(file, { env: {} }).warnings.join()).toMatch(/plain text/);
    chmodSync(file, 0o600);
    expect(loadConfig(file, { env: {} }).warnings).toEqual([]);
  });

  it("documents every key of the schema in config/agent.example.yaml", () => {
    const example = readFileSync("config/agent.example.yaml", "utf8");
    const missing = schemaKeys(configSchema).filter((k) => !new RegExp(`(^|[\\s{,#])${k}:`, "m").test(example));
    expect(missing).toEqual([]);
  });
});

/** Every object key name in the schema, walked through wrappers. */
function schemaKeys(schema: z.ZodType, seen = new Set<string>()): string[] {
  const def = (schema as unknown as { _zod: { def: Record<string, unknown> } })._zod.def;
  const inner = (s: unknown) => s && schemaKeys(s as z.ZodType, seen);
  switch (def.type) {
    case "object":
      for (const [k, v] of Object.entries(def.shape as Record<string, z.ZodType>)) {
        seen.add(k);
        inner(v);
      }
      break;
    case "optional":
    case "default":
    case "nullable":
    case "prefault":
      inner(def.innerType);
      break;
    case "pipe":
      inner(def.in);
      inner(def.out);
      break;
    case "array":
      inner(def.element);
      break;
    case "record":
      inner(def.valueType);
      break;
    case "union":
      for (const o of def.options as z.ZodType[]) inner(o);
      break;
    case "tuple":
      for (const o of def.items as z.ZodType[]) inner(o);
      break;
  }
  return [...seen];
}
