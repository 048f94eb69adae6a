/**
 * A bare `Deno.serve` that answers "ok" with `count` headers whose values
 * change per request (started by bench/header_cost.ts).
 *
 *   deno run --allow-net bench/headers_server.ts <port> <count>
 *
 * @module
 */
const port = Number(Deno.args[0]);
const count = Number(Deno.args[1]);
const body = new TextEncoder().encode("ok");
let served = 0;
Deno.serve({ port, hostname: "127.0.0.1", onListen() {} }, () => {
  served++;
  const headers: [string, string][] = [];
  for (let i = 0; i < count; i++) headers.push([`x-header-${i}`, `${served}-${i}`]);
  return new Response(body, { headers });
});
