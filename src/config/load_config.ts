/**
 * Loads a config file: YAML with line numbers, `${VAR}` interpolation, schema
 * validation, and each pipeline entry validated by its plugin's own schema
 * (custom plugins are imported here). Every error names its YAML path and line.
 */
import { isMap, isScalar, isSeq, LineCounter, parseDocument, Scalar, visit } from "yaml";
import type { Document, Node } from "yaml";
import { z } from "zod";
import { configSchema, type GatewayConfig, type RouteConfig } from "./schema.ts";
import {
  type EnvLookup,
  hasPlaceholder,
  interpolate,
  InterpolationError,
  isWholePlaceholder,
  processEnv,
  protectPlaceholders,
} from "./interpolate.ts";
import { isPluginDefinition, type KeyEntry, type PluginDefinition } from "../plugin.ts";
import { sha256Hex } from "../digest.ts";
import { storeKind } from "../store/store.ts";
import { withinTime } from "../time_limit.ts";

/** One problem found in a config file. */
export interface ConfigIssue {
  /** The YAML path, such as `routes[0].upstream.timeout`. */
  path: string;
  /** 1-based line, when the place is in the file. */
  line?: number;
  /** 1-based column. */
  column?: number;
  /** What is wrong and what to write instead. */
  message: string;
}

/** Raised when a config file cannot be used; `issues` holds every problem found. */
export class ConfigError extends Error {
  override name = "ConfigError";
  /** The plugin and keys files the config names, as far as it was read: to watch for a fix. */
  files: readonly string[] = [];
  constructor(readonly file: string, readonly issues: ConfigIssue[], options?: ErrorOptions) {
    super(
      `Cannot load config ${file}: ${issues.length} error${issues.length === 1 ? "" : "s"}\n` +
        issues.map((issue) => formatIssue(file, issue)).join("\n"),
      options,
    );
  }
}

/** `file:line:column path: message`, the form `--check` prints. */
export function formatIssue(file: string, issue: ConfigIssue): string {
  const where = issue.line === undefined ? file : `${file}:${issue.line}:${issue.column ?? 1}`;
  return `${where} ${issue.path || "(root)"}: ${issue.message}`;
}

/** A pipeline entry resolved to its plugin, with validated options. */
export interface ResolvedEntry {
  /** The plugin's name. */
  readonly name: string;
  /** The plugin. */
  readonly definition: PluginDefinition;
  /** The options after the plugin's schema (defaults applied). */
  readonly options: unknown;
  /** The options as written, for deciding whether state may be kept across a swap. */
  readonly rawOptions: unknown;
  /** For a custom plugin: its absolute file path and a digest of its source. */
  readonly module?: { readonly path: string; readonly digest: string };
  /** Where the entry is: `routes[0].pipeline[2]`. */
  readonly yamlPath: string;
  /** The entry's line in the file. */
  readonly line?: number;
}

/** A route with its resolved pipeline. */
export interface ResolvedRoute extends Omit<RouteConfig, "pipeline"> {
  readonly pipeline: readonly ResolvedEntry[];
}

/** A loaded, valid config. */
export interface LoadedConfig {
  /** The absolute path of the file. */
  readonly file: string;
  /** Everything but the routes' pipelines, validated, with defaults. */
  readonly config: Omit<GatewayConfig, "routes">;
  /** The routes, in match order, with resolved pipelines. */
  readonly routes: readonly ResolvedRoute[];
  /** A digest of the file and every custom plugin it names. */
  readonly digest: string;
  /** Every custom plugin file and keys file it names (to watch). */
  readonly pluginFiles: readonly string[];
  /** API keys from the `keys` list and keys files, by SHA-256 hex of the key. */
  readonly keys: ReadonlyMap<string, KeyEntry>;
  /** The `redis_hash` key sources. */
  readonly keyHashes: readonly string[];
}

/** Options for {@linkcode loadConfig}. */
export interface LoadConfigOptions {
  /** The built-in plugins by name. */
  plugins: ReadonlyMap<string, PluginDefinition>;
  /** Where `${VAR}` reads from. @default the process environment */
  env?: EnvLookup;
  /** How long a custom plugin's module may take to load. @default 10_000 */
  pluginImportTimeoutMs?: number;
}

type PathSegment = string | number;

/** Formats `["routes", 0, "name"]` as `routes[0].name`. */
export function formatPath(path: readonly PathSegment[]): string {
  let out = "";
  for (const segment of path) {
    if (typeof segment === "number") out += `[${segment}]`;
    else out += out === "" ? segment : `.${segment}`;
  }
  return out;
}

/** Reads, validates and resolves a config file; throws {@linkcode ConfigError} listing every problem. */
export async function loadConfig(file: string, options: LoadConfigOptions): Promise<LoadedConfig> {
  const path = absolutePath(file);
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    throw new ConfigError(path, [{
      path: "",
      message: `Cannot read the file: ${(error as Error).message}`,
    }], { cause: error });
  }
  return await loadConfigText(text, path, options);
}

/** As {@linkcode loadConfig}, for text already read; `file` places relative plugin paths. */
export async function loadConfigText(
  text: string,
  file: string,
  options: LoadConfigOptions,
): Promise<LoadedConfig> {
  const path = absolutePath(file);
  const lineCounter = new LineCounter();
  const guarded = protectPlaceholders(text);
  // merge: `<<: *base` merge keys (YAML 1.1), as docker compose and Kubernetes tools read them.
  const doc = parseDocument(guarded.text, {
    lineCounter,
    prettyErrors: true,
    uniqueKeys: true,
    merge: true,
  });
  const issues: ConfigIssue[] = doc.errors.map((error) => {
    const pos = error.linePos?.[0];
    return {
      path: "",
      line: pos?.line,
      column: pos?.col,
      message: `Invalid YAML: ${
        error.message.split("\n")[0]!.replace(/ at line \d+, column \d+:?$/, "")
      }`,
    };
  });
  if (issues.length > 0) throw new ConfigError(path, issues);
  // A document of only `---` holds a null scalar.
  if (doc.contents === null || (isScalar(doc.contents) && doc.contents.value === null)) {
    // An editor that truncates before it writes shows an empty file for a
    // moment: it must not reload as a gateway with no routes.
    throw new ConfigError(path, [{
      path: "",
      line: 1,
      message: "The file is empty: a config has at least routes",
    }]);
  }

  const locate = (segments: readonly PathSegment[], atKey = false) =>
    locateNode(doc, lineCounter, segments, atKey);
  /** An error at a place in the file: its line and YAML path. */
  const issueAt = (segments: readonly PathSegment[], message: string) => {
    issues.push({ ...locate(segments), path: formatPath(segments), message });
  };
  // Where a whole `${VAR}` was read as a number or boolean: its text, should a string be wanted.
  const retyped = new Map<string, string>();
  const env = options.env ?? processEnv;
  interpolateDocument(doc, guarded.restore, env, locate, issues, retyped);
  if (issues.length > 0) throw new ConfigError(path, issues);

  let raw: unknown;
  try {
    // Aliases are allowed (one pipeline shared by many routes); an alias bomb is not.
    raw = doc.toJS({ maxAliasCount: 10_000 }) ?? {};
  } catch (error) {
    throw new ConfigError(path, [{
      path: "",
      line: firstAliasLine(doc, lineCounter),
      message: `Invalid YAML: ${(error as Error).message.split("\n")[0]}`,
    }], { cause: error });
  }
  let parsed = configSchema.safeParse(withoutNulls(raw));
  if (!parsed.success && restoreStrings(raw, parsed.error.issues, retyped)) {
    parsed = configSchema.safeParse(withoutNulls(raw));
  }
  if (!parsed.success) issues.push(...zodIssues(parsed.error.issues, [], locate));
  // The pipelines are checked even when the rest failed, so every error shows at once.
  const rawRoutes = Array.isArray((raw as { routes?: unknown }).routes)
    ? (raw as { routes: unknown[] }).routes
    : [];
  const pluginFiles = new Set<string>();
  const digests: string[] = [];
  const pipelines: ResolvedEntry[][] = [];
  const names = new Map<string, number>();
  for (const [routeIndex, rawRoute] of rawRoutes.entries()) {
    const route = (typeof rawRoute === "object" && rawRoute !== null ? rawRoute : {}) as {
      name?: unknown;
      upstream?: unknown;
      pipeline?: unknown;
    };
    if (typeof route.name === "string") {
      const first = names.get(route.name);
      if (first === undefined) names.set(route.name, routeIndex);
      else {
        const at = ["routes", routeIndex, "name"];
        issueAt(
          at,
          `Route name "${route.name}" is already used by routes[${first}]: names must be unique`,
        );
      }
    }
    const pipeline: ResolvedEntry[] = [];
    for (
      const [entryIndex, entry] of (Array.isArray(route.pipeline) ? route.pipeline : []).entries()
    ) {
      const at: PathSegment[] = ["routes", routeIndex, "pipeline", entryIndex];
      const resolved = await resolveEntry(entry, at, path, options, {
        locate,
        issues,
        files: pluginFiles,
        retyped,
      });
      if (!resolved) continue;
      if (resolved.module) {
        pluginFiles.add(resolved.module.path);
        digests.push(resolved.module.digest);
      }
      if (resolved.name === "proxy" && route.upstream === undefined) {
        issueAt(
          at,
          `The proxy plugin needs an upstream: add upstream: { url: http://host:port } to route "${
            String(route.name)
          }"`,
        );
      }
      pipeline.push(resolved);
    }
    placeProxy(pipeline, route.upstream !== undefined, options.plugins, issues, {
      yamlPath: formatPath(["routes", routeIndex, "pipeline"]),
      line: locate(["routes", routeIndex]).line,
    });
    pipelines.push(pipeline);
  }
  // An explicit kind wins over url and nodes: a url or seeds it would not use
  // (DESIGN's example writes kind: memory beside url: ${REDIS_URL:-}) would
  // leave every instance counting on its own, N times the limit, unsaid.
  const store = parsed.success ? parsed.data.store : undefined;
  if (store?.kind === "memory" && (store.url || store.nodes?.length)) {
    issueAt(
      ["store", store.url ? "url" : "nodes"],
      "kind: memory counts in this instance and uses no Redis: remove kind (a url makes the store redis, nodes redis-cluster) or write the kind you mean",
    );
  } else if (store?.kind === "redis" && store.nodes?.length) {
    issueAt(
      ["store", "nodes"],
      "nodes are the seeds of a Redis Cluster: write kind: redis-cluster (or remove kind), or use url for one Redis",
    );
  }
  // A failed load still names files whose fix should reload it.
  const failed = () => Object.assign(new ConfigError(path, issues), { files: [...pluginFiles] });
  // Keys are checked against the tiers even when the rest of the file failed,
  // so every error shows at once (when the tiers and keys themselves parse).
  const keyed = parsed.success ? parsed.data : KEYS_AND_TIERS.safeParse(withoutNulls(raw)).data;
  const keys = new Map<string, KeyEntry>();
  const keyHashes: string[] = [];
  const tierNames = new Set(Object.keys(keyed?.tiers ?? {}));
  const addKey = (at: PathSegment[], entry: { key: string; tier: string; name?: string }) => {
    if (!tierNames.has(entry.tier)) {
      issueAt(
        [...at, "tier"],
        `Unknown tier "${entry.tier}": the tiers are ${[...tierNames].join(", ") || "not defined"}`,
      );
    }
    return entry.key.startsWith("sha256:") ? entry.key.slice(7).toLowerCase() : undefined;
  };
  // One key with two tiers: whichever came last would win, silently.
  const twiceWith = (digest: string, tier: string) => {
    const earlier = keys.get(digest)?.tier;
    return earlier === undefined || earlier === tier
      ? undefined
      : `This key is listed before with tier "${earlier}": a key has one tier`;
  };
  for (const [index, entry] of (keyed?.keys ?? []).entries()) {
    const at: PathSegment[] = ["keys", index];
    if ("redis_hash" in entry) {
      keyHashes.push(entry.redis_hash);
      // The memory store holds no hashes: every key would be unknown.
      if (parsed.success && storeKind(parsed.data.store, env) === "memory") {
        issueAt(
          [...at, "redis_hash"],
          "A redis_hash needs a Redis store: set store.url (or REDIS_URL), or list the keys here or in a file",
        );
      }
    } else if ("file" in entry) {
      const file = relativeFile(entry.file, path);
      pluginFiles.add(file);
      const fileKeys = await loadKeysFile(file);
      if ("error" in fileKeys) {
        issueAt([...at, "file"], fileKeys.error);
        continue;
      }
      digests.push(fileKeys.digest);
      for (const item of fileKeys.entries) {
        if (!tierNames.has(item.tier)) {
          issueAt([...at, "file"], `${file}:${item.line}: unknown tier "${item.tier}"`);
        }
        const twice = twiceWith(item.digest, item.tier);
        if (twice) {
          issueAt([...at, "file"], `${file}:${item.line}: ${twice}`);
        }
        keys.set(item.digest, { tier: item.tier, name: item.name });
      }
    } else {
      const digest = addKey(at, entry) ?? await sha256Hex(entry.key);
      if (!/^[0-9a-f]{64}$/.test(digest)) {
        issueAt([...at, "key"], "A sha256: key must be 64 hex digits");
      }
      const twice = twiceWith(digest, entry.tier);
      if (twice) {
        issueAt([...at, "key"], twice);
      }
      keys.set(digest, { tier: entry.tier, name: entry.name });
    }
  }
  if (issues.length > 0 || !parsed.success) throw failed();
  const { routes = [], ...rest } = parsed.data;
  const resolvedRoutes: ResolvedRoute[] = routes.map((route, index) => ({
    ...route,
    pipeline: pipelines[index] ?? [],
  }));
  if (issues.length > 0) throw new ConfigError(path, issues);
  return {
    file: path,
    config: rest,
    routes: resolvedRoutes,
    digest: await sha256Hex(text + "\n" + digests.join("\n")),
    pluginFiles: [...pluginFiles],
    keys,
    keyHashes,
  };
}

/**
 * `proxy` answers and calls no step after it, so it runs last: a step written
 * after it (a response header set on the way out, say) runs just before it.
 * A route with an upstream and no proxy step proxies, as a route does in
 * other gateways, rather than answer every request 502. A second proxy step
 * is an error.
 */
function placeProxy(
  pipeline: ResolvedEntry[],
  hasUpstream: boolean,
  plugins: ReadonlyMap<string, PluginDefinition>,
  issues: ConfigIssue[],
  route: { yamlPath: string; line: number | undefined },
): void {
  const proxies = pipeline.filter((entry) => entry.name === "proxy");
  if (proxies.length > 1) {
    issues.push({
      path: proxies[1]!.yamlPath,
      line: proxies[1]!.line,
      message: "A route has one proxy step: the first to run answers, and no step after it runs",
    });
    return;
  }
  if (proxies.length === 1) {
    const at = pipeline.indexOf(proxies[0]!);
    pipeline.push(...pipeline.splice(at, 1));
    return;
  }
  const definition = plugins.get("proxy");
  if (!hasUpstream || !definition) return;
  const options = definition.options.safeParse({});
  if (!options.success) return;
  pipeline.push({
    name: "proxy",
    definition,
    options: options.data,
    rawOptions: {},
    yamlPath: route.yamlPath,
    line: route.line,
  });
}

/** The tiers and keys of a file, read apart from the rest. */
const KEYS_AND_TIERS = z.object({
  tiers: configSchema.shape.tiers,
  keys: configSchema.shape.keys,
});

/** What resolving the entries of a file shares. */
interface EntryContext {
  locate: (segments: readonly PathSegment[], atKey?: boolean) => Partial<ConfigIssue>;
  issues: ConfigIssue[];
  /** The custom plugin files named so far. */
  files: Set<string>;
  /** Where a whole `${VAR}` was read as a number or boolean: its text. */
  retyped: ReadonlyMap<string, string>;
}

/** A plugin's options, parsed by its schema; a whole `${VAR}` keeps its text where a string is wanted. */
function parseOptions(
  schema: PluginDefinition["options"],
  raw: unknown,
  at: PathSegment[],
  retyped: ReadonlyMap<string, string>,
) {
  const parsed = schema.safeParse(raw);
  if (!parsed.success && restoreStrings(raw, parsed.error.issues, retyped, at)) {
    return schema.safeParse(raw);
  }
  return parsed;
}

async function resolveEntry(
  entry: unknown,
  at: PathSegment[],
  configFile: string,
  options: LoadConfigOptions,
  { locate, issues, files, retyped }: EntryContext,
): Promise<ResolvedEntry | undefined> {
  const plugins = options.plugins;
  const fail = (segments: PathSegment[], message: string, atKey = false) => {
    issues.push({ ...locate(segments, atKey), path: formatPath(segments), message });
    return undefined;
  };
  if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
    return fail(at, "A pipeline entry names one plugin, such as `- proxy: {}`");
  }
  const record = entry as Record<string, unknown>;
  const keys = Object.keys(record);
  const builtinNames = [...plugins.keys()].join(", ");
  if ("plugin" in record) {
    const extra = keys.filter((key) => key !== "plugin" && key !== "with");
    if (extra.length > 0) {
      return fail(
        [...at, extra[0]!],
        `Unrecognized key "${extra[0]}": a custom plugin entry has only plugin and with`,
        true,
      );
    }
    const spec = record.plugin;
    if (typeof spec !== "string" || spec === "") {
      return fail(
        [...at, "plugin"],
        "Expected the path of a plugin module, such as ./plugins/examples/request_id.ts",
      );
    }
    // A local file, or undefined for another URL (refused below).
    const path = URL_SCHEME.test(spec) && !spec.startsWith("file:")
      ? undefined
      : relativeFile(spec, configFile);
    // Watched even when it fails to load: fixing it reloads.
    if (path !== undefined) files.add(path);
    const loaded = await importPlugin(
      spec,
      path,
      options.pluginImportTimeoutMs ?? PLUGIN_IMPORT_TIMEOUT_MS,
    );
    if ("error" in loaded) return fail([...at, "plugin"], loaded.error);
    // A step's name says what it is: the checks of step order (a proxy runs
    // last, tier after identify) must not take a custom plugin for a built-in.
    if (plugins.has(loaded.definition.name)) {
      return fail(
        [...at, "plugin"],
        `The plugin is named "${loaded.definition.name}", as a built-in is: give it a name of its own`,
      );
    }
    const raw = record.with ?? {};
    const parsed = parseOptions(loaded.definition.options, raw, [...at, "with"], retyped);
    if (!parsed.success) {
      issues.push(...zodIssues(parsed.error.issues, [...at, "with"], locate));
      return undefined;
    }
    return {
      name: loaded.definition.name,
      definition: loaded.definition,
      options: parsed.data,
      rawOptions: raw,
      module: { path: loaded.path, digest: loaded.digest },
      yamlPath: formatPath(at),
      line: locate(at).line,
    };
  }
  if (keys.length !== 1) {
    return fail(
      at,
      keys.length === 0
        ? "A pipeline entry names one plugin, such as `- proxy: {}`"
        : `A pipeline entry names one plugin, this one names ${keys.length} (${
          keys.join(", ")
        }): write each as its own entry`,
    );
  }
  const name = keys[0]!;
  const definition = plugins.get(name);
  if (!definition) {
    return fail(
      [...at, name],
      `Unknown plugin "${name}": the built-in plugins are ${builtinNames}; a custom plugin is written as plugin: ./path.ts`,
      true,
    );
  }
  const raw = record[name] ?? {};
  const parsed = parseOptions(definition.options, raw, [...at, name], retyped);
  if (!parsed.success) {
    issues.push(...zodIssues(parsed.error.issues, [...at, name], locate));
    return undefined;
  }
  return {
    name,
    definition,
    options: parsed.data,
    rawOptions: raw,
    yamlPath: formatPath(at),
    line: locate(at).line,
  };
}

interface LoadedPlugin {
  definition: PluginDefinition;
  path: string;
  digest: string;
}

const moduleCache = new Map<string, PluginDefinition>();

/** True inside a binary made by `deno compile`. */
const COMPILED = import.meta.url.includes("/deno-compile-");

/** Imports the custom plugin at `path` (undefined: `spec` is not a local file), fresh whenever its source changed. */
async function importPlugin(
  spec: string,
  path: string | undefined,
  timeoutMs: number,
): Promise<LoadedPlugin | { error: string }> {
  if (path === undefined) {
    return { error: `Cannot load plugin "${spec}": only local files can be plugins` };
  }
  const url = fileUrl(path);
  let source: string;
  try {
    source = await Deno.readTextFile(path);
  } catch (error) {
    return { error: `Cannot load plugin "${spec}": ${(error as Error).message}` };
  }
  const digest = (await sha256Hex(source)).slice(0, 16);
  const cacheKey = `${path}#${digest}`;
  let definition = moduleCache.get(cacheKey);
  if (!definition) {
    let module: Record<string, unknown>;
    try {
      // A query makes each new source a new module; a compiled binary's
      // embedded modules are found by their plain URL only.
      const specifier = COMPILED ? url.href : `${url.href}?v=${digest}`;
      module = await withinTime(
        () => import(specifier) as Promise<Record<string, unknown>>,
        timeoutMs,
        `its module did not finish loading within ${timeoutMs / 1000} s`,
      );
    } catch (error) {
      return { error: `Cannot load plugin "${spec}": ${errorWithPlace(error)}` };
    }
    if (!("default" in module)) {
      return { error: `Cannot load plugin "${spec}": the module has no default export` };
    }
    if (!isPluginDefinition(module.default)) {
      return {
        error:
          `Cannot load plugin "${spec}": the default export is not a plugin; export default definePlugin({ name, options, create })`,
      };
    }
    definition = module.default;
    moduleCache.set(cacheKey, definition);
  }
  return { definition, path, digest };
}

/** A plugin whose top level never finishes must not hold every later reload behind it. */
const PLUGIN_IMPORT_TIMEOUT_MS = 10_000;

/** The first line of an error, with the `file:line:column` a syntax error gives on a later line. */
function errorWithPlace(error: unknown): string {
  const first = firstLine(error);
  const message = error instanceof Error ? error.message : String(error);
  const place = /at (file:\/\/\S+:\d+:\d+)/.exec(message)?.[1];
  return place && !first.includes(place) ? `${first} (${place})` : first;
}

/** The line of the first alias in a document, where an alias error most likely is. */
function firstAliasLine(doc: Document, lineCounter: LineCounter): number | undefined {
  let line: number | undefined;
  visit(doc, {
    Alias(_, node) {
      if (node.range) line = lineCounter.linePos(node.range[0]).line;
      return visit.BREAK;
    },
  });
  return line;
}

function firstLine(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.split("\n")[0] ?? message;
}

function zodIssues(
  zodIssueList: readonly z.core.$ZodIssue[],
  prefix: readonly PathSegment[],
  locate: (segments: readonly PathSegment[], atKey?: boolean) => Partial<ConfigIssue>,
): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  for (const issue of zodIssueList) {
    const segments = [...prefix, ...issue.path.map((p) => typeof p === "symbol" ? String(p) : p)];
    if (issue.code === "unrecognized_keys") {
      for (const key of issue.keys) {
        const at = [...segments, key];
        out.push({
          ...locate(at, true),
          path: formatPath(at),
          message: `Unrecognized key "${key}"`,
        });
      }
      continue;
    }
    if (issue.code === "invalid_key" && issue.issues.length > 0) {
      // A key of a map (a tier's name) failed its own check: say which check.
      out.push({
        ...locate(segments, true),
        path: formatPath(segments),
        message: issue.issues[0]!.message,
      });
      continue;
    }
    if (issue.code === "invalid_union" && issue.errors.length > 0) {
      out.push({ ...locate(segments), path: formatPath(segments), message: issue.message });
      continue;
    }
    out.push({ ...locate(segments), path: formatPath(segments), message: issue.message });
  }
  return out;
}

/** Finds the line and column of a path, or of its nearest ancestor present in the file. */
function locateNode(
  doc: Document,
  lineCounter: LineCounter,
  segments: readonly PathSegment[],
  atKey: boolean,
): { line?: number; column?: number } {
  let node: unknown = doc.contents;
  let best: [number, number] | undefined = rangeOf(node);
  for (let i = 0; i < segments.length; i++) {
    const segment = segments[i]!;
    const last = i === segments.length - 1;
    if (isMap(node)) {
      const pair = node.items.find((item) =>
        isScalar(item.key) && String(item.key.value) === String(segment)
      );
      if (!pair) break;
      const keyRange = rangeOf(pair.key);
      if (last && atKey && keyRange) {
        best = keyRange;
        break;
      }
      node = pair.value;
      best = rangeOf(node) ?? keyRange ?? best;
    } else if (isSeq(node) && typeof segment === "number") {
      node = node.items[segment];
      if (node === undefined) break;
      best = rangeOf(node) ?? best;
    } else {
      break;
    }
  }
  if (!best) return {};
  const pos = lineCounter.linePos(best[0]);
  return { line: pos.line, column: pos.col };
}

function rangeOf(node: unknown): [number, number] | undefined {
  const range = (node as Node | undefined)?.range;
  return range ? [range[0], range[1]] : undefined;
}

function interpolateDocument(
  doc: Document,
  restore: (value: string) => string,
  env: EnvLookup,
  locate: (segments: readonly PathSegment[], atKey?: boolean) => Partial<ConfigIssue>,
  issues: ConfigIssue[],
  retyped: Map<string, string>,
): void {
  const walk = (node: unknown, path: PathSegment[]) => {
    if (isMap(node)) {
      for (const pair of node.items) {
        const key = isScalar(pair.key) ? String(pair.key.value) : "?";
        const written = restore(key);
        if (hasPlaceholder(written)) {
          // A key is a name the file gives (a tier, a route option): never read from the environment.
          issues.push({
            ...locate([...path, key], true),
            path: formatPath([...path, written]),
            message:
              `The key "${written}" holds a \${VAR}: placeholders go in values, never in keys`,
          });
        }
        walk(pair.value, [...path, key]);
      }
    } else if (isSeq(node)) {
      node.items.forEach((item, index) => walk(item, [...path, index]));
    } else if (isScalar(node) && typeof node.value === "string") {
      const original = restore(node.value);
      if (!hasPlaceholder(original)) return;
      try {
        const value = interpolate(original, env);
        node.value = node.type === Scalar.PLAIN && isWholePlaceholder(original)
          ? retype(value)
          : value;
        if (typeof node.value !== "string") retyped.set(JSON.stringify(path), value);
      } catch (error) {
        if (!(error instanceof InterpolationError)) throw error;
        issues.push({ ...locate(path), path: formatPath(path), message: error.message });
      }
    }
  };
  walk(doc.contents, []);
}

/**
 * Puts back the text of a `${VAR}` that was read as a number or boolean where
 * the schema wants a string (`token: ${ADMIN_TOKEN}` set to 20240611, a key
 * 0012345 whose zeros count). Returns true when it changed anything.
 */
function restoreStrings(
  raw: unknown,
  zodIssues: readonly z.core.$ZodIssue[],
  retyped: ReadonlyMap<string, string>,
  /** Where `raw` is in the file. */
  at: readonly PropertyKey[] = [],
): boolean {
  let changed = false;
  const visit = (issues: readonly z.core.$ZodIssue[], base: readonly PropertyKey[]) => {
    for (const issue of issues) {
      const path = [...base, ...issue.path];
      // A union (such as a keys entry) tells what each of its shapes missed.
      if (issue.code === "invalid_union") {
        for (const branch of issue.errors) visit(branch, path);
        continue;
      }
      if (issue.code !== "invalid_type" || issue.expected !== "string") continue;
      if (path.length === 0) continue;
      let parent = raw as Record<PropertyKey, unknown> | undefined;
      for (const segment of path.slice(0, -1)) {
        parent = parent?.[segment] as Record<PropertyKey, unknown> | undefined;
      }
      if (!parent || typeof parent !== "object") continue;
      const value = parent[path.at(-1)!];
      // A value a merge key (<<: *base) brought in sits elsewhere than where it
      // was written: then the placeholder text that became this same value.
      const text = retyped.get(JSON.stringify([...at, ...path])) ??
        [...retyped.values()].find((written) => Object.is(retype(written), value));
      if (text === undefined) continue;
      parent[path.at(-1)!] = text;
      changed = true;
    }
  };
  visit(zodIssues, []);
  return changed;
}

function retype(value: string): string | number | boolean {
  if (/^-?\d+(\.\d+)?$/.test(value)) return Number(value);
  if (value === "true") return true;
  if (value === "false") return false;
  return value;
}

/** Drops null members (a key written with no value counts as absent, so defaults apply). */
function withoutNulls(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutNulls);
  if (typeof value === "object" && value !== null) {
    const out: Record<string, unknown> = {};
    for (const [key, member] of Object.entries(value)) {
      if (member !== null) out[key] = withoutNulls(member);
    }
    return out;
  }
  return value;
}

/** A path as a file: URL (a space, `#` or `?` in it is escaped, not read as URL syntax). */
function fileUrl(path: string): URL {
  const url = new URL("file:///");
  url.pathname = path;
  return url;
}

const URL_SCHEME = /^[a-z][a-z0-9+.-]*:/i;

/**
 * A file the config names: a path (a space, `#` or `?` is part of the name),
 * relative to the config's own folder, or a file: URL.
 */
function relativeFile(spec: string, configFile: string): string {
  if (spec.startsWith("file:")) return decodeURIComponent(new URL(spec).pathname);
  const folder = configFile.slice(0, configFile.lastIndexOf("/"));
  return normalizedPath(spec.startsWith("/") ? spec : `${folder}/${spec}`);
}

/** `file` from the working directory, with `.` and `..` resolved (the watcher matches exact paths). */
function absolutePath(file: string): string {
  return normalizedPath(file.startsWith("/") ? file : `${Deno.cwd()}/${file}`);
}

/** An absolute path with `.`, `..` and repeated slashes resolved. */
function normalizedPath(joined: string): string {
  const parts: string[] = [];
  for (const part of joined.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") parts.pop();
    else parts.push(part);
  }
  return `/${parts.join("/")}`;
}

interface FileKey {
  digest: string;
  tier: string;
  name?: string;
  line: number;
}

/**
 * Reads a keys file: a YAML list of `{ key, tier, name }` (a key may be written
 * `sha256:<hex>`). Its digest goes into the config's digest through the
 * watched files, so an edit reloads.
 */
async function loadKeysFile(
  file: string,
): Promise<{ entries: FileKey[]; digest: string } | { error: string }> {
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (error) {
    return { error: `Cannot read keys file ${file}: ${(error as Error).message}` };
  }
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter });
  if (doc.errors.length > 0) {
    const error = doc.errors[0]!;
    return { error: `Invalid YAML in keys file ${file}:${error.linePos?.[0]?.line ?? "?"}` };
  }
  const contents = doc.contents;
  if (!isSeq(contents)) {
    return { error: `Keys file ${file} must be a YAML list of { key, tier, name }` };
  }
  const entries: FileKey[] = [];
  for (const item of contents.items) {
    const line = lineCounter.linePos(rangeOf(item)?.[0] ?? 0).line;
    const value = (item as { toJSON?: () => unknown })?.toJSON?.() as
      | Record<string, unknown>
      | undefined;
    if (value && (typeof value.key === "number" || typeof value.key === "boolean")) {
      return { error: `${file}:${line}: a key is text: quote it (key: "...")` };
    }
    if (!value || typeof value.key !== "string" || typeof value.tier !== "string") {
      return { error: `${file}:${line}: each key needs key and tier` };
    }
    const digest = value.key.startsWith("sha256:")
      ? value.key.slice(7).toLowerCase()
      : await sha256Hex(value.key);
    if (!/^[0-9a-f]{64}$/.test(digest)) {
      return { error: `${file}:${line}: a sha256: key must be 64 hex digits` };
    }
    entries.push({
      digest,
      tier: value.tier,
      name: typeof value.name === "string" ? value.name : undefined,
      line,
    });
  }
  return { entries, digest: await sha256Hex(text) };
}
