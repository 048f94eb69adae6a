/**
 * The `circuit-breaker` plugin: per upstream target, stops calling a target
 * that keeps failing (5xx, timeouts, refused or reset connections). While
 * every target of the route is open it answers 503 at once with Retry-After
 * = the time left; the proxy skips open targets of a pool.
 */
import { z } from "zod";
import { type BreakerOptions, BREAKERS, BreakerSet, circuitOpen } from "../breaker.ts";
import { duration } from "../config/schema.ts";
import { definePlugin } from "../plugin.ts";
import { waitPastSpentQuota } from "../response_headers.ts";

const DEFAULT_FAILURE_STATUSES = [500, 502, 503, 504];

/** Pipelines built so far: a later build's settings win over an earlier one's. */
let builds = 0;

export default definePlugin({
  name: "circuit-breaker",
  options: z.strictObject({
    failure_ratio: z.number().gt(0).max(1).default(0.5),
    min_requests: z.number().int().min(1).default(20),
    window: duration({ window: true }).default(10_000),
    open_for: duration().default(30_000),
    probes: z.number().int().min(1).default(3),
    /** Upstream statuses that count as failures. */
    failure_statuses: z.array(z.number().int().min(100).max(599)).min(1).default(
      DEFAULT_FAILURE_STATUSES,
    ),
  }),
  create(opts, { route, pipeline, position, keep, log, onStatus }) {
    const upstream = route.upstream;
    if (!upstream) throw new Error("circuit-breaker needs the route to have an upstream");
    if (!pipeline.slice(position + 1).includes("proxy")) {
      throw new Error("circuit-breaker needs a proxy step after it in the pipeline");
    }
    const targets = upstream.targets;
    const settings: BreakerOptions = {
      failureRatio: opts.failure_ratio,
      minRequests: opts.min_requests,
      windowMs: opts.window,
      openForMs: opts.open_for,
      probes: opts.probes,
      failureStatuses: new Set(opts.failure_statuses),
    };
    const generation = ++builds;
    // Kept across hot swaps, new options too: an open breaker stays open.
    const breakers = keep(() => new BreakerSet(settings), { acrossOptions: true });
    breakers.onChange = (target, from, to) => {
      log.warn("circuit breaker changed state", { target, from, to });
    };
    onStatus(() => ({ breaker: breakers.states(targets) }));

    return function circuitBreaker(ctx, next) {
      // This pipeline's settings apply from its first request (a build that fails changes none).
      breakers.configure(settings, generation);
      const now = Date.now();
      if (!targets.some((target) => breakers.of(target).available(now))) {
        return circuitOpen(route.name, waitPastSpentQuota(ctx, breakers.openLeft(targets, now)));
      }
      ctx.set(BREAKERS, breakers);
      return next();
    };
  },
});
