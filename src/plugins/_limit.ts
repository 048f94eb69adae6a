/** What the limit plugins (sliding-window, token-bucket) share. Internal to this folder. */
import { formatDuration } from "../config/duration.ts";
import type { Metrics } from "../metrics.ts";
import type { Next, RequestContext } from "../plugin.ts";
import { problem, PROBLEM_TYPE_BASE, type ProblemOptions } from "../problem.ts";
import { type HeaderMode, type PolicyReport, withRateLimitHeaders } from "../ratelimit_headers.ts";
import {
  addGatewayHeaders,
  announceRateLimitHeaders,
  isSealed,
  lastSpentQuota,
  noteSpentQuotas,
  seal,
} from "../response_headers.ts";

/** A window or period as a policy name writes it: `s`, `10s`, `m`, `h`, `250ms`. */
export function formatWindow(ms: number): string {
  // One whole unit is written alone: `50/s`, not `50/1s`.
  return formatDuration(ms).replace(/^1(?=[smhd]$)/, "");
}

/** A rate as a policy name: `50/s`, `100/10s`. */
export function formatRate(count: number, periodMs: number): string {
  return `${count}/${formatWindow(periodMs)}`;
}

/** The caller's id: identify's client id, else the TCP peer. */
export function clientIdOf(ctx: RequestContext): string {
  return ctx.client?.id ?? `ip:${ctx.remoteAddr}`;
}

/** The store key of one client on one route: every key of a decision shares this hash slot. */
export function clientKey(route: string, clientId: string): string {
  return `{sluice:${route}:${clientId}}`;
}

/**
 * What keeps the second (third...) step of one limit plugin in a route apart
 * from the first: "" for the first, whose keys stay as they always were, then
 * `#2`, `#3`. Counted among steps of the same plugin only, so adding another
 * kind of step moves no counter. It follows the `{...}` hash tag, so a
 * decision's keys stay in one Redis Cluster slot.
 */
export function instanceSuffix(pipeline: readonly string[], position: number): string {
  const name = pipeline[position];
  let instance = 1;
  for (let i = 0; i < position; i++) if (pipeline[i] === name) instance++;
  return instance === 1 ? "" : `#${instance}`;
}

/** Each decision's counter of `sluice_limit_decisions_total`, looked up once. */
export function decisionCounters<D extends string>(
  metrics: Metrics,
  route: string,
  plugin: string,
  decisions: readonly D[],
): Record<D, { inc(): void }> {
  const counters = {} as Record<D, { inc(): void }>;
  for (const decision of decisions) {
    counters[decision] = metrics.limitDecisions.labels({ route, plugin, decision });
  }
  return counters;
}

/** The 503 of a store that is down under `on_failure: deny`. */
export function storeUnavailable(retryAfterMs: number): Response {
  return problem(503, {
    type: `${PROBLEM_TYPE_BASE}limit-store-unavailable`,
    title: "Rate-limit store unavailable",
    detail: "The rate-limit store cannot be reached and this gateway fails closed",
    retryAfterSeconds: retryAfterMs / 1000,
  });
}

/**
 * A limit plugin's refusal: a problem answer built with this plugin's
 * rate-limit headers, those the plugins before it announced, and the request id.
 */
export function refusal(
  ctx: RequestContext,
  reports: readonly PolicyReport[],
  mode: HeaderMode,
  options: ProblemOptions & { retryAfterSeconds: number },
): Response {
  const headers: [string, string][] = [];
  addGatewayHeaders(ctx, headers, { reports, mode });
  // A step before this one counted the request and has nothing left: a retry
  // passes only once that quota has room again, so that is the wait to give.
  const spent = lastSpentQuota(ctx);
  if (spent && spent.resetSeconds > options.retryAfterSeconds) {
    const retryAfter = spent.resetSeconds;
    options = {
      ...options,
      type: `${PROBLEM_TYPE_BASE}quota-exceeded`,
      title: "Quota exceeded",
      detail: `Quota "${spent.name}" is spent; retry in ${retryAfter} s`,
      retryAfterSeconds: retryAfter,
      extensions: {
        ...options.extensions,
        policy: spent.name,
        ...(options.extensions && "retry_after_seconds" in options.extensions
          ? { retry_after_seconds: retryAfter }
          : {}),
      },
    };
  }
  return seal(ctx, problem(429, { ...options, headers }));
}

/**
 * Runs the rest of the pipeline, whose answer carries this plugin's
 * rate-limit headers: written in as it is built when it can be, else added.
 * `quota`: the reports are a window's, whose spent quotas a later refusal's
 * Retry-After must wait for.
 */
export async function nextWithHeaders(
  ctx: RequestContext,
  next: Next,
  reports: readonly PolicyReport[],
  mode: HeaderMode,
  quota = false,
): Promise<Response> {
  announceRateLimitHeaders(ctx, reports, mode);
  // A window's reset is when a request passes again (a bucket's is when it is full).
  if (quota) noteSpentQuotas(ctx, reports);
  const response = await next();
  return isSealed(ctx, response) ? response : withRateLimitHeaders(response, reports, mode);
}
