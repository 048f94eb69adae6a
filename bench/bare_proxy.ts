/**
 * The minimal Deno proxy, the baseline sluice is measured against: each
 * request goes to the upstream with `fetch` and the answer streams back.
 * Nothing else: no routing, headers, timeouts or metrics.
 *
 *   deno run --allow-net bench/bare_proxy.ts PORT UPSTREAM_URL
 *
 * @module
 */

/** A handler that forwards every request to `upstream` (`http://host:port`). */
export function bareProxy(upstream: string): (request: Request) => Promise<Response> {
  const base = upstream.replace(/\/$/, "");
  return async function forward(request) {
    const url = new URL(request.url);
    const response = await fetch(base + url.pathname + url.search, {
      method: request.method,
      headers: request.headers,
      body: request.body,
      redirect: "manual",
    });
    return new Response(response.body, {
      status: response.status,
      statusText: response.statusText,
      headers: response.headers,
    });
  };
}

if (import.meta.main) {
  const port = Number(Deno.args[0]);
  const upstream = Deno.args[1];
  if (!Number.isInteger(port) || port <= 0 || !upstream) {
    console.error("Usage: bare_proxy.ts PORT UPSTREAM_URL");
    Deno.exit(2);
  }
  Deno.serve({
    hostname: "127.0.0.1",
    port,
    onListen: (addr) => console.error(`bare proxy listening on ${addr.hostname}:${addr.port}`),
  }, bareProxy(upstream));
}
