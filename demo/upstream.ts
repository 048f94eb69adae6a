/** The demo upstream: answers JSON about each request it receives. */

/** Starts the demo upstream on the port; returns the server. */
export function startDemoUpstream(port: number): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve({ port, hostname: "127.0.0.1", onListen() {} }, (request) => {
    const url = new URL(request.url);
    return Response.json({
      upstream: "demo",
      method: request.method,
      path: url.pathname,
      query: url.search,
      request_id: request.headers.get("x-request-id"),
      forwarded_for: request.headers.get("x-forwarded-for"),
      time: new Date().toISOString(),
    });
  });
}

if (import.meta.main) {
  const port = Number(Deno.env.get("DEMO_UPSTREAM_PORT") ?? 9001);
  startDemoUpstream(port);
  console.log(JSON.stringify({ msg: "demo upstream listening", port }));
}
