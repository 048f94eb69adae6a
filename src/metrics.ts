/**
 * The gateway's Prometheus metrics (prefix `sluice_`). Labels are routes,
 * outcomes, plugins and results: never a client or a key, whose number is
 * unbounded.
 */
import process from "node:process";
import client from "prom-client";
import { FastCounter, FastHistogram } from "./fast_metrics.ts";

const DURATION_BUCKETS = [
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
];

/** One route's gauges, as scraped: undefined where the route has no such step. */
export interface RouteGauges {
  route: string;
  /** Requests in flight under its concurrency limit. */
  inflight?: number;
  /** Requests waiting for a concurrency slot. */
  queued?: number;
  /** Its breakers' worst state: 0 closed, 1 half-open, 2 open. */
  breaker?: number;
}

/** Options for {@linkcode Metrics}. */
export interface MetricsOptions {
  /** Add the process metrics (CPU, memory, event loop). @default true */
  processMetrics?: boolean;
}

/** One registry with every metric of one gateway. */
export class Metrics {
  /** The prom-client registry; `/metrics` renders it. */
  readonly registry: client.Registry;
  /** `sluice_requests_total{route,outcome}` */
  readonly requests: FastCounter<"route" | "outcome">;
  /** `sluice_request_duration_seconds{route}`: until the response headers leave. */
  readonly requestDuration: FastHistogram<"route">;
  /** `sluice_upstream_duration_seconds{route,status_class}`: until the upstream's headers arrive. */
  readonly upstreamDuration: FastHistogram<"route" | "status_class">;
  /** `sluice_config_reloads_total{result}` */
  readonly configReloads: client.Counter<"result">;
  /** `sluice_limit_decisions_total{route,plugin,decision}` */
  readonly limitDecisions: FastCounter<"route" | "plugin" | "decision">;
  /** `sluice_store_duration_seconds`: one store call. */
  readonly storeDuration: FastHistogram;
  /** `sluice_store_errors_total{reason}`: timeouts and errors of store calls. */
  readonly storeErrors: client.Counter<"reason">;
  /** `sluice_shaper_delay_seconds{route}`: the wait the token-bucket shaper imposed. */
  readonly shaperDelay: client.Histogram<"route">;
  /** `sluice_inflight{route}`: requests in flight to the upstream under a concurrency limit. */
  readonly inflight: client.Gauge<"route">;
  /** `sluice_queue_depth{route}`: requests waiting for a concurrency slot. */
  readonly queueDepth: client.Gauge<"route">;
  /** `sluice_breaker_state{route}`: 0 closed, 1 half-open, 2 open (the worst target of the route). */
  readonly breakerState: client.Gauge<"route">;

  constructor(options: MetricsOptions = {}) {
    const registry = new client.Registry();
    this.registry = registry;
    const registers = [registry];
    // The metrics every request touches are fast ones, registered in the same order.
    const fast = <M extends FastCounter | FastHistogram>(metric: M): M => {
      registry.registerMetric(metric as unknown as client.Metric);
      return metric;
    };
    this.requests = fast(
      new FastCounter({
        name: "sluice_requests_total",
        help: "Requests answered, by route and outcome.",
        labelNames: ["route", "outcome"],
      }),
    );
    this.requestDuration = fast(
      new FastHistogram({
        name: "sluice_request_duration_seconds",
        help: "Time from a request's arrival to its response headers, by route.",
        labelNames: ["route"],
        buckets: DURATION_BUCKETS,
      }),
    );
    this.upstreamDuration = fast(
      new FastHistogram({
        name: "sluice_upstream_duration_seconds",
        help: "Time the upstream took to send its response headers, by route and status class.",
        labelNames: ["route", "status_class"],
        buckets: DURATION_BUCKETS,
      }),
    );
    this.configReloads = new client.Counter({
      name: "sluice_config_reloads_total",
      help: "Config reloads, by result (ok or error).",
      labelNames: ["result"],
      registers,
    });
    this.limitDecisions = fast(
      new FastCounter({
        name: "sluice_limit_decisions_total",
        help: "Decisions of the limit plugins, by route, plugin and decision.",
        labelNames: ["route", "plugin", "decision"],
      }),
    );
    this.storeDuration = fast(
      new FastHistogram({
        name: "sluice_store_duration_seconds",
        help: "Time of one call to the rate-limit store.",
        buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25],
      }),
    );
    this.storeErrors = new client.Counter({
      name: "sluice_store_errors_total",
      help: "Store calls that failed or timed out, by reason.",
      labelNames: ["reason"],
      registers,
    });
    this.shaperDelay = new client.Histogram({
      name: "sluice_shaper_delay_seconds",
      help: "Wait imposed by the token-bucket shaper on requests it delayed, by route.",
      labelNames: ["route"],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    // Read when scraped from the pipeline serving now: setting a gauge on every
    // request cost the concurrency plugin measurably, and a gauge set by a
    // plugin outlived the step (or was set by a reload that then failed).
    const gauges = () => this.#routeGauges();
    const gauge = (name: string, help: string, read: (g: RouteGauges) => number | undefined) =>
      new client.Gauge({
        name,
        help,
        labelNames: ["route"],
        registers,
        collect() {
          this.reset();
          for (const g of gauges()) {
            const value = read(g);
            if (value !== undefined) this.set({ route: g.route }, value);
          }
        },
      });
    this.inflight = gauge(
      "sluice_inflight",
      "Requests in flight to the upstream under a concurrency limit, by route.",
      (g) => g.inflight,
    );
    this.queueDepth = gauge(
      "sluice_queue_depth",
      "Requests waiting for a concurrency slot, by route.",
      (g) => g.queued,
    );
    this.breakerState = gauge(
      "sluice_breaker_state",
      "Circuit breaker state by route: 0 closed, 1 half-open, 2 open.",
      (g) => g.breaker,
    );
    this.storeErrors.inc({ reason: "timeout" }, 0);
    this.storeErrors.inc({ reason: "error" }, 0);
    this.configReloads.inc({ result: "ok" }, 0);
    this.configReloads.inc({ result: "error" }, 0);
    if (options.processMetrics ?? true) processMetrics(registers);
  }

  #routeGauges: () => RouteGauges[] = () => [];

  /**
   * Forgets the series of every route but `routes` (and the no-route one): a
   * reload that removes or renames routes would otherwise leave each name
   * ever used in every scrape, frozen, and in memory.
   */
  async forgetRoutesBut(routes: ReadonlySet<string>): Promise<void> {
    const gone = (labels: { route?: string | number }) =>
      labels.route !== undefined && labels.route !== "" && !routes.has(String(labels.route));
    this.requests.removeWhere(gone);
    this.requestDuration.removeWhere(gone);
    this.upstreamDuration.removeWhere(gone);
    this.limitDecisions.removeWhere(gone);
    const delays = await this.shaperDelay.get();
    const stale = delays.values.filter((value) => gone(value.labels));
    for (const route of new Set(stale.map((value) => String(value.labels.route)))) {
      this.shaperDelay.remove({ route });
    }
  }

  /** Where the per-route gauges (`sluice_inflight`, `sluice_queue_depth`, `sluice_breaker_state`) are read from when scraped. */
  readRouteGauges(source: () => RouteGauges[]): void {
    this.#routeGauges = source;
  }

  #liveRoutes: (() => ReadonlySet<string>) | undefined;

  /**
   * Where the names of the routes serving now are read from when scraped: a
   * series of another route (one a reload removed, brought back by a request
   * still finishing on the replaced pipeline) is dropped then.
   */
  readLiveRoutes(source: () => ReadonlySet<string>): void {
    this.#liveRoutes = source;
  }

  /** The Prometheus text exposition of every metric. */
  async render(): Promise<string> {
    const live = this.#liveRoutes?.();
    if (live) await this.forgetRoutesBut(live);
    return await this.registry.metrics();
  }

  /** The content type of {@linkcode Metrics.render}'s text. */
  get contentType(): string {
    return this.registry.contentType;
  }
}

/**
 * The process's CPU, memory and start time, read from Deno when scraped.
 * (prom-client's default collectors read /proc, which Deno opens only with
 * --allow-all: under `deno task start` they showed 0.)
 */
function processMetrics(registers: client.Registry[]): void {
  const startSeconds = Math.round(Date.now() / 1000 - performance.now() / 1000);
  // A total only grows: a counter (as prom-client's own process_cpu_seconds_total), set when scraped.
  new client.Counter({
    name: "sluice_process_cpu_seconds_total",
    help: "User and system CPU time spent, in seconds.",
    registers,
    collect() {
      const { user, system } = process.cpuUsage();
      this.reset();
      this.inc((user + system) / 1e6);
    },
  });
  const gauges: [name: string, help: string, read: () => number][] = [
    [
      "sluice_process_resident_memory_bytes",
      "Resident memory size in bytes.",
      () => Deno.memoryUsage().rss,
    ],
    ["sluice_process_heap_bytes", "V8 heap in use, in bytes.", () => Deno.memoryUsage().heapUsed],
    [
      "sluice_process_start_time_seconds",
      "Start time of the process since the Unix epoch, in seconds.",
      () => startSeconds,
    ],
  ];
  for (const [name, help, read] of gauges) {
    new client.Gauge({
      name,
      help,
      registers,
      collect() {
        this.set(read());
      },
    });
  }
}
