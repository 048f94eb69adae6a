/** The admin listener: health, readiness, metrics, status, auth. */
import assert from "node:assert/strict";
import { delay, startGateway, startUpstream, waitFor } from "../_helpers.ts";

function yaml(upstream: string, token = ""): string {
  return `admin: { token: "${token}" }
routes:
  - name: api
    match: { path_prefix: /api }
    upstream: { url: ${upstream} }
    pipeline:
      - identify: { from: [header:x-api-key, ip] }
      - proxy: {}
`;
}

Deno.test("/health and /ready answer without a token; everything else needs it", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(upstream.url, "s3cret"));
  const health = await fetch(`${gw.adminUrl}/health`);
  assert.equal(health.status, 200);
  assert.deepEqual(await health.json(), { status: "ok" });
  const ready = await fetch(`${gw.adminUrl}/ready`);
  assert.equal(ready.status, 200);
  assert.equal((await ready.json()).status, "ready");

  for (const path of ["/status", "/metrics"]) {
    const denied = await fetch(`${gw.adminUrl}${path}`);
    assert.equal(denied.status, 401, path);
    assert.equal(denied.headers.get("content-type"), "application/problem+json");
    assert.match(denied.headers.get("www-authenticate") ?? "", /^Bearer/);
    await denied.body?.cancel();
    const wrong = await fetch(`${gw.adminUrl}${path}`, {
      headers: { authorization: "Bearer nope" },
    });
    assert.equal(wrong.status, 401, path);
    await wrong.body?.cancel();
    const allowed = await fetch(`${gw.adminUrl}${path}`, {
      headers: { authorization: "Bearer s3cret" },
    });
    assert.equal(allowed.status, 200, path);
    await allowed.body?.cancel();
  }
  const reload = await fetch(`${gw.adminUrl}/reload`, { method: "POST" });
  assert.equal(reload.status, 401);
  await reload.body?.cancel();
});

Deno.test("/clients/{id} with broken percent-encoding answers 400 problem+json", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(upstream.url, "s3cret"));
  for (const id of ["%E0", "%", "a%zz"]) {
    const response = await fetch(`${gw.adminUrl}/clients/${id}`, {
      headers: { authorization: "Bearer s3cret" },
    });
    assert.equal(response.status, 400, id);
    assert.equal(response.headers.get("content-type"), "application/problem+json");
    await response.body?.cancel();
  }
});

Deno.test("the admin API refuses what a browser page on another site could send it", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(upstream.url));
  const port = Number(new URL(gw.adminUrl).port);
  // A form posted from another site, with no token configured.
  const crossSite: Record<string, string>[] = [
    { origin: "https://evil.example", "content-type": "text/plain" },
    { "sec-fetch-site": "cross-site" },
    { origin: "null" },
  ];
  for (const headers of crossSite) {
    const response = await fetch(`${gw.adminUrl}/reload`, { method: "POST", headers });
    assert.equal(response.status, 403, JSON.stringify(headers));
    assert.equal(response.headers.get("content-type"), "application/problem+json");
    await response.body?.cancel();
  }
  // A name rebound to 127.0.0.1: the Host is not a loopback name.
  const raw = async (host: string) => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(
      new TextEncoder().encode(
        `GET /status HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`,
      ),
    );
    let text = "";
    const buffer = new Uint8Array(4096);
    for (let n; (n = await conn.read(buffer)) !== null;) {
      text += new TextDecoder().decode(buffer.subarray(0, n));
    }
    conn.close();
    return text.split("\r\n")[0];
  };
  assert.equal(await raw(`rebind.evil.example:${port}`), "HTTP/1.1 403 Forbidden");
  assert.equal(await raw(`127.0.0.1:${port}`), "HTTP/1.1 200 OK");
  assert.equal(await raw("localhost"), "HTTP/1.1 200 OK");
  assert.equal(await raw("localhost."), "HTTP/1.1 200 OK");
  // A Host that makes no URL is the client's mistake: a 400, not the admin API's 500.
  assert.equal(await raw("[::1"), "HTTP/1.1 400 Bad Request");
  // Nor may a Host change the path: /status asked, /health is not what it gets.
  assert.equal(await raw(`127.0.0.1:${port}/health?`), "HTTP/1.1 400 Bad Request");
  assert.equal(gw.logs.lines.filter((line) => line.level === "error").length, 0);
  // An HTTP/1.0 health check sends no Host: no browser does that.
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(new TextEncoder().encode("GET /health HTTP/1.0\r\n\r\n"));
  const buffer = new Uint8Array(1024);
  const n = await conn.read(buffer);
  conn.close();
  assert.match(new TextDecoder().decode(buffer.subarray(0, n ?? 0)), /^HTTP\/1\.[01] 200/);
  // The same site may post.
  const reload = await fetch(`${gw.adminUrl}/reload`, {
    method: "POST",
    headers: { origin: gw.adminUrl },
  });
  assert.equal(reload.status, 200);
  await reload.body?.cancel();
});

Deno.test("ADMIN_TOKEN from the environment protects the admin API when the file sets none", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(upstream.url), {
    env: (name) => name === "ADMIN_TOKEN" ? "from-env" : undefined,
  });
  const denied = await fetch(`${gw.adminUrl}/status`);
  assert.equal(denied.status, 401);
  await denied.body?.cancel();
  const allowed = await fetch(`${gw.adminUrl}/status`, {
    headers: { authorization: "Bearer from-env" },
  });
  assert.equal(allowed.status, 200);
  await allowed.body?.cancel();
});

Deno.test("/status shows the version, load time, routes and their pipelines", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(upstream.url));
  const status = await (await fetch(`${gw.adminUrl}/status`)).json();
  assert.equal(status.version, 1);
  assert.ok(!Number.isNaN(Date.parse(status.loaded_at)));
  assert.equal(status.config_file, gw.config.file);
  assert.deepEqual(status.routes, [{
    name: "api",
    match: { path_prefix: "/api" },
    upstream: upstream.url,
    pipeline: ["identify", "proxy"],
  }]);
  assert.equal(status.last_reload_error, null);
});

Deno.test("/metrics counts requests by route and outcome, never by client", async () => {
  await using upstream = startUpstream((request) =>
    new URL(request.url).pathname === "/api/fail"
      ? new Response("no", { status: 500 })
      : new Response("ok")
  );
  await using gw = await startGateway(yaml(upstream.url));
  for (const key of ["k1", "k2", "k3"]) {
    await (await fetch(`${gw.url}/api/x`, { headers: { "x-api-key": key } })).body?.cancel();
  }
  await (await fetch(`${gw.url}/api/fail`)).body?.cancel();
  await (await fetch(`${gw.url}/nowhere`)).body?.cancel();
  const text = await (await fetch(`${gw.adminUrl}/metrics`)).text();
  assert.match(text, /sluice_requests_total\{route="api",outcome="proxied"\} 4/);
  assert.match(text, /sluice_requests_total\{route="",outcome="no_route"\} 1/);
  assert.match(text, /sluice_request_duration_seconds_count\{route="api"\} 4/);
  assert.match(text, /sluice_upstream_duration_seconds_count\{route="api",status_class="2xx"\} 3/);
  assert.match(text, /sluice_upstream_duration_seconds_count\{route="api",status_class="5xx"\} 1/);
  assert.match(text, /sluice_config_reloads_total\{result="ok"\} 1/);
  assert.doesNotMatch(text, /k1|key:|ip:/);
});

Deno.test("process metrics are on /metrics", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(upstream.url), { processMetrics: true });
  const text = await (await fetch(`${gw.adminUrl}/metrics`)).text();
  // Read from Deno: real values, not the zeros of collectors that need /proc.
  const value = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1]);
  assert.ok(value("sluice_process_cpu_seconds_total") > 0);
  // A total is a counter: Prometheus's rate() and promtool expect that type of a _total.
  assert.match(text, /^# TYPE sluice_process_cpu_seconds_total counter$/m);
  assert.ok(value("sluice_process_resident_memory_bytes") > 10 * 1024 * 1024);
  assert.ok(value("sluice_process_heap_bytes") > 1024 * 1024);
  const started = value("sluice_process_start_time_seconds");
  assert.ok(started > Date.now() / 1000 - 3_600 && started <= Date.now() / 1000 + 1);
});

Deno.test("an unknown admin path or method is a problem+json", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(upstream.url));
  const missing = await fetch(`${gw.adminUrl}/nope`);
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).status, 404);
  const wrongMethod = await fetch(`${gw.adminUrl}/reload`);
  assert.equal(wrongMethod.status, 405);
  assert.equal(wrongMethod.headers.get("allow"), "POST");
  await wrongMethod.body?.cancel();
});

Deno.test("a request no route matches is a 404 problem+json", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(upstream.url));
  const response = await fetch(`${gw.url}/elsewhere`);
  assert.equal(response.status, 404);
  assert.equal(response.headers.get("content-type"), "application/problem+json");
  const body = await response.json();
  assert.equal(body.status, 404);
  assert.equal(body.title, "No route");
  assert.match(body.detail, /GET \/elsewhere/);
  // Its request id, made or passed on, as on every answer.
  assert.match(response.headers.get("x-request-id")!, /^[0-9a-f-]{36}$/);
  const passed = await fetch(`${gw.url}/elsewhere`, { headers: { "x-request-id": "req-404" } });
  await passed.body?.cancel();
  assert.equal(passed.headers.get("x-request-id"), "req-404");
});

Deno.test("/ serves the dashboard page, whose script parses", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(upstream.url, "s3cret"));
  const response = await fetch(`${gw.adminUrl}/`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type")!, /^text\/html/);
  const html = await response.text();
  assert.match(html, /<title>sluice<\/title>/);
  const script = /<script>([\s\S]*)<\/script>/.exec(html)?.[1];
  assert.ok(script, "no script in the page");
  // Throws on a syntax error; nothing runs.
  new Function(script);
  assert.match(script, /\/status/);
  assert.match(script, /\/metrics/);
});

/**
 * Runs the dashboard page's own script against an admin listener, with a
 * stand-in for the DOM: its elements by id, and its interval's tick to call.
 */
async function runDashboard(adminUrl: string) {
  const html = await (await fetch(`${adminUrl}/`)).text();
  const script = /<script>([\s\S]*)<\/script>/.exec(html)![1]!;
  const elements = new Map<string, { textContent: string; innerHTML: string }>();
  const document = {
    getElementById: (id: string) => {
      if (!elements.has(id)) elements.set(id, { textContent: "", innerHTML: "" });
      return elements.get(id)!;
    },
    querySelectorAll: () => [],
  };
  const ticks: (() => Promise<void>)[] = [];
  new Function("document", "sessionStorage", "fetch", "prompt", "setInterval", script)(
    document,
    { getItem: () => "", setItem() {} },
    (path: string, init: RequestInit) => fetch(`${adminUrl}${path}`, init),
    () => null,
    (tick: () => Promise<void>) => ticks.push(tick),
  );
  return { elements, ticks };
}

Deno.test("the dashboard draws a row for every route, whatever its name (constructor, at)", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  const route = (name: string) =>
    `  - name: ${name}
    match: { path_prefix: /${name} }
    upstream: { url: ${upstream.url} }
    pipeline: [ { proxy: {} } ]
`;
  await using gw = await startGateway(
    `routes:\n${route("constructor")}${route("at")}${route("api")}`,
  );
  for (const name of ["constructor", "at", "api"]) {
    await (await fetch(`${gw.url}/${name}`)).body?.cancel();
  }
  const { elements, ticks } = await runDashboard(gw.adminUrl);
  await waitFor(() => elements.get("routes")?.innerHTML !== undefined && ticks.length > 0);
  await waitFor(() => (elements.get("routes")?.innerHTML ?? "").includes("<tr>"), 3_000);
  await ticks[0]!();
  const rows = elements.get("routes")!.innerHTML;
  assert.equal(elements.get("error")?.textContent ?? "", "");
  for (const name of ["constructor", "at", "api"]) {
    assert.ok(rows.includes(`<tr><td>${name}</td>`), `no row for ${name}: ${rows}`);
  }
});

Deno.test("the dashboard's latency is that of the requests since its last tick, not since the start", async () => {
  await using upstream = startUpstream(async (request) => {
    if (new URL(request.url).searchParams.has("slow")) await delay(150);
    return new Response("ok");
  });
  await using gw = await startGateway(yaml(upstream.url));
  const send = async (path: string) => (await fetch(`${gw.url}${path}`)).body?.cancel();
  await send("/api/x?slow"); // before the page's first tick: never shown as recent
  const { elements, ticks } = await runDashboard(gw.adminUrl);
  const p50 = () => {
    const cells = [
      ...(elements.get("routes")?.innerHTML ?? "").matchAll(/<td class="num">([^<]*)<\/td>/g),
    ];
    return cells[2]?.[1];
  };
  await waitFor(() => p50() !== undefined, 3_000);
  assert.equal(p50(), "-", "the first tick has no interval to show");
  await Promise.all(Array.from({ length: 12 }, () => send("/api/x?slow")));
  await ticks[0]!();
  assert.ok(Number(p50()) >= 100, `the slow requests: p50 ${p50()} ms`);
  await Promise.all(Array.from({ length: 4 }, () => send("/api/x")));
  await ticks[0]!();
  assert.ok(Number(p50()) < 100, `only the 4 fast requests since: p50 ${p50()} ms`);
  await ticks[0]!();
  assert.equal(p50(), "-", "no request since the last tick");
});

Deno.test("an admin listener beyond loopback without a token is warned about at start", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  {
    await using open = await startGateway(
      yaml(upstream.url).replace('admin: { token: "" }', 'admin: { token: "", hostname: 0.0.0.0 }'),
    );
    assert.ok(
      open.logs.lines.some((line) =>
        line.level === "warn" && String(line.msg).includes("without a token")
      ),
    );
  }
  for (const admin of ['admin: { token: "s3cret", hostname: 0.0.0.0 }', 'admin: { token: "" }']) {
    await using quiet = await startGateway(
      yaml(upstream.url).replace('admin: { token: "" }', admin),
    );
    assert.ok(!quiet.logs.lines.some((line) => line.level === "warn"), admin);
  }
});

Deno.test("/status counts a request in flight until its answer is sent, a streamed body too", async () => {
  let release!: () => void;
  const held = new Promise<void>((resolve) => release = resolve);
  await using upstream = startUpstream(() =>
    new Response(
      new ReadableStream<Uint8Array>({
        async start(controller) {
          controller.enqueue(new Uint8Array(10));
          await held;
          controller.enqueue(new Uint8Array(10));
          controller.close();
        },
      }),
    )
  );
  await using gw = await startGateway(`routes:
  - name: api
    upstream: { url: ${upstream.url} }
    pipeline: [ { proxy: {} } ]
`);
  const inflight = async () => (await (await fetch(`${gw.adminUrl}/status`)).json()).inflight;
  const response = await fetch(`${gw.url}/download`);
  const reader = response.body!.getReader();
  assert.equal((await reader.read()).value?.length, 10);
  // Its head went out long ago; its body is still on its way.
  assert.equal(await inflight(), 1);
  release();
  while (!(await reader.read()).done) { /* the rest */ }
  assert.ok(await waitFor(async () => await inflight() === 0, 2_000));
});
