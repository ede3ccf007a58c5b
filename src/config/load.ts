/**
 * Loads the YAML file, resolves `${ENV}` and secret `*_file` keys, validates it
 * against the schema and reports every problem with its position:
 *
 *   agent.yaml:12:5: destinations.ops.timeout: must be a duration like 30s (is 'ten')
 *
 * The result is deeply frozen: nothing may change the running configuration
 * except a reload, which builds a new one.
 */
import { readFileSync, statSync } from "node:fs";
import { dirname, isAbsolute, resolve } from "node:path";
import { isMap, isPair, isScalar, isSeq, LineCounter, type Node, parseDocument, type YAMLMap } from "yaml";
import type { z } from "zod";
import { checkDestinationFormats, needsHmacSecret } from "../delivery/format-check.js";
import { checkDestinationKinds, fillBrokerDefaults } from "../delivery/transport-check.js";
import { EdgehookError } from "../errors.js";
import { isLoopback, parseListen } from "../ops/http.js";
import { compileExpression, type ExpressionInput, type ExpressionResult } from "../rules/expression.js";
import { checkExpression, checkRule } from "../rules/validate.js";
import { didYouMean } from "../suggest.js";
import { producibleMetrics } from "./metric-names.js";
import { ConfigError, type ConfigProblem, UNREAD_SECRET } from "./problems.js";
import { type Config, configSchema } from "./schema.js";
import { secretFileCandidates } from "./secret-file.js";
import { checkSubscriptions } from "./subscription-schema.js";

export { ConfigError, type ConfigProblem, formatProblem, UNREAD_SECRET } from "./problems.js";

export interface LoadedConfig {
  config: Config;
  /** Absolute path of the file. */
  file: string;
  /** Absolute data directory. */
  dataDir: string;
  /** Not errors, but worth a log line (e.g. a plaintext secret in a world-readable file). */
  warnings: string[];
  /**
   * False when loaded with `secrets: false`: every secret value (secret, password, token,
   * their *_file variants) is the placeholder UNREAD_SECRET, never a real value.
   */
  secretsRead: boolean;
}

/** Keys whose `<key>_file` variant is read from a file (systemd LoadCredential=). */
const SECRET_KEYS = new Set(["secret", "hub_secret", "password", "token"]);

export interface LoadOptions {
  env?: NodeJS.ProcessEnv;
  /**
   * Read secrets (default true). The operator commands (queue, status, destination,
   * tap) pass false: they run as a user who may not read the credentials
   * (`sudo -u edgehook` under LoadCredential=), and need none.
   */
  secrets?: boolean;
}

export function loadConfig(file: string, options: LoadOptions = {}): LoadedConfig {
  const abs = resolve(file);
  let text: string;
  try {
    text = readFileSync(abs, "utf8");
  } catch (err) {
    throw new EdgehookError(
      "EDGEHOOK_CONFIG_UNREADABLE",
      `${file}: cannot read the configuration file (${(err as NodeJS.ErrnoException).code ?? String(err)})`,
    );
  }
  return parseConfig(text, file, options);
}

/** Parses config text; `file` is used for messages and to resolve relative paths. */
export function parseConfig(text: string, file: string, options: LoadOptions = {}): LoadedConfig {
  const env = options.env ?? process.env;
  const baseDir = dirname(resolve(file));
  const lineCounter = new LineCounter();
  // logLevel error: the yaml package would print warnings itself; edgehook reports them with positions.
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true, logLevel: "error" });
  const problems: ConfigProblem[] = [];
  const at = (offset: number | undefined, key: string, message: string) => {
    const pos = lineCounter.linePos(offset ?? 0);
    problems.push({ file, line: pos.line, col: pos.col, key, message });
  };

  for (const e of doc.errors) {
    at(e.pos[0], "", `YAML syntax: ${e.message.split("\n")[0]}`);
  }
  if (problems.length > 0) throw new ConfigError(problems);
  if (doc.contents === null) {
    at(0, "", "the file is empty; start with `version: 1`");
    throw new ConfigError(problems);
  }

  const warnings: string[] = [];
  const readSecrets = options.secrets ?? true;
  const warnAt = (offset: number | undefined, message: string) => {
    const pos = lineCounter.linePos(offset ?? 0);
    warnings.push(`${file}:${pos.line}:${pos.col}: ${message}`);
  };
  let plaintextSecret = false;

  // ${ENV} substitution and secret *_file keys, on the node tree so positions stay right.
  const visit = (node: unknown, path: (string | number)[]): void => {
    if (isMap(node)) {
      for (const pair of [...node.items]) {
        const keyNode = pair.key;
        if (isMap(keyNode) || isSeq(keyNode)) {
          // The yaml package would print "Keys with collection values will be stringified".
          warnAt(
            (keyNode as Node).range?.[0],
            `${path.join(".") || "(top level)"}: a key that is a list or mapping is read as text; quote it or fix the indentation`,
          );
        }
        const k = isScalar(keyNode) ? String(keyNode.value) : String(keyNode);
        const base = k.endsWith("_file") ? k.slice(0, -5) : undefined;
        if (!readSecrets && (SECRET_KEYS.has(k) || (base !== undefined && SECRET_KEYS.has(base)))) {
          // Neither the file nor the environment variable is read; the key keeps its place.
          const name = base !== undefined && SECRET_KEYS.has(base) ? base : k;
          if (name !== k && node.has(name)) {
            at(
              (pair.value as Node | null)?.range?.[0],
              [...path, k].join("."),
              `give either ${name} or ${k}, not both`,
            );
            continue;
          }
          const range = (pair.value as Node | null)?.range;
          const wasList = isSeq(pair.value);
          node.delete(k);
          node.set(name, doc.createNode(wasList ? [UNREAD_SECRET] : UNREAD_SECRET));
          const created = node.get(name, true) as Node | undefined;
          if (created && range) created.range = range;
          continue;
        }
        if (base !== undefined && SECRET_KEYS.has(base)) {
          const valNode = pair.value;
          substitute(valNode, [...path, k]);
          const p = isScalar(valNode) ? String(valNode.value) : "";
          const range = (valNode as Node | null)?.range;
          if (node.has(base)) {
            at(range?.[0], [...path, k].join("."), `give either ${base} or ${k}, not both`);
            continue;
          }
          const content = readSecretFile(p, baseDir, env);
          if (typeof content === "object") {
            at(range?.[0], [...path, k].join("."), content.error);
            continue;
          }
          node.delete(k);
          const values = content.split(/\s+/).filter(Boolean);
          node.set(base, doc.createNode(values.length > 1 ? values : (values[0] ?? "")));
          // Keep the position of the *_file value for later messages about the secret.
          const created = node.get(base, true) as Node | undefined;
          if (created && range) created.range = range;
          continue;
        }
        if (SECRET_KEYS.has(k) && pair.value !== null) {
          const raw = isScalar(pair.value) ? String(pair.value.value) : "";
          if (!raw.includes("${")) plaintextSecret = true;
        }
        substitute(pair.value, [...path, k]);
        visit(pair.value, [...path, k]);
      }
    } else if (isSeq(node)) {
      node.items.forEach((item, i) => {
        substitute(item, [...path, i]);
        visit(item, [...path, i]);
      });
    }
  };
  const substitute = (node: unknown, path: (string | number)[]) => {
    if (!isScalar(node) || typeof node.value !== "string" || !node.value.includes("${")) return;
    node.value = node.value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}/g, (_m, name: string, _d, dflt) => {
      const v = env[name];
      if (v !== undefined && v !== "") return v;
      if (dflt !== undefined) return dflt as string;
      at(node.range?.[0], path.join("."), `environment variable ${name} is not set`);
      return "";
    });
  };
  visit(doc.contents, []);
  if (problems.length > 0) throw new ConfigError(problems);

  const data = doc.toJS({ maxAliasCount: 100 }) as unknown;
  if (!readSecrets) dropSecretProblems(problems);
  const parsed = configSchema.safeParse(data, { reportInput: true });
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      problems.push(...issueToProblems(issue, doc.contents as Node, lineCounter, file));
    }
    // The checks across sections need a valid file, except the commonest one: a rule
    // naming a destination that does not exist is reported together with the rest.
    problems.push(...missingDestinations(data, doc.contents as Node, lineCounter, file));
  } else {
    crossCheck(parsed.data, doc.contents as Node, lineCounter, file, problems, text);
  }
  if (!readSecrets) dropSecretProblems(problems);
  if (problems.length > 0) {
    problems.sort((a, b) => a.line - b.line || a.col - b.col);
    throw new ConfigError(problems);
  }
  const config = parsed.data as Config;
  fillBrokerDefaults(config);
  warnings.push(...riskWarnings(config, doc.contents as Node, lineCounter, file));

  if (plaintextSecret) {
    try {
      const mode = statSync(resolve(file)).mode;
      if (mode & 0o004) {
        warnings.push(
          `${file} holds a secret in plain text and is readable by every user; use secret_file/password_file or \${ENV}, or chmod o-r ${file}`,
        );
      }
    } catch {
      // Parsing text that is not a file (tests): nothing to check.
    }
  }

  const dataDir = isAbsolute(config.agent.data_dir) ? config.agent.data_dir : resolve(baseDir, config.agent.data_dir);
  return { config: deepFreeze(config), file: resolve(file), dataDir, warnings, secretsRead: readSecrets };
}

/** Problems about the value of a secret that was not read (its placeholder is not a valid key). */
function dropSecretProblems(problems: ConfigProblem[]): void {
  const kept = problems.filter((p) => {
    const parts = p.key.split(".");
    if (parts.some((seg) => SECRET_KEYS.has(seg))) return false;
    if (parts[parts.length - 1] === "ed25519" && p.message.startsWith("secret")) return false;
    return true;
  });
  problems.splice(0, problems.length, ...kept);
}

/** Settings that work but weaken security: said by `check` and at start. */
function riskWarnings(config: Config, root: Node, lc: LineCounter, file: string): string[] {
  const out: string[] = [];
  const at = (path: (string | number)[], message: string) => {
    const node = nodeAt(root, path) ?? nearest(root, path);
    const pos = lc.linePos(node?.range?.[0] ?? 0);
    out.push(`${file}:${pos.line}:${pos.col}: ${path.join(".")}: ${message}`);
  };
  for (const [name, d] of Object.entries(config.destinations)) {
    try {
      const url = new URL(d.url);
      if (url.username || url.password) {
        at(
          ["destinations", name, "url"],
          "holds credentials (user:password@), which are not sent; use basic_auth with password_file, or token_file",
        );
      }
    } catch {
      // The schema checked the URL.
    }
    if (d.tls?.reject_unauthorized === false) {
      at(
        ["destinations", name, "tls", "reject_unauthorized"],
        "false: the receiver's certificate is not checked, so anyone on the path can read and answer these webhooks; prefer tls.ca_file",
      );
    }
  }
  if (config.http.listen !== false && config.http.token === undefined) {
    try {
      if (!isLoopback(parseListen(config.http.listen).host)) {
        at(
          ["http", "listen"],
          "is reachable from other hosts and http.token_file is not set: /healthz and /metrics answer anyone, and the status page is refused to other hosts",
        );
      }
    } catch {
      // Reported as a problem by crossCheck.
    }
  }
  for (const p of checkSubscriptions(config.mqtt?.subscriptions ?? [])) {
    if (p.warning) at(p.path, p.message);
  }
  const produced = producibleMetrics(config);
  if (produced !== undefined) {
    const unknownMetrics = (path: (string | number)[], source: string, want: ExpressionResult) => {
      let inputs: readonly ExpressionInput[];
      try {
        inputs = compileExpression(source, want).inputs;
      } catch {
        return; // Reported as a problem by crossCheck.
      }
      for (const i of inputs) {
        if (!produced.has(i.metric)) {
          at(path, `no source produces a metric named ${i.metric}${didYouMean(i.metric, [...produced])}`);
        }
      }
    };
    config.rules.forEach((r, i) => {
      if (r.when !== undefined) unknownMetrics(["rules", i, "when"], r.when, "bool");
      if (r.clear_when !== undefined) unknownMetrics(["rules", i, "clear_when"], r.clear_when, "bool");
    });
    config.derive.forEach((d, i) => {
      unknownMetrics(["derive", i, "value"], d.value, "number");
    });
  }
  if (config.mqtt?.tls?.reject_unauthorized === false) {
    at(["mqtt", "tls", "reject_unauthorized"], "false: the broker's certificate is not checked; prefer tls.ca_file");
  }
  return out;
}

function readSecretFile(p: string, baseDir: string, env: NodeJS.ProcessEnv): string | { error: string } {
  if (!p) return { error: "must name a file" };
  const candidates = secretFileCandidates(p, baseDir, env);
  for (const c of candidates) {
    try {
      return readFileSync(c, "utf8").trim();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
        return { error: `cannot read ${c} (${(err as NodeJS.ErrnoException).code})` };
      }
    }
  }
  return { error: `file not found (looked in ${candidates.join(", ")}) (is '${p}')` };
}

type Issue = z.core.$ZodIssue;

function issueToProblems(issue: Issue, root: Node, lc: LineCounter, file: string): ConfigProblem[] {
  const path = issue.path.map((p) => (typeof p === "symbol" ? String(p) : p));
  if (issue.code === "unrecognized_keys") {
    const parent = nodeAt(root, path);
    return issue.keys.map((k) => {
      const keyNode = isMap(parent) ? findKeyNode(parent, k) : undefined;
      const pos = lc.linePos(keyNode?.range?.[0] ?? parent?.range?.[0] ?? 0);
      return {
        file,
        line: pos.line,
        col: pos.col,
        key: [...path, k].join("."),
        message: `unknown key${didYouMean(k, knownKeys(path))}`,
      };
    });
  }
  const node = nodeAt(root, path);
  const exists = node !== undefined;
  const anchor = exists ? node : nearest(root, path);
  const pos = lc.linePos(anchor?.range?.[0] ?? 0);
  let message = issue.message;
  if (!exists && (issue.code === "invalid_type" || issue.code === "invalid_union" || issue.code === "invalid_value")) {
    message = "is required";
  } else if (issue.code === "invalid_type" && exists) {
    message = `must be ${issue.expected === "number" ? "a number" : issue.expected === "string" ? "text" : issue.expected === "array" ? "a list" : issue.expected === "object" ? "a mapping of keys" : issue.expected}`;
  }
  const secretKey = path.some((p) => typeof p === "string" && (SECRET_KEYS.has(p) || p === "headers"));
  if (exists && isScalar(node) && !secretKey) message += ` (is '${String(node.source ?? node.value)}')`;
  return [{ file, line: pos.line, col: pos.col, key: path.join("."), message }];
}

function crossCheck(
  config: Config,
  root: Node,
  lc: LineCounter,
  file: string,
  problems: ConfigProblem[],
  text: string,
) {
  /** `secret`: never echo the value (it may be a real secret with a typo). */
  const add = (path: (string | number)[], message: string, secret = false) => {
    const node = nodeAt(root, path) ?? nearest(root, path);
    const pos = lc.linePos(node?.range?.[0] ?? 0);
    const value = nodeAt(root, path);
    // Header values are often credentials (X-Api-Key): never echoed.
    if (path.includes("headers")) secret = true;
    problems.push({
      file,
      line: pos.line,
      col: pos.col,
      key: path.join("."),
      message: value && isScalar(value) && !secret ? `${message} (is '${String(value.value)}')` : message,
    });
  };
  /**
   * A problem inside an expression: at its own place in the file when the YAML scalar holds
   * the expression verbatim on one line (plain or quoted without escapes), and always with
   * the column inside the expression.
   */
  const addInExpression = (path: (string | number)[], column: number, message: string) => {
    const node = nodeAt(root, path);
    let offset = node?.range?.[0] ?? nearest(root, path)?.range?.[0] ?? 0;
    if (node && isScalar(node) && typeof node.value === "string" && node.range) {
      const quote = node.type === "QUOTE_DOUBLE" || node.type === "QUOTE_SINGLE" ? 1 : 0;
      const start = node.range[0] + quote;
      if (text.slice(start, start + node.value.length) === node.value && !node.value.includes("\n")) {
        offset = start + column - 1;
      }
    }
    const pos = lc.linePos(offset);
    problems.push({
      file,
      line: pos.line,
      col: pos.col,
      key: path.join("."),
      message: `${message} (column ${column} of the expression)`,
    });
  };
  const destNames = Object.keys(config.destinations);
  const seenRules = new Set<string>();
  config.rules.forEach((r, i) => {
    if (seenRules.has(r.name)) add(["rules", i, "name"], "another rule has this name");
    seenRules.add(r.name);
    r.notify.forEach((d, j) => {
      if (!destNames.includes(d)) {
        add(["rules", i, "notify", j], noSuchDestination(destNames));
      }
    });
    for (const p of checkRule(r, (key) => nodeAt(root, ["rules", i, ...key.split(".")]) !== undefined)) {
      if (p.column !== undefined) addInExpression(["rules", i, ...p.path], p.column, p.message);
      else add(["rules", i, ...p.path], p.message);
    }
  });
  config.heartbeat?.notify.forEach((d, j) => {
    if (!destNames.includes(d)) add(["heartbeat", "notify", j], noSuchDestination(destNames));
  });
  config.derive.forEach((d, i) => {
    const p = checkExpression(d.value, "number", ["value"]);
    if (p?.column !== undefined) addInExpression(["derive", i, "value"], p.column, p.message);
    if (d.stale_after !== undefined && d.stale_after <= 0) add(["derive", i, "stale_after"], "must be longer than 0s");
  });
  const serialNames = new Set<string>();
  config.serial.forEach((s, i) => {
    if (serialNames.has(s.name)) add(["serial", i, "name"], "another serial port has this name");
    serialNames.add(s.name);
    if (s.format === "csv" && !s.columns) add(["serial", i], "format csv needs columns");
    if (s.format === "regex") {
      if (!s.pattern) add(["serial", i], "format regex needs pattern");
      else {
        try {
          new RegExp(s.pattern);
          if (!/\(\?<[A-Za-z_]\w*>/.test(s.pattern))
            add(["serial", i, "pattern"], "needs named groups, e.g. (?<value>[-0-9.]+)");
        } catch (err) {
          add(["serial", i, "pattern"], `not a valid regular expression: ${(err as Error).message}`);
        }
      }
    }
    if (s.format === "csv" && s.columns && s.value && !s.columns.includes(s.value))
      add(["serial", i, "value"], `is not one of the columns (${s.columns.join(", ")})`);
    if (s.values && s.format === "number") add(["serial", i, "values"], "format number carries one value; use metric");
  });
  // The health server parses it at start; `check` and a reload must refuse what start would.
  if (config.http.listen !== false) {
    try {
      parseListen(config.http.listen);
    } catch {
      add(["http", "listen"], "must be host:port like 127.0.0.1:9780 or [::1]:9780");
    }
  }
  for (const p of checkSubscriptions(config.mqtt?.subscriptions ?? [])) {
    if (!p.warning) add(p.path, p.message);
  }
  for (const [name, d] of Object.entries(config.destinations)) {
    const secrets = d.secret === undefined ? [] : Array.isArray(d.secret) ? d.secret : [d.secret];
    if (needsHmacSecret(d) && secrets.length === 0) {
      add(["destinations", name], "needs secret (or secret_file), or signature: none");
    }
    secrets.forEach((s, i) => {
      if (!/^whsec_[A-Za-z0-9+/=]+$/.test(s)) {
        add(
          Array.isArray(d.secret) ? ["destinations", name, "secret", i] : ["destinations", name, "secret"],
          "must be a Standard Webhooks secret: whsec_ followed by base64",
          true,
        );
      }
    });
  }
  checkDestinationFormats(config, add);
  checkDestinationKinds(config.destinations, add);
}

function noSuchDestination(names: readonly string[]): string {
  return names.length
    ? `no destination of this name (destinations: ${names.join(", ")})`
    : "no destination of this name (the file has no destinations)";
}

/** rules[].notify names that are not keys of destinations, on the raw (unvalidated) data. */
function missingDestinations(data: unknown, root: Node, lc: LineCounter, file: string): ConfigProblem[] {
  const raw = (data ?? {}) as { destinations?: unknown; rules?: unknown };
  const dests = raw.destinations;
  if (!Array.isArray(raw.rules) || (dests !== undefined && (typeof dests !== "object" || dests === null))) return [];
  const names = Object.keys(dests ?? {});
  const out: ConfigProblem[] = [];
  raw.rules.forEach((rule: unknown, i) => {
    const notify = (rule as { notify?: unknown } | null)?.notify;
    if (!Array.isArray(notify)) return;
    notify.forEach((d: unknown, j) => {
      if (typeof d !== "string" || names.includes(d)) return;
      const node = nodeAt(root, ["rules", i, "notify", j]);
      const pos = lc.linePos(node?.range?.[0] ?? 0);
      out.push({
        file,
        line: pos.line,
        col: pos.col,
        key: `rules.${i}.notify.${j}`,
        message: `${noSuchDestination(names)} (is '${d}')`,
      });
    });
  });
  return out;
}

function nodeAt(root: Node, path: (string | number)[]): Node | undefined {
  let cur: unknown = root;
  for (const p of path) {
    if (isMap(cur)) cur = cur.get(p, true) ?? (typeof p === "number" ? cur.get(String(p), true) : undefined);
    else if (isSeq(cur) && typeof p === "number") cur = cur.get(p, true);
    else return undefined;
    if (cur === undefined) return undefined;
  }
  return cur as Node;
}

function nearest(root: Node, path: (string | number)[]): Node | undefined {
  for (let n = path.length - 1; n >= 0; n--) {
    const node = nodeAt(root, path.slice(0, n));
    if (node) return node;
  }
  return root;
}

function findKeyNode(map: YAMLMap, key: string): Node | undefined {
  for (const pair of map.items) {
    if (isPair(pair) && isScalar(pair.key) && String(pair.key.value) === key) return pair.key;
  }
  return undefined;
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === "object" && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o)) deepFreeze(v);
  }
  return o;
}

/** The keys the schema allows at `path` (for "did you mean"); empty when unknown. */
function knownKeys(path: (string | number)[]): string[] {
  const found = new Set<string>();
  const walk = (schema: unknown, rest: (string | number)[], depth: number): void => {
    if (depth > 40 || schema === undefined) return;
    const def = (schema as { _zod?: { def?: Record<string, unknown> } })._zod?.def;
    if (!def) return;
    switch (def.type) {
      case "optional":
      case "nullable":
      case "default":
      case "prefault":
      case "readonly":
      case "catch":
        walk(def.innerType, rest, depth + 1);
        return;
      case "pipe":
        walk(def.in, rest, depth + 1);
        return;
      case "lazy":
        walk((def.getter as () => unknown)(), rest, depth + 1);
        return;
      case "union":
        for (const o of def.options as unknown[]) walk(o, rest, depth + 1);
        return;
      case "intersection":
        walk(def.left, rest, depth + 1);
        walk(def.right, rest, depth + 1);
        return;
      case "array":
        if (typeof rest[0] === "number") walk(def.element, rest.slice(1), depth + 1);
        return;
      case "record":
        if (rest.length > 0) walk(def.valueType, rest.slice(1), depth + 1);
        return;
      case "object": {
        const shape = def.shape as Record<string, unknown>;
        if (rest.length === 0) {
          for (const k of Object.keys(shape)) found.add(k);
          return;
        }
        const [head, ...tail] = rest;
        walk(shape[String(head)], tail, depth + 1);
        return;
      }
      default:
        return;
    }
  };
  walk(configSchema, path, 0);
  return [...found];
}
