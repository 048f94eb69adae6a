/**
 * The admin listener: `/health`, `/ready`, `/metrics`, `/status`,
 * `POST /reload`. Bearer `admin.token` when set, except `/health` and `/ready`.
 */
import type { Gateway } from "./gateway.ts";
import { problem, PROBLEM_TYPE_BASE } from "./problem.ts";
import { DASHBOARD_HTML } from "./dashboard.ts";
import { hasPlainHost, hostName } from "./router.ts";

// The dashboard page itself is open: it asks for the token and sends it with its own calls.
const OPEN_PATHS = new Set(["/health", "/ready", "/"]);

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body, null, 2), {
    status,
    headers: { "content-type": "application/json", "cache-control": "no-store" },
  });
}

/** Compares in time that depends only on the lengths. */
function safeEqual(a: string, b: string): boolean {
  const left = new TextEncoder().encode(a);
  const right = new TextEncoder().encode(b);
  let diff = left.length ^ right.length;
  for (let i = 0; i < left.length; i++) {
    diff |= left[i]! ^ (right[i % Math.max(1, right.length)] ?? 0);
  }
  return diff === 0;
}

function authorized(request: Request, token: string): boolean {
  if (!token) return true;
  const header = request.headers.get("authorization") ?? "";
  const match = /^bearer\s+(.+)$/i.exec(header);
  return match !== null && safeEqual(match[1]!.trim(), token);
}

/** The status document `/status` serves. */
export function statusDocument(gateway: Gateway): Record<string, unknown> {
  const pipeline = gateway.pipeline;
  return {
    version: pipeline.version,
    loaded_at: pipeline.loadedAt.toISOString(),
    started_at: gateway.startedAt.toISOString(),
    config_file: pipeline.loaded.file,
    config_digest: pipeline.loaded.digest.slice(0, 16),
    inflight: gateway.inflight,
    store: gateway.store.health(),
    routes: pipeline.routes.map((route) => ({
      // The plugins' reports first, the built-ins' after the custom ones': a
      // custom plugin's report hides neither theirs nor the route's own fields.
      ...Object.assign(
        {},
        ...route.statusReports.filter((report) => !report.builtin).map((report) => report.read()),
        ...route.statusReports.filter((report) => report.builtin).map((report) => report.read()),
      ),
      name: route.info.name,
      match: pipeline.loaded.routes.find((r) => r.name === route.info.name)?.match ?? {},
      upstream: route.info.upstream?.url ?? null,
      ...(route.info.upstream && route.info.upstream.targets.length > 1
        ? { targets: route.info.upstream.targets }
        : {}),
      pipeline: route.steps,
    })),
    last_reload_error: gateway.lastFailure ?? null,
  };
}

const LOOPBACK_NAMES = new Set(["localhost", "127.0.0.1", "[::1]", "::1"]);

/** True for a loopback address or the name localhost (a trailing dot allowed). */
export function isLoopbackName(name: string): boolean {
  const bare = name.endsWith(".") ? name.slice(0, -1) : name;
  return LOOPBACK_NAMES.has(bare) || /^127\.\d+\.\d+\.\d+$/.test(bare);
}

/**
 * Why a browser-borne request is refused, or undefined: a page on another
 * site may post a form to 127.0.0.1, or rebind its own name to it, and the
 * browser sends no token for it. So a POST from another site is refused, and
 * a loopback admin listener without a token answers only loopback names.
 */
function browserAbuse(request: Request, loopbackOnly: boolean): string | undefined {
  const host = request.headers.get("host");
  // No Host at all (an HTTP/1.0 health check) is no browser.
  if (loopbackOnly && host !== null && !isLoopbackName(hostName(host))) {
    return "The admin listener answers only to a loopback Host while it has no token";
  }
  if (request.method !== "GET" && request.method !== "HEAD") {
    if (request.headers.get("sec-fetch-site") === "cross-site") {
      return "The admin API refuses requests sent by another site";
    }
    // An opaque origin ("null") or another site's: not this listener's own page.
    const origin = request.headers.get("origin");
    if (
      origin !== null &&
      (!URL.canParse(origin) || new URL(origin).host !== (host ?? "").toLowerCase())
    ) {
      return "The admin API refuses requests sent by another site";
    }
  }
  return undefined;
}

/** The admin listener's request handler. */
export function adminHandler(gateway: Gateway): (request: Request) => Promise<Response> {
  return async function admin(request) {
    // Deno builds the URL from the Host header, which may be anything.
    if (!hasPlainHost(request) || !URL.canParse(request.url)) {
      return problem(400, { detail: "The request URL is not valid (look at its Host header)" });
    }
    const url = new URL(request.url);
    const path = url.pathname;
    const abuse = browserAbuse(
      request,
      // The address the listener is bound to, not what a reload may have written since.
      !gateway.adminToken && isLoopbackName(gateway.adminAddr.hostname),
    );
    if (abuse) {
      return problem(403, { type: `${PROBLEM_TYPE_BASE}admin-forbidden`, detail: abuse });
    }
    if (!OPEN_PATHS.has(path) && !authorized(request, gateway.adminToken)) {
      return problem(401, {
        type: `${PROBLEM_TYPE_BASE}admin-unauthorized`,
        detail: "The admin API needs Authorization: Bearer <admin.token>",
        headers: { "www-authenticate": 'Bearer realm="sluice-admin"' },
      });
    }
    const method = request.method;
    const allow = (methods: string[]) =>
      methods.includes(method) ? undefined : problem(405, {
        detail: `${path} answers ${methods.join(", ")}`,
        headers: { allow: methods.join(", ") },
      });
    switch (path) {
      case "/":
        return allow(["GET"]) ?? new Response(DASHBOARD_HTML, {
          headers: { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" },
        });
      case "/health":
        return allow(["GET", "HEAD"]) ?? json({ status: "ok" });
      case "/ready": {
        const denied = allow(["GET", "HEAD"]);
        if (denied) return denied;
        const store = gateway.store.health();
        // A draining gateway takes no new requests: load balancers must send
        // them elsewhere. A down store is ready only when a fallback answers for it.
        const status = gateway.draining
          ? "draining"
          : store.state === "up" || store.on_failure !== "deny"
          ? "ready"
          : "not ready";
        return json({
          status,
          version: gateway.pipeline.version,
          store: store.state,
        }, status === "ready" ? 200 : 503);
      }
      case "/metrics":
        return allow(["GET"]) ?? new Response(await gateway.metrics.render(), {
          headers: { "content-type": gateway.metrics.contentType },
        });
      case "/status":
        return allow(["GET"]) ?? json(statusDocument(gateway));
      case "/reload": {
        const denied = allow(["POST"]);
        if (denied) return denied;
        const result = await gateway.reload("api");
        if (result.ok) return json({ ok: true, version: result.version });
        return problem(422, {
          type: `${PROBLEM_TYPE_BASE}reload-failed`,
          title: "Reload failed",
          detail: "The config has errors; the running pipeline keeps serving",
          extensions: { version: result.version, errors: result.errors },
        });
      }
      default:
        if (path.startsWith("/clients/") && path.length > "/clients/".length) {
          const denied = allow(["GET"]);
          if (denied) return denied;
          let clientId: string;
          try {
            clientId = decodeURIComponent(path.slice("/clients/".length));
          } catch {
            return problem(400, { detail: "The client id is not valid percent-encoding" });
          }
          return json(await gateway.clientReport(clientId));
        }
        return problem(404, { detail: `The admin API has no ${path}` });
    }
  };
}
