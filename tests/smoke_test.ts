import assert from "node:assert/strict";
import { startEchoUpstream, startGateway } from "./_helpers.ts";

Deno.test("gateway proxies a request to its upstream", async () => {
  await using upstream = startEchoUpstream();
  await using gw = await startGateway(`
routes:
  - name: api
    upstream: { url: ${upstream.url} }
    pipeline:
      - proxy: {}
`);
  const res = await fetch(`${gw.url}/hello?x=1`);
  const body = await res.json();
  assert.equal(res.status, 200);
  assert.equal(body.path, "/hello");
  assert.equal(body.search, "?x=1");
});

Deno.test("at debug level every answer is logged, the gateway's own 404 too", async () => {
  await using upstream = startEchoUpstream();
  await using gw = await startGateway(`
routes:
  - name: api
    match: { path_prefix: /api }
    upstream: { url: ${upstream.url} }
    pipeline:
      - proxy: {}
`);
  await (await fetch(`${gw.url}/api/x`)).body?.cancel();
  await (await fetch(`${gw.url}/nowhere?q=1`)).body?.cancel();
  const lines = gw.logs.lines.filter((line) => line.msg === "request");
  assert.deepEqual(
    lines.map((line) => [line.route, line.path, line.status]),
    [["api", "/api/x", 200], [undefined, "/nowhere", 404]],
  );
  assert.ok(lines.every((line) => typeof line.request_id === "string"));
});
