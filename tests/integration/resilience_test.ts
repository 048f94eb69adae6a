/** The circuit breaker and upstream pools, against real upstreams that fail, hang or are down. */
import assert from "node:assert/strict";
import { delay, freePort, startGateway, startUpstream, waitFor } from "../_helpers.ts";

const BREAKER =
  "circuit-breaker: { failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: 500ms, probes: 2 }";

function yaml(upstream: string, breaker = BREAKER, extra = ""): string {
  return `routes:
  - name: api
    upstream: ${upstream}
    pipeline:
      - ${breaker}
      - proxy: {}
${extra}`;
}

async function get(url: string, init?: RequestInit) {
  const response = await fetch(url, init);
  return { status: response.status, headers: response.headers, body: await response.text() };
}

async function breakerGauge(adminUrl: string): Promise<number> {
  const text = await (await fetch(`${adminUrl}/metrics`)).text();
  return Number(/^sluice_breaker_state\{route="api"\} (\d+)/m.exec(text)?.[1]);
}

/**
 * Two upstreams: `slow` streams one byte, then holds its body open until
 * `release`; `fast` answers at once. `got` counts the requests each saw.
 */
function slowAndFast() {
  const release = Promise.withResolvers<void>();
  const got = { slow: 0, fast: 0 };
  const slow = startUpstream(() => {
    got.slow++;
    return new Response(
      new ReadableStream({
        async start(controller) {
          controller.enqueue(new TextEncoder().encode("x"));
          await release.promise;
          controller.close();
        },
      }),
    );
  });
  const fast = startUpstream(() => {
    got.fast++;
    return new Response("ok");
  });
  return {
    slow,
    fast,
    got,
    release,
    async [Symbol.asyncDispose]() {
      release.resolve();
      await slow[Symbol.asyncDispose]();
      await fast[Symbol.asyncDispose]();
    },
  };
}

Deno.test("the breaker opens, stops calling the upstream, half-opens, closes on success, re-opens on a failed probe", async () => {
  let failing = true;
  let calls = 0;
  await using upstream = startUpstream(() => {
    calls++;
    return failing ? new Response("broken", { status: 500 }) : new Response("fine");
  });
  await using gw = await startGateway(yaml(`{ url: ${upstream.url} }`));
  assert.equal(await breakerGauge(gw.adminUrl), 0);
  for (let i = 0; i < 4; i++) assert.equal((await get(`${gw.url}/x`)).status, 500);
  assert.equal(calls, 4);

  // Open: answered at once, the upstream is not called.
  const open = await get(`${gw.url}/x`);
  assert.equal(open.status, 503);
  assert.equal(open.headers.get("content-type"), "application/problem+json");
  assert.equal(JSON.parse(open.body).title, "Circuit open");
  assert.equal(open.headers.get("retry-after"), "1");
  assert.equal(calls, 4);
  assert.equal(await breakerGauge(gw.adminUrl), 2);
  const status = await (await fetch(`${gw.adminUrl}/status`)).json();
  assert.deepEqual(status.routes[0].breaker, { [upstream.url]: "open" });

  // Half-open after open_for; a failed probe opens it again.
  await delay(550);
  assert.equal((await get(`${gw.url}/x`)).status, 500);
  assert.equal(calls, 5);
  assert.equal((await get(`${gw.url}/x`)).status, 503);
  assert.equal(calls, 5);

  // Half-open again; two good probes close it.
  failing = false;
  await delay(550);
  assert.equal((await get(`${gw.url}/x`)).status, 200);
  assert.equal(await breakerGauge(gw.adminUrl), 1);
  assert.equal((await get(`${gw.url}/x`)).status, 200);
  assert.equal(await breakerGauge(gw.adminUrl), 0);
  for (let i = 0; i < 5; i++) assert.equal((await get(`${gw.url}/x`)).status, 200);
  assert.equal(calls, 12);
  const transitions = gw.logs.lines.filter((line) => line.msg === "circuit breaker changed state");
  assert.deepEqual(
    transitions.map((line) => `${line.from}->${line.to}`),
    ["closed->open", "open->half-open", "half-open->open", "open->half-open", "half-open->closed"],
  );
});

Deno.test("timeouts and refused connections count as failures", async () => {
  await using slow = startUpstream(async () => {
    await delay(300);
    return new Response("late");
  });
  await using gw = await startGateway(yaml(`{ url: ${slow.url}, timeout: 50ms }`));
  for (let i = 0; i < 4; i++) assert.equal((await get(`${gw.url}/x`)).status, 504);
  assert.equal((await get(`${gw.url}/x`)).status, 503);

  const dead = `http://127.0.0.1:${freePort()}`;
  await using gw2 = await startGateway(yaml(`{ url: ${dead} }`));
  for (let i = 0; i < 4; i++) assert.equal((await get(`${gw2.url}/x`)).status, 502);
  assert.equal((await get(`${gw2.url}/x`)).status, 503);
});

Deno.test("an upstream that drops the connection mid-body counts as failing", async () => {
  // Announces 1000 bytes, sends 5, hangs up.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let calls = 0;
  const serving = (async () => {
    for await (const conn of listener) {
      calls++;
      (async () => {
        await conn.read(new Uint8Array(4096));
        await conn.write(
          new TextEncoder().encode("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nhello"),
        );
        await delay(20);
        conn.close();
      })().catch(() => {});
    }
  })().catch(() => {});
  try {
    await using gw = await startGateway(
      yaml(`{ url: http://127.0.0.1:${listener.addr.port} }`, BREAKER.replace("500ms", "30s")),
    );
    for (let i = 0; i < 4; i++) {
      const response = await fetch(`${gw.url}/x`);
      assert.equal(response.status, 200);
      await assert.rejects(response.text(), `answer ${i} was cut short`);
    }
    await waitFor(async () => (await breakerGauge(gw.adminUrl)) === 2, 2_000);
    const open = await get(`${gw.url}/x`);
    assert.equal(open.status, 503);
    assert.equal(calls, 4);
    // Each cut is logged with its route and request id, once.
    const cuts = gw.logs.lines.filter((line) => line.msg === "upstream cut the answer short");
    assert.equal(cuts.length, 4);
    assert.ok(cuts.every((line) => line.route === "api" && typeof line.request_id === "string"));
    assert.ok(
      !gw.logs.lines.some((line) => line.msg === "request failed" && line.level === "error"),
      "logged again without its request's details",
    );
  } finally {
    listener.close();
    await serving;
  }
});

/** An upstream: `/fail` answers 500, `/stream` streams a byte every 50 ms for `ms`, else "ok". */
function streamingUpstream() {
  return startUpstream((request) => {
    const url = new URL(request.url);
    if (url.pathname === "/fail") return new Response("broken", { status: 500 });
    if (url.pathname !== "/stream") return new Response("ok");
    const until = Date.now() + Number(url.searchParams.get("ms") ?? 1_000);
    let timer: ReturnType<typeof setInterval>;
    return new Response(
      new ReadableStream({
        start(controller) {
          timer = setInterval(() => {
            if (Date.now() >= until) {
              clearInterval(timer);
              controller.close();
            } else controller.enqueue(new TextEncoder().encode("x"));
          }, 50);
        },
        cancel() {
          clearInterval(timer);
        },
      }),
    );
  });
}

Deno.test("a half-open probe that streams a long body closes the breaker when its head comes", async () => {
  await using upstream = streamingUpstream();
  await using gw = await startGateway(
    yaml(`{ url: ${upstream.url} }`, BREAKER.replace("probes: 2", "probes: 1")),
  );
  for (let i = 0; i < 4; i++) await get(`${gw.url}/fail`);
  assert.equal((await get(`${gw.url}/x`)).status, 503);
  await delay(550);
  const probe = await fetch(`${gw.url}/stream?ms=1500`);
  assert.equal(probe.status, 200);
  // While the probe's body streams, others get through.
  assert.equal((await get(`${gw.url}/x`)).status, 200);
  assert.equal((await probe.text()).length > 10, true);
});

Deno.test("streams the client leaves count as successes: a few failures among them do not open the breaker", async () => {
  await using upstream = streamingUpstream();
  await using gw = await startGateway(yaml(`{ url: ${upstream.url} }`));
  for (let i = 0; i < 10; i++) {
    const response = await fetch(`${gw.url}/stream?ms=2000`);
    assert.equal(response.status, 200);
    const reader = response.body!.getReader();
    await reader.read();
    await reader.cancel();
  }
  // 4 failures in 14 requests: under failure_ratio 0.5.
  for (let i = 0; i < 4; i++) assert.equal((await get(`${gw.url}/fail`)).status, 500);
  assert.equal((await get(`${gw.url}/fail`)).status, 500, "the breaker stayed closed");
});

Deno.test("breaker state survives an unrelated config edit", async () => {
  await using upstream = startUpstream(() => new Response("broken", { status: 503 }));
  await using gw = await startGateway(
    yaml(`{ url: ${upstream.url} }`, BREAKER.replace("500ms", "30s")),
  );
  for (let i = 0; i < 4; i++) await get(`${gw.url}/x`);
  assert.equal((await get(`${gw.url}/x`)).status, 503);
  await gw.config.write(yaml(
    `{ url: ${upstream.url} }`,
    BREAKER.replace("500ms", "30s"),
    `  - name: other
    match: { path_prefix: /other }
    upstream: { url: ${upstream.url} }
    pipeline: [ { proxy: {} } ]
`,
  ));
  assert.ok(
    await waitFor(async () => (await (await fetch(`${gw.adminUrl}/status`)).json()).version === 2),
  );
  const still = await get(`${gw.url}/x`);
  assert.equal(still.status, 503);
  assert.equal(JSON.parse(still.body).title, "Circuit open");
  assert.ok(Number(still.headers.get("retry-after")) > 20);
});

Deno.test("a pool skips a dead target and retries an idempotent request there; a POST is not retried", async () => {
  const hits: string[] = [];
  await using alive = startUpstream((request) => {
    hits.push(request.method);
    return new Response("alive");
  });
  const dead = `http://127.0.0.1:${freePort()}`;
  await using gw = await startGateway(
    yaml(`{ targets: [${dead}, ${alive.url}], balance: round_robin }`),
  );
  // Round robin starts at the dead target: the GET is retried on the live one.
  const first = await get(`${gw.url}/x`);
  assert.equal(first.status, 200);
  assert.equal(first.body, "alive");
  const put = await get(`${gw.url}/x`, { method: "PUT", body: "payload" });
  assert.equal(put.status, 200);
  // A POST that meets the dead target is not retried.
  const posts = [];
  for (let i = 0; i < 4; i++) {
    posts.push((await get(`${gw.url}/x`, { method: "POST", body: "p" })).status);
  }
  assert.ok(posts.includes(502), `posts: ${posts}`);
  assert.ok(posts.includes(200), `posts: ${posts}`);
});

Deno.test("a pool whose targets are all open answers 503", async () => {
  await using a = startUpstream(() => new Response("no", { status: 500 }));
  await using b = startUpstream(() => new Response("no", { status: 500 }));
  await using gw = await startGateway(yaml(`{ targets: [${a.url}, ${b.url}] }`));
  for (let i = 0; i < 8; i++) await get(`${gw.url}/x`);
  const answer = await get(`${gw.url}/x`);
  assert.equal(answer.status, 503);
  assert.equal(JSON.parse(answer.body).title, "Circuit open");
  const status = await (await fetch(`${gw.adminUrl}/status`)).json();
  assert.deepEqual(status.routes[0].breaker, { [a.url]: "open", [b.url]: "open" });
});

Deno.test("least_inflight sends to the target with the fewest requests in flight", async () => {
  const seen: string[] = [];
  await using slow = startUpstream(async () => {
    seen.push("slow");
    await delay(300);
    return new Response("slow");
  });
  await using fast = startUpstream(() => {
    seen.push("fast");
    return new Response("fast");
  });
  await using gw = await startGateway(
    yaml(`{ targets: [${slow.url}, ${fast.url}], balance: least_inflight }`, "identify: {}"),
  );
  const held = get(`${gw.url}/x`);
  await delay(50);
  for (let i = 0; i < 3; i++) assert.equal((await get(`${gw.url}/x`)).body, "fast");
  assert.equal((await held).body, "slow");
  assert.deepEqual(seen, ["slow", "fast", "fast", "fast"]);
});

Deno.test("clients that hang up mid-upload do not open the breaker for everyone", async () => {
  // The upstream reads the whole upload before it answers, as most do.
  await using upstream = startUpstream(async (request) => {
    await request.arrayBuffer().catch(() => {});
    return new Response("fine");
  });
  await using gw = await startGateway(yaml(`{ url: ${upstream.url} }`));
  for (let i = 0; i < 6; i++) {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: gw.gateway.addr.port });
    await conn.write(
      new TextEncoder().encode(
        "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n0123456789",
      ),
    );
    await delay(50);
    conn.close();
    await delay(50);
  }
  assert.equal(await breakerGauge(gw.adminUrl), 0, "the breaker stays closed");
  assert.equal((await get(`${gw.url}/x`)).status, 200);
});

Deno.test("upstream.timeout counts from the upload's last byte: a slow upload passes, a stalled one is the client's 408", async () => {
  await using upstream = startUpstream(async (request) => {
    let bytes = 0;
    for await (const chunk of request.body!) bytes += chunk.length;
    return new Response(String(bytes));
  });
  await using gw = await startGateway(`routes:
  - name: api
    upstream: { url: ${upstream.url}, timeout: 300ms }
    pipeline:
      - proxy: {}
`);
  const trickle = (pauses: number[]) =>
    new ReadableStream<Uint8Array>({
      async pull(controller) {
        const pause = pauses.shift();
        if (pause === undefined) return controller.close();
        await delay(pause);
        controller.enqueue(new Uint8Array(10));
      },
    });
  // Five pieces 150 ms apart: 750 ms in all, never 300 ms without a byte.
  const slow = await fetch(`${gw.url}/slow`, {
    method: "PUT",
    body: trickle([0, 150, 150, 150, 150]),
  });
  assert.equal(slow.status, 200);
  assert.equal(await slow.text(), "50");
  // One piece, then nothing for 900 ms.
  const stalled = await fetch(`${gw.url}/stalled`, {
    method: "PUT",
    body: trickle([0, 900]),
  }).catch((error) => error as Error);
  assert.ok(stalled instanceof Response, String(stalled));
  assert.equal(stalled.status, 408);
  await stalled.body?.cancel();
});

Deno.test("least_inflight counts a request until its body is sent, not only until its headers", async () => {
  const got = { slow: 0, fast: 0 };
  const streamer = (name: "slow" | "fast", pieceMs: number) =>
    startUpstream(() => {
      got[name]++;
      let sent = 0;
      return new Response(
        new ReadableStream({
          async pull(controller) {
            if (sent++ === 5) return controller.close();
            await delay(pieceMs);
            controller.enqueue(new TextEncoder().encode("x"));
          },
        }),
      );
    });
  // Both answer their headers at once; one takes 1.5 s to send its body.
  await using slow = streamer("slow", 300);
  await using fast = streamer("fast", 2);
  await using gw = await startGateway(yaml(
    `{ targets: [${slow.url}, ${fast.url}], balance: least_inflight, timeout: 5s }`,
    "concurrency: { max: 1000 }",
  ));
  const answers = [];
  for (let i = 0; i < 30; i++) {
    answers.push(fetch(`${gw.url}/x`).then((response) => response.text()));
    await delay(20);
  }
  await Promise.all(answers);
  assert.ok(got.slow <= 3, `the slow target got ${got.slow} of 30 while it was still sending`);
});

Deno.test("least_inflight keeps its counts across a reload: a target still streaming stays busy", async () => {
  await using upstreams = slowAndFast();
  const { slow, fast, got, release } = upstreams;
  const upstream = `{ targets: [${slow.url}, ${fast.url}], balance: least_inflight }`;
  await using gw = await startGateway(yaml(upstream, "concurrency: { max: 1000 }"));
  const streaming = await fetch(`${gw.url}/long`);
  const reader = streaming.body!.getReader();
  try {
    assert.equal(got.slow, 1);
    await reader.read();
    await gw.config.write(yaml(upstream, "concurrency: { max: 999 }"));
    assert.ok(
      await waitFor(async () =>
        (await (await fetch(`${gw.adminUrl}/status`)).json()).version === 2
      ),
    );
    const answers = [];
    for (let i = 0; i < 4; i++) {
      const response = await fetch(`${gw.url}/x`);
      answers.push(response.status);
      await response.body?.cancel();
    }
    assert.deepEqual(got, { slow: 1, fast: 4 }, `answers ${answers}`);
  } finally {
    release.resolve();
    await reader.cancel().catch(() => {});
  }
});

Deno.test("sluice_breaker_state is read when scraped: half-open once open_for passes, gone with its step", async () => {
  await using upstream = startUpstream(() => new Response("no", { status: 500 }));
  await using gw = await startGateway(yaml(`{ url: ${upstream.url} }`));
  for (let i = 0; i < 4; i++) await get(`${gw.url}/x`);
  assert.equal((await get(`${gw.url}/x`)).status, 503);
  assert.equal(await breakerGauge(gw.adminUrl), 2);
  // open_for (500ms) passes with no request at all: a scrape shows half-open.
  await delay(600);
  assert.equal(await breakerGauge(gw.adminUrl), 1);
  // The step removed: no breaker series is left to fire an alert.
  await gw.config.write(yaml(`{ url: ${upstream.url} }`, "identify: {}"));
  assert.ok(
    await waitFor(async () => (await (await fetch(`${gw.adminUrl}/status`)).json()).version === 2),
  );
  assert.ok(Number.isNaN(await breakerGauge(gw.adminUrl)), "no sluice_breaker_state series");
});

Deno.test("a reload that fails leaves the running gauges and pool counts as they were", async () => {
  await using upstreams = slowAndFast();
  const { slow, fast, got, release } = upstreams;
  const upstream = `{ targets: [${slow.url}, ${fast.url}], balance: least_inflight }`;
  await using gw = await startGateway(yaml(upstream, "concurrency: { max: 1000 }"));
  const streaming = await fetch(`${gw.url}/long`);
  const reader = streaming.body!.getReader();
  try {
    await reader.read();
    const metric = async (name: string) =>
      Number(
        new RegExp(`^${name}\\{route="api"\\} (\\d+)`, "m").exec(
          await (await fetch(`${gw.adminUrl}/metrics`)).text(),
        )?.[1],
      );
    assert.equal(await metric("sluice_inflight"), 1);
    // Other targets and another concurrency limit, then a step that cannot be created.
    const failing = yaml(
      `{ targets: [${fast.url}], balance: least_inflight }`,
      "concurrency: { max: 5 }",
    ).replace(
      "      - proxy: {}",
      "      - token-bucket: { rate: 1/s, cost: 2 }\n      - proxy: {}",
    );
    await gw.config.write(failing);
    assert.ok(
      await waitFor(async () =>
        (await (await fetch(`${gw.adminUrl}/status`)).json()).last_reload_error !== null
      ),
    );
    assert.equal(await metric("sluice_inflight"), 1, "the running limit's count");
    // Back to the running targets in a good reload: the slow one is still busy.
    await gw.config.write(yaml(upstream, "concurrency: { max: 999 }"));
    assert.ok(
      await waitFor(async () =>
        (await (await fetch(`${gw.adminUrl}/status`)).json()).version === 2
      ),
    );
    for (let i = 0; i < 4; i++) await (await fetch(`${gw.url}/x`)).body?.cancel();
    assert.deepEqual(got, { slow: 1, fast: 4 });
  } finally {
    release.resolve();
    await reader.cancel().catch(() => {});
  }
});
