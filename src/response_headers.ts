/**
 * The headers the gateway adds to an answer (the limit plugins' rate-limit
 * headers, `X-Request-Id`), known before the answer exists and written into it
 * as it is built.
 *
 * Why: Deno prepares a `Response` for sending when it is constructed, and
 * reading `response.headers` later throws that work away, to be done again
 * when the answer is sent. So the limit plugins announce their headers before
 * they call `next()`; the proxy, and a limit plugin that refuses, build the
 * answer once with every header and mark it sealed. A response that is not
 * sealed (a custom plugin's, another problem answer) gets its headers the
 * ordinary way, after the fact.
 *
 * @module
 */
import { ContextKey, type RequestContext } from "./plugin.ts";
import {
  appendRateLimitHeaders,
  type HeaderMode,
  type PolicyReport,
  type RateLimitHeaderSet,
} from "./ratelimit_headers.ts";

/** Outermost plugin first. */
const PENDING = new ContextKey<RateLimitHeaderSet[]>("sluice.rate-limit-headers");

// A mark on the response itself (a property, not a WeakSet: nothing for the
// GC to track): the context whose headers it was built with.
const SEALED = Symbol("sluice.sealed");
type Marked = Response & { [SEALED]?: RequestContext };

/** Announces a limit plugin's headers for whatever answer the rest of the pipeline builds. */
export function announceRateLimitHeaders(
  ctx: RequestContext,
  reports: readonly PolicyReport[],
  mode: HeaderMode,
): void {
  if (mode === "none" || reports.length === 0) return;
  const sets = ctx.get(PENDING);
  if (sets) sets.push({ reports, mode });
  else ctx.set(PENDING, [{ reports, mode }]);
}

/**
 * Adds the gateway's headers to the header list of an answer about to be
 * built: the announced rate-limit headers (and `own`, those of a plugin that
 * answers itself), then `X-Request-Id` unless the list has one. Names in
 * `pairs` are in lower case, as a `Headers` object and the upstream client
 * give them.
 */
export function addGatewayHeaders(
  ctx: RequestContext,
  pairs: [string, string][],
  own?: RateLimitHeaderSet,
): void {
  const sets = ctx.get(PENDING);
  if (own || (sets && sets.length > 0)) {
    // The innermost plugin's headers go first, as if each plugin added its own on the way out.
    const ordered: RateLimitHeaderSet[] = own ? [own] : [];
    if (sets) { for (let i = sets.length - 1; i >= 0; i--) ordered.push(sets[i]!); }
    appendRateLimitHeaders(pairs, ordered);
  }
  for (const [name] of pairs) if (name === "x-request-id") return;
  pairs.push(["x-request-id", ctx.requestId]);
}

const SPENT = new ContextKey<PolicyReport[]>("sluice.spent-quotas");

/** Notes the quotas a window step counted this request in and has nothing left of. */
export function noteSpentQuotas(ctx: RequestContext, reports: readonly PolicyReport[]): void {
  for (const report of reports) {
    if (report.remaining > 0) continue;
    const spent = ctx.get(SPENT);
    if (spent) spent.push(report);
    else ctx.set(SPENT, [report]);
  }
}

/**
 * Of the quotas steps before this one spent on this request, the one that
 * resets last: a request refused further on passes again only once it has
 * room too.
 */
export function lastSpentQuota(ctx: RequestContext): PolicyReport | undefined {
  let last: PolicyReport | undefined;
  for (const report of ctx.get(SPENT) ?? []) {
    if (!last || report.resetSeconds > last.resetSeconds) last = report;
  }
  return last;
}

/**
 * The wait a refusal gives, in ms: its own, or longer when a limit step before
 * it counted this request against a quota now spent (a retry passes only once
 * that quota has room again).
 */
export function waitPastSpentQuota(ctx: RequestContext, ms: number): number {
  const spent = lastSpentQuota(ctx);
  return spent ? Math.max(ms, spent.resetSeconds * 1000) : ms;
}

/** Marks `response` as built with {@linkcode addGatewayHeaders}; returns it. */
export function seal(ctx: RequestContext, response: Response): Response {
  (response as Marked)[SEALED] = ctx;
  return response;
}

/** True when `response` already carries every header the gateway adds. */
export function isSealed(ctx: RequestContext, response: Response): boolean {
  return (response as Marked)[SEALED] === ctx;
}
