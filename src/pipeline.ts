/**
 * A pipeline: every route of one config, compiled, with its plugins created.
 * The gateway holds one; a reload builds the next beside it.
 */
import type { LoadedConfig, ResolvedEntry } from "./config/load_config.ts";
import type { Logger } from "./log.ts";
import type { CidrSet } from "./net/cidr.ts";
import type {
  ClientReport,
  ContextKey,
  GatewayServices,
  Handler,
  PluginContext,
  RequestContext,
  RouteInfo,
} from "./plugin.ts";
import { problem, PROBLEM_TYPE_BASE } from "./problem.ts";
import { compileMatch, type RouteMatcher } from "./router.ts";
import { stableStringify, type StateBuild } from "./state_registry.ts";
import { withinTime } from "./time_limit.ts";

/** One route, ready to serve. */
export interface CompiledRoute {
  readonly info: RouteInfo;
  readonly matches: RouteMatcher;
  /** The plugin names, in order. */
  readonly steps: readonly string[];
  /** Runs the route's pipeline. */
  readonly run: (ctx: RequestContext) => Promise<Response>;
  /** True when a custom plugin is one of its steps: its answers' headers are checked before they go out. */
  readonly custom: boolean;
  /** The plugins' views of one client, for `/clients/{id}`. */
  readonly clientQueries: readonly ((clientId: string) => Promise<ClientReport | undefined>)[];
  /** The plugins' state for `/status`. */
  readonly statusReports: readonly StatusReport[];
}

/** One plugin's state for `/status`. */
export interface StatusReport {
  /** A built-in plugin's (the gauges read only those). */
  readonly builtin: boolean;
  /** The report now; an object, `{}` when the plugin's report failed. */
  readonly read: () => Record<string, unknown>;
}

/** At most one warning this often about one plugin's failing status report. */
const REPORT_WARN_EVERY_MS = 60_000;

/** Every route of one config. */
export interface Pipeline {
  /** Counts up from 1 with each successful load. */
  readonly version: number;
  /** When it was built. */
  readonly loadedAt: Date;
  /** The config it was built from. */
  readonly loaded: LoadedConfig;
  /** Its `trusted_proxies`. */
  readonly trusted: CidrSet;
  /** The routes in match order. */
  readonly routes: readonly CompiledRoute[];
  /** The routes' names. */
  readonly routeNames: ReadonlySet<string>;
  /** The first route that matches, if any. */
  match(method: string, host: string | null, path: string): CompiledRoute | undefined;
}

/** One pipeline entry whose plugin refused to be created. */
export interface BuildFailure {
  /** The entry's YAML path, such as `routes[0].pipeline[1]`. */
  readonly yamlPath: string;
  readonly line: number | undefined;
  readonly message: string;
}

/** Raised when plugins' `create` throw while a pipeline is built: every entry that refused. */
export class PipelineBuildError extends Error {
  override name = "PipelineBuildError";
  constructor(readonly failures: readonly BuildFailure[], options?: ErrorOptions) {
    super(failures.map((failure) => failure.message).join("\n"), options);
  }
}

/** Calls each handler in order; `next()` may be called at most once per handler. */
export function compose(
  handlers: readonly Handler[],
  terminal: (ctx: RequestContext) => Promise<Response>,
): (ctx: RequestContext) => Promise<Response> {
  return function run(ctx) {
    let called = -1;
    const dispatch = (index: number): Promise<Response> => {
      if (index <= called) {
        return Promise.reject(new Error("next() was called more than once in one plugin"));
      }
      called = index;
      const handler = handlers[index];
      if (!handler) return terminal(ctx);
      try {
        return Promise.resolve(handler(ctx, () => dispatch(index + 1)));
      } catch (error) {
        return Promise.reject(error);
      }
    };
    return dispatch(0);
  };
}

function noAnswer(ctx: RequestContext): Promise<Response> {
  return Promise.resolve(problem(502, {
    type: `${PROBLEM_TYPE_BASE}no-answer`,
    title: "No answer",
    detail: `The pipeline of route "${ctx.route.name}" ended without an answer: add a proxy step`,
  }));
}

/** Options for {@linkcode buildPipeline}. */
export interface BuildOptions {
  readonly version: number;
  readonly services: GatewayServices;
  readonly trusted: CidrSet;
  readonly state: StateBuild;
  readonly log: Logger;
  /** The longest a plugin's `create()` may take, in ms. @default 10000 */
  readonly createTimeoutMs?: number;
}

/** A `create()` that never finishes must not hold every later reload (and shutdown) behind it. */
const CREATE_TIMEOUT_MS = 10_000;

/**
 * Creates every plugin of every route; throws {@linkcode PipelineBuildError}
 * naming every entry that refused (all of them, not only the first).
 */
export async function buildPipeline(
  loaded: LoadedConfig,
  options: BuildOptions,
): Promise<Pipeline> {
  const routes: CompiledRoute[] = [];
  const failures: BuildFailure[] = [];
  const causes: unknown[] = [];
  for (const route of loaded.routes) {
    const info: RouteInfo = Object.freeze({
      name: route.name,
      pathPrefix: route.match.path_prefix,
      stripPrefix: route.strip_prefix,
      preserveHost: route.preserve_host,
      upstream: route.upstream
        ? Object.freeze({
          url: route.upstream.url ?? route.upstream.targets![0]!,
          targets: Object.freeze(route.upstream.targets ?? [route.upstream.url!]),
          balance: route.upstream.balance,
          timeoutMs: route.upstream.timeout,
          readTimeoutMs: route.upstream.read_timeout,
        })
        : undefined,
    });
    const handlers: Handler[] = [];
    const occurrences = new Map<string, number>();
    const occurrencesByPlugin = new Map<string, number>();
    const steps = route.pipeline.map((entry) => entry.name);
    const clientQueries: CompiledRoute["clientQueries"][number][] = [];
    const statusReports: CompiledRoute["statusReports"][number][] = [];
    for (const [position, entry] of route.pipeline.entries()) {
      const identity = entryIdentity(route.name, entry);
      const occurrence = occurrences.get(identity) ?? 0;
      occurrences.set(identity, occurrence + 1);
      const plugin = pluginIdentity(route.name, entry);
      const pluginOccurrence = occurrencesByPlugin.get(plugin) ?? 0;
      occurrencesByPlugin.set(plugin, pluginOccurrence + 1);
      let keeps = 0;
      const pluginLog = options.log.child({ route: route.name, plugin: entry.name });
      const context: PluginContext = {
        route: info,
        pipeline: steps,
        position,
        onClientQuery: (query) => clientQueries.push(query),
        onStatus: (report) => {
          // A report that throws (or gives no object) is left out: /status and
          // /metrics, which read these, keep answering, and the log says which
          // plugin failed (once a minute: /status and /metrics are polled).
          let warnedAt = -Infinity;
          const warn = (error: unknown) => {
            const now = performance.now();
            if (now - warnedAt >= REPORT_WARN_EVERY_MS) {
              warnedAt = now;
              pluginLog.warn("a plugin's status report failed", { error });
            }
          };
          statusReports.push({
            builtin: entry.module === undefined,
            read: () => {
              try {
                const value: unknown = report();
                if (typeof (value as PromiseLike<unknown>)?.then === "function") {
                  // An async report is no report, and its rejection must not end the process.
                  Promise.resolve(value).catch(() => {});
                  throw new TypeError("the report gave a promise, not an object");
                }
                if (value !== null && typeof value === "object" && !Array.isArray(value)) {
                  return value as Record<string, unknown>;
                }
                throw new TypeError(`the report gave ${value === null ? "null" : typeof value}`);
              } catch (error) {
                warn(error);
                return {};
              }
            },
          });
        },
        gateway: options.services,
        log: pluginLog,
        keep(init, keepOptions) {
          const key = keepOptions?.acrossOptions
            ? `${plugin}\u0000any options\u0000${pluginOccurrence}\u0000${keeps++}`
            : `${identity}\u0000${occurrence}\u0000${keeps++}`;
          return options.state.keep(key, init, keepOptions?.dispose);
        },
      };
      try {
        const ms = options.createTimeoutMs ?? CREATE_TIMEOUT_MS;
        handlers.push(
          await withinTime(
            () => entry.definition.create(entry.options, context),
            ms,
            `its create() did not finish within ${ms / 1000} s`,
          ),
        );
      } catch (error) {
        causes.push(error);
        failures.push({
          yamlPath: entry.yamlPath,
          line: entry.line,
          message: `Cannot create plugin "${entry.name}" at ${entry.yamlPath}: ${
            (error as Error)?.message ?? error
          }`,
        });
      }
    }
    routes.push({
      info,
      matches: compileMatch(route.match),
      steps,
      run: compose(handlers, noAnswer),
      custom: route.pipeline.some((entry) => entry.module !== undefined),
      clientQueries,
      statusReports,
    });
  }
  if (failures.length > 0) {
    throw new PipelineBuildError(failures, {
      cause: causes.length === 1 ? causes[0] : new AggregateError(causes),
    });
  }
  return {
    version: options.version,
    loadedAt: new Date(),
    loaded,
    trusted: options.trusted,
    routes,
    routeNames: new Set(routes.map((route) => route.info.name)),
    match(method, host, path) {
      for (const route of routes) {
        if (route.matches(method, host, path)) return route;
      }
      return undefined;
    },
  };
}

/**
 * What must stay the same for an entry's state to be kept: the route, the
 * plugin, its options as written and, for a custom plugin, its source.
 */
function entryIdentity(routeName: string, entry: ResolvedEntry): string {
  return [pluginIdentity(routeName, entry), stableStringify(entry.rawOptions)].join("\u0000");
}

/** The same without the options: for state kept across option changes. */
function pluginIdentity(routeName: string, entry: ResolvedEntry): string {
  return [routeName, entry.name, entry.module?.digest ?? "builtin"].join("\u0000");
}

/** A per-request context. */
export class Context implements RequestContext {
  client: RequestContext["client"] = undefined;
  tier: string | undefined = undefined;
  /** The upstream answered this request (set by the proxy; the outcome metric reads it). */
  upstreamAnswered = false;
  #values: Map<ContextKey<unknown>, unknown> | undefined;
  readonly #original: Request;

  constructor(
    public request: Request,
    readonly url: URL,
    readonly route: RouteInfo,
    readonly remoteAddr: string,
    readonly peerTrusted: boolean,
    readonly requestId: string,
    readonly completed: Promise<void> = Promise.resolve(),
  ) {
    this.#original = request;
  }

  // Read only when needed: making a request's signal costs a proxy measurably.
  get signal(): AbortSignal {
    return this.#original.signal;
  }

  get<T>(key: ContextKey<T>): T | undefined {
    return this.#values?.get(key) as T | undefined;
  }

  set<T>(key: ContextKey<T>, value: T): void {
    (this.#values ??= new Map()).set(key, value);
  }
}

/** Notes that the upstream answered: the request's outcome is `proxied` whatever a plugin makes of the answer. */
export function noteUpstreamAnswer(ctx: RequestContext): void {
  if (ctx instanceof Context) ctx.upstreamAnswered = true;
}
