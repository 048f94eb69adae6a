/** The shaper and the concurrency limit through real sockets. */
import assert from "node:assert/strict";
import { delay, startGateway, startUpstream, waitFor } from "../_helpers.ts";
import { commandCalls, RedisServer, redisTest } from "../_redis.ts";

function yaml(upstream: string, steps: string): string {
  return `routes:
  - name: api
    upstream: { url: ${upstream} }
    pipeline:
      - identify: { from: [header:x-api-key, ip] }
${steps}
      - proxy: {}
`;
}

Deno.test("the shaper spreads 6 simultaneous requests at 10/s, burst 1, over about 500 ms, in arrival order", async () => {
  const arrivals: { order: number; at: number }[] = [];
  await using upstream = startUpstream((request) => {
    arrivals.push({
      order: Number(new URL(request.url).searchParams.get("n")),
      at: performance.now(),
    });
    return new Response("ok");
  });
  await using gw = await startGateway(yaml(
    upstream.url,
    "      - token-bucket: { rate: 10/s, burst: 1, max_delay: 1s }",
  ));
  const started = performance.now();
  const responses = [];
  for (let n = 0; n < 6; n++) {
    responses.push(fetch(`${gw.url}/x?n=${n}`));
    await delay(2); // Arrival order is send order.
  }
  const statuses = await Promise.all(responses.map(async (r) => {
    const response = await r;
    await response.body?.cancel();
    return response.status;
  }));
  assert.deepEqual(statuses, [200, 200, 200, 200, 200, 200]);
  assert.deepEqual(arrivals.map((a) => a.order), [0, 1, 2, 3, 4, 5]);
  const spread = arrivals.at(-1)!.at - arrivals[0]!.at;
  assert.ok(spread >= 420 && spread <= 800, `spread ${Math.round(spread)} ms`);
  for (let i = 1; i < arrivals.length; i++) {
    const gap = arrivals[i]!.at - arrivals[i - 1]!.at;
    assert.ok(gap >= 60, `gap ${i}: ${Math.round(gap)} ms`);
  }
  assert.ok(arrivals[0]!.at - started < 200);
  const metrics = await (await fetch(`${gw.adminUrl}/metrics`)).text();
  assert.match(
    metrics,
    /sluice_limit_decisions_total\{route="api",plugin="token-bucket",decision="delayed"\} 5/,
  );
  assert.match(metrics, /sluice_shaper_delay_seconds_count\{route="api"\} 5/);
});

Deno.test("with a small max_delay most of a burst is 429 with Retry-After", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(
    upstream.url,
    "      - token-bucket: { rate: 10/s, burst: 1, max_delay: 150ms }",
  ));
  const answers = await Promise.all(Array.from({ length: 6 }, async () => {
    const response = await fetch(`${gw.url}/x`);
    await response.body?.cancel();
    return response;
  }));
  const statuses = answers.map((r) => r.status).sort();
  // The first passes, one waits 100 ms, the rest would wait past 150 ms.
  assert.deepEqual(statuses, [200, 200, 429, 429, 429, 429]);
  for (const limited of answers.filter((r) => r.status === 429)) {
    assert.equal(limited.headers.get("content-type"), "application/problem+json");
    assert.ok(Number(limited.headers.get("retry-after")) >= 1);
    assert.equal(limited.headers.get("ratelimit-policy"), `"10/s";q=10;w=1`);
  }
});

Deno.test("a burst above the rate's count never says more remains than the quota", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(yaml(
    upstream.url,
    "      - token-bucket: { rate: 10/s, burst: 100 }",
  ));
  const response = await fetch(`${gw.url}/x`);
  await response.body?.cancel();
  assert.equal(response.headers.get("x-ratelimit-limit"), "10");
  assert.equal(response.headers.get("x-ratelimit-remaining"), "10");
  assert.match(response.headers.get("ratelimit")!, /^"10\/s";r=10;t=\d+$/);
});

Deno.test("a client that hangs up while waiting for a token gives its place back", async () => {
  let seen = 0;
  await using upstream = startUpstream(() => {
    seen++;
    return new Response("ok");
  });
  await using gw = await startGateway(yaml(
    upstream.url,
    "      - token-bucket: { rate: 2/s, burst: 1, max_delay: 5s }",
  ));
  const first = await fetch(`${gw.url}/x`);
  await first.body?.cancel();
  const controller = new AbortController();
  const waiting = fetch(`${gw.url}/x`, { signal: controller.signal }).catch(() => "aborted");
  await delay(100);
  controller.abort();
  assert.equal(await waiting, "aborted");
  await delay(50);
  // The shaper's delay metric holds the wait served (about 100 ms), not the 500 ms planned.
  const metrics = await (await fetch(`${gw.adminUrl}/metrics`)).text();
  const served = Number(
    /^sluice_shaper_delay_seconds_sum\{route="api"\} (\S+)$/m.exec(metrics)?.[1],
  );
  assert.ok(served > 0.05 && served < 0.4, `shaper delay sum ${served} s`);
  // The place given back: the next request waits no longer than the one that left would have.
  const started = performance.now();
  const next = await fetch(`${gw.url}/x`);
  await next.body?.cancel();
  const waited = performance.now() - started;
  assert.equal(next.status, 200);
  assert.ok(waited < 450, `waited ${Math.round(waited)} ms`);
  assert.equal(seen, 2);
});

Deno.test("waiters that hang up ahead of others give no burst to the requests that come next", async () => {
  const arrivals: number[] = [];
  await using upstream = startUpstream(() => {
    arrivals.push(performance.now());
    return new Response("ok");
  });
  await using gw = await startGateway(yaml(
    upstream.url,
    "      - token-bucket: { rate: 10/s, burst: 1, max_delay: 2s }",
  ));
  const send = (signal?: AbortSignal) =>
    fetch(`${gw.url}/x`, { signal }).then(async (r) => {
      await r.body?.cancel();
      return r.status;
    }, () => "aborted");
  const answers: Promise<unknown>[] = [send()];
  await delay(5);
  // Five wait (slots 100 ms apart); the first three hang up while the last two still wait.
  const leaving = [1, 2, 3].map(() => new AbortController());
  for (let i = 0; i < 5; i++) {
    answers.push(send(leaving[i]?.signal));
    await delay(3);
  }
  await delay(30);
  for (const controller of leaving) controller.abort();
  await delay(20);
  for (let i = 0; i < 3; i++) {
    answers.push(send());
    await delay(3);
  }
  await Promise.all(answers);
  assert.equal(arrivals.length, 6);
  // burst + rate x time allows 3 in 200 ms; given back early, they came within 2 ms.
  for (let i = 0; i + 2 < arrivals.length; i++) {
    const span = arrivals[i + 2]! - arrivals[i]!;
    assert.ok(span >= 100, `3 requests within ${Math.round(span)} ms`);
  }
});

Deno.test("the upstream never sees more than max at once; the queue waits in order", async () => {
  let current = 0;
  let peak = 0;
  const order: number[] = [];
  await using upstream = startUpstream(async (request) => {
    current++;
    peak = Math.max(peak, current);
    order.push(Number(new URL(request.url).searchParams.get("n")));
    await delay(150);
    current--;
    return new Response("done");
  });
  await using gw = await startGateway(yaml(
    upstream.url,
    "      - concurrency: { max: 2, queue: 10, queue_timeout: 5s }",
  ));
  const requests = [];
  for (let n = 0; n < 8; n++) {
    requests.push(
      fetch(`${gw.url}/x?n=${n}`).then(async (r) => ({ status: r.status, body: await r.text() })),
    );
    await delay(3);
  }
  await delay(60);
  const status = await (await fetch(`${gw.adminUrl}/status`)).json();
  assert.deepEqual(status.routes[0].concurrency, { max: 2, inflight: 2, queued: 6 });
  const metrics = await (await fetch(`${gw.adminUrl}/metrics`)).text();
  assert.match(metrics, /sluice_inflight\{route="api"\} 2/);
  assert.match(metrics, /sluice_queue_depth\{route="api"\} 6/);
  const results = await Promise.all(requests);
  assert.ok(results.every((r) => r.status === 200 && r.body === "done"));
  assert.equal(peak, 2);
  // Slots free two at a time; within a pair the two connections may race to the upstream.
  const pairs = [0, 2, 4, 6].map((i) => order.slice(i, i + 2).sort());
  assert.deepEqual(pairs, [[0, 1], [2, 3], [4, 5], [6, 7]]);
});

Deno.test("without a queue, and past the queue, requests are 503 with Retry-After", async () => {
  await using upstream = startUpstream(async () => {
    await delay(200);
    return new Response("done");
  });
  await using gw = await startGateway(yaml(upstream.url, "      - concurrency: { max: 1 }"));
  const answers = await Promise.all(Array.from({ length: 3 }, async () => {
    const response = await fetch(`${gw.url}/x`);
    return {
      status: response.status,
      retry: response.headers.get("retry-after"),
      body: await response.text(),
    };
  }));
  assert.deepEqual(answers.map((a) => a.status).sort(), [200, 503, 503]);
  for (const busy of answers.filter((a) => a.status === 503)) {
    assert.ok(Number(busy.retry) >= 1);
    assert.equal(JSON.parse(busy.body).title, "Too busy");
  }
});

Deno.test("queue timeout, and a client that hangs up while queued leaves the queue at once", async () => {
  let seen = 0;
  await using upstream = startUpstream(async () => {
    seen++;
    await delay(400);
    return new Response("done");
  });
  await using gw = await startGateway(yaml(
    upstream.url,
    "      - concurrency: { max: 1, queue: 1, queue_timeout: 100ms }",
  ));
  const holder = fetch(`${gw.url}/x`).then((r) => r.text());
  await delay(30);
  const timedOut = await fetch(`${gw.url}/x`);
  assert.equal(timedOut.status, 503);
  assert.match((await timedOut.json()).detail, /within 100 ms/);

  const controller = new AbortController();
  const leaving = fetch(`${gw.url}/x`, { signal: controller.signal }).catch(() => "aborted");
  await delay(30);
  const queued = async () =>
    (await (await fetch(`${gw.adminUrl}/status`)).json()).routes[0].concurrency.queued;
  assert.equal(await queued(), 1);
  controller.abort();
  assert.equal(await leaving, "aborted");
  assert.ok(await waitFor(async () => (await queued()) === 0, 1_000));
  await holder;
  assert.equal(seen, 1);
});

redisTest("a fast bucket on Redis is leased: far fewer store calls than requests", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using redis = await RedisServer.start();
  await using gw = await startGateway(`store: { kind: redis, url: ${redis.url} }
routes:
  - name: api
    upstream: { url: ${upstream.url} }
    pipeline:
      - token-bucket: { rate: 100000/s, burst: 4000 }
      - proxy: {}
`);
  for (let i = 0; i < 200; i++) {
    const response = await fetch(`${gw.url}/x`);
    await response.body?.cancel();
    assert.equal(response.status, 200);
  }
  const calls = await commandCalls(redis, "evalsha") + await commandCalls(redis, "eval");
  assert.ok(calls <= 20, `${calls} store calls for 200 requests`);
});

redisTest(
  "a bucket at its limit is asked once per request, and never lets more through than its rate",
  async () => {
    await using upstream = startUpstream(() => new Response("ok"));
    await using redis = await RedisServer.start();
    await using gw = await startGateway(`store: { kind: redis, url: ${redis.url} }
routes:
  - name: api
    upstream: { url: ${upstream.url} }
    pipeline:
      - token-bucket: { rate: 1000/s, burst: 40 }
      - proxy: {}
`);
    const started = performance.now();
    let allowed = 0;
    for (let i = 0; i < 200; i++) {
      const response = await fetch(`${gw.url}/x`);
      await response.body?.cancel();
      if (response.status === 200) allowed++;
    }
    const elapsedMs = performance.now() - started;
    assert.ok(
      allowed <= 40 + Math.ceil(elapsedMs) + 1,
      `${allowed} allowed in ${Math.round(elapsedMs)} ms`,
    );
    assert.ok(allowed > 0);
    const calls = await commandCalls(redis, "evalsha") + await commandCalls(redis, "eval");
    // A failed lease stops leasing for a while: never two calls for each request.
    assert.ok(calls <= 200 + 10, `${calls} store calls for 200 requests`);
  },
);

Deno.test("a 503 waits as long as the quota an earlier step spent, or as the breaker stays open", async () => {
  await using upstream = startUpstream(async (request) => {
    await delay(Number(new URL(request.url).searchParams.get("ms") ?? 0));
    return new Response("ok");
  });
  const send = async (url: string) => {
    const response = await fetch(url);
    await response.body?.cancel();
    return { status: response.status, retryAfter: Number(response.headers.get("retry-after")) };
  };

  // The second request spends the last of 2 a minute, then finds the one slot taken.
  await using busy = await startGateway(yaml(
    upstream.url,
    "      - sliding-window: { limit: 2, window: 1m }\n      - concurrency: { max: 1 }",
  ));
  const slow = send(`${busy.url}/x?ms=500`);
  await delay(100);
  const refused = await send(`${busy.url}/x`);
  assert.equal(refused.status, 503);
  assert.ok(refused.retryAfter >= 59, `Retry-After ${refused.retryAfter}`);
  assert.equal((await slow).status, 200);

  // The breaker opens (for 30 s) while the third request waits for the slot.
  await using breaking = await startGateway(
    yaml(
      upstream.url,
      "      - circuit-breaker: { failure_ratio: 0.5, min_requests: 2, window: 10s, open_for: 30s }\n" +
        "      - concurrency: { max: 1, queue: 5, queue_timeout: 5s }",
    ).replace(`url: ${upstream.url} }`, `url: ${upstream.url}, timeout: 200ms }`),
  );
  const answers = await Promise.all([0, 1, 2].map(async (n) => {
    await delay(n * 20);
    return send(`${breaking.url}/x?ms=1000`);
  }));
  assert.deepEqual(answers.map((answer) => answer.status), [504, 504, 503]);
  assert.ok(answers[2]!.retryAfter >= 29, `Retry-After ${answers[2]!.retryAfter}`);
});
