/**
 * Helpers to test a plugin without sockets: make its handler from raw options
 * (validated by its schema, as the config loader does) and a request context.
 *
 * @example
 * ```ts
 * import { createHandler, requestContext } from "./testing.ts";
 * import requestId from "../plugins/examples/request_id.ts";
 *
 * const handler = await createHandler(requestId, { header: "x-id" });
 * const ctx = requestContext(new Request("http://gw/x"), { requestId: "abc" });
 * const response = await handler(ctx, () => Promise.resolve(new Response("ok")));
 * response.headers.get("x-id"); // "abc"
 * ```
 *
 * @module
 */
import { Logger } from "./log.ts";
import { Metrics } from "./metrics.ts";
import { Context } from "./pipeline.ts";
import { RecentClients } from "./client_directory.ts";
import { MemoryStore } from "./store/memory_store.ts";
import { ResilientStore } from "./store/resilient_store.ts";
import type {
  GatewayServices,
  Handler,
  PluginContext,
  PluginDefinition,
  RequestContext,
  RouteInfo,
} from "./plugin.ts";

/** Options for {@linkcode createHandler}. */
export interface CreateHandlerOptions {
  /** The route the entry belongs to. @default a route named "test" */
  route?: Partial<RouteInfo>;
  /** Services to replace (a fake `fetch`, tiers, a store...). */
  services?: Partial<GatewayServices>;
  /** The route's step names, when the plugin checks what runs before it. */
  pipeline?: readonly string[];
}

function testRoute(route: Partial<RouteInfo> = {}): RouteInfo {
  return { name: "test", stripPrefix: false, preserveHost: false, ...route };
}

/** Validates `rawOptions` with the plugin's schema and creates its handler; throws on invalid options. */
export async function createHandler(
  plugin: PluginDefinition,
  rawOptions: unknown = {},
  options: CreateHandlerOptions = {},
): Promise<Handler> {
  const parsed = plugin.options.safeParse(rawOptions);
  if (!parsed.success) {
    throw new TypeError(`Invalid options for plugin "${plugin.name}": ${parsed.error.message}`);
  }
  const state = new Map<number, unknown>();
  let keeps = 0;
  const ctx: PluginContext = {
    route: testRoute(options.route),
    pipeline: options.pipeline ?? [plugin.name],
    position: options.pipeline ? Math.max(0, options.pipeline.indexOf(plugin.name)) : 0,
    onClientQuery: () => {},
    onStatus: () => {},
    gateway: {
      metrics: new Metrics({ processMetrics: false }),
      isTrustedProxy: () => false,
      fetch: (input, init) => fetch(input, init),
      store: new ResilientStore(new MemoryStore({ sweep: false }), {
        timeoutMs: 100,
        onFailure: "local",
      }),
      tiers: {},
      keys: new Map(),
      keyHashes: [],
      clients: new RecentClients(),
      ...options.services,
    },
    log: new Logger("error"),
    keep<T>(init: () => T): T {
      const key = keeps++;
      if (!state.has(key)) state.set(key, init());
      return state.get(key) as T;
    },
  };
  return await plugin.create(parsed.data, ctx);
}

/** Options for {@linkcode requestContext}. */
export interface RequestContextOptions {
  route?: Partial<RouteInfo>;
  remoteAddr?: string;
  peerTrusted?: boolean;
  requestId?: string;
  /** Resolves when the test says the response was sent. @default already resolved */
  completed?: Promise<void>;
}

/** A request context for calling a handler directly. */
export function requestContext(
  request: Request,
  options: RequestContextOptions = {},
): RequestContext {
  return new Context(
    request,
    new URL(request.url),
    testRoute(options.route),
    options.remoteAddr ?? "127.0.0.1",
    options.peerTrusted ?? false,
    options.requestId ?? crypto.randomUUID(),
    options.completed,
  );
}
