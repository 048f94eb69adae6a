/**
 * The gateway's Prometheus metrics (prefix `sluice_`). Labels are routes,
 * outcomes, plugins and results: never a client or a key, whose number is
 * unbounded.
 */
import client from "prom-client";

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
  readonly requests: client.Counter<"route" | "outcome">;
  /** `sluice_request_duration_seconds{route}`: until the response headers leave. */
  readonly requestDuration: client.Histogram<"route">;
  /** `sluice_upstream_duration_seconds{route,status_class}`: until the upstream's headers arrive. */
  readonly upstreamDuration: client.Histogram<"route" | "status_class">;
  /** `sluice_config_reloads_total{result}` */
  readonly configReloads: client.Counter<"result">;

  constructor(options: MetricsOptions = {}) {
    const registry = new client.Registry();
    this.registry = registry;
    const registers = [registry];
    this.requests = new client.Counter({
      name: "sluice_requests_total",
      help: "Requests answered, by route and outcome.",
      labelNames: ["route", "outcome"],
      registers,
    });
    this.requestDuration = new client.Histogram({
      name: "sluice_request_duration_seconds",
      help: "Time from a request's arrival to its response headers, by route.",
      labelNames: ["route"],
      buckets: DURATION_BUCKETS,
      registers,
    });
    this.upstreamDuration = new client.Histogram({
      name: "sluice_upstream_duration_seconds",
      help: "Time the upstream took to send its response headers, by route and status class.",
      labelNames: ["route", "status_class"],
      buckets: DURATION_BUCKETS,
      registers,
    });
    this.configReloads = new client.Counter({
      name: "sluice_config_reloads_total",
      help: "Config reloads, by result (ok or error).",
      labelNames: ["result"],
      registers,
    });
    this.configReloads.inc({ result: "ok" }, 0);
    this.configReloads.inc({ result: "error" }, 0);
    if (options.processMetrics ?? true) {
      client.collectDefaultMetrics({ register: registry, prefix: "sluice_" });
    }
  }

  /** The Prometheus text exposition of every metric. */
  render(): Promise<string> {
    return this.registry.metrics();
  }

  /** The content type of {@linkcode Metrics.render}'s text. */
  get contentType(): string {
    return this.registry.contentType;
  }
}
