/**
 * The `proxy` plugin: forwards to the route's upstream and streams the answer
 * back, with the header rules of DESIGN.md section 3.
 */
import { z } from "zod";
import { type Breaker, BREAKERS, circuitOpen } from "../breaker.ts";
import { definePlugin, type RequestContext } from "../plugin.ts";
import { clientClosed, problem, PROBLEM_TYPE_BASE } from "../problem.ts";
import { noteUpstreamAnswer } from "../pipeline.ts";
import { TargetPool } from "../upstream_pool.ts";
import {
  ClientBodyError,
  ClientBodyStalledError,
  type Http1Init,
  IDEMPOTENT_METHODS,
  isBodyComplete,
  isClientResponse,
  needsNoDecoding,
  UpstreamProtocolError,
  UpstreamReadTimeout,
} from "../http1_client.ts";
import { addGatewayHeaders, seal, waitPastSpentQuota } from "../response_headers.ts";
import { dropHopByHop } from "../hop_by_hop.ts";
import { Deadlines } from "../deadlines.ts";
import { type Logger, markReported } from "../log.ts";

/** One ticker for the upstream deadlines of every request in flight. */
const DEADLINES = new Deadlines();

const BODILESS_STATUSES = new Set([101, 204, 205, 304]);

/** Builds the upstream URL: a target's base URL, then the path (prefix stripped when asked) and the raw query. */
export function upstreamUrl(
  base: string,
  path: string,
  search: string,
  stripPrefix?: string,
): string {
  let forwarded = path;
  if (stripPrefix && stripPrefix !== "/") {
    const prefix = stripPrefix.endsWith("/") ? stripPrefix.slice(0, -1) : stripPrefix;
    if (forwarded === prefix || forwarded.startsWith(prefix + "/")) {
      forwarded = forwarded.slice(prefix.length) || "/";
    }
  }
  return (base.endsWith("/") ? base.slice(0, -1) : base) + forwarded + search;
}

/**
 * The query of a request as the client wrote it, from its `?` (kept even
 * when nothing follows) to the end, or to a `#`: what a URL parser would
 * re-escape (`'`, `<`, `"`) goes on byte for byte, since an upstream may
 * check a signature over it. Only what a request line cannot carry (spaces,
 * controls, non-ASCII) is percent-encoded, as UTF-8.
 */
export function rawQuery(url: string): string {
  const mark = url.indexOf("?");
  if (mark < 0) return "";
  const hash = url.indexOf("#", mark);
  const query = hash < 0 ? url.slice(mark) : url.slice(mark, hash);
  if (!/[^\x21-\x7e]/.test(query)) return query;
  try {
    return query.replace(/[^\x21-\x7e]+/g, encodeURIComponent);
  } catch {
    // A lone surrogate has no UTF-8: the parsed URL's escaping instead.
    return new URL(url).search;
  }
}

/** The query to forward: as the client wrote it, unless a plugin changed `ctx.url`'s. */
function forwardedQuery(ctx: RequestContext): string {
  const raw = rawQuery(ctx.request.url);
  const parsed = ctx.url.search;
  if (raw === parsed) return raw;
  return new URL(`http://h/${raw}`).search === parsed ? raw : parsed;
}

/** The header pairs to forward: hop-by-hop headers and those named in `Connection` left out. */
function forwardable(headers: Headers, skip?: ReadonlySet<string>): [string, string][] {
  return dropHopByHop(headers, headers.get("connection"), skip);
}

// Accept-Encoding goes as the client sent it: the upstream client never
// decodes a body, so whatever encoding comes back reaches the client as is.
const REPLACED_UPSTREAM = new Set(["x-forwarded-for", "x-request-id"]);
const REPLACED_UPSTREAM_HOST = new Set([...REPLACED_UPSTREAM, "host"]);
// What only a proxy may say about the client: from a peer that is not a
// trusted proxy, these are the client's own claims, and they go no further.
const PROXY_CLAIMS = ["forwarded", "x-real-ip", "x-forwarded-port", "x-forwarded-prefix"];
const REPLACED_UNTRUSTED = new Set([...REPLACED_UPSTREAM, ...PROXY_CLAIMS]);
const REPLACED_UNTRUSTED_HOST = new Set([...REPLACED_UPSTREAM_HOST, ...PROXY_CLAIMS]);

function requestHeaders(ctx: RequestContext, preserveHost: boolean): [string, string][] {
  const incoming = ctx.request.headers;
  const skip = ctx.peerTrusted
    ? (preserveHost ? REPLACED_UPSTREAM : REPLACED_UPSTREAM_HOST)
    : (preserveHost ? REPLACED_UNTRUSTED : REPLACED_UNTRUSTED_HOST);
  const pairs = forwardable(incoming, skip);
  const prior = incoming.get("x-forwarded-for");
  pairs.push(["x-forwarded-for", prior ? `${prior}, ${ctx.remoteAddr}` : ctx.remoteAddr]);
  const trusted = ctx.peerTrusted;
  if (!trusted || !incoming.has("x-forwarded-proto")) {
    // The listener speaks plain HTTP; a scheme in an absolute-form target is only the client's word.
    replace(pairs, "x-forwarded-proto", "http");
  }
  if (!trusted || !incoming.has("x-forwarded-host")) {
    replace(pairs, "x-forwarded-host", incoming.get("host") || null);
  }
  pairs.push(["x-request-id", ctx.requestId]);
  return pairs;
}

/** Sets one header in a pair list: drops the old value, adds the new one when there is one. */
function replace(pairs: [string, string][], name: string, value: string | null): void {
  for (let i = pairs.length - 1; i >= 0; i--) {
    if (pairs[i]![0] === name) pairs.splice(i, 1);
  }
  if (value !== null) pairs.push([name, value]);
}

function statusClass(status: number): string {
  return `${Math.floor(status / 100)}xx`;
}

/** The error's message with its cause's: Deno's fetch says "fetch failed" and puts the reason in `cause`. */
function errorText(error: unknown): string {
  const message = String((error as Error)?.message ?? error);
  const cause = (error as Error)?.cause;
  return cause === undefined
    ? message
    : `${message}: ${String((cause as Error)?.message ?? cause)}`;
}

function isRefused(error: unknown): boolean {
  return errorText(error).toLowerCase().includes("connection refused");
}

/** How a streamed answer's body ended. */
type BodyEnd = "complete" | "failed" | "cancelled";

type Attempt =
  | {
    kind: "response";
    response: Response;
    seconds: number;
    /** Calls `then` once the body streamed from the upstream ends (for the gateway's own client). */
    whenBodyEnds: (then: (end: BodyEnd, error?: unknown) => void) => void;
  }
  | { kind: "timeout"; seconds: number }
  | { kind: "client_closed"; seconds: number }
  | { kind: "client_timeout"; seconds: number }
  | { kind: "unreachable"; error: unknown; seconds: number };

/**
 * Follows an answer from the upstream: the breaker counts it by its status
 * when its head comes (counted only at the body's end, a long stream would
 * hold a half-open breaker's probe, and every other caller out, for as long
 * as it lasts); a body the upstream then cuts short becomes a failure, and is
 * logged with the request's id (its head went out as a success).
 */
function followAnswer(
  ctx: RequestContext,
  log: Logger,
  breaker: Breaker | undefined,
  result: Extract<Attempt, { kind: "response" }>,
  target: string,
  startedAt: number,
): void {
  const ok = breaker ? !breaker.isFailureStatus(result.response.status) : true;
  const counted = breaker?.record(ok, Date.now(), startedAt);
  if (!isClientResponse(result.response) || isBodyComplete(result.response)) return;
  result.whenBodyEnds((end, error) => {
    if (end !== "failed") return;
    if (breaker && ok) {
      breaker.recordLateFailure(counted, Date.now(), error instanceof UpstreamReadTimeout);
    }
    log.warn("upstream cut the answer short", {
      upstream: target,
      status: result.response.status,
      request_id: ctx.requestId,
      error,
    });
    markReported(error);
  });
}

function isConnectionError(error: unknown): boolean {
  const text = errorText(error).toLowerCase();
  return text.includes("refused") || text.includes("reset") || text.includes("connect") ||
    text.includes("closed") || text.includes("broken pipe") || text.includes("dns");
}

export default definePlugin({
  name: "proxy",
  options: z.strictObject({}),
  create(_options, { route, gateway, log, keep }) {
    const upstream = route.upstream;
    if (!upstream) {
      throw new Error(`Cannot create proxy for route "${route.name}": it has no upstream`);
    }
    const histogram = gateway.metrics.upstreamDuration;
    // Label lookups cost on every request: keep each status class's child.
    const byClass = new Map<string, { observe(seconds: number): void }>();
    const observe = (statusClass: string, seconds: number) => {
      let child = byClass.get(statusClass);
      if (!child) {
        child = histogram.labels({ route: route.name, status_class: statusClass });
        byClass.set(statusClass, child);
      }
      child.observe(seconds);
    };
    const stripPrefix = route.stripPrefix ? route.pathPrefix : undefined;
    const preserveHost = route.preserveHost;
    const timeoutMs = upstream.timeoutMs;
    const readTimeoutMs = upstream.readTimeoutMs;
    // A pool's in-flight counts outlive a reload (requests started before it
    // still end against them), for as long as its targets and balance stay.
    const pools = keep(() => new Map<string, TargetPool>());
    const poolKey = `${upstream.balance} ${upstream.targets.join(" ")}`;
    let pool = pools.get(poolKey);
    if (!pool) {
      pool = new TargetPool(upstream.targets, upstream.balance);
      pools.set(poolKey, pool);
    }
    // Only idle pools of other targets go: this build may yet fail, and the
    // running pipeline's pool must keep its counts.
    for (const [key, other] of pools) if (key !== poolKey && other.idle) pools.delete(key);
    const isPool = upstream.targets.length > 1;

    /** One try against one target, until its response headers. */
    async function attempt(
      ctx: RequestContext,
      target: string,
      headers: [string, string][],
      body: ReadableStream<Uint8Array> | null,
    ): Promise<Attempt> {
      const deadline = DEADLINES.start(timeoutMs, () => ctx.signal);
      const started = performance.now();
      let ended: { end: BodyEnd; error: unknown } | undefined;
      let onEnd: ((end: BodyEnd, error?: unknown) => void) | undefined;
      const init: RequestInit & Http1Init = {
        method: ctx.request.method,
        headers,
        body,
        redirect: "manual",
        signal: deadline.signal,
        // The gateway's own client adds the gateway's headers as it builds the answer.
        completeHeaders: (pairs) => addGatewayHeaders(ctx, pairs),
        // The wait for the answer counts from the upload's last byte: a slow
        // upload is not the upstream's delay (a stalled one still times out).
        onBodyProgress: body ? () => deadline.extend() : undefined,
        onBodyEnd: (end, error) => {
          if (onEnd) onEnd(end, error);
          else ended = { end, error };
        },
        readTimeoutMs,
      };
      try {
        const response = await gateway.fetch(
          upstreamUrl(target, ctx.url.pathname, forwardedQuery(ctx), stripPrefix),
          init,
        );
        return {
          kind: "response",
          response,
          seconds: (performance.now() - started) / 1000,
          whenBodyEnds: (then) => {
            if (ended) then(ended.end, ended.error);
            else onEnd = then;
          },
        };
      } catch (error) {
        const seconds = (performance.now() - started) / 1000;
        // A client that hung up, mid-upload too, says nothing about the upstream.
        if (deadline.clientGone || error instanceof ClientBodyError) {
          return { kind: "client_closed", seconds };
        }
        // The deadline passed while the gateway waited for more of the upload:
        // the client's delay. (One blocked writing to an upstream that does not
        // read stays the upstream's.)
        if (deadline.timedOut && error instanceof ClientBodyStalledError) {
          return { kind: "client_timeout", seconds };
        }
        if (deadline.timedOut) return { kind: "timeout", seconds };
        return { kind: "unreachable", error, seconds };
      } finally {
        // Past the headers, a client that hangs up cancels the body stream,
        // which cancels the upstream read.
        DEADLINES.stop(deadline);
      }
    }

    return async function proxy(ctx) {
      const request = ctx.request;
      const codings = request.body === null ? null : request.headers.get("transfer-encoding");
      if (codings !== null && !needsNoDecoding(codings)) {
        // Deno's server undoes chunked only: the body is still gzip (say), and
        // would go on as if it were the content (RFC 9112, 6.1).
        return problem(501, {
          detail: `The gateway does not decode the request's transfer coding (${codings})`,
        });
      }
      const breakers = ctx.get(BREAKERS);
      // A pool may send an idempotent request again to another target when the first refused it.
      const retryable = isPool && IDEMPOTENT_METHODS.has(request.method);
      // Deno gives a POST without Content-Length or Transfer-Encoding a body
      // stream; it has none (RFC 9112, 6.3), and none is sent on.
      const body = request.body !== null &&
          (request.headers.has("content-length") || request.headers.has("transfer-encoding"))
        ? request.body
        : null;
      const headers = requestHeaders(ctx, preserveHost);
      const tried = new Set<string>();

      let result: Attempt | undefined;
      let target: string | undefined;
      for (let round = 0; round < 2; round++) {
        // One target and no breaker: nothing to choose.
        // One target: nothing to choose, only its breaker to ask.
        const next = isPool
          ? pool.take(tried, breakers)
          : round === 0 && (!breakers || breakers.of(upstream.url).acquire())
          ? upstream.url
          : undefined;
        if (next === undefined) break;
        target = next;
        tried.add(target);
        const startedAt = Date.now();
        // A second try follows only a refused connect, which read none of the
        // body: it goes as it is, not copied (a copy would hold the whole upload).
        result = await attempt(ctx, target, headers, body);
        if (isPool) {
          // A body still streaming keeps its target busy (least_inflight counts it) until sent.
          if (result.kind === "response" && !isBodyComplete(result.response)) {
            const busy = target;
            const done = () => pool.done(busy);
            ctx.completed.then(done, done);
          } else {
            pool.done(target);
          }
        }
        const breaker = breakers?.of(target);
        if (result.kind === "response") {
          followAnswer(ctx, log, breaker, result, target, startedAt);
        } else if (result.kind === "client_closed" || result.kind === "client_timeout") {
          breaker?.cancel(startedAt);
        } else {
          breaker?.record(false, Date.now(), startedAt);
        }
        const again = retryable && round === 0 && result.kind === "unreachable" &&
          isRefused(result.error);
        if (!again) break;
        log.warn("upstream target refused; retrying on another", {
          upstream: target,
          request_id: ctx.requestId,
        });
      }
      if (!result || target === undefined) {
        // Every target's breaker refused (it opened while this request waited, say).
        const left = breakers?.openLeft(upstream.targets) ?? 1_000;
        return circuitOpen(route.name, waitPastSpentQuota(ctx, left));
      }
      switch (result.kind) {
        case "client_closed":
          observe("client_closed", result.seconds);
          return clientClosed();
        case "client_timeout":
          // Its own status class: the client neither hung up nor did the upstream time out.
          observe("client_timeout", result.seconds);
          return problem(408, {
            type: `${PROBLEM_TYPE_BASE}request-timeout`,
            title: "Request Timeout",
            detail: `The client sent no more of the request body within ${timeoutMs} ms`,
          });
        case "timeout":
          observe("timeout", result.seconds);
          log.warn("upstream timed out", {
            upstream: target,
            timeout_ms: timeoutMs,
            request_id: ctx.requestId,
          });
          return problem(504, {
            type: `${PROBLEM_TYPE_BASE}upstream-timeout`,
            title: "Upstream timed out",
            detail: `The upstream sent no response headers within ${timeoutMs} ms`,
          });
        case "unreachable":
          observe("error", result.seconds);
          if (result.error instanceof UpstreamProtocolError) {
            // The upstream answered, with something that is not HTTP/1.1.
            log.warn("upstream sent an invalid answer", {
              upstream: target,
              error: errorText(result.error),
              request_id: ctx.requestId,
            });
            return problem(502, {
              type: `${PROBLEM_TYPE_BASE}upstream-invalid-response`,
              title: "Bad Gateway",
              detail: "The upstream's answer was not valid HTTP/1.1",
            });
          }
          log.warn("upstream unreachable", {
            upstream: target,
            error: errorText(result.error),
            request_id: ctx.requestId,
          });
          return problem(502, {
            type: `${PROBLEM_TYPE_BASE}upstream-unreachable`,
            title: "Upstream unreachable",
            detail: isConnectionError(result.error)
              ? "The upstream refused or dropped the connection"
              : "The upstream could not be reached",
          });
      }
      const response = result.response;
      observe(statusClass(response.status), result.seconds);
      noteUpstreamAnswer(ctx);
      // The gateway's own HTTP client hands over a response ready to go on.
      if (isClientResponse(response)) return seal(ctx, response);
      const responseHeaders = forwardable(response.headers);
      addGatewayHeaders(ctx, responseHeaders);
      const bodiless = request.method === "HEAD" || BODILESS_STATUSES.has(response.status);
      if (bodiless && response.body) {
        response.body.cancel().catch(() => {});
      }
      return seal(
        ctx,
        new Response(bodiless ? null : response.body, {
          status: response.status,
          statusText: response.statusText,
          headers: responseHeaders,
        }),
      );
    };
  },
});
