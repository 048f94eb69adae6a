/**
 * The plugin API: what a plugin is, what it receives when it is created and
 * what it sees for each request.
 *
 * @module
 */
import type { z } from "zod";
import type { Logger } from "./log.ts";
import type { Metrics } from "./metrics.ts";
import type { LimitStore } from "./store/store.ts";

/** Who is calling, as the `identify` plugin found it. */
export interface ClientIdentity {
  /** The id shown in logs and the admin API: `key:<16 hex of sha256(key)>`, `jwt:<16 hex>` or `ip:<address>`. */
  readonly id: string;
  /**
   * Which source named the client: an API key (a header or a bearer token),
   * a claim of a verified JWT (`jwt:<claim>`; its id is `jwt:<16 hex>`, never
   * a key's), or the address.
   */
  readonly kind: "key" | "jwt" | "ip";
  /** The raw API key, or the claim's value. Never log it, never use it as a metric label. */
  readonly key?: string;
  /** The client's IP address (after trusted `X-Forwarded-For` hops). */
  readonly ip: string;
  /** The tier a verified JWT claims (`jwt.tier_claim`), for the `tier` step. */
  readonly tier?: string;
}

/**
 * A typed key into the per-request state map that plugins share.
 *
 * @example
 * ```ts
 * import { ContextKey } from "./plugin.ts";
 * const START = new ContextKey<number>("start");
 * ```
 */
export class ContextKey<T> {
  declare readonly type: T;
  constructor(readonly name: string) {}
}

/** The route a request matched, as plugins see it. */
export interface RouteInfo {
  /** The route's name from the config. */
  readonly name: string;
  /** The route's `match.path_prefix`, when it has one. */
  readonly pathPrefix?: string;
  /** Remove the path prefix before forwarding. */
  readonly stripPrefix: boolean;
  /** Forward the client's `Host` instead of the upstream's. */
  readonly preserveHost: boolean;
  /** Where the route forwards, when it forwards. */
  readonly upstream?: UpstreamInfo;
}

/** An upstream as configured: one target, or a pool. */
export interface UpstreamInfo {
  /** The first target's base URL. */
  readonly url: string;
  /** Every target's base URL (one for `url:`, several for `targets:`). */
  readonly targets: readonly string[];
  /** How a pool picks a target. */
  readonly balance: "round_robin" | "least_inflight";
  /** The longest wait for the response headers, in milliseconds. */
  readonly timeoutMs: number;
  /** The longest pause between two reads of a response body, in milliseconds. */
  readonly readTimeoutMs: number;
}

/** What a handler sees of one request. */
export interface RequestContext {
  /**
   * The request as the client sent it. Its headers are immutable; to change
   * what later plugins and the upstream see, replace it:
   * `ctx.request = new Request(ctx.request, { headers })`.
   */
  request: Request;
  /** The parsed request URL; `url.pathname` has dot segments resolved. */
  readonly url: URL;
  /** The matched route. */
  readonly route: RouteInfo;
  /** The address of the TCP peer. */
  readonly remoteAddr: string;
  /** True when the TCP peer is one of `trusted_proxies`. */
  readonly peerTrusted: boolean;
  /** The request id: the client's `X-Request-Id` or a new one. */
  readonly requestId: string;
  /** Aborted when the client hangs up. */
  readonly signal: AbortSignal;
  /** Resolves once the response has been sent in full, or the client is gone. */
  readonly completed: Promise<void>;
  /** The caller, once `identify` ran. */
  client: ClientIdentity | undefined;
  /** The caller's tier, once `tier` ran. */
  tier: string | undefined;
  /** Reads a value another plugin stored for this request. */
  get<T>(key: ContextKey<T>): T | undefined;
  /** Stores a value for the later plugins of this request. */
  set<T>(key: ContextKey<T>, value: T): void;
}

/** Runs the rest of the pipeline and gives its response. */
export type Next = () => Promise<Response>;

/**
 * A pipeline step: answers itself, or calls `next()` (at most once) and may
 * change what it returns.
 */
export type Handler = (
  ctx: RequestContext,
  next: Next,
) => Response | Promise<Response>;

/** A tier: `limit` requests per `window` milliseconds. */
export interface TierSpec {
  readonly limit: number;
  readonly window: number;
}

/** An API key's entry, found by the SHA-256 hex of the key. */
export interface KeyEntry {
  readonly tier: string;
  readonly name?: string;
}

/** What the gateway remembers of recent clients, for `/clients/{id}`. */
export interface ClientDirectory {
  /** Notes that the client was seen with this tier (on this route, when given). */
  seen(clientId: string, tier: string | undefined, route?: string): void;
  /** The client's tier last seen on `route`, or on any route when none is given. */
  tierOf(clientId: string, route?: string): string | undefined;
}

/** What the gateway lends to plugins when they are created. */
export interface GatewayServices {
  /** The gateway's metrics. */
  readonly metrics: Metrics;
  /** The rate-limit store, with its failure policy. */
  readonly store: LimitStore;
  /** The config's `tiers`. */
  readonly tiers: Readonly<Record<string, TierSpec>>;
  /** The config's API keys (list and files), by SHA-256 hex of the key. */
  readonly keys: ReadonlyMap<string, KeyEntry>;
  /** The config's `redis_hash` key sources. */
  readonly keyHashes: readonly string[];
  /** Recent clients and their tiers. */
  readonly clients: ClientDirectory;
  /** The `trusted_proxies` check. */
  isTrustedProxy(address: string): boolean;
  /** The upstream HTTP client; tests may replace it to watch what leaves. */
  fetch(input: string, init: RequestInit): Promise<Response>;
}

/** Options for {@linkcode PluginContext.keep}. */
export interface KeepOptions<T> {
  /** Called once the state is no longer used by any new pipeline. */
  dispose?: (value: T) => void;
  /**
   * Keep the state when the entry's options change too (while its route and
   * plugin, and its place among the route's entries of that plugin, stay):
   * for state the plugin can carry over to new options itself, such as the
   * requests in flight that a new `max` must still count. @default false
   */
  acrossOptions?: boolean;
}

/** What `/clients/{id}` shows of one client for one plugin. */
export type ClientReport = Record<string, unknown>;

/** What `create` receives besides its options. */
export interface PluginContext {
  /** The route this pipeline entry belongs to. */
  readonly route: RouteInfo;
  /** The names of the route's pipeline steps, in order. */
  readonly pipeline: readonly string[];
  /** This entry's index in {@linkcode PluginContext.pipeline}. */
  readonly position: number;
  /** Adds this plugin's view of a client to `/clients/{id}`. */
  onClientQuery(query: (clientId: string) => Promise<ClientReport | undefined>): void;
  /** Adds this plugin's state (breaker states, queue depth...) to the route on `/status`. */
  onStatus(report: () => Record<string, unknown>): void;
  /** The gateway's services. */
  readonly gateway: GatewayServices;
  /** A logger whose lines name the route and plugin. */
  readonly log: Logger;
  /**
   * State that survives a hot swap: while this entry's route, plugin and
   * options stay the same, every new pipeline gets the value made first.
   *
   * @example
   * ```ts
   * import { definePlugin } from "../mod.ts";
   * import { z } from "zod";
   * export default definePlugin({
   *   name: "count",
   *   options: z.object({}),
   *   create(_options, ctx) {
   *     const state = ctx.keep(() => ({ seen: 0 }));
   *     return function count(_req, next) {
   *       state.seen++;
   *       return next();
   *     };
   *   },
   * });
   * ```
   */
  keep<T>(init: () => T, options?: KeepOptions<T>): T;
}

/** A plugin: its name, its options schema and the factory of its handler. */
export interface PluginDefinition<S extends z.ZodType = z.ZodType> {
  /** The name written in a pipeline entry (`identify`, `proxy`, ...). */
  readonly name: string;
  /** The zod schema of the entry's options; validation and defaults happen here, once. */
  readonly options: S;
  /** Makes the handler when a pipeline is built; this is where state is made. */
  create(
    options: z.output<S>,
    ctx: PluginContext,
  ): Handler | Promise<Handler>;
}

const NAME_RE = /^[a-z][a-z0-9-]*$/;

/**
 * Declares a plugin. The default export of a plugin module must be its result.
 *
 * @example
 * ```ts
 * import { definePlugin } from "../mod.ts";
 * import { z } from "zod";
 *
 * export default definePlugin({
 *   name: "powered-by",
 *   options: z.object({ value: z.string().default("sluice") }),
 *   create({ value }) {
 *     return async function poweredBy(_ctx, next) {
 *       const response = await next();
 *       response.headers.set("x-powered-by", value);
 *       return response;
 *     };
 *   },
 * });
 * ```
 */
export function definePlugin<S extends z.ZodType>(
  definition: PluginDefinition<S>,
): PluginDefinition<S> {
  if (!NAME_RE.test(definition.name)) {
    throw new TypeError(
      `Cannot define plugin "${definition.name}": a name is lower-case letters, digits and dashes`,
    );
  }
  if (typeof definition.create !== "function") {
    throw new TypeError(
      `Cannot define plugin "${definition.name}": create must be a function`,
    );
  }
  return Object.freeze({ ...definition });
}

/** True when the value looks like the result of {@linkcode definePlugin}. */
export function isPluginDefinition(value: unknown): value is PluginDefinition {
  if (typeof value !== "object" || value === null) return false;
  const candidate = value as Partial<PluginDefinition>;
  return typeof candidate.name === "string" &&
    typeof candidate.create === "function" &&
    typeof candidate.options === "object" && candidate.options !== null &&
    "safeParse" in candidate.options;
}
