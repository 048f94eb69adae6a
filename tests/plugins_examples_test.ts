/** The example plugins, tested as a plugin author would: a Request, the handler, no socket. */
import assert from "node:assert/strict";
import { createHandler, requestContext } from "../mod.ts";
import requestId from "../plugins/examples/request_id.ts";
import headerFilter from "../plugins/examples/header_filter.ts";
import hitCounter from "../plugins/examples/hit_counter.ts";

const ok = () => Promise.resolve(new Response("upstream"));

Deno.test("request-id echoes the request id in the configured header", async () => {
  const handler = await createHandler(requestId, { header: "x-trace" });
  const response = await handler(
    requestContext(new Request("http://gw/x"), { requestId: "req-42" }),
    ok,
  );
  assert.equal(response.headers.get("x-trace"), "req-42");
  assert.equal(await response.text(), "upstream");
});

Deno.test("request-id rejects a header name that is not one", async () => {
  await assert.rejects(createHandler(requestId, { header: "not a header" }), /Invalid options/);
});

Deno.test("header-filter denies, requires and removes headers", async () => {
  const handler = await createHandler(headerFilter, {
    deny: ["x-debug"],
    require: ["x-tenant"],
    remove: ["cookie"],
  });
  const denied = await handler(
    requestContext(new Request("http://gw/", { headers: { "x-debug": "1", "x-tenant": "a" } })),
    ok,
  );
  assert.equal(denied.status, 403);
  assert.equal(denied.headers.get("content-type"), "application/problem+json");

  const missing = await handler(requestContext(new Request("http://gw/")), ok);
  assert.equal(missing.status, 400);
  assert.match((await missing.json()).detail, /x-tenant/);

  const ctx = requestContext(
    new Request("http://gw/", { headers: { "x-tenant": "a", cookie: "s=1" } }),
  );
  let seenCookie: string | null = "next() was not called";
  const passed = await handler(ctx, () => {
    seenCookie = ctx.request.headers.get("cookie");
    return ok();
  });
  assert.equal(passed.status, 200);
  assert.equal(seenCookie, null);
  assert.equal(ctx.request.headers.get("x-tenant"), "a");
});

Deno.test("hit-counter counts requests across calls", async () => {
  const handler = await createHandler(hitCounter, {});
  const counts: string[] = [];
  for (let i = 0; i < 3; i++) {
    const response = await handler(requestContext(new Request("http://gw/")), ok);
    counts.push(response.headers.get("x-hits")!);
  }
  assert.deepEqual(counts, ["1", "2", "3"]);
});
