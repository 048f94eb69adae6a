/**
 * The `proxy` plugin: forwards to the route's upstream and streams the answer
 * back, with the header rules of DESIGN.md section 3.
 */
import { z } from "zod";
import { definePlugin, type RequestContext, type UpstreamInfo } from "../plugin.ts";
import { problem, PROBLEM_TYPE_BASE } from "../problem.ts";

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

/** Builds the upstream URL: base URL, then the path (prefix stripped when asked) and the raw query. */
export function upstreamUrl(
  upstream: UpstreamInfo,
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
  const base = upstream.url.endsWith("/") ? upstream.url.slice(0, -1) : upstream.url;
  return base + forwarded + search;
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

function isConnectionError(error: unknown): boolean {
  const text = String((error as Error)?.message ?? error).toLowerCase();
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

    return async function proxy(ctx) {
      const request = ctx.request;
      const target = upstreamUrl(upstream, ctx.url.pathname, ctx.url.search, stripPrefix);
      const controller = new AbortController();
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        controller.abort(new DOMException("upstream timeout", "TimeoutError"));
      }, timeoutMs);
      const onClientAbort = () => controller.abort(ctx.signal.reason);
      ctx.signal.addEventListener("abort", onClientAbort, { once: true });
      const started = performance.now();
      let response: Response;
      try {
        response = await gateway.fetch(target, {
          method: request.method,
          headers: requestHeaders(ctx, preserveHost),
          body: request.body,
          redirect: "manual",
          signal: controller.signal,
        });
      } catch (error) {
        const seconds = (performance.now() - started) / 1000;
        if (ctx.signal.aborted) {
          histogram.observe({ route: route.name, status_class: "client_closed" }, seconds);
          return new Response(null, { status: 499 });
        }
        if (timedOut) {
          histogram.observe({ route: route.name, status_class: "timeout" }, seconds);
          log.warn("upstream timed out", {
            upstream: upstream.url,
            timeout_ms: timeoutMs,
            request_id: ctx.requestId,
          });
          return problem(504, {
            type: `${PROBLEM_TYPE_BASE}upstream-timeout`,
            title: "Upstream timed out",
            detail: `The upstream sent no response headers within ${timeoutMs} ms`,
          });
        }
        histogram.observe({ route: route.name, status_class: "error" }, seconds);
        log.warn("upstream unreachable", {
          upstream: upstream.url,
          error: String((error as Error)?.message ?? error),
          request_id: ctx.requestId,
        });
        return problem(502, {
          type: `${PROBLEM_TYPE_BASE}upstream-unreachable`,
          title: "Upstream unreachable",
          detail: isConnectionError(error)
            ? "The upstream refused or dropped the connection"
            : "The upstream could not be reached",
        });
      } finally {
        clearTimeout(timer);
        // Past the headers, a client that hangs up cancels the body stream,
        // which cancels the upstream read.
        ctx.signal.removeEventListener("abort", onClientAbort);
      }
      histogram.observe(
        { route: route.name, status_class: statusClass(response.status) },
        (performance.now() - started) / 1000,
      );
      const headers = new Headers(response.headers);
      stripHopByHop(headers);
      const bodiless = request.method === "HEAD" || BODILESS_STATUSES.has(response.status);
      if (bodiless && response.body) {
        response.body.cancel().catch(() => {});
      }
      return new Response(bodiless ? null : response.body, {
        status: response.status,
        statusText: response.statusText,
        headers,
      });
    };
  },
});
