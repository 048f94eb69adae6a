/**
 * The `token-bucket` plugin, the shaper: a request that finds no token waits
 * for one up to `max_delay` (smoothing bursts instead of dropping them), else
 * it is answered 429 at once. Reservations are taken in arrival order, so a
 * later request never overtakes an earlier one; a client that hangs up while
 * waiting gives its tokens back.
 */
import { z } from "zod";
import { abortableDelay } from "../abortable_delay.ts";
import { duration, rate } from "../config/schema.ts";
import { definePlugin } from "../plugin.ts";
import { problem, PROBLEM_TYPE_BASE } from "../problem.ts";
import { applyRateLimitHeaders, toSeconds, withRateLimitHeaders } from "../ratelimit_headers.ts";
import { clientIdOf, clientKey, decisionCounters, formatRate, storeUnavailable } from "./_limit.ts";

export default definePlugin({
  name: "token-bucket",
  options: z.strictObject({
    /** Tokens added per period: `50/s`, `600/m`. */
    rate: rate(),
    /** The most tokens the bucket holds (the largest burst passed at once). Defaults to the rate's count. */
    burst: z.number().int().positive().optional(),
    /** The longest a request waits for a token before it is refused. */
    max_delay: duration().default(0),
    /** `route`: one bucket protects the upstream; `client`: one bucket per caller. */
    scope: z.enum(["route", "client"]).default("route"),
    cost: z.number().int().min(1).default(1),
    headers: z.enum(["none", "legacy", "ietf", "both"]).default("both"),
    name: z.string().min(1).optional(),
  }),
  create(opts, { route, gateway }) {
    const burst = opts.burst ?? Math.max(1, Math.floor(opts.rate.count));
    const name = opts.name ?? formatRate(opts.rate.count, opts.rate.periodMs);
    const store = gateway.store;
    const counters = decisionCounters(gateway.metrics, route.name, "token-bucket", [
      "allowed",
      "delayed",
      "limited",
      "unavailable",
    ]);
    const delays = gateway.metrics.shaperDelay.labels({ route: route.name });
    const routeKey = clientKey(route.name, "bucket");
    // The latest time a waiter of this instance was promised, per bucket: a
    // newcomer never goes before it, even after a waiter gave tokens back.
    const lastSlot = new Map<string, number>();
    const query = (key: string, cost: number) => ({
      key,
      rate: opts.rate.count,
      periodMs: opts.rate.periodMs,
      burst,
      cost,
      maxDelayMs: opts.max_delay,
    });

    return async function tokenBucket(ctx, next) {
      const key = opts.scope === "route"
        ? routeKey
        : `${clientKey(route.name, clientIdOf(ctx))}:bucket`;
      const decision = await store.bucket(query(key, opts.cost));
      const report = [{
        name,
        quota: opts.rate.count,
        windowSeconds: toSeconds(opts.rate.periodMs),
        remaining: decision.remaining,
        resetSeconds: toSeconds(decision.resetMs),
      }];
      if (!decision.allowed) {
        if (decision.source === "deny") {
          counters.unavailable.inc();
          return storeUnavailable(decision.retryAfterMs);
        }
        counters.limited.inc();
        const retryAfter = Math.max(1, Math.ceil(decision.retryAfterMs / 1000));
        const response = problem(429, {
          type: `${PROBLEM_TYPE_BASE}rate-exceeded`,
          title: "Rate exceeded",
          detail:
            `The rate "${name}" with bursts of ${burst} is spent for now; retry in ${retryAfter} s`,
          retryAfterSeconds: retryAfter,
          extensions: { policy: name, retry_after_seconds: retryAfter },
        });
        applyRateLimitHeaders(response.headers, report, opts.headers);
        return response;
      }
      const now = Date.now();
      const slot = Math.max(now + decision.delayMs, lastSlot.get(key) ?? 0);
      if (slot > now) {
        lastSlot.set(key, slot);
        const delay = slot - now;
        counters.delayed.inc();
        delays.observe(delay / 1000);
        const waited = await abortableDelay(delay, ctx.signal);
        if (lastSlot.get(key) === slot) lastSlot.delete(key);
        if (!waited) {
          // The client hung up: its tokens go back to the bucket.
          await store.bucket(query(key, -opts.cost));
          return new Response(null, { status: 499 });
        }
      } else {
        counters.allowed.inc();
      }
      return withRateLimitHeaders(await next(), report, opts.headers);
    };
  },
});
