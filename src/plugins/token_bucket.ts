/**
 * The `token-bucket` plugin, the shaper: a request that finds no token waits
 * for one up to `max_delay` (smoothing bursts instead of dropping them), else
 * it is answered 429 at once. Reservations are taken in arrival order, so a
 * later request never overtakes an earlier one; a client that hangs up while
 * waiting gives its tokens back. A fast bucket is leased in 10 ms slices, so
 * shaping that does not shape costs one store call per slice, not per request.
 */
import { z } from "zod";
import { abortableDelay } from "../abortable_delay.ts";
import { rememberBounded } from "../bounded_map.ts";
import { duration, policyName, rate } from "../config/schema.ts";
import { definePlugin } from "../plugin.ts";
import { clientClosed, PROBLEM_TYPE_BASE } from "../problem.ts";
import { type PolicyReport, toSeconds } from "../ratelimit_headers.ts";
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
import type { SourcedBucketDecision } from "../store/store.ts";

/** How many milliseconds of tokens one lease takes. */
const LEASE_WINDOW_MS = 10;
/** How long leased tokens stay spendable; what is left then lapses. */
const LEASE_TTL_MS = 50;
const LEASES_MAX = 10_000;
/** After a lease lapses unspent, no lease for this long, doubling while they keep lapsing. */
const NO_LEASE_FIRST_MS = 250;
const NO_LEASE_MAX_MS = 2_000;

interface Lease {
  tokens: number;
  until: number;
  decision: SourcedBucketDecision;
  /** When it was taken, and the most the store's bucket held just after. */
  at: number;
  level: number;
}

export default definePlugin({
  name: "token-bucket",
  options: z.strictObject({
    /** Tokens added per period: `50/s`, `600/m`. */
    rate: rate(),
    /** The most tokens the bucket holds (the largest burst passed at once). Defaults to the rate's count. */
    burst: z.number().int().positive().optional(),
    /** The longest a request waits for a token before it is refused. */
    max_delay: duration({ timer: true }).default(0),
    /** `route`: one bucket protects the upstream; `client`: one bucket per caller. */
    scope: z.enum(["route", "client"]).default("route"),
    cost: z.number().int().min(1).default(1),
    headers: z.enum(["none", "legacy", "ietf", "both"]).default("both"),
    name: policyName().optional(),
  }).superRefine((value, ctx) => {
    // The quota in the rate-limit headers is a whole number (an sf-integer).
    // (A rate that did not parse has its own error already.)
    if (typeof value.rate === "object" && !Number.isInteger(value.rate.count)) {
      ctx.addIssue({
        code: "custom",
        path: ["rate"],
        message: "A rate's count must be a whole number: write 30/m, not 0.5/s",
      });
    }
  }),
  create(opts, { route, gateway, pipeline, position, onClientQuery }) {
    const burst = opts.burst ?? Math.max(1, Math.floor(opts.rate.count));
    if (opts.cost > burst) {
      throw new Error(
        `cost ${opts.cost} is more than the bucket holds (burst ${burst}): no request could pass`,
      );
    }
    const name = opts.name ?? formatRate(opts.rate.count, opts.rate.periodMs);
    const store = gateway.store;
    const counters = decisionCounters(gateway.metrics, route.name, "token-bucket", [
      "allowed",
      "delayed",
      "limited",
      "unavailable",
    ]);
    const delays = gateway.metrics.shaperDelay.labels({ route: route.name });
    // Two token-bucket steps in one route fill apart.
    const suffix = instanceSuffix(pipeline, position);
    const routeKey = clientKey(route.name, "bucket") + suffix;
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

    // A fast bucket is leased: one store call takes this request's tokens and
    // LEASE_WINDOW_MS more, which this instance then spends without a call.
    // A slow bucket (fewer than two requests' tokens per lease window) is
    // asked for every request, and so is any bucket with requests waiting.
    const leaseSize = Math.min(
      Math.floor(burst / 4),
      Math.floor((opts.rate.count * LEASE_WINDOW_MS) / opts.rate.periodMs),
    );
    const leases = new Map<string, Lease>();

    // One lease call at a time per bucket: requests that arrive meanwhile wait
    // for it and spend from it, instead of each leasing (and wasting) a slice.
    const leasing = new Map<string, Promise<SourcedBucketDecision | undefined>>();
    const noLeaseUntil = new Map<string, number>();
    // How long the last unspent lease of a bucket stopped leasing.
    const pauses = new Map<string, number>();

    const perMs = opts.rate.count / opts.rate.periodMs;

    function fromLease(key: string, now = Date.now()): SourcedBucketDecision | undefined {
      const lease = leases.get(key);
      if (!lease) return undefined;
      if (lease.until <= now) {
        // Lapsed with tokens unspent: this instance sees too few requests to
        // lease; it asks per request for a while, and wastes none of the bucket.
        leases.delete(key);
        if (lease.tokens >= opts.cost) pauseLeasing(key, now);
        return undefined;
      }
      // Leased tokens are still in the bucket, for this instance: the store,
      // refilling, must not push the two past burst. What the true bucket
      // would have dropped over its brim leaves the lease (the store's level
      // is taken at its highest, so this errs on the safe side).
      const room = burst - (lease.level + (now - lease.at) * perMs);
      if (lease.tokens > room) lease.tokens = room > 0 ? Math.floor(room) : 0;
      if (lease.tokens < opts.cost) return undefined;
      lease.tokens -= opts.cost;
      // Spent to the end: this instance is busy enough to lease.
      if (lease.tokens < opts.cost && pauses.size > 0) pauses.delete(key);
      return lease.decision;
    }

    /**
     * No lease for a while, longer each time in a row: a lease that lapsed
     * unspent took tokens other instances needed, and a bucket that cannot
     * spare a slice is near its limit, where a lease is a waste.
     */
    function pauseLeasing(key: string, now: number): void {
      const pause = Math.min(NO_LEASE_MAX_MS, 2 * (pauses.get(key) ?? NO_LEASE_FIRST_MS / 2));
      rememberBounded(pauses, key, pause, LEASES_MAX);
      rememberBounded(noLeaseUntil, key, now + pause, LEASES_MAX);
    }

    /** The common case, decided at once: tokens from this instance's lease. */
    function leased(key: string, now: number): SourcedBucketDecision | undefined {
      if (leaseSize < 2 * opts.cost || lastSlot.has(key)) return undefined;
      if (noLeaseUntil.size > 0 && (noLeaseUntil.get(key) ?? 0) > now) return undefined;
      return fromLease(key, now);
    }

    // Requests served from one lease share its decision, and so its report.
    let lastDecision: SourcedBucketDecision | undefined;
    let lastReport: PolicyReport[] = [];
    function reportOf(decision: SourcedBucketDecision): PolicyReport[] {
      if (decision !== lastDecision) {
        lastDecision = decision;
        lastReport = [{
          name,
          quota: opts.rate.count,
          windowSeconds: toSeconds(opts.rate.periodMs),
          // A burst above the rate's count holds more than the quota: no more is said to remain.
          remaining: Math.min(decision.remaining, opts.rate.count),
          resetSeconds: toSeconds(decision.resetMs),
        }];
      }
      return lastReport;
    }

    if (opts.scope === "client") {
      // /clients/{id}: the client's bucket as the store holds it (cost 0 takes nothing).
      onClientQuery(async (clientId) => {
        const decision = await store.bucket(
          query(`${clientKey(route.name, clientId)}:bucket${suffix}`, 0),
        );
        const [report] = reportOf(decision);
        return {
          plugin: "token-bucket",
          source: decision.source,
          limits: [{
            policy: report!.name,
            limit: report!.quota,
            window_seconds: report!.windowSeconds,
            burst,
            remaining: report!.remaining,
            reset_seconds: report!.resetSeconds,
          }],
        };
      });
    }

    async function lease(key: string): Promise<SourcedBucketDecision | undefined> {
      const now = Date.now();
      const batch = await store.bucket({ ...query(key, opts.cost + leaseSize), maxDelayMs: 0 });
      if (batch.allowed && batch.delayMs === 0) {
        noLeaseUntil.delete(key);
        rememberBounded(leases, key, {
          tokens: leaseSize,
          until: now + LEASE_TTL_MS,
          decision: batch,
          at: now,
          // `remaining` is rounded down: one more is at least what the bucket held.
          level: Math.min(burst, batch.remaining + 1),
        }, LEASES_MAX);
        return batch;
      }
      leases.delete(key);
      // Near its limit the bucket cannot spare a slice: ask per request for a while,
      // instead of a failed lease call before each request's own.
      pauseLeasing(key, now);
      return batch.source === "deny" ? batch : undefined;
    }

    async function decide(key: string): Promise<SourcedBucketDecision> {
      if (
        leaseSize < 2 * opts.cost || lastSlot.has(key) || (noLeaseUntil.get(key) ?? 0) > Date.now()
      ) {
        return await store.bucket(query(key, opts.cost));
      }
      const leased = fromLease(key);
      if (leased) return leased;
      const pending = leasing.get(key);
      if (pending) {
        await pending;
        const shared = fromLease(key);
        if (shared) return shared;
      } else {
        const call = lease(key).finally(() => leasing.delete(key));
        leasing.set(key, call);
        // The leasing request's own tokens came with the lease.
        const own = await call;
        if (own) return own;
      }
      // Too few tokens for a lease: this request alone, waiting if it must.
      return await store.bucket(query(key, opts.cost));
    }

    return async function tokenBucket(ctx, next) {
      const key = opts.scope === "route"
        ? routeKey
        : `${clientKey(route.name, clientIdOf(ctx))}:bucket${suffix}`;
      const decision = leased(key, Date.now()) ?? await decide(key);
      const report = reportOf(decision);
      if (!decision.allowed) {
        if (decision.source === "deny") {
          counters.unavailable.inc();
          return storeUnavailable(decision.retryAfterMs);
        }
        counters.limited.inc();
        const retryAfter = Math.max(1, Math.ceil(decision.retryAfterMs / 1000));
        return refusal(ctx, report, opts.headers, {
          type: `${PROBLEM_TYPE_BASE}rate-exceeded`,
          title: "Rate exceeded",
          detail:
            `The rate "${name}" with bursts of ${burst} is spent for now; retry in ${retryAfter} s`,
          retryAfterSeconds: retryAfter,
          extensions: { policy: name, retry_after_seconds: retryAfter },
        });
      }
      const now = Date.now();
      const slot = Math.max(now + decision.delayMs, lastSlot.get(key) ?? 0);
      if (slot > now) {
        lastSlot.set(key, slot);
        const delay = slot - now;
        counters.delayed.inc();
        const waiting = performance.now();
        const waited = await abortableDelay(delay, ctx.signal);
        // The wait served: a client that hung up waited less than its slot.
        delays.observe((performance.now() - waiting) / 1000);
        const last = lastSlot.get(key) === slot;
        if (last) lastSlot.delete(key);
        if (!waited) {
          // The client hung up. Its tokens go back to the bucket that gave them
          // only when no one waits behind it, here or on another instance (the
          // store checks that its reservation is still the latest): a token
          // given back before later waiters' slots would send the next newcomer
          // out with the last of them, two requests in one slot. An earlier
          // slot is lost instead.
          if (last) {
            await store.refundBucket(
              { ...query(key, -opts.cost), refundOf: decision.reservation },
              decision.source,
            );
          }
          return clientClosed();
        }
      } else {
        counters.allowed.inc();
      }
      return await nextWithHeaders(ctx, next, report, opts.headers);
    };
  },
});
