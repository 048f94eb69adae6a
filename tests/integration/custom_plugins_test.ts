/** Custom plugins in a real gateway: the examples, and plugins that misbehave. */
import assert from "node:assert/strict";
import {
  delay,
  repoPath,
  startEchoUpstream,
  startGateway,
  startUpstream,
  waitFor,
} from "../_helpers.ts";

const modUrl = new URL("../../mod.ts", import.meta.url).href;

/** A gateway whose one route runs a plugin file `<name>.ts` (its handler's body as given), then proxy. */
function startWithPlugin(upstream: string, name: string, handlerBody: string) {
  return startGateway(
    `routes:
  - name: api
    upstream: { url: ${upstream} }
    pipeline:
      - plugin: ./${name}.ts
      - proxy: {}
`,
    {},
    {
      [`${name}.ts`]: `import { definePlugin, problem } from "${modUrl}";
import { z } from "zod";
export default definePlugin({
  name: "${name}",
  options: z.object({}),
  create() {
    return function ${name}(ctx, next) {
      ${handlerBody}
    };
  },
});
`,
    },
  );
}

Deno.test("header-filter removes a header before the upstream sees it", async () => {
  await using upstream = startEchoUpstream();
  await using gw = await startGateway(`routes:
  - name: api
    upstream: { url: ${upstream.url} }
    pipeline:
      - plugin: ${repoPath("plugins/examples/header_filter.ts")}
        with: { remove: [cookie], deny: [x-debug] }
      - proxy: {}
`);
  const response = await fetch(`${gw.url}/x`, {
    method: "POST",
    body: "payload",
    headers: { cookie: "session=1", "x-keep": "yes" },
  });
  const echoed = await response.json();
  const headers = new Map(echoed.headers as [string, string][]);
  assert.equal(headers.get("cookie"), undefined);
  assert.equal(headers.get("x-keep"), "yes");
  assert.equal(echoed.body, "payload");
  const denied = await fetch(`${gw.url}/x`, { headers: { "x-debug": "1" } });
  assert.equal(denied.status, 403);
  await denied.body?.cancel();
});

Deno.test("a plugin that throws on a request answers 500 problem+json and the gateway keeps serving", async () => {
  await using upstream = startEchoUpstream();
  await using gw = await startWithPlugin(
    upstream.url,
    "flaky",
    `if (ctx.url.pathname === "/boom") throw new Error("flaky plugin blew up");
      if (ctx.url.pathname === "/twice") return next().then(() => next());
      // The common slip: no return.
      if (ctx.url.pathname === "/forgot") { next(); return undefined as unknown as Response; }
      return next();`,
  );
  const boom = await fetch(`${gw.url}/boom`);
  assert.equal(boom.status, 500);
  assert.equal(boom.headers.get("content-type"), "application/problem+json");
  assert.equal((await boom.json()).title, "Plugin failed");
  const twice = await fetch(`${gw.url}/twice`);
  assert.equal(twice.status, 500);
  await twice.body?.cancel();
  const forgot = await fetch(`${gw.url}/forgot`, { headers: { "x-request-id": "forgot-1" } });
  assert.equal(forgot.status, 500);
  assert.equal(forgot.headers.get("x-request-id"), "forgot-1");
  assert.equal((await forgot.json()).title, "Plugin failed");
  const fine = await fetch(`${gw.url}/fine`);
  assert.equal(fine.status, 200);
  await fine.body?.cancel();
  const logged = gw.logs.lines.filter((line) => line.msg === "plugin failed");
  assert.equal(logged.length, 3);
  assert.match(JSON.stringify(logged[0]), /flaky plugin blew up/);
  // Where it was thrown: the plugin's own file.
  assert.match(String(logged[0]!.at), /flaky\.ts:\d+:\d+/);
  assert.match(JSON.stringify(logged[1]), /next\(\) was called more than once/);
  assert.match(JSON.stringify(logged[2]), /not a Response/);
  assert.equal(logged[2]!.request_id, "forgot-1");
  // A mistake the gateway found itself names no place in the gateway.
  assert.equal(logged[2]!.at, undefined);
});

Deno.test("a plugin that puts a control character in a response header gets its route's 500, and the gateway lives on", async () => {
  // The upstream streams until its reader goes away.
  let cancelled = false;
  await using upstream = startUpstream(() =>
    new Response(
      new ReadableStream<Uint8Array>({
        async pull(controller) {
          await delay(10);
          controller.enqueue(new Uint8Array(1024));
        },
        cancel() {
          cancelled = true;
        },
      }),
    )
  );
  await using gw = await startGateway(
    `routes:
  - name: api
    upstream: { url: ${upstream.url} }
    pipeline:
      - plugin: ${repoPath("tests/fixtures/tag_plugin.ts")}
        with: { value: "a\\x01b" }
      - proxy: {}
`,
  );
  const answer = await fetch(`${gw.url}/x`, { headers: { "x-request-id": "ctl-1" } });
  assert.equal(answer.status, 500);
  assert.equal(answer.headers.get("x-request-id"), "ctl-1");
  assert.equal((await answer.json()).title, "Plugin failed");
  const logged = gw.logs.lines.filter((line) => line.msg === "plugin failed");
  assert.match(JSON.stringify(logged), /control character/);
  // The replaced answer's body is cancelled, so its upstream connection does not stay open.
  assert.ok(await waitFor(() => cancelled, 3_000), "the upstream body was never cancelled");
  const health = await fetch(`${gw.adminUrl}/health`);
  assert.equal(health.status, 200);
  await health.body?.cancel();
});

Deno.test("a step written after proxy runs just before it; a route with an upstream and no proxy step proxies", async () => {
  await using upstream = startUpstream(() => new Response("from upstream"));
  await using gw = await startGateway(`routes:
  - name: after
    match: { path_prefix: /after }
    upstream: { url: ${upstream.url} }
    pipeline:
      - proxy: {}
      - plugin: ${repoPath("plugins/examples/request_id.ts")}
        with: { header: x-echoed-id }
  - name: bare
    upstream: { url: ${upstream.url} }
`);
  const after = await fetch(`${gw.url}/after/x`, { headers: { "x-request-id": "req-after-1" } });
  assert.equal(await after.text(), "from upstream");
  assert.equal(after.headers.get("x-echoed-id"), "req-after-1");
  const bare = await fetch(`${gw.url}/anything`);
  assert.equal(bare.status, 200);
  assert.equal(await bare.text(), "from upstream");
  // /status shows the order the steps run in.
  const status = await (await fetch(`${gw.adminUrl}/status`)).json();
  const steps = Object.fromEntries(
    status.routes.map((
      route: { name: string; pipeline: string[] },
    ) => [route.name, route.pipeline]),
  );
  assert.deepEqual(steps, { after: ["request-id", "proxy"], bare: ["proxy"] });
});

Deno.test("a plugin that rewrites ctx.url's query or path is forwarded so; untouched, the query goes as written", async () => {
  await using upstream = startEchoUpstream();
  await using gw = await startWithPlugin(
    upstream.url,
    "rewrite",
    `if (ctx.url.pathname === "/old") {
        ctx.url.pathname = "/new";
        ctx.url.searchParams.set("v", "2");
      }
      return next();`,
  );
  const rewritten = await (await fetch(`${gw.url}/old?v=1&keep=yes`)).json();
  assert.equal(rewritten.path, "/new");
  assert.equal(rewritten.search, "?v=2&keep=yes");
  const untouched = await (await fetch(`${gw.url}/other?v=1&keep=yes`)).json();
  assert.equal(untouched.path, "/other");
  assert.equal(untouched.search, "?v=1&keep=yes");
});

Deno.test("a plugin whose create() never finishes fails its build in time, and later reloads still work", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  const plugin = (hang: boolean) =>
    `import { definePlugin } from "${modUrl}";
import { z } from "zod";
export default definePlugin({
  name: "slow-create",
  options: z.object({}),
  async create() {
    if (${hang}) await new Promise(() => {});
    return (_ctx, next) => next();
  },
});
`;
  const yaml = (withPlugin: boolean) =>
    `routes:
  - name: api
    upstream: { url: ${upstream.url} }
    pipeline:
${withPlugin ? "      - plugin: ./slow.ts\n" : ""}      - proxy: {}
`;
  await using gw = await startGateway(yaml(false), { pluginCreateTimeoutMs: 300 }, {
    "slow.ts": plugin(true),
  });
  const started = Date.now();
  const failed = await fetch(`${gw.adminUrl}/reload`, { method: "POST" }).then((r) => r.json());
  assert.equal(failed.ok, true, "a reload without the plugin works");
  await Deno.writeTextFile(`${gw.config.dir}/gateway.yaml`, yaml(true));
  const refused = await fetch(`${gw.adminUrl}/reload`, { method: "POST" });
  const body = await refused.json();
  assert.equal(refused.status, 422);
  assert.match(body.errors[0].message, /create\(\) did not finish within 0.3 s/);
  assert.equal(body.errors[0].line, 5);
  assert.ok(Date.now() - started < 5_000);
  assert.equal(
    await fetch(`${gw.url}/x`).then(async (r) => (await r.body?.cancel(), r.status)),
    200,
  );
  // Fixed, it reloads: nothing waits behind the hung create().
  await Deno.writeTextFile(`${gw.config.dir}/slow.ts`, plugin(false));
  const fixed = await fetch(`${gw.adminUrl}/reload`, { method: "POST" }).then((r) => r.json());
  assert.equal(fixed.ok, true);
});

Deno.test("a plugin's status report that throws, or claims the route's fields, breaks neither /status nor /metrics", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  const plugin = (name: string, report: string) =>
    `import { definePlugin } from "${modUrl}";
import { z } from "zod";
export default definePlugin({
  name: "${name}",
  options: z.object({}),
  create(_options, ctx) {
    ctx.onStatus(() => { ${report} });
    return (_ctx, next) => next();
  },
});
`;
  await using gw = await startGateway(
    `routes:
  - name: api
    upstream: { url: ${upstream.url} }
    pipeline:
      - plugin: ./throws.ts
      - plugin: ./claims.ts
      - plugin: ./nothing.ts
      - plugin: ./later.ts
      - proxy: {}
`,
    { processMetrics: false },
    {
      "throws.ts": plugin("throws", `throw new Error("status broke");`),
      "claims.ts": plugin(
        "claims",
        `return { name: "hijacked", pipeline: "none", breaker: { x: "open" }, mine: 1, concurrency: { inflight: 42, queued: 7 } };`,
      ),
      // A block body by mistake: the report gives undefined.
      "nothing.ts": plugin("nothing", `({ hits: 1 });`),
      // An async report that rejects: a promise, never awaited, must not end the process.
      "later.ts": plugin("later", `return (async () => { throw new Error("later broke"); })();`),
    },
  );
  const status = await fetch(`${gw.adminUrl}/status`);
  assert.equal(status.status, 200);
  const route = (await status.json()).routes[0];
  assert.equal(route.name, "api");
  assert.deepEqual(route.pipeline, ["throws", "claims", "nothing", "later", "proxy"]);
  assert.equal(route.mine, 1);
  const metrics = await fetch(`${gw.adminUrl}/metrics`);
  assert.equal(metrics.status, 200);
  await delay(50); // a rejection nobody handled would end the process here
  const still = await fetch(`${gw.url}/x`);
  await still.body?.cancel();
  assert.equal(still.status, 200);
  const text = await metrics.text();
  assert.doesNotMatch(text, /NaN/);
  // A custom plugin's report is no gauge.
  assert.doesNotMatch(text, /^sluice_(inflight|queue_depth|breaker_state)\{route="api"\} [1-9]/m);
  assert.ok(
    gw.logs.lines.some((line) =>
      line.msg === "a plugin's status report failed" && line.plugin === "throws"
    ),
  );
});

Deno.test("outcomes say who answered: an upstream's own 499 is proxied, rebuilt by a plugin too; a plugin's own answer is no upstream's", async () => {
  await using upstream = startUpstream(() => new Response("gone", { status: 499 }));
  await using gw = await startWithPlugin(
    upstream.url,
    "answers",
    `const query = new URL(ctx.request.url).searchParams;
      const status = Number(query.get("status") ?? 0);
      if (query.has("rebuild")) return next().then((answer) => new Response(answer.body, answer));
      if (query.has("problem")) return problem(Number(query.get("problem")), {});
      return status ? new Response("from the plugin", { status }) : next();`,
  );
  const queries = ["", "?status=200", "?status=403", "?status=500", "?rebuild"];
  // Made with problem(), it counts as the gateway's own answers do (README).
  queries.push("?problem=503", "?problem=429", "?problem=400");
  for (const query of queries) {
    await (await fetch(`${gw.url}/x${query}`)).body?.cancel();
  }
  const text = await (await fetch(`${gw.adminUrl}/metrics`)).text();
  const count = (outcome: string) =>
    Number(
      new RegExp(`^sluice_requests_total\\{route="api",outcome="${outcome}"\\} (\\d+)$`, "m")
        .exec(text)?.[1] ?? 0,
    );
  assert.deepEqual(
    ["proxied", "client_closed", "answered", "rejected", "error", "unavailable", "limited"].map(
      count,
    ),
    [2, 0, 1, 2, 1, 1, 1],
  );
});

Deno.test("a plugin that misuses a gateway helper is logged with its own line, not the helper's", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(
    `routes:
  - name: api
    upstream: { url: ${upstream.url} }
    pipeline:
      - plugin: ./misuse.ts
      - proxy: {}
`,
    {},
    {
      "misuse.ts": `import { definePlugin, problem } from "${modUrl}";
import { z } from "zod";
export default definePlugin({
  name: "misuse",
  options: z.object({}),
  create() {
    return function misuse() {
      return problem(1000, { detail: "no such status" });
    };
  },
});
`,
    },
  );
  const response = await fetch(`${gw.url}/x`);
  await response.body?.cancel();
  assert.equal(response.status, 500);
  const logged = gw.logs.lines.find((line) => line.msg === "plugin failed");
  assert.match(String(logged?.at), /misuse\.ts:\d+:\d+/);
});
