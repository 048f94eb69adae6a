/**
 * The gateway: the listener, the handler switcher that runs each request on
 * the pipeline current when it arrived, reloads that build the next pipeline
 * beside the running one, the admin listener and graceful shutdown.
 */
import {
  ConfigError,
  type ConfigIssue,
  loadConfig,
  type LoadedConfig,
} from "./config/load_config.ts";
import type { EnvLookup } from "./config/interpolate.ts";
import { processEnv } from "./config/interpolate.ts";
import { isReported, Logger } from "./log.ts";
import { Metrics, type RouteGauges } from "./metrics.ts";
import { type BreakerState, STATE_VALUE } from "./breaker.ts";
import { isSealed } from "./response_headers.ts";
import { CidrSet, normalizeIp } from "./net/cidr.ts";
import { buildPipeline, Context, type Pipeline, PipelineBuildError } from "./pipeline.ts";
import type { GatewayServices } from "./plugin.ts";
import { BUILTIN_PLUGINS } from "./plugins/mod.ts";
import { isClientClosed, isGatewayAnswer, problem, PROBLEM_TYPE_BASE } from "./problem.ts";
import { StateRegistry } from "./state_registry.ts";
import { FileWatcher } from "./watcher.ts";
import { adminHandler, isLoopbackName } from "./admin.ts";
import { FIELD_CONTROLS, Http1Client, type Http1Init } from "./http1_client.ts";
import { createStore } from "./store/mod.ts";
import type { ResilientStore } from "./store/resilient_store.ts";
import { storeKind } from "./store/store.ts";
import { RecentClients } from "./client_directory.ts";
import { decodeUnreserved, hasMalformedEscape, hasPlainHost } from "./router.ts";
import { stableStringify } from "./state_registry.ts";

/** Options for {@linkcode Gateway.start}. */
export interface GatewayOptions {
  /** The config file. */
  configFile: string;
  /** Where `${VAR}` and the env overrides (`PORT`, `ADMIN_TOKEN`) read from. @default the process environment */
  env?: EnvLookup;
  /** The logger. @default JSON lines on stdout at `info` */
  logger?: Logger;
  /** The upstream HTTP client. @default a keep-alive HTTP/1.1 client (src/http1_client.ts) */
  fetch?: (input: string, init: RequestInit) => Promise<Response>;
  /** Overrides `listen.port` (0 picks a free port). */
  port?: number;
  /** Overrides `listen.hostname`. */
  hostname?: string;
  /** Overrides `admin.port` (0 picks a free port). */
  adminPort?: number;
  /** Watch the config and plugin files. @default true */
  watch?: boolean;
  /** The watch debounce in milliseconds. @default 150 */
  debounceMs?: number;
  /** Add process metrics to `/metrics`. @default true */
  processMetrics?: boolean;
  /** The longest a plugin's `create()` may take before its build fails, in ms. @default 10000 */
  pluginCreateTimeoutMs?: number;
}

/** What a reload did. */
export interface ReloadResult {
  ok: boolean;
  /** The version serving after the reload. */
  version: number;
  /** False when nothing had changed (watch-triggered reloads only). */
  changed: boolean;
  errors?: ConfigIssue[];
}

/** The last reload that failed, as `/status` shows it. */
export interface ReloadFailure {
  at: string;
  trigger: string;
  file: string;
  errors: ConfigIssue[];
}

const REQUEST_ID_RE = /^[\x21-\x7e]{1,200}$/;

/** A running gateway. */
export class Gateway {
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly configFile: string;
  #env: EnvLookup;
  #pipeline: Pipeline;
  #state: StateRegistry;
  #store: ResilientStore;
  #storeSignature: string;
  #clients: RecentClients;
  #retired = new Map<ReturnType<typeof setTimeout>, ResilientStore>();
  #server!: Deno.HttpServer<Deno.NetAddr>;
  /** The listener settings the gateway started with: a reload cannot change them. */
  #bound!: [string, unknown][];
  #admin!: Deno.HttpServer<Deno.NetAddr>;
  /** Waits before a stopped listener listens again. */
  #relistens = new Set<ReturnType<typeof setTimeout>>();
  #fetch: (input: string, init: RequestInit) => Promise<Response>;
  #createTimeoutMs: number | undefined;
  #httpClient: Http1Client | undefined;
  #watcher: FileWatcher | undefined;
  #reloadChain: Promise<unknown> = Promise.resolve();
  #lastFailure: ReloadFailure | undefined;
  #inflight = 0;
  #closing: Promise<void> | undefined;
  #startedAt = new Date();

  private constructor(
    init: {
      configFile: string;
      env: EnvLookup;
      log: Logger;
      metrics: Metrics;
      pipeline: Pipeline;
      state: StateRegistry;
      store: ResilientStore;
      storeSignature: string;
      clients: RecentClients;
      fetch: (input: string, init: RequestInit) => Promise<Response>;
      httpClient?: Http1Client;
      createTimeoutMs?: number;
    },
  ) {
    this.#store = init.store;
    this.#storeSignature = init.storeSignature;
    this.#clients = init.clients;
    this.configFile = init.configFile;
    this.#env = init.env;
    this.log = init.log;
    this.metrics = init.metrics;
    this.#pipeline = init.pipeline;
    this.#state = init.state;
    this.#fetch = init.fetch;
    this.#httpClient = init.httpClient;
    this.#createTimeoutMs = init.createTimeoutMs;
  }

  /** Loads the config, builds the first pipeline and starts both listeners; throws {@linkcode ConfigError} for a bad config. */
  static async start(options: GatewayOptions): Promise<Gateway> {
    const env = options.env ?? processEnv;
    const log = options.logger ?? new Logger();
    const metrics = new Metrics({ processMetrics: options.processMetrics });
    const loaded = await loadConfig(options.configFile, { plugins: BUILTIN_PLUGINS, env });
    let httpClient: Http1Client | undefined;
    let upstreamFetch = options.fetch;
    if (!upstreamFetch) {
      const client = new Http1Client();
      httpClient = client;
      upstreamFetch = (input, init) => client.fetch(input, init as Http1Init);
    }
    const state = new StateRegistry();
    const trusted = new CidrSet(loaded.config.trusted_proxies);
    const store = await createStore(loaded.config.store, { env, metrics, log });
    const clients = new RecentClients();
    const build = state.begin();
    let pipeline: Pipeline;
    try {
      pipeline = await buildPipeline(loaded, {
        version: 1,
        services: makeServices({ metrics, trusted, fetch: upstreamFetch, store, loaded, clients }),
        trusted,
        state: build,
        log,
        createTimeoutMs: options.pluginCreateTimeoutMs,
      });
    } catch (error) {
      build.abort();
      httpClient?.close();
      await store.close();
      throw asConfigError(loaded.file, error);
    }
    build.commit();
    const gateway = new Gateway({
      configFile: loaded.file,
      env,
      log,
      metrics,
      pipeline,
      state,
      store,
      storeSignature: storeSignature(loaded, env),
      clients,
      fetch: upstreamFetch,
      httpClient,
      createTimeoutMs: options.pluginCreateTimeoutMs,
    });
    metrics.configReloads.inc({ result: "ok" });
    metrics.readRouteGauges(() => routeGauges(gateway.#pipeline));
    metrics.readLiveRoutes(() => gateway.#pipeline.routeNames);
    gateway.#listen(loaded, options);
    gateway.#bound = boundSettings(loaded);
    if (options.watch ?? true) {
      gateway.#watcher = new FileWatcher(() => {
        gateway.reload("watch").catch(() => {});
      }, options.debounceMs);
      gateway.#watcher.watch([loaded.file, ...loaded.pluginFiles]);
    }
    log.info("gateway started", {
      listen: `${gateway.addr.hostname}:${gateway.addr.port}`,
      admin: `${gateway.adminAddr.hostname}:${gateway.adminAddr.port}`,
      config: loaded.file,
      version: pipeline.version,
      routes: pipeline.routes.length,
      store: store.kind,
    });
    warnIfAdminOpen(log, gateway.adminToken, gateway.adminAddr);
    return gateway;
  }

  #listen(loaded: LoadedConfig, options: GatewayOptions): void {
    const envPort = this.#env("PORT");
    const port = options.port ?? (envPort ? Number(envPort) : loaded.config.listen.port);
    const hostname = options.hostname ?? loaded.config.listen.hostname;
    this.#server = this.#serve("main", { port, hostname }, {
      onError: (error) => {
        // An error already logged with its request's details (an upstream
        // that cut its answer short) is not logged again without them.
        if (isReported(error)) this.log.debug("request failed", { error });
        else this.log.error("request failed", { error });
        return problem(500, { detail: "The gateway failed while answering this request" });
      },
    }, (request, info) => this.handle(request, info.remoteAddr.hostname, info.completed));
    const admin = loaded.config.admin;
    try {
      this.#admin = this.#serve(
        "admin",
        { port: options.adminPort ?? admin.port, hostname: admin.hostname },
        {
          onError: (error) => {
            this.log.error("admin request failed", { error });
            return problem(500, { detail: "The admin API failed while answering this request" });
          },
        },
        adminHandler(this),
      );
    } catch (error) {
      this.#server.shutdown();
      throw error;
    }
  }

  /**
   * A listener that comes back: Deno's server stops for good when accepting
   * fails (out of file descriptors, as under a flood of connections or an
   * upstream that leaks sockets). Left so, the process would end on the
   * rejection, or live on deaf; it listens again on the same address, every
   * second until it can, and serves once descriptors are free.
   */
  #serve(
    which: "main" | "admin",
    at: { port: number; hostname: string },
    options: { onError: (error: unknown) => Response },
    handler: Deno.ServeHandler<Deno.NetAddr>,
  ): Deno.HttpServer<Deno.NetAddr> {
    const server = Deno.serve({ ...at, onListen: () => {}, onError: options.onError }, handler);
    const current = () => which === "main" ? this.#server : this.#admin;
    server.finished.catch((error) => {
      if (this.#closing) return;
      const addr = { port: server.addr.port, hostname: at.hostname };
      this.log.error("the listener stopped; listening again in 1 s", {
        listener: which,
        address: `${addr.hostname}:${addr.port}`,
        error,
      });
      const again = () => {
        if (this.#closing || current() !== server) return;
        try {
          const next = this.#serve(which, addr, options, handler);
          if (which === "main") this.#server = next;
          else this.#admin = next;
          this.log.info("listening again", {
            listener: which,
            address: `${addr.hostname}:${addr.port}`,
          });
        } catch (retryError) {
          this.log.error("cannot listen yet; trying again in 1 s", {
            listener: which,
            error: retryError,
          });
          later();
        }
      };
      // A shutdown meanwhile clears the wait: nothing holds the process up.
      const later = () => {
        const timer = setTimeout(() => {
          this.#relistens.delete(timer);
          again();
        }, 1_000);
        this.#relistens.add(timer);
      };
      later();
    });
    return server;
  }

  /** The main listener's address. */
  get addr(): Deno.NetAddr {
    return this.#server.addr;
  }

  /** The admin listener's address. */
  get adminAddr(): Deno.NetAddr {
    return this.#admin.addr;
  }

  /** The pipeline serving new requests. */
  get pipeline(): Pipeline {
    return this.#pipeline;
  }

  /** The last failed reload, until a reload succeeds. */
  get lastFailure(): ReloadFailure | undefined {
    return this.#lastFailure;
  }

  /** True once shutdown has begun: the gateway drains and takes no new requests. */
  get draining(): boolean {
    return this.#closing !== undefined;
  }

  /** Requests being handled now, until their answer is sent (bodies too). */
  get inflight(): number {
    return this.#inflight;
  }

  #done = (): void => {
    this.#inflight--;
  };

  /** When the gateway started. */
  get startedAt(): Date {
    return this.#startedAt;
  }

  /** The admin token in force: `admin.token`, or `ADMIN_TOKEN` when the file sets none. */
  get adminToken(): string {
    return this.#pipeline.loaded.config.admin.token || this.#env("ADMIN_TOKEN") || "";
  }

  /** The rate-limit store in force. */
  get store(): ResilientStore {
    return this.#store;
  }

  /** Each route's plugins' view of one client, for `/clients/{id}`. */
  async clientReport(clientId: string): Promise<Record<string, unknown>> {
    // An address is found however it is written (::ffff:10.0.0.1, an IPv6 in full).
    if (clientId.startsWith("ip:")) clientId = `ip:${normalizeIp(clientId.slice(3))}`;
    const routes: Record<string, unknown>[] = [];
    for (const route of this.#pipeline.routes) {
      const reports = [];
      for (const query of route.clientQueries) {
        const report = await query(clientId);
        if (report) reports.push(report);
      }
      if (reports.length > 0) routes.push({ route: route.info.name, limits: reports });
    }
    return { id: clientId, tier: this.#clients.tierOf(clientId) ?? null, routes };
  }

  /** Answers one request: reads the current pipeline once and runs to the end on it. */
  async handle(
    request: Request,
    remoteAddress: string,
    completed?: Promise<void>,
  ): Promise<Response> {
    const pipeline = this.#pipeline;
    const started = performance.now();
    this.#inflight++;
    let routeName = "";
    let response: Response | undefined;
    let path: string | undefined;
    let client: string | undefined;
    let upstreamAnswered = false;
    // Every answer carries the request's id, the gateway's own refusals too.
    const incomingId = request.headers.get("x-request-id");
    const requestId = incomingId && REQUEST_ID_RE.test(incomingId)
      ? incomingId
      : crypto.randomUUID();
    try {
      let url: URL;
      try {
        // Deno makes the URL of the Host header and the target: a Host with
        // a "/", "?" or "#" in it would change the path that is routed and forwarded.
        if (!hasPlainHost(request)) throw new TypeError("invalid Host");
        url = new URL(request.url);
      } catch {
        response = problem(400, {
          detail: "The request URL is not valid (its target or its Host header)",
          headers: { "x-request-id": requestId },
        });
        return response;
      }
      if (request.method === "CONNECT") {
        // A tunnel is not a request an upstream can answer: the gateway opens none.
        response = problem(501, {
          detail: "The gateway does not open CONNECT tunnels",
          headers: { "x-request-id": requestId },
        });
        return response;
      }
      // `/%70ay` is `/pay`: routes match, and the upstream gets, the path with
      // escaped unreserved characters decoded (the URL parser resolved dot segments).
      if (url.pathname.includes("%")) {
        // A % that starts no escape makes the path ambiguous: left undecoded it
        // dodged its route (`/%70ay/x%`), decoded it could make new escapes.
        if (hasMalformedEscape(url.pathname)) {
          response = problem(400, {
            detail: "The request path holds a % that starts no percent-escape (write % as %25)",
            headers: { "x-request-id": requestId },
          });
          return response;
        }
        const decoded = decodeUnreserved(url.pathname);
        if (decoded !== url.pathname) url.pathname = decoded;
      }
      path = url.pathname;
      const route = pipeline.match(request.method, request.headers.get("host"), url.pathname);
      if (!route) {
        response = problem(404, {
          type: `${PROBLEM_TYPE_BASE}no-route`,
          title: "No route",
          detail: `No route matches ${request.method} ${url.pathname}`,
          headers: { "x-request-id": requestId },
        });
        return response;
      }
      routeName = route.info.name;
      const remoteAddr = normalizeIp(remoteAddress);
      const ctx = new Context(
        request,
        url,
        route.info,
        remoteAddr,
        pipeline.trusted.has(remoteAddr),
        requestId,
        completed,
      );
      try {
        response = await route.run(ctx);
        if (!(response instanceof Response)) {
          // A plugin that forgot `return next()`: its route's 500, logged with the request id.
          throw new TypeError(`The pipeline ended with ${typeof response}, not a Response`);
        }
        // Deno's server (2.9) ends the process on a control character in a
        // header it sends, and Headers take them: a custom plugin's answer is checked.
        if (route.custom && hasControlCharacters(response)) {
          // Its body (an upstream's, say) is read by no one: cancelled, its connection is freed.
          response.body?.cancel().catch(() => {});
          throw new TypeError("A response header value holds a control character");
        }
      } catch (error) {
        this.log.error("plugin failed", {
          route: routeName,
          request_id: requestId,
          error,
          // Where it was thrown: a custom plugin's file and line.
          at: thrownAt(error),
        });
        response = problem(500, {
          type: `${PROBLEM_TYPE_BASE}plugin-failed`,
          title: "Plugin failed",
          detail: "A plugin of this route failed; the gateway log has the details",
        });
      }
      // A sealed answer was built with its X-Request-Id (and reading its headers would cost).
      if (!isSealed(ctx, response)) {
        try {
          if (!response.headers.has("x-request-id")) {
            response.headers.set("x-request-id", requestId);
          }
        } catch {
          // A plugin returned a response with immutable headers.
        }
      }
      client = ctx.client?.id;
      upstreamAnswered = ctx.upstreamAnswered;
      if (this.#closing !== undefined) {
        // Draining: the client must not send its next request on this connection.
        try {
          response.headers.set("connection", "close");
        } catch {
          // Immutable headers: the listener's close ends the connection all the same.
        }
      }
      return response;
    } finally {
      // Until the answer is sent (a download streams long after its head), when
      // the server says when that is.
      if (completed) completed.then(this.#done, this.#done);
      else this.#inflight--;
      this.#count(routeName, outcomeOf(response, upstreamAnswered), started);
      // Every answer is logged at debug, the gateway's own 400, 404 and 501 too.
      if (this.log.enabled("debug")) {
        this.log.debug("request", {
          route: routeName || undefined,
          method: request.method,
          // Never the query (a token may ride in it), nor a URL Deno could not read.
          path: path ?? pathOf(request.url),
          status: response?.status,
          duration_ms: Math.round((performance.now() - started) * 1000) / 1000,
          client,
          request_id: requestId,
        });
      }
    }
  }

  // Label lookups cost on every request: each route's and outcome's metric
  // children are looked up once. Both label sets are bounded (routes, outcomes).
  #counters = new Map<string, { inc(): void }>();
  #durations = new Map<string, { observe(seconds: number): void }>();

  /**
   * Drops the series, and the children looked up for them, of routes
   * `pipeline` no longer has. A request still finishing on the replaced
   * pipeline may count one again: a scrape drops it (see readLiveRoutes).
   */
  #forgetRemovedRoutes(pipeline: Pipeline): void {
    const routes = pipeline.routeNames;
    for (const key of this.#counters.keys()) {
      const route = key.slice(0, key.indexOf("\u0000"));
      if (route !== "" && !routes.has(route)) this.#counters.delete(key);
    }
    for (const route of this.#durations.keys()) {
      if (!routes.has(route)) this.#durations.delete(route);
    }
    this.metrics.forgetRoutesBut(routes).catch(() => {});
  }

  #count(route: string, outcome: string, started: number): void {
    const key = `${route}\u0000${outcome}`;
    let counter = this.#counters.get(key);
    if (!counter) {
      counter = this.metrics.requests.labels(route, outcome);
      this.#counters.set(key, counter);
    }
    counter.inc();
    if (!route) return;
    let duration = this.#durations.get(route);
    if (!duration) {
      duration = this.metrics.requestDuration.labels(route);
      this.#durations.set(route, duration);
    }
    duration.observe((performance.now() - started) / 1000);
  }

  /**
   * Loads the config again and swaps in the new pipeline. A bad file or a
   * plugin that fails to load leaves the running pipeline serving. Reloads
   * run one at a time.
   */
  reload(trigger: string): Promise<ReloadResult> {
    const run = this.#reloadChain.then(() => this.#reload(trigger));
    this.#reloadChain = run.catch(() => {});
    return run;
  }

  async #reload(trigger: string): Promise<ReloadResult> {
    const current = this.#pipeline;
    let loaded: LoadedConfig;
    try {
      loaded = await loadConfig(this.configFile, { plugins: BUILTIN_PLUGINS, env: this.#env });
    } catch (error) {
      const issues = error instanceof ConfigError
        ? error.issues
        : [{ path: "", message: String((error as Error)?.message ?? error) }];
      // A plugin or keys file named by the failed edit is watched too: its fix reloads.
      if (error instanceof ConfigError && error.files.length > 0) {
        this.#watcher?.watch([
          ...new Set([current.loaded.file, ...current.loaded.pluginFiles, ...error.files]),
        ]);
      }
      return this.#fail(trigger, issues);
    }
    this.#watcher?.watch([loaded.file, ...loaded.pluginFiles]);
    if (trigger === "watch" && loaded.digest === current.loaded.digest) {
      // Back to what runs (a bad edit undone): the failure is over.
      this.#lastFailure = undefined;
      return { ok: true, version: current.version, changed: false };
    }
    const trusted = new CidrSet(loaded.config.trusted_proxies);
    // Another store (kind, address) gets a new store; the same one keeps its
    // connection and counters, and takes a new timeout and failure policy at the swap.
    const signature = storeSignature(loaded, this.#env);
    let store: ResilientStore;
    try {
      store = signature === this.#storeSignature
        ? this.#store
        : await createStore(loaded.config.store, {
          env: this.#env,
          metrics: this.metrics,
          log: this.log,
          candidate: true,
        });
    } catch (error) {
      // A store that cannot even be made is a failed reload like any other: logged, counted, shown.
      return this.#fail(trigger, [{
        path: "store",
        message: String((error as Error)?.message ?? error),
      }]);
    }
    if (store !== this.#store && store.health().state === "down") {
      // Swapped in, a store that does not answer would hand every decision to
      // the fallback, whose counters start empty: spent quotas would open again.
      const reason = store.health().last_error;
      await store.close().catch(() => {});
      return this.#fail(trigger, [{
        path: "store",
        message:
          `The new store does not answer (${reason}); the running store and pipeline keep serving (reload again once it is up)`,
      }]);
    }
    const build = this.#state.begin();
    let next: Pipeline;
    try {
      next = await buildPipeline(loaded, {
        version: current.version + 1,
        services: makeServices({
          metrics: this.metrics,
          trusted,
          fetch: this.#fetch,
          store,
          loaded,
          clients: this.#clients,
        }),
        trusted,
        state: build,
        log: this.log,
        createTimeoutMs: this.#createTimeoutMs,
      });
    } catch (error) {
      build.abort();
      if (store !== this.#store) await store.close();
      return this.#fail(
        trigger,
        error instanceof PipelineBuildError
          ? error.failures.map(({ yamlPath, line, message }) => ({ path: yamlPath, line, message }))
          : [{ path: "", message: String((error as Error)?.message ?? error) }],
      );
    }
    // The swap: one assignment. Requests in flight keep the pipeline they read.
    this.#pipeline = next;
    build.commit();
    this.#forgetRemovedRoutes(next);
    if (store === this.#store) {
      store.reconfigure({
        timeoutMs: loaded.config.store.timeout,
        onFailure: loaded.config.store.on_failure,
      });
    } else {
      const old = this.#store;
      this.#store = store;
      this.#storeSignature = signature;
      // Requests in flight may still hold the old store for a moment.
      const timer = setTimeout(() => {
        this.#retired.delete(timer);
        old.close().catch(() => {});
      }, 5_000);
      this.#retired.set(timer, old);
      this.log.info("store replaced", { store: store.kind });
    }
    this.#lastFailure = undefined;
    this.metrics.configReloads.inc({ result: "ok" });
    // Against what is bound, not the last file: an edit put back needs no restart.
    const wanted = new Map(boundSettings(loaded));
    const restartNeeded = this.#bound
      .filter(([name, value]) => JSON.stringify(value) !== JSON.stringify(wanted.get(name)))
      .map(([name]) => name);
    if (restartNeeded.length > 0) {
      this.log.warn("config changes that need a restart were not applied", { keys: restartNeeded });
    }
    this.log.info("config reloaded", {
      trigger,
      version: next.version,
      routes: next.routes.length,
    });
    return { ok: true, version: next.version, changed: true };
  }

  #fail(trigger: string, errors: ConfigIssue[]): ReloadResult {
    this.metrics.configReloads.inc({ result: "error" });
    this.#lastFailure = { at: new Date().toISOString(), trigger, file: this.configFile, errors };
    this.log.error("config reload failed; the running pipeline keeps serving", {
      trigger,
      file: this.configFile,
      version: this.#pipeline.version,
      errors,
    });
    return { ok: false, version: this.#pipeline.version, changed: false, errors };
  }

  /**
   * Stops accepting, lets requests in flight finish within the grace period
   * (`shutdown.grace`), then closes the admin listener. Resolves true when
   * every request finished in time.
   */
  shutdown(graceMs?: number): Promise<void> {
    this.#closing ??= this.#shutdown(graceMs ?? this.#pipeline.loaded.config.shutdown.grace);
    return this.#closing;
  }

  async #shutdown(graceMs: number): Promise<void> {
    this.#watcher?.close();
    for (const timer of this.#relistens) clearTimeout(timer);
    this.#relistens.clear();
    this.log.info("shutting down", { inflight: this.#inflight, grace_ms: graceMs });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const inTime = await Promise.race([
      // A listener that stopped on its own has nothing to drain.
      this.#server.shutdown().then(() => true, () => true),
      new Promise<boolean>((resolve) => timer = setTimeout(() => resolve(false), graceMs)),
    ]);
    clearTimeout(timer);
    if (!inTime) {
      this.log.warn("grace period over with requests in flight", { inflight: this.#inflight });
    }
    await this.#admin.shutdown().catch(() => {});
    this.#state.clear();
    await this.#store.close();
    for (const [timer, old] of this.#retired) {
      clearTimeout(timer);
      await old.close().catch(() => {});
    }
    this.#retired.clear();
    this.#httpClient?.close();
    this.log.info("stopped", { drained: inTime });
  }
}

/** A plugin that refused to be created, as the config error naming its entry; others as they are. */
function asConfigError(file: string, error: unknown): unknown {
  if (!(error instanceof PipelineBuildError)) return error;
  return new ConfigError(
    file,
    error.failures.map(({ yamlPath, line, message }) => ({ path: yamlPath, line, message })),
    { cause: error },
  );
}

/** Warns when the admin API listens beyond loopback with no token. */
function warnIfAdminOpen(
  log: Logger,
  token: string,
  addr: { hostname: string; port: number },
): void {
  if (token || isLoopbackName(addr.hostname)) return;
  log.warn(
    "the admin API listens beyond this machine without a token: anyone who reaches it (a web page through DNS rebinding too) may read /status and reload; set admin.token or ADMIN_TOKEN",
    { admin: `${addr.hostname}:${addr.port}` },
  );
}

/**
 * Creates every plugin of a loaded config against a memory store, as a start
 * would, without listening or connecting to Redis, and throws
 * {@linkcode ConfigError} naming every one that refuses (a step missing before
 * it, say): `--check` catches what only a start found. The warnings a start
 * gives go to `log`.
 */
export async function checkPipelines(
  loaded: LoadedConfig,
  options: { log?: Logger; env?: EnvLookup } = {},
): Promise<void> {
  const trusted = new CidrSet(loaded.config.trusted_proxies);
  const metrics = new Metrics();
  const log = options.log ?? new Logger("error");
  const { admin } = loaded.config;
  warnIfAdminOpen(log, admin.token || options.env?.("ADMIN_TOKEN") || "", admin);
  const store = await createStore({ ...loaded.config.store, kind: "memory" }, {
    env: () => undefined,
    metrics,
    log,
  });
  const state = new StateRegistry();
  const build = state.begin();
  try {
    await buildPipeline(loaded, {
      version: 1,
      services: makeServices({
        metrics,
        trusted,
        fetch: () => Promise.reject(new Error("--check sends no requests")),
        store,
        loaded,
        clients: new RecentClients(),
      }),
      trusted,
      state: build,
      log,
    });
  } catch (error) {
    throw asConfigError(loaded.file, error);
  } finally {
    build.abort();
    state.clear();
    await store.close();
  }
}

function makeServices(parts: {
  metrics: Metrics;
  trusted: CidrSet;
  fetch: (input: string, init: RequestInit) => Promise<Response>;
  store: ResilientStore;
  loaded: LoadedConfig;
  clients: RecentClients;
}): GatewayServices {
  const { trusted } = parts;
  return {
    metrics: parts.metrics,
    isTrustedProxy: (address) => trusted.has(address),
    fetch: parts.fetch,
    store: parts.store,
    tiers: parts.loaded.config.tiers,
    keys: parts.loaded.keys,
    keyHashes: parts.loaded.keyHashes,
    clients: parts.clients,
  };
}

/** The settings only a start applies, by name. */
function boundSettings(loaded: LoadedConfig): [string, unknown][] {
  return [
    ["listen", loaded.config.listen],
    ["admin.port", loaded.config.admin.port],
    ["admin.hostname", loaded.config.admin.hostname],
  ];
}

/** What a store is: its kind and address. Its timeout and failure policy change in place. */
function storeSignature(loaded: LoadedConfig, env: EnvLookup): string {
  const { timeout: _timeout, on_failure: _onFailure, ...config } = loaded.config.store;
  const kind = storeKind(config, env);
  // The memory store has no connection: only another kind of store replaces it (and its counters).
  if (kind === "memory") return kind;
  return stableStringify({
    ...config,
    kind,
    env_url: env("REDIS_URL") ?? "",
  });
}

/**
 * Each route's gauges, from what its concurrency and circuit-breaker steps
 * report on /status (the breaker's state read now, so an open_for that has
 * passed shows half-open without a request).
 */
function routeGauges(pipeline: Pipeline): RouteGauges[] {
  return pipeline.routes.map((route) => {
    const gauges: RouteGauges = { route: route.info.name };
    for (const statusReport of route.statusReports) {
      // Only the built-in steps' figures: a custom plugin's report is no gauge.
      if (!statusReport.builtin) continue;
      const report = statusReport.read();
      const concurrency = report.concurrency as { inflight: number; queued: number } | undefined;
      if (typeof concurrency?.inflight === "number" && typeof concurrency.queued === "number") {
        gauges.inflight = (gauges.inflight ?? 0) + concurrency.inflight;
        gauges.queued = (gauges.queued ?? 0) + concurrency.queued;
      }
      const breakers = report.breaker as Record<string, BreakerState> | undefined;
      for (const state of Object.values(breakers ?? {})) {
        // Only the states a breaker has (a custom plugin may report a "breaker" of its own).
        if (Object.hasOwn(STATE_VALUE, state)) {
          gauges.breaker = Math.max(gauges.breaker ?? 0, STATE_VALUE[state]);
        }
      }
    }
    return gauges;
  });
}

/** The path of a request's URL, without its query; "-" when the URL has no path to show. */
function pathOf(url: string): string {
  const match = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]*(\/[^?#]*)?/i.exec(url);
  return match?.[1] ?? "-";
}

/** The gateway's own modules: a frame there is not where a plugin went wrong. */
const OWN_SOURCE = new URL("./", import.meta.url).href;

/**
 * Where a plugin threw: the first frame of the error's stack outside the
 * gateway's own modules (`file:line:column`, with the function when known);
 * none for a mistake the gateway found after the plugin returned (an answer
 * that is no Response), whose stack holds no plugin's frame.
 */
function thrownAt(error: unknown): string | undefined {
  const stack = (error as Error)?.stack;
  if (typeof stack !== "string") return undefined;
  for (const [, frame] of stack.matchAll(/^\s+at (.+)$/gm)) {
    if (frame!.includes(OWN_SOURCE) || frame!.includes("ext:")) continue;
    // Without the version a custom plugin is imported under (`?v=<digest>`).
    return frame!.replace(/\?v=[0-9a-f]+(?=:\d+:\d+)/, "");
  }
  return undefined;
}

function outcomeOf(response: Response | undefined, upstreamAnswered: boolean): string {
  if (!response) return "error";
  if (isClientClosed(response)) return "client_closed";
  if (!isGatewayAnswer(response)) {
    // The upstream's answer, passed on or rebuilt by a plugin; else a custom
    // plugin's own answer: no upstream was asked.
    if (upstreamAnswered) return "proxied";
    return response.status >= 500 ? "error" : response.status >= 400 ? "rejected" : "answered";
  }
  switch (response.status) {
    case 429:
      return "limited";
    case 404:
      return "no_route";
    case 401:
    case 403:
      return "rejected";
    case 502:
    case 504:
      return "upstream_error";
    case 503:
      return "unavailable";
    case 500:
      return "error";
    default:
      return "rejected";
  }
}

/** True when a header value of `response` holds a control character other than a tab. */
function hasControlCharacters(response: Response): boolean {
  for (const [, value] of response.headers) if (FIELD_CONTROLS.test(value)) return true;
  return false;
}
