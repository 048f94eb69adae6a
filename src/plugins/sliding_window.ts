/**
 * The `sliding-window` plugin: a quota per client per route, decided in one
 * atomic store call for every limit at once. `log` is exact (a sorted set of
 * admitted units), `counter` a two-bucket weighted estimate, `fixed` windows
 * aligned to the store's clock.
 */
import { z } from "zod";
import { duration, policyName, rate } from "../config/schema.ts";
import { definePlugin, type RequestContext } from "../plugin.ts";
import { problem, PROBLEM_TYPE_BASE } from "../problem.ts";
import { type PolicyReport, toSeconds } from "../ratelimit_headers.ts";
import type { WindowDecision, WindowLimit } from "../store/store.ts";
import {
  clientIdOf,
  clientKey,
  decisionCounters,
  formatRate,
  instanceSuffix,
  nextWithHeaders,
  refusal,
  storeUnavailable,
} from "./_limit.ts";

const COST_HEADER_RE = /^header:[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;
const DIGITS = /^\d{1,7}$/;
const MAX_COST = 1_000_000;
/**
 * The log keeps one sorted-set member per unit in Redis: a cost of 100,000
 * held Redis for a third of a second, for every client of every gateway.
 */
const MAX_LOG_COST = 1_000;

const options = z.strictObject({
  /** `tier` (the caller's tier's limit and window) or a number of requests per `window`. */
  limit: z.union([z.literal("tier"), z.number().int().positive()]).optional(),
  window: duration({ window: true }).optional(),
  /** Several limits decided together, such as `[10/s, 1000/h]`. */
  limits: z.array(rate()).min(1).optional(),
  algorithm: z.enum(["log", "counter", "fixed"]).default("log"),
  /** Units a request takes: a number, or `header:<name>` to read it from the request. */
  cost: z.union([
    z.number().int().min(1),
    z.string().regex(COST_HEADER_RE, { error: "Expected a number or header:<name>" }),
  ]).default(1),
  /** Count and report, never reject. */
  shadow: z.boolean().default(false),
  headers: z.enum(["none", "legacy", "ietf", "both"]).default("both"),
  /** The policy name in the headers; defaults to the tier name or the limit written as N/window. */
  name: policyName().optional(),
}).superRefine((value, ctx) => {
  const hasLimit = value.limit !== undefined;
  const hasLimits = value.limits !== undefined;
  if (hasLimit === hasLimits) {
    ctx.addIssue({
      code: "custom",
      path: [],
      message: "Write either limit (tier, or a number with window) or limits: [10/s, 1000/h]",
    });
  } else if (typeof value.limit === "number" && value.window === undefined) {
    ctx.addIssue({
      code: "custom",
      path: ["window"],
      message: "A numeric limit needs a window, such as 1m",
    });
  } else if ((value.limit === "tier" || hasLimits) && value.window !== undefined) {
    ctx.addIssue({
      code: "custom",
      path: ["window"],
      message: value.limit === "tier"
        ? "limit: tier takes the window from the tier"
        : "limits carry their own windows",
    });
  }
  for (const [index, limit] of (value.limits ?? []).entries()) {
    if (!Number.isInteger(limit.count)) {
      ctx.addIssue({
        code: "custom",
        path: ["limits", index],
        message: "A limit's count must be a whole number",
      });
    }
  }
});

/** The options of `sliding-window`, after validation. */
export type SlidingWindowOptions = z.output<typeof options>;

interface Policy {
  name: string;
  limits: WindowLimit[];
  names: string[];
}

export default definePlugin({
  name: "sliding-window",
  options,
  create(opts, { route, gateway, pipeline, position, onClientQuery }) {
    const maxCost = opts.algorithm === "log" ? MAX_LOG_COST : MAX_COST;
    if (typeof opts.cost === "number" && opts.cost > maxCost) {
      throw new Error(
        `cost ${opts.cost} is above ${maxCost}, the most the ${opts.algorithm} algorithm takes${
          opts.algorithm === "log" ? " (it keeps every unit: use counter or fixed)" : ""
        }`,
      );
    }
    if (opts.limit === "tier") {
      if (!pipeline.slice(0, position).includes("tier")) {
        throw new Error("limit: tier needs a tier step before it in the pipeline");
      }
      if (Object.keys(gateway.tiers).length === 0) {
        throw new Error("limit: tier needs tiers defined at the top of the config");
      }
    }
    const store = gateway.store;
    // Two sliding-window steps in one route count apart.
    const suffix = instanceSuffix(pipeline, position);
    const counters = decisionCounters(gateway.metrics, route.name, "sliding-window", [
      "allowed",
      "limited",
      "shadow_limited",
      "unavailable",
    ]);

    // Fixed policies are built once; tier policies once per tier.
    const fixed: Policy | undefined = opts.limits
      ? {
        name: opts.name ??
          opts.limits.map((l) => formatRate(l.count, l.periodMs)).join(","),
        limits: opts.limits.map((l) => ({ limit: l.count, windowMs: l.periodMs })),
        // Each policy needs its own name: the name ties a RateLimit item to its policy.
        names: opts.limits.map((l) => {
          const rate = formatRate(l.count, l.periodMs);
          if (opts.name === undefined) return rate;
          return opts.limits!.length === 1 ? opts.name : `${opts.name}-${rate}`;
        }),
      }
      : typeof opts.limit === "number"
      ? {
        name: opts.name ?? formatRate(opts.limit, opts.window!),
        limits: [{ limit: opts.limit, windowMs: opts.window! }],
        names: [opts.name ?? formatRate(opts.limit, opts.window!)],
      }
      : undefined;
    const tierPolicies = new Map<string, Policy>();
    for (const [name, tier] of Object.entries(gateway.tiers)) {
      tierPolicies.set(name, {
        name: opts.name ?? name,
        limits: [{ limit: tier.limit, windowMs: tier.window }],
        names: [opts.name ?? name],
      });
    }
    const policyFor = (tier: string | undefined): Policy | undefined =>
      fixed ?? (tier === undefined ? undefined : tierPolicies.get(tier));

    const costHeader = typeof opts.cost === "string"
      ? opts.cost.slice("header:".length)
      : undefined;
    const staticCost = typeof opts.cost === "number" ? opts.cost : 1;

    const reports = (policy: Policy, decision: WindowDecision): PolicyReport[] =>
      decision.states.map((state, i) => ({
        name: policy.names[i]!,
        quota: state.limit,
        windowSeconds: toSeconds(state.windowMs),
        remaining: state.remaining,
        resetSeconds: toSeconds(state.resetMs),
      }));

    onClientQuery(async (clientId) => {
      const tier = gateway.clients.tierOf(clientId, route.name);
      const policy = policyFor(tier) ?? (opts.limit === "tier" ? undefined : fixed);
      if (!policy) return undefined;
      const decision = await store.window({
        key: clientKey(route.name, clientId) + suffix,
        algorithm: opts.algorithm,
        limits: policy.limits,
        cost: 0,
      });
      return {
        plugin: "sliding-window",
        algorithm: opts.algorithm,
        tier: tier ?? null,
        source: decision.source,
        limits: decision.states.map((state, i) => ({
          policy: policy.names[i],
          limit: state.limit,
          window_seconds: toSeconds(state.windowMs),
          remaining: state.remaining,
          reset_seconds: toSeconds(state.resetMs),
        })),
      };
    });

    function costOf(ctx: RequestContext): number | Response {
      if (costHeader === undefined) return staticCost;
      const text = ctx.request.headers.get(costHeader);
      if (text === null) return 1;
      // Digits only: "", "0x10" and "1e3" are numbers to Number(), and a cost
      // of 0 would let a client choose to spend nothing.
      const cost = DIGITS.test(text) ? Number(text) : NaN;
      if (!(cost >= 1 && cost <= maxCost)) {
        return problem(400, {
          type: `${PROBLEM_TYPE_BASE}invalid-cost`,
          title: "Invalid cost",
          detail: `The ${costHeader} header must be a whole number from 1 to ${maxCost}`,
        });
      }
      return cost;
    }

    return async function slidingWindow(ctx, next) {
      const clientId = clientIdOf(ctx);
      const policy = policyFor(ctx.tier);
      if (!policy) {
        throw new Error(`No limits for tier "${ctx.tier}" on route "${route.name}"`);
      }
      // Shadow mode never refuses: a bad cost header counts as 1 there.
      let cost = costOf(ctx);
      if (cost instanceof Response) {
        if (!opts.shadow) return cost;
        cost = 1;
      }
      // More than a limit allows in a whole window can never pass: no Retry-After would be true.
      for (let i = 0; i < policy.limits.length && !opts.shadow; i++) {
        const limit = policy.limits[i]!.limit;
        if (cost > limit) {
          return problem(400, {
            type: `${PROBLEM_TYPE_BASE}cost-exceeds-limit`,
            title: "Cost exceeds the limit",
            detail: `This request costs ${cost}; quota "${
              policy.names[i]
            }" allows ${limit} per window, so it can never pass`,
          });
        }
      }
      const decision = await store.window({
        key: clientKey(route.name, clientId) + suffix,
        algorithm: opts.algorithm,
        limits: policy.limits,
        cost,
        passesAnyway: opts.shadow,
      });
      const report = reports(policy, decision);
      if (!decision.allowed) {
        if (decision.source === "deny") {
          counters.unavailable.inc();
          // Shadow mode never refuses, not even for a store that is down.
          if (!opts.shadow) return storeUnavailable(decision.retryAfterMs);
        } else if (opts.shadow) {
          counters.shadow_limited.inc();
        } else {
          counters.limited.inc();
          const violated = decision.violated >= 0 ? decision.violated : 0;
          const retryAfter = Math.max(1, Math.ceil(decision.retryAfterMs / 1000));
          const name = policy.names[violated]!;
          // The limit and the window are in the rate-limit headers; the body
          // names the policy. A small answer is sent in one write.
          return refusal(ctx, report, opts.headers, {
            type: `${PROBLEM_TYPE_BASE}quota-exceeded`,
            title: "Quota exceeded",
            detail: `Quota "${name}" is spent; retry in ${retryAfter} s`,
            retryAfterSeconds: retryAfter,
            extensions: { policy: name },
          });
        }
      } else {
        counters.allowed.inc();
      }
      return await nextWithHeaders(ctx, next, report, opts.headers, !opts.shadow);
    };
  },
});
