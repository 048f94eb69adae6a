/** Rate limiting through real sockets on the memory store: headers, 429s, tiers, isolation, reloads. */
import assert from "node:assert/strict";
import { sha256Hex } from "../../src/digest.ts";
import { delay, repoPath, startGateway, startUpstream, waitFor } from "../_helpers.ts";

function yaml(upstream: string, pipeline: string, extra = ""): string {
  return `tiers:
  free: { limit: 3, window: 1m }
  paid: { limit: 5, window: 1m }
keys:
  - { key: paid-key, tier: paid, name: acme }
  - { key: free-key, tier: free }
${extra}routes:
  - name: api
    match: { path_prefix: /api }
    upstream: { url: ${upstream} }
    pipeline:
${pipeline}
      - proxy: {}
  - name: other
    match: { path_prefix: /other }
    upstream: { url: ${upstream} }
    pipeline:
${pipeline}
      - proxy: {}
`;
}

const TIERED = `      - identify: { from: [header:x-api-key, ip] }
      - tier: { default: free, unknown_key: reject }
      - sliding-window: { limit: tier }`;

async function send(url: string, key?: string, headers: Record<string, string> = {}) {
  const response = await fetch(url, { headers: key ? { "x-api-key": key, ...headers } : headers });
  const body = await response.text();
  return { status: response.status, headers: response.headers, body };
}

for (const algorithm of ["log", "counter", "fixed"]) {
  Deno.test(`${algorithm}: headers on every answer, 429 problem+json with Retry-After past the limit`, async () => {
    await using upstream = startUpstream(() => new Response("ok"));
    await using gw = await startGateway(yaml(
      upstream.url,
      `      - identify: { from: [header:x-api-key, ip] }
      - sliding-window: { limit: 3, window: 1h, algorithm: ${algorithm} }`,
    ));
    const answers = [];
    for (let i = 0; i < 4; i++) answers.push(await send(`${gw.url}/api/x`, "k"));
    assert.deepEqual(answers.map((a) => a.status), [200, 200, 200, 429]);
    assert.deepEqual(answers.map((a) => a.headers.get("x-ratelimit-remaining")), [
      "2",
      "1",
      "0",
      "0",
    ]);
    for (const answer of answers) {
      assert.equal(answer.headers.get("ratelimit-policy"), `"3/h";q=3;w=3600`);
      assert.match(answer.headers.get("ratelimit")!, /^"3\/h";r=\d;t=\d+$/);
      assert.equal(answer.headers.get("x-ratelimit-limit"), "3");
      assert.ok(Number(answer.headers.get("x-ratelimit-reset")) > 0);
    }
    const limited = answers[3]!;
    assert.equal(limited.headers.get("content-type"), "application/problem+json");
    const retryAfter = Number(limited.headers.get("retry-after"));
    // A counter may wait into the next bucket, until the old one weighs little enough.
    const longest = algorithm === "counter" ? 7200 : 3600;
    assert.ok(
      Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= longest,
      `Retry-After ${retryAfter}`,
    );
    const problem = JSON.parse(limited.body);
    assert.equal(problem.status, 429);
    assert.equal(problem.title, "Quota exceeded");
    assert.equal(problem.policy, "3/h");
    assert.match(problem.type, /quota-exceeded$/);
    assert.match(problem.detail, /"3\/h"/);
    assert.equal(
      limited.headers.get("ratelimit"),
      `"3/h";r=0;t=${limited.headers.get("x-ratelimit-reset")}`,
    );
  });
}

Deno.test("Retry-After is when a retry actually passes", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(
    upstream.url,
    `      - identify: { from: [header:x-api-key, ip] }
      - sliding-window: { limit: 2, window: 2s }`,
  ));
  assert.equal((await send(`${gw.url}/api/x`, "k")).status, 200);
  assert.equal((await send(`${gw.url}/api/x`, "k")).status, 200);
  const limited = await send(`${gw.url}/api/x`, "k");
  assert.equal(limited.status, 429);
  const retryAfter = Number(limited.headers.get("retry-after"));
  assert.ok(retryAfter >= 1 && retryAfter <= 2);
  await new Promise((resolve) => setTimeout(resolve, retryAfter * 1000));
  assert.equal((await send(`${gw.url}/api/x`, "k")).status, 200);
});

Deno.test("tiers: each key gets its tier's limit, unknown keys are rejected, anonymous callers get the default", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(upstream.url, TIERED));
  const run = async (key: string | undefined, n: number) => {
    const statuses = [];
    for (let i = 0; i < n; i++) statuses.push((await send(`${gw.url}/api/x`, key)).status);
    return statuses;
  };
  assert.deepEqual(await run("paid-key", 6), [200, 200, 200, 200, 200, 429]);
  assert.deepEqual(await run("free-key", 4), [200, 200, 200, 429]);
  assert.deepEqual(await run(undefined, 4), [200, 200, 200, 429]);
  const unknown = await send(`${gw.url}/api/x`, "who-am-i");
  assert.equal(unknown.status, 401);
  assert.equal(JSON.parse(unknown.body).title, "Unknown API key");
  assert.equal(unknown.headers.get("www-authenticate"), 'ApiKey realm="sluice"');
  // A bearer token beside the key (for the upstream) does not make the key a bearer's.
  const beside = await send(`${gw.url}/api/x`, "who-am-i", { authorization: "Bearer other" });
  assert.equal(beside.headers.get("www-authenticate"), 'ApiKey realm="sluice"');
  // A key read from the whole Authorization header, sent as a bearer token, is one.
  await using byHeader = await startGateway(yaml(
    upstream.url,
    TIERED.replace("header:x-api-key, ip", "header:authorization"),
  ));
  const bearer = await send(`${byHeader.url}/api/x`, undefined, { authorization: "Bearer nope" });
  assert.equal(bearer.status, 401);
  assert.equal(
    bearer.headers.get("www-authenticate"),
    'Bearer realm="sluice", error="invalid_token"',
  );
  const paid = await send(`${gw.url}/api/x`, "paid-key");
  assert.equal(paid.headers.get("ratelimit-policy"), `"paid";q=5;w=60`);
});

Deno.test("unknown_key: <tier> counts unknown keys as their address: a made-up key brings no fresh quota", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(
    upstream.url,
    TIERED.replace("unknown_key: reject", "unknown_key: free"),
  ));
  const statuses = [];
  for (let i = 0; i < 3; i++) statuses.push((await send(`${gw.url}/api/x`)).status);
  for (const key of ["made-up-1", "made-up-2"]) {
    statuses.push((await send(`${gw.url}/api/x`, key)).status);
  }
  assert.deepEqual(statuses, [200, 200, 200, 429, 429]);
  // A known key still has its own quota.
  assert.equal((await send(`${gw.url}/api/x`, "paid-key")).status, 200);
});

Deno.test("one route's traffic never spends another's quota", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(upstream.url, TIERED));
  for (let i = 0; i < 3; i++) assert.equal((await send(`${gw.url}/api/x`, "free-key")).status, 200);
  assert.equal((await send(`${gw.url}/api/x`, "free-key")).status, 429);
  assert.equal((await send(`${gw.url}/other/x`, "free-key")).status, 200);
  assert.equal(
    (await send(`${gw.url}/other/x`, "free-key")).headers.get("x-ratelimit-remaining"),
    "1",
  );
});

Deno.test("a tier edited in the YAML applies from the next request, counters kept", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(upstream.url, TIERED));
  for (let i = 0; i < 3; i++) assert.equal((await send(`${gw.url}/api/x`, "free-key")).status, 200);
  assert.equal((await send(`${gw.url}/api/x`, "free-key")).status, 429);
  await gw.config.write(yaml(upstream.url, TIERED).replace("free: { limit: 3", "free: { limit: 5"));
  assert.ok(
    await waitFor(async () => (await (await fetch(`${gw.adminUrl}/status`)).json()).version === 2),
  );
  const after = await send(`${gw.url}/api/x`, "free-key");
  assert.equal(after.status, 200);
  // 3 already counted under the old limit: 1 left of 5 after this one.
  assert.equal(after.headers.get("x-ratelimit-remaining"), "1");
  assert.equal(after.headers.get("ratelimit-policy"), `"free";q=5;w=60`);
  assert.equal((await send(`${gw.url}/api/x`, "free-key")).status, 200);
  assert.equal((await send(`${gw.url}/api/x`, "free-key")).status, 429);
});

Deno.test("an edit of the store section that keeps the memory store keeps its counters", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  const config = (timeout: string) =>
    `store: { kind: memory, timeout: ${timeout}, on_failure: allow }\n${
      yaml(upstream.url, TIERED)
    }`;
  await using gw = await startGateway(config("100ms"));
  for (let i = 0; i < 3; i++) assert.equal((await send(`${gw.url}/api/x`, "free-key")).status, 200);
  await gw.config.write(config("200ms"));
  assert.ok(
    await waitFor(async () => (await (await fetch(`${gw.adminUrl}/status`)).json()).version === 2),
  );
  assert.equal((await send(`${gw.url}/api/x`, "free-key")).status, 429);
});

Deno.test("several limits are decided together and a request denied by one consumes from none", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(
    upstream.url,
    `      - identify: { from: [header:x-api-key, ip] }
      - sliding-window: { limits: [2/s, 3/h] }`,
  ));
  assert.equal((await send(`${gw.url}/api/x`, "k")).status, 200);
  const second = await send(`${gw.url}/api/x`, "k");
  assert.equal(second.headers.get("ratelimit-policy"), `"2/s";q=2;w=1, "3/h";q=3;w=3600`);
  assert.match(second.headers.get("ratelimit")!, /^"2\/s";r=0;t=1, "3\/h";r=1;t=\d+$/);
  const denied = await send(`${gw.url}/api/x`, "k");
  assert.equal(denied.status, 429);
  assert.equal(JSON.parse(denied.body).policy, "2/s");
  // The denial took nothing from the hourly limit.
  assert.match(denied.headers.get("ratelimit")!, /"3\/h";r=1;/);
});

for (const algorithm of ["log", "counter", "fixed"]) {
  Deno.test(`${algorithm}: of several limits spent, the answer names the one that sets the wait`, async () => {
    await using upstream = startUpstream(() => new Response("ok"));
    await using gw = await startGateway(yaml(
      upstream.url,
      `      - identify: { from: [header:x-api-key, ip] }
      - sliding-window: { limits: [2/s, 2/h], algorithm: ${algorithm} }`,
    ));
    // A fixed hour ends at the top of the clock's hour: its reset is what is
    // left of that hour (a few seconds before the top, wait for the next one).
    const hourLeft = () => Math.ceil((3_600_000 - Date.now() % 3_600_000) / 1000);
    if (algorithm === "fixed" && hourLeft() < 5) await delay(hourLeft() * 1000 + 100);
    const longer = algorithm === "fixed" ? Math.min(60, hourLeft() - 3) : 60;
    await send(`${gw.url}/api/x`, "k");
    const second = await send(`${gw.url}/api/x`, "k");
    // Both are spent: the legacy headers show the hourly one, which resets last.
    assert.equal(second.headers.get("x-ratelimit-limit"), "2");
    assert.ok(Number(second.headers.get("x-ratelimit-reset")) > longer);
    const denied = await send(`${gw.url}/api/x`, "k");
    assert.equal(denied.status, 429);
    assert.ok(Number(denied.headers.get("retry-after")) > longer);
    assert.equal(JSON.parse(denied.body).policy, "2/h");
    assert.ok(Number(denied.headers.get("x-ratelimit-reset")) > longer);
  });
}

Deno.test("a name given to several limits names each apart: the name ties a RateLimit item to its policy", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(
    upstream.url,
    `      - identify: { from: [ip] }
      - sliding-window: { limits: [2/s, 100/h], name: api }`,
  ));
  const answer = await send(`${gw.url}/api/x`);
  assert.equal(
    answer.headers.get("ratelimit-policy"),
    `"api-2/s";q=2;w=1, "api-100/h";q=100;w=3600`,
  );
  assert.match(answer.headers.get("ratelimit")!, /^"api-2\/s";r=1;t=1, "api-100\/h";r=99;t=\d+$/);
});

Deno.test("cost from a header weights a request; a bad cost is a 400 problem", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(
    upstream.url,
    `      - identify: { from: [header:x-api-key, ip] }
      - sliding-window: { limit: 10, window: 1h, cost: header:x-cost }`,
  ));
  const heavy = await send(`${gw.url}/api/x`, "k", { "x-cost": "7" });
  assert.equal(heavy.status, 200);
  assert.equal(heavy.headers.get("x-ratelimit-remaining"), "3");
  assert.equal((await send(`${gw.url}/api/x`, "k", { "x-cost": "4" })).status, 429);
  assert.equal((await send(`${gw.url}/api/x`, "k", { "x-cost": "3" })).status, 200);
  // Only digits, and at least 1: a client may not choose to spend nothing.
  for (const cost of ["-2", "", "0", "0x10", "1e3", "2.5"]) {
    const bad = await send(`${gw.url}/api/x`, "k", { "x-cost": cost });
    assert.equal(bad.status, 400, `x-cost: ${JSON.stringify(cost)}`);
    assert.equal(bad.headers.get("content-type"), "application/problem+json");
  }
  assert.equal((await send(`${gw.url}/api/x`, "k", { "x-cost": "1" })).status, 429);
  // More than the limit can never pass: a 400 that says so, not a Retry-After that lies.
  const never = await send(`${gw.url}/api/x`, "k2", { "x-cost": "11" });
  assert.equal(never.status, 400);
  assert.equal(JSON.parse(never.body).type, "urn:sluice:problem:cost-exceeds-limit");
  assert.equal(never.headers.get("retry-after"), null);
});

Deno.test("log takes a cost up to 1,000 (it keeps every unit); counter and fixed take more", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(
    yaml(
      upstream.url,
      `      - identify: { from: [header:x-api-key, ip] }
      - sliding-window: { limit: 1000000, window: 1h, cost: header:x-cost }`,
    ).replace(
      "  - name: other",
      `  - name: counted
    match: { path_prefix: /counted }
    upstream: { url: ${upstream.url} }
    pipeline:
      - identify: { from: [ip] }
      - sliding-window: { limit: 1000000, window: 1h, cost: header:x-cost, algorithm: counter }
      - proxy: {}
  - name: other`,
    ),
  );
  assert.equal((await send(`${gw.url}/api/x`, "k", { "x-cost": "1000" })).status, 200);
  const big = await send(`${gw.url}/api/x`, "k", { "x-cost": "200000" });
  assert.equal(big.status, 400);
  assert.match(JSON.parse(big.body).detail, /from 1 to 1000/);
  assert.equal((await send(`${gw.url}/counted/x`, "k", { "x-cost": "200000" })).status, 200);
  await assert.rejects(
    startGateway(yaml(
      upstream.url,
      `      - identify: { from: [ip] }
      - sliding-window: { limit: 1000000, window: 1h, cost: 5000 }`,
    )),
    /sliding-window.*cost 5000 is above 1000, the most the log algorithm takes/,
  );
});

Deno.test("shadow mode never rejects, not even when the store is down and on_failure is deny", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  // Nothing listens on this Redis port: the store starts down.
  const dead = await Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (dead.addr as Deno.NetAddr).port;
  dead.close();
  await using gw = await startGateway(yaml(
    upstream.url,
    `      - identify: { from: [header:x-api-key, ip] }
      - sliding-window: { limit: 1, window: 1h, shadow: true }`,
    `store: { kind: redis, url: "redis://127.0.0.1:${port}", on_failure: deny, timeout: 50ms }\n`,
  ));
  for (let i = 0; i < 3; i++) assert.equal((await send(`${gw.url}/api/x`, "k")).status, 200);
  const metrics = await (await fetch(`${gw.adminUrl}/metrics`)).text();
  assert.match(
    metrics,
    /sluice_limit_decisions_total\{route="api",plugin="sliding-window",decision="unavailable"\} 3/,
  );
});

Deno.test("two limit steps of one kind in a route count apart", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(
    upstream.url,
    `      - identify: { from: [header:x-api-key, ip] }
      - tier: { default: free, unknown_key: reject }
      - sliding-window: { limit: tier }
      - sliding-window: { limits: [1000/m], name: units }
      - token-bucket: { rate: 100/s }
      - token-bucket: { rate: 1/s, burst: 2, name: slow }`,
  ));
  const answers = [];
  for (let i = 0; i < 3; i++) answers.push(await send(`${gw.url}/api/x`));
  assert.deepEqual(answers.map((a) => a.status), [200, 200, 429]);
  // free is 3 a minute: each request spends one of it, not two.
  assert.match(answers[0]!.headers.get("ratelimit")!, /"free";r=2;/);
  assert.match(answers[1]!.headers.get("ratelimit")!, /"free";r=1;/);
  // The slow bucket (burst 2) refused the third, not the 100/s one; the third
  // also spent free's last unit, so the refusal waits for free.
  assert.match(answers[2]!.headers.get("ratelimit")!, /"slow";r=0;.*"100\/s";r=9[0-9];/);
  assert.equal(JSON.parse(answers[2]!.body).policy, "free");
  assert.ok(Number(answers[2]!.headers.get("retry-after")) > 50);
});

Deno.test("a later step's 429 waits for a quota an earlier step spent on the request", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(
    upstream.url,
    `      - identify: { from: [ip] }
      - sliding-window: { limit: 5, window: 1m }
      - sliding-window: { limit: 1, window: 1s }`,
  ));
  const answers = [];
  for (let i = 0; i < 6; i++) answers.push(await send(`${gw.url}/api/x`));
  assert.deepEqual(answers.map((a) => a.status), [200, 429, 429, 429, 429, 429]);
  // Each refusal counted in the minute's quota (as Envoy and Traefik count it):
  // while it has room, the second's wait holds; once spent, the minute's does.
  for (const refused of answers.slice(1, 4)) {
    assert.equal(refused.headers.get("retry-after"), "1");
    assert.equal(JSON.parse(refused.body).policy, "1/s");
  }
  for (const refused of answers.slice(4)) {
    assert.ok(Number(refused.headers.get("retry-after")) > 50, refused.headers.get("retry-after")!);
    assert.equal(JSON.parse(refused.body).policy, "5/m");
    assert.match(refused.headers.get("ratelimit")!, /"5\/m";r=0;t=\d+/);
  }
});

Deno.test("shadow mode never rejects a cost it would refuse: above the limit, or a bad header", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(
    upstream.url,
    `      - identify: { from: [header:x-api-key, ip] }
      - sliding-window: { limit: 5, window: 1h, cost: header:x-cost, shadow: true }`,
  ));
  for (const cost of ["6", "", "0", "abc"]) {
    assert.equal((await send(`${gw.url}/api/x`, "k", { "x-cost": cost })).status, 200, cost);
  }
});

Deno.test("shadow mode counts and reports but never rejects", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(
    upstream.url,
    `      - identify: { from: [header:x-api-key, ip] }
      - sliding-window: { limit: 1, window: 1h, shadow: true }`,
  ));
  const first = await send(`${gw.url}/api/x`, "k");
  const second = await send(`${gw.url}/api/x`, "k");
  assert.equal(first.status, 200);
  assert.equal(second.status, 200);
  assert.equal(second.headers.get("x-ratelimit-remaining"), "0");
  const metrics = await (await fetch(`${gw.adminUrl}/metrics`)).text();
  assert.match(
    metrics,
    /sluice_limit_decisions_total\{route="api",plugin="sliding-window",decision="shadow_limited"\} 1/,
  );
  assert.match(
    metrics,
    /sluice_limit_decisions_total\{route="api",plugin="sliding-window",decision="allowed"\} 1/,
  );
});

Deno.test("headers: none | legacy | ietf", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  for (const mode of ["none", "legacy", "ietf"]) {
    await using gw = await startGateway(yaml(
      upstream.url,
      `      - identify: { from: [ip] }
      - sliding-window: { limit: 5, window: 1m, headers: ${mode} }`,
    ));
    const answer = await send(`${gw.url}/api/x`);
    assert.equal(answer.headers.has("x-ratelimit-limit"), mode === "legacy", mode);
    assert.equal(answer.headers.has("ratelimit-policy"), mode === "ietf", mode);
  }
});

Deno.test("/clients/{id} shows limit, remaining, reset and tier per route", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(upstream.url, TIERED));
  await send(`${gw.url}/api/x`, "paid-key");
  await send(`${gw.url}/api/x`, "paid-key");
  await send(`${gw.url}/other/x`, "paid-key");
  const id = `key:${(await sha256Hex("paid-key")).slice(0, 16)}`;
  const report = await (await fetch(`${gw.adminUrl}/clients/${id}`)).json();
  assert.equal(report.id, id);
  assert.equal(report.tier, "paid");
  const api = report.routes.find((r: { route: string }) => r.route === "api");
  const other = report.routes.find((r: { route: string }) => r.route === "other");
  assert.equal(api.limits[0].limits[0].limit, 5);
  assert.equal(api.limits[0].limits[0].remaining, 3);
  assert.ok(api.limits[0].limits[0].reset_seconds > 0);
  assert.equal(other.limits[0].limits[0].remaining, 4);
  const text = JSON.stringify(report);
  assert.doesNotMatch(text, /paid-key/);
});

Deno.test("/clients/{id} shows a client's token bucket, and finds an address however it is written", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(
    upstream.url,
    `      - identify: { from: [ip] }
      - token-bucket: { rate: 10/m, burst: 10, scope: client }
`,
  ));
  for (let i = 0; i < 3; i++) await send(`${gw.url}/api/x`);
  for (const id of ["ip:127.0.0.1", "ip:::ffff:127.0.0.1", "ip:0:0:0:0:0:ffff:7f00:1"]) {
    const report = await (await fetch(`${gw.adminUrl}/clients/${id}`)).json();
    assert.equal(report.id, "ip:127.0.0.1", id);
    const api = report.routes.find((r: { route: string }) => r.route === "api");
    assert.equal(api?.limits[0].plugin, "token-bucket", id);
    assert.equal(api.limits[0].limits[0].limit, 10);
    assert.equal(api.limits[0].limits[0].remaining, 7);
  }
});

Deno.test("/clients/{id} shows each route's own tier for a client, whatever route it called last", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  const route = (name: string, steps: string) =>
    `  - name: ${name}
    match: { path_prefix: /${name} }
    upstream: { url: ${upstream.url} }
    pipeline:
${steps}
      - proxy: {}
`;
  await using gw = await startGateway(`tiers:
  free: { limit: 5, window: 1m }
  paid: { limit: 50, window: 1m }
routes:
${
    route(
      "a",
      "      - identify: { from: [ip] }\n      - tier: { default: free }\n      - sliding-window: { limit: tier }",
    )
  }${
    route(
      "b",
      "      - identify: { from: [ip] }\n      - tier: { default: paid }\n      - sliding-window: { limit: tier }",
    )
  }${route("c", "      - sliding-window: { limit: 10, window: 1m }")}`);
  for (const path of ["/a", "/b", "/c"]) await send(`${gw.url}${path}/x`);
  const report = await (await fetch(`${gw.adminUrl}/clients/ip:127.0.0.1`)).json();
  const limitOf = (name: string) =>
    report.routes.find((r: { route: string }) => r.route === name)?.limits[0];
  assert.equal(limitOf("a")?.tier, "free");
  assert.equal(limitOf("a")?.limits[0].limit, 5);
  assert.equal(limitOf("a")?.limits[0].remaining, 4);
  assert.equal(limitOf("b")?.tier, "paid");
  assert.equal(limitOf("b")?.limits[0].limit, 50);
  assert.equal(limitOf("c")?.limits[0].remaining, 9);
});

Deno.test("/clients/{id} shows the tier on a route with a tier step and no limit", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(
    upstream.url,
    `      - identify: { from: [header:x-api-key, ip] }
      - tier: { default: free, unknown_key: reject }`,
  ));
  assert.equal((await send(`${gw.url}/api/x`, "paid-key")).status, 200);
  const id = `key:${(await sha256Hex("paid-key")).slice(0, 16)}`;
  const report = await (await fetch(`${gw.adminUrl}/clients/${id}`)).json();
  assert.equal(report.tier, "paid");
});

Deno.test("a bad tier reference is a config error at its line", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await assert.rejects(
    startGateway(
      yaml(upstream.url, TIERED).replace("tier: paid, name: acme", "tier: gold, name: acme"),
    ),
    /keys\[0\]\.tier: Unknown tier "gold"/,
  );
  // Words every object has are no tiers either: such a default failed every request.
  for (const name of ["toString", "constructor"]) {
    await assert.rejects(
      startGateway(
        yaml(upstream.url, TIERED).replace(
          "tier: { default: free, unknown_key: reject }",
          `tier: { default: ${name}, unknown_key: reject }`,
        ),
      ),
      new RegExp(`default: tier "${name}" is not defined under tiers`),
    );
  }
});

Deno.test("stacked limits on a proxied answer: every IETF policy, the tightest legacy one, the upstream's own if tighter", async () => {
  let calls = 0;
  await using upstream = startUpstream(() =>
    ++calls === 1
      ? new Response("ok", {
        headers: {
          "x-ratelimit-limit": "1000",
          "x-ratelimit-remaining": "1",
          "x-ratelimit-reset": "9",
        },
      })
      : new Response("ok")
  );
  await using gw = await startGateway(yaml(
    upstream.url,
    `      - identify: { from: [ip] }
      - sliding-window: { limit: 3, window: 1h }
      - token-bucket: { rate: 100/s, burst: 5 }
      - plugin: ${repoPath("tests/fixtures/tag_plugin.ts")}
        with: { value: seen }`,
  ));
  const first = await send(`${gw.url}/api/x`, undefined, { "x-request-id": "req-1" });
  assert.equal(first.status, 200);
  assert.equal(first.headers.get("ratelimit-policy"), `"100/s";q=100;w=1, "3/h";q=3;w=3600`);
  assert.match(first.headers.get("ratelimit")!, /^"100\/s";r=4;t=\d+, "3\/h";r=2;t=\d+$/);
  // The upstream's own legacy headers say less is left: they stay.
  assert.equal(first.headers.get("x-ratelimit-limit"), "1000");
  assert.equal(first.headers.get("x-ratelimit-remaining"), "1");
  assert.equal(first.headers.get("x-request-id"), "req-1");
  assert.equal(first.headers.get("x-tag"), "seen");
  const second = await send(`${gw.url}/api/x`);
  assert.equal(second.headers.get("x-ratelimit-limit"), "3");
  assert.equal(second.headers.get("x-ratelimit-remaining"), "1");
  assert.match(second.headers.get("x-request-id")!, /^[0-9a-f-]{36}$/);
  await send(`${gw.url}/api/x`);
  const refused = await send(`${gw.url}/api/x`);
  assert.equal(refused.status, 429);
  // The shaper after the refusing limit never ran: only the refusing policy is reported.
  assert.equal(refused.headers.get("ratelimit-policy"), `"3/h";q=3;w=3600`);
  assert.equal(refused.headers.get("x-ratelimit-remaining"), "0");
  assert.match(refused.headers.get("x-request-id")!, /^[0-9a-f-]{36}$/);
  assert.equal(calls, 3);
});

Deno.test("a plugin that answers itself behind a limit gets the limit's headers and a request id", async () => {
  await using upstream = startUpstream(() => new Response("upstream"));
  await using gw = await startGateway(yaml(
    upstream.url,
    `      - identify: { from: [ip] }
      - sliding-window: { limit: 3, window: 1h }
      - plugin: ${repoPath("tests/fixtures/answer_plugin.ts")}
        with: { body: own }`,
  ));
  const answer = await send(`${gw.url}/api/x`);
  assert.equal(answer.body, "own");
  assert.equal(answer.headers.get("ratelimit-policy"), `"3/h";q=3;w=3600`);
  assert.equal(answer.headers.get("x-ratelimit-remaining"), "2");
  assert.match(answer.headers.get("x-request-id")!, /^[0-9a-f-]{36}$/);
});

Deno.test("an upstream's partial legacy headers are replaced whole, never merged with the gateway's", async () => {
  await using upstream = startUpstream(() =>
    new Response("ok", { headers: { "x-ratelimit-limit": "1000", "x-ratelimit-reset": "7" } })
  );
  await using gw = await startGateway(yaml(
    upstream.url,
    `      - identify: { from: [ip] }
      - sliding-window: { limit: 5, window: 1m }`,
  ));
  const answer = await send(`${gw.url}/api/x`);
  assert.equal(answer.headers.get("x-ratelimit-limit"), "5");
  assert.equal(answer.headers.get("x-ratelimit-remaining"), "4");
  assert.equal(answer.headers.get("x-ratelimit-reset"), "60");
});
