/**
 * The config file's schema (zod). The same schema validates the file and
 * generates `config/schema.json`. Plugin options are validated in a second
 * pass by each plugin's own schema (see `load_config.ts`).
 */
import { z } from "zod";
import { formatDuration, parseDuration, parseRate } from "./duration.ts";
import { WHOLE_PLACEHOLDER_RE } from "./interpolate.ts";
import { parseCidr } from "../net/cidr.ts";
import { parseRedisUrl } from "../store/resp_client.ts";

const DURATION_PATTERN = "^\\d+(\\.\\d+)?(ms|s|m|h|d)$";
const RATE_PATTERN = "^\\d+(\\.\\d+)?/(s|m|h|d)$";

/** The longest timer JavaScript runs: a longer one fires at once (2^31 - 1 ms, about 24.8 days). */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** What a duration is used for, which bounds it. */
export interface DurationUse {
  /** A window or period: it must be longer than 0. */
  window?: boolean;
  /** Any other duration that must be longer than 0 (0 would fire at once). */
  positive?: boolean;
  /** A wait run on a timer: at most 24d. */
  timer?: boolean;
}

/**
 * A duration such as `250ms`, `10s`, `1m`, `1h` or `1d`, parsed to milliseconds.
 *
 * @example
 * ```ts
 * import { duration } from "./schema.ts";
 * duration().parse("10s"); // 10000
 * ```
 */
export function duration(use: DurationUse = {}) {
  return z.string({ error: "Expected a duration such as 250ms, 10s, 1m, 1h or 1d" })
    .regex(new RegExp(DURATION_PATTERN), {
      error: (issue) =>
        `Invalid duration "${issue.input}": write a number followed by ms, s, m, h or d, such as 250ms or 10s`,
    })
    .transform((text, ctx) => {
      const ms = parseDuration(text);
      if ((use.window || use.positive) && ms < 1) {
        ctx.issues.push({
          code: "custom",
          input: text,
          message: use.window
            ? `Invalid window "${text}": a window must be at least 1ms`
            : `Invalid duration "${text}": it must be at least 1ms`,
        });
      } else if (use.timer && ms > MAX_TIMER_MS) {
        ctx.issues.push({
          code: "custom",
          input: text,
          message: `Invalid duration "${text}": a wait can be at most 24d`,
        });
      } else if (!Number.isSafeInteger(ms)) {
        ctx.issues.push({
          code: "custom",
          input: text,
          message: `Invalid duration "${text}": too long to count in milliseconds`,
        });
      }
      return ms;
    });
}

/**
 * A rate such as `50/s`, `600/m` or `1000/h`, parsed to `{ count, periodMs }`.
 *
 * @example
 * ```ts
 * import { rate } from "./schema.ts";
 * rate().parse("50/s"); // { count: 50, periodMs: 1000 }
 * ```
 */
export function rate() {
  return z.string({ error: "Expected a rate such as 50/s, 600/m or 1000/h" })
    .regex(new RegExp(RATE_PATTERN), {
      error: (issue) =>
        `Invalid rate "${issue.input}": write a count, a slash and s, m, h or d, such as 50/s or 600/m`,
    })
    .transform((text, ctx) => {
      const count = Number(text.slice(0, text.indexOf("/")));
      if (!(count > 0 && Number.isSafeInteger(Math.ceil(count)))) {
        ctx.issues.push({
          code: "custom",
          input: text,
          message: `Invalid rate "${text}": the count must be ${
            count > 0 ? "at most 2^53" : "above 0"
          }`,
        });
        return { count: 1, periodMs: 1_000 };
      }
      return parseRate(text);
    });
}

const port = z.number().int().min(0).max(65535);

const httpUrl = z.string().superRefine((text, ctx) => {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    url = new URL("invalid:");
  }
  if (url.username || url.password) {
    // The gateway sends no credentials of a URL, and a URL is shown on /status and in logs.
    ctx.addIssue({
      code: "custom",
      message:
        "An upstream URL cannot hold a user or password (they would be shown, and never sent): set an Authorization header with a plugin instead",
    });
  } else if (url.protocol !== "http:" && url.protocol !== "https:") {
    ctx.addIssue({
      code: "custom",
      message: `Invalid upstream URL "${text}": write http://host:port or https://host`,
    });
  }
  // Characters outside ASCII are written percent-encoded (and a host in punycode), as they go on the wire.
}).transform((text) => /[^\x20-\x7e]/.test(text) ? new URL(text).href : text);

const redisUrl = z.string().superRefine((text, ctx) => {
  if (text === "") return;
  try {
    // What the store will read at start: a URL --check passes must connect.
    parseRedisUrl(text);
  } catch (error) {
    ctx.addIssue({ code: "custom", message: (error as Error).message });
  }
});

const cidr = z.string().superRefine((text, ctx) => {
  try {
    parseCidr(text);
  } catch (error) {
    ctx.addIssue({ code: "custom", message: (error as Error).message });
  }
});

const METHODS = [
  "GET",
  "HEAD",
  "POST",
  "PUT",
  "PATCH",
  "DELETE",
  "OPTIONS",
  "TRACE",
  "CONNECT",
] as const;

const tierSchema = z.strictObject({
  limit: z.number().int().positive(),
  window: duration({ window: true }),
});

const keyEntrySchema = z.union([
  z.strictObject({
    key: z.string().min(1),
    tier: z.string().min(1),
    name: z.string().optional(),
  }),
  z.strictObject({ file: z.string().min(1) }),
  z.strictObject({ redis_hash: z.string().min(1) }),
], { error: "Expected { key, tier, name }, { file } or { redis_hash }" });

/** One pipeline entry before its plugin validates it: `{ <plugin>: options }` or `{ plugin: ./file.ts, with: options }`. */
export const pipelineEntrySchema = z.record(z.string(), z.unknown(), {
  error: "A pipeline entry names one plugin, such as `- proxy: {}`",
});

const routeSchema = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9_.-]+$/, {
    error: "A route name is letters, digits, dots, dashes and underscores",
  }),
  match: z.strictObject({
    path_prefix: z.string().startsWith("/", { error: "path_prefix must start with /" }).optional(),
    methods: z.array(z.enum(METHODS)).min(1).optional(),
    // Matched against the Host header without its port: a host written with one matches nothing.
    host: z.string().min(1).refine((host) => !/^\[.*\]:|^[^[]*:/.test(host), {
      error: (issue) =>
        `host is matched without the port: write "${
          String(issue.input).replace(/:\d*$/, "")
        }", and every port of it matches`,
    }).optional(),
  }).default({}),
  strip_prefix: z.boolean().default(false),
  preserve_host: z.boolean().default(false),
  upstream: z.strictObject({
    /** One upstream. */
    url: httpUrl.optional(),
    /** A pool of upstreams. */
    targets: z.array(httpUrl).min(1).optional(),
    balance: z.enum(["round_robin", "least_inflight"]).default("round_robin"),
    timeout: duration().default(30_000),
    /**
     * The longest pause between two reads of a response body; a body that
     * stalls longer is cut (5m: a quiet stream that sends nothing for
     * longer needs a larger one).
     */
    read_timeout: duration({ timer: true, positive: true }).default(300_000),
  }).superRefine((upstream, ctx) => {
    if ((upstream.url === undefined) === (upstream.targets === undefined)) {
      ctx.addIssue({
        code: "custom",
        path: [],
        message: "Write either url: http://host:port or targets: [http://a:port, http://b:port]",
      });
    }
  }).optional(),
  pipeline: z.array(pipelineEntrySchema).default([]),
});

/**
 * A quota policy's name (a tier, or a limit step's `name`): printable ASCII,
 * as the RateLimit headers' quoted strings (RFC 9651) require.
 */
export function policyName() {
  return z.string().min(1).regex(/^[\x20-\x7e]+$/, {
    error: "A policy name must be printable ASCII: it is written into the RateLimit headers",
  });
}

/** The whole config file. */
export const configSchema = z.strictObject({
  listen: z.strictObject({
    port: port.default(8080),
    hostname: z.string().default("0.0.0.0"),
  }).default({ port: 8080, hostname: "0.0.0.0" }),
  admin: z.strictObject({
    port: port.default(9090),
    hostname: z.string().default("127.0.0.1"),
    token: z.string().default(""),
  }).default({ port: 9090, hostname: "127.0.0.1", token: "" }),
  store: z.strictObject({
    /** Defaults to redis when a url (or REDIS_URL) is given, else memory. */
    kind: z.enum(["memory", "redis", "redis-cluster"]).optional(),
    url: redisUrl.optional(),
    nodes: z.array(redisUrl).optional().superRefine((nodes, ctx) => {
      // A cluster speaks TLS to every node or to none.
      const tls = (url: string) => /^rediss:/i.test(url);
      for (const [index, node] of (nodes ?? []).entries()) {
        if (tls(node) !== tls(nodes![0]!)) {
          ctx.addIssue({
            code: "custom",
            path: [index],
            message: "Cluster nodes must all be redis:// or all be rediss://",
          });
        }
      }
    }),
    timeout: duration({ timer: true }).default(100),
    on_failure: z.enum(["allow", "deny", "local"]).default("local"),
  }).default({ timeout: 100, on_failure: "local" }),
  shutdown: z.strictObject({
    grace: duration({ timer: true }).default(10_000),
  }).default({ grace: 10_000 }),
  trusted_proxies: z.array(cidr).default([]),
  tiers: z.record(policyName(), tierSchema).default({}),
  keys: z.array(keyEntrySchema).default([]),
  // A gateway with no route would answer every request 404: a truncated save, not a config.
  routes: z.array(routeSchema, {
    error: (issue) =>
      issue.input === undefined
        ? "A config has at least one route: routes: [ { name, upstream, pipeline } ]"
        : "Expected a list of routes",
  }).min(1, { error: "A config has at least one route" }),
});

/** The config after validation and defaults, durations in milliseconds. */
export type GatewayConfig = z.output<typeof configSchema>;
/** One route of {@linkcode GatewayConfig}. */
export type RouteConfig = z.output<typeof routeSchema>;

/**
 * The JSON Schema of the config file, for editor completion
 * (`config/schema.json`). With the plugins, each pipeline entry is described
 * by its plugin's options.
 */
export function configJsonSchema(
  plugins?: ReadonlyMap<string, { options: z.ZodType }>,
): Record<string, unknown> {
  const schema = z.toJSONSchema(configSchema, { io: "input", unrepresentable: "any" }) as Record<
    string,
    unknown
  >;
  dropNumericDefaultsOfStrings(schema);
  if (plugins) {
    const routes = (schema.properties as Record<string, Json>).routes;
    const pipeline = routes?.items?.properties?.pipeline;
    if (pipeline) {
      const entries: Json[] = [...plugins].map(([name, plugin]) => {
        const options = z.toJSONSchema(plugin.options, { io: "input", unrepresentable: "any" });
        delete (options as Json).$schema;
        return {
          type: "object",
          properties: { [name]: { anyOf: [options, { type: "null" }] } },
          required: [name],
          additionalProperties: false,
        };
      });
      entries.push({
        type: "object",
        properties: {
          plugin: { type: "string", description: "A custom plugin module, relative to this file" },
          with: { type: "object", description: "The plugin's options" },
        },
        required: ["plugin"],
        additionalProperties: false,
      });
      pipeline.items = { anyOf: entries };
    }
  }
  allowPlaceholders(schema);
  return {
    ...schema,
    title: "sluice gateway config",
    description:
      "config/gateway.yaml: listeners, store, tiers, keys and routes with their plugin pipelines.",
  };
}

// deno-lint-ignore no-explicit-any
type Json = Record<string, any>;

/**
 * Any value may be written as one `${VAR}` (a number or boolean unquoted,
 * `port: ${PORT:-8080}`, read as the type it becomes): the schema takes that
 * text too wherever it would refuse it (a number, a boolean, a duration or
 * other patterned text, a choice), so an editor does not flag it.
 */
function allowPlaceholders(schema: unknown): void {
  eachSchemaNode(schema, (record) => {
    const constrained = record.type === "integer" || record.type === "number" ||
      record.type === "boolean" || record.enum !== undefined || record.const !== undefined ||
      (record.type === "string" && (record.pattern !== undefined || record.format !== undefined));
    if (!constrained) return false;
    const value = { ...record };
    for (const key of Object.keys(record)) delete record[key];
    if (value.description !== undefined) record.description = value.description;
    record.anyOf = [value, { type: "string", pattern: WHOLE_PLACEHOLDER_RE.source }];
    return true;
  });
}

/** Calls `visit` on every object of a JSON Schema, outermost first; true from it skips what is inside. */
function eachSchemaNode(node: unknown, visit: (record: Json) => boolean | void): void {
  if (Array.isArray(node)) {
    for (const item of node) eachSchemaNode(item, visit);
    return;
  }
  if (typeof node !== "object" || node === null) return;
  if (visit(node as Json) === true) return;
  for (const value of Object.values(node as Json)) eachSchemaNode(value, visit);
}

/** Durations default to milliseconds inside the validator; a JSON Schema default must be the text. */
function dropNumericDefaultsOfStrings(schema: unknown): void {
  eachSchemaNode(schema, (record) => {
    if (record.type === "string" && typeof record.default === "number") {
      record.default = formatDuration(record.default);
    }
    if (record.type === "object" && typeof record.default === "object" && record.properties) {
      for (const [key, value] of Object.entries(record.default as Json)) {
        if (record.properties[key]?.type === "string" && typeof value === "number") {
          record.default[key] = formatDuration(value);
        }
      }
    }
  });
}
