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
