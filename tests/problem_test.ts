/** problem(): RFC 9457 answers, their headers, and the caller's headers. */
import assert from "node:assert/strict";
import { isGatewayAnswer, problem } from "../src/problem.ts";

Deno.test("a problem answer is problem+json with type, title, status, detail and extensions", async () => {
  const response = problem(404, { detail: "Nothing here", extensions: { path: "/x" } });
  assert.equal(response.status, 404);
  assert.equal(response.headers.get("content-type"), "application/problem+json");
  assert.equal(response.headers.get("cache-control"), "no-store");
  assert.deepEqual(await response.json(), {
    type: "about:blank",
    title: "Not Found",
    status: 404,
    detail: "Nothing here",
    path: "/x",
  });
  assert.equal(isGatewayAnswer(response), true);
  assert.equal(isGatewayAnswer(new Response("upstream")), false);
});

Deno.test("429 and 503 carry Retry-After in whole seconds (at least 1) and no cache-control", () => {
  for (const status of [429, 503]) {
    const response = problem(status, { retryAfterSeconds: 0.2 });
    assert.equal(response.headers.get("retry-after"), "1");
    assert.equal(response.headers.has("cache-control"), false);
  }
  assert.equal(problem(429, { retryAfterSeconds: 2.1 }).headers.get("retry-after"), "3");
});

Deno.test("the caller's headers are kept, in any HeadersInit form; problem() sets its own over them", () => {
  const forms: HeadersInit[] = [
    [["x-one", "1"], ["content-type", "text/html"], ["retry-after", "7"]],
    { "x-one": "1", "Content-Type": "text/html", "retry-after": "7" },
    new Headers({ "x-one": "1", "content-type": "text/html", "retry-after": "7" }),
  ];
  for (const headers of forms) {
    const kept = problem(503, { headers });
    assert.equal(kept.headers.get("x-one"), "1");
    assert.equal(kept.headers.get("content-type"), "application/problem+json");
    assert.equal(kept.headers.get("retry-after"), "7", "no retryAfterSeconds: the caller's stays");
    const replaced = problem(503, { headers, retryAfterSeconds: 2 });
    assert.equal(replaced.headers.get("retry-after"), "2");
  }
});
