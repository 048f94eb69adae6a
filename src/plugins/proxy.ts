/**
 * The `proxy` plugin: forwards to the route's upstream and streams the answer
 * back, with the header rules of DESIGN.md section 3.
 */
import { z } from "zod";
import { BREAKERS } from "../breaker.ts";
import { definePlugin, type RequestContext } from "../plugin.ts";
import { problem, PROBLEM_TYPE_BASE } from "../problem.ts";
import { TargetPool } from "../upstream_pool.ts";

/** Hop-by-hop headers, never forwarded in either direction. */
export const HOP_BY_HOP_HEADERS: readonly string[] = [
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
];

/** Removes the hop-by-hop headers and every header named in `Connection`. */
export function stripHopByHop(headers: Headers): void {
  const connection = headers.get("connection");
  if (connection) {
    for (const name of connection.split(",")) {
      const trimmed = name.trim();
      if (trimmed) headers.delete(trimmed);
    }
  }
  for (const name of HOP_BY_HOP_HEADERS) headers.delete(name);
}

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

function requestHeaders(ctx: RequestContext, preserveHost: boolean): Headers {
  const incoming = ctx.request.headers;
  const headers = new Headers(incoming);
  stripHopByHop(headers);
  const prior = incoming.get("x-forwarded-for");
  headers.set("x-forwarded-for", prior ? `${prior}, ${ctx.remoteAddr}` : ctx.remoteAddr);
  const trusted = ctx.peerTrusted;
  if (!trusted || !incoming.has("x-forwarded-proto")) {
    headers.set("x-forwarded-proto", ctx.url.protocol.slice(0, -1));
  }
  if (!trusted || !incoming.has("x-forwarded-host")) {
    const host = incoming.get("host");
    if (host) headers.set("x-forwarded-host", host);
    else headers.delete("x-forwarded-host");
  }
  if (!preserveHost) headers.delete("host");
  headers.set("x-request-id", ctx.requestId);
  // Deno's fetch decodes a gzip or br body whenever the request's
  // Accept-Encoding is anything but `identity` (the client's own value
  // included), and keeps the Content-Encoding header: the client would get a
  // decoded body labelled gzip. There is no opt-out (denoland/deno#12291), so
  // the upstream is asked for `identity`, and whatever encoding it sends anyway
  // reaches the client byte for byte.
  headers.set("accept-encoding", "identity");
  return headers;
}

function statusClass(status: number): string {
  return `${Math.floor(status / 100)}xx`;
}

/** Methods a pool may send again to another target when the first refused the connection. */
const IDEMPOTENT_METHODS = new Set(["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]);

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

type Attempt =
  | { kind: "response"; response: Response; seconds: number }
  | { kind: "timeout"; seconds: number }
  | { kind: "client_closed"; seconds: number }
  | { kind: "unreachable"; error: unknown; seconds: number };

function isConnectionError(error: unknown): boolean {
  const text = errorText(error).toLowerCase();
  return text.includes("refused") || text.includes("reset") || text.includes("connect") ||
    text.includes("closed") || text.includes("broken pipe") || text.includes("dns");
}

export default definePlugin({
  name: "proxy",
  options: z.strictObject({}),
  create(_options, { route, gateway, log }) {
    const upstream = route.upstream;
    if (!upstream) {
      throw new Error(`Cannot create proxy for route "${route.name}": it has no upstream`);
    }
    const histogram = gateway.metrics.upstreamDuration;
    const stripPrefix = route.stripPrefix ? route.pathPrefix : undefined;
    const preserveHost = route.preserveHost;
    const timeoutMs = upstream.timeoutMs;
    const pool = new TargetPool(upstream.targets, upstream.balance);
    const isPool = upstream.targets.length > 1;

    /** One try against one target, until its response headers. */
    async function attempt(
      ctx: RequestContext,
      target: string,
      headers: Headers,
      body: ReadableStream<Uint8Array> | null,
    ): Promise<Attempt> {
      const controller = new AbortController();
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        controller.abort(new DOMException("upstream timeout", "TimeoutError"));
      }, timeoutMs);
      const onClientAbort = () => controller.abort(ctx.signal.reason);
      ctx.signal.addEventListener("abort", onClientAbort, { once: true });
      const started = performance.now();
      try {
        const response = await gateway.fetch(
          upstreamUrl(target, ctx.url.pathname, ctx.url.search, stripPrefix),
          {
            method: ctx.request.method,
            headers,
            body,
            redirect: "manual",
            signal: controller.signal,
          },
        );
        return { kind: "response", response, seconds: (performance.now() - started) / 1000 };
      } catch (error) {
        const seconds = (performance.now() - started) / 1000;
        if (ctx.signal.aborted) return { kind: "client_closed", seconds };
        if (timedOut) return { kind: "timeout", seconds };
        return { kind: "unreachable", error, seconds };
      } finally {
        clearTimeout(timer);
        // Past the headers, a client that hangs up cancels the body stream,
        // which cancels the upstream read.
        ctx.signal.removeEventListener("abort", onClientAbort);
      }
    }

    return async function proxy(ctx) {
      const request = ctx.request;
      const breakers = ctx.get(BREAKERS);
      const retryable = isPool && IDEMPOTENT_METHODS.has(request.method);
      // A request that may go to a second target keeps a copy of its body for it.
      const [firstBody, spareBody] = retryable && request.body
        ? request.body.tee()
        : [request.body, null];
      const headers = requestHeaders(ctx, preserveHost);
      const tried = new Set<string>();
      let result: Attempt | undefined;
      let target: string | undefined;
      for (let round = 0; round < 2; round++) {
        const next = pool.take(tried, breakers);
        if (next === undefined) break;
        target = next;
        tried.add(target);
        result = await attempt(ctx, target, headers, round === 0 ? firstBody : spareBody);
        pool.done(target);
        const breaker = breakers?.of(target);
        if (result.kind === "response") {
          breaker?.record(!breaker.isFailureStatus(result.response.status));
        } else if (result.kind === "client_closed") {
          breaker?.cancel();
        } else {
          breaker?.record(false);
        }
        const again = retryable && round === 0 && result.kind === "unreachable" &&
          isRefused(result.error);
        if (!again) break;
        log.warn("upstream target refused; retrying on another", {
          upstream: target,
          request_id: ctx.requestId,
        });
      }
      spareBody?.cancel().catch(() => {});
      if (!result || target === undefined) {
        return problem(503, {
          type: `${PROBLEM_TYPE_BASE}circuit-open`,
          title: "Circuit open",
          detail: `Every upstream of route "${route.name}" is failing; none is called for now`,
          retryAfterSeconds: 1,
        });
      }
      switch (result.kind) {
        case "client_closed":
          histogram.observe({ route: route.name, status_class: "client_closed" }, result.seconds);
          return new Response(null, { status: 499 });
        case "timeout":
          histogram.observe({ route: route.name, status_class: "timeout" }, result.seconds);
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
          histogram.observe({ route: route.name, status_class: "error" }, result.seconds);
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
      histogram.observe(
        { route: route.name, status_class: statusClass(response.status) },
        result.seconds,
      );
      const responseHeaders = new Headers(response.headers);
      stripHopByHop(responseHeaders);
      const bodiless = request.method === "HEAD" || BODILESS_STATUSES.has(response.status);
      if (bodiless && response.body) {
        response.body.cancel().catch(() => {});
      }
      return new Response(bodiless ? null : response.body, {
        status: response.status,
        statusText: response.statusText,
        headers: responseHeaders,
      });
    };
  },
});
