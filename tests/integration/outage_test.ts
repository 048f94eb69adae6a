/** A store outage is a policy: kill Redis mid-traffic, check allow / deny / local, restart it. */
import assert from "node:assert/strict";
import { RedisStore } from "../../src/store/redis_store.ts";
import { ResilientStore } from "../../src/store/resilient_store.ts";
import { delay, freePort, startGateway, startUpstream, waitFor } from "../_helpers.ts";
import { commandCalls, RedisCluster, RedisServer, redisTest } from "../_redis.ts";

function yaml(redisUrl: string, onFailure: string, limit = 5): string {
  return `store: { kind: redis, url: ${redisUrl}, timeout: 100ms, on_failure: ${onFailure} }
routes:
  - name: api
    upstream: { url: \${UPSTREAM} }
    pipeline:
      - identify: { from: [header:x-api-key, ip] }
      - sliding-window: { limit: ${limit}, window: 1h }
      - proxy: {}
`;
}

async function status(adminUrl: string) {
  return await (await fetch(`${adminUrl}/status`)).json();
}

async function send(url: string, key: string) {
  const response = await fetch(`${url}/x`, { headers: { "x-api-key": key } });
  return { status: response.status, headers: response.headers, body: await response.text() };
}

async function storeErrors(adminUrl: string): Promise<number> {
  const text = await (await fetch(`${adminUrl}/metrics`)).text();
  let total = 0;
  for (const match of text.matchAll(/^sluice_store_errors_total\{[^}]*\} (\d+)/gm)) {
    total += Number(match[1]);
  }
  return total;
}

async function gatewayOn(redis: RedisServer, onFailure: string, upstreamUrl: string, limit = 5) {
  return await startGateway(yaml(redis.url, onFailure, limit), {
    env: (name) => name === "UPSTREAM" ? upstreamUrl : undefined,
  });
}

redisTest(
  "local: Redis killed mid-traffic -> this instance limits on its own, then Redis again",
  async () => {
    await using upstream = startUpstream(() => new Response("ok"));
    await using redis = await RedisServer.start();
    await using gw = await gatewayOn(redis, "local", upstream.url);
    for (let i = 0; i < 2; i++) assert.equal((await send(gw.url, "a")).status, 200);

    await redis.kill();
    const during = [];
    for (let i = 0; i < 8; i++) during.push((await send(gw.url, "b")).status);
    // The local limiter enforces the same limit: 5 of 8 pass.
    assert.deepEqual(during, [200, 200, 200, 200, 200, 429, 429, 429]);
    const down = await status(gw.adminUrl);
    assert.equal(down.store.state, "down");
    assert.equal(down.store.on_failure, "local");
    const ready = await fetch(`${gw.adminUrl}/ready`);
    assert.equal(ready.status, 200);
    await ready.body?.cancel();

    // Once down, decisions go straight to the fallback: no store call, no new error.
    const errors = await storeErrors(gw.adminUrl);
    for (let i = 0; i < 5; i++) await send(gw.url, "c");
    assert.equal(await storeErrors(gw.adminUrl), errors);

    await redis.restart();
    assert.ok(
      await waitFor(async () => (await status(gw.adminUrl)).store.state === "up", 10_000),
      "the store was not back up within 10 s",
    );
    // Redis decides again: "a" spent 2 of 5 there before the outage.
    const after = await send(gw.url, "a");
    assert.equal(after.status, 200);
    assert.ok(
      Number(await commandCalls(redis, "evalsha")) + Number(await commandCalls(redis, "eval")) > 0,
    );
  },
);

redisTest("allow: Redis down -> requests pass, even past the limit", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using redis = await RedisServer.start();
  await using gw = await gatewayOn(redis, "allow", upstream.url, 2);
  await redis.kill();
  const statuses = [];
  for (let i = 0; i < 6; i++) statuses.push((await send(gw.url, "k")).status);
  assert.deepEqual(statuses, Array(6).fill(200));
  assert.equal((await status(gw.adminUrl)).store.state, "down");
});

redisTest("deny: Redis down -> 503 problem+json with Retry-After, and /ready fails", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using redis = await RedisServer.start();
  await using gw = await gatewayOn(redis, "deny", upstream.url);
  assert.equal((await send(gw.url, "k")).status, 200);
  await redis.kill();
  const answers = [];
  for (let i = 0; i < 4; i++) answers.push(await send(gw.url, "k"));
  assert.deepEqual(answers.map((a) => a.status), [503, 503, 503, 503]);
  const last = answers[3]!;
  assert.equal(last.headers.get("content-type"), "application/problem+json");
  assert.ok(Number(last.headers.get("retry-after")) >= 1);
  assert.match(JSON.parse(last.body).title, /store unavailable/i);
  const ready = await fetch(`${gw.adminUrl}/ready`);
  assert.equal(ready.status, 503);
  assert.equal((await ready.json()).store, "down");

  await redis.restart();
  assert.ok(await waitFor(async () => (await send(gw.url, "fresh")).status === 200, 10_000));
  const readyAgain = await fetch(`${gw.adminUrl}/ready`);
  assert.equal(readyAgain.status, 200);
  await readyAgain.body?.cancel();
});

redisTest("a client over its limit is answered 429 from memory: no store call", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using redis = await RedisServer.start();
  await using gw = await gatewayOn(redis, "local", upstream.url, 3);
  for (let i = 0; i < 3; i++) assert.equal((await send(gw.url, "k")).status, 200);
  assert.equal((await send(gw.url, "k")).status, 429);
  const calls = await commandCalls(redis, "evalsha") + await commandCalls(redis, "eval");
  for (let i = 0; i < 20; i++) {
    const answer = await send(gw.url, "k");
    assert.equal(answer.status, 429);
    assert.ok(Number(answer.headers.get("retry-after")) >= 1);
  }
  assert.equal(await commandCalls(redis, "evalsha") + await commandCalls(redis, "eval"), calls);
  // Another client still goes to Redis.
  assert.equal((await send(gw.url, "other")).status, 200);
  assert.ok(await commandCalls(redis, "evalsha") + await commandCalls(redis, "eval") > calls);
});

redisTest("a store that is slower than its timeout is a failure the policy answers", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using redis = await RedisServer.start(["--enable-debug-command", "yes"]);
  await using gw = await gatewayOn(redis, "allow", upstream.url, 1);
  // Redis busy for 2 s: every call in that time exceeds the 100 ms timeout.
  const busy = redis.cli(["DEBUG", "SLEEP", "2"]);
  await new Promise((resolve) => setTimeout(resolve, 400));
  const started = performance.now();
  const answers = [];
  for (let i = 0; i < 3; i++) answers.push((await send(gw.url, "k")).status);
  const elapsed = performance.now() - started;
  await busy;
  assert.deepEqual(answers, [200, 200, 200]);
  assert.ok(elapsed < 1_500, `the requests waited ${Math.round(elapsed)} ms on a sleeping store`);
  assert.ok(await storeErrors(gw.adminUrl) >= 1);
});

redisTest(
  "a Redis that is down at start begins marked down, and is used once it comes up",
  async () => {
    await using upstream = startUpstream(() => new Response("ok"));
    const port = freePort();
    await using gw = await startGateway(yaml(`redis://127.0.0.1:${port}`, "local", 2), {
      env: (name) => name === "UPSTREAM" ? upstream.url : undefined,
    });
    assert.equal((await status(gw.adminUrl)).store.state, "down");
    await spendTwo(gw.url, "k");
    await using redis = await RedisServer.start([], port);
    assert.ok(
      await waitFor(async () => (await status(gw.adminUrl)).store.state === "up", 10_000),
      "the store was not up within 10 s of Redis starting",
    );
    assert.equal((await send(gw.url, "fresh")).status, 200);
    assert.ok(await commandCalls(redis, "evalsha") + await commandCalls(redis, "eval") > 0);
  },
);

redisTest(
  "a Redis turned replica by a failover keeps the store down (no flapping) until it takes writes again",
  async () => {
    await using primary = await RedisServer.start();
    await using other = await RedisServer.start();
    const store = new ResilientStore(await RedisStore.connect({ url: primary.url }), {
      timeoutMs: 100,
      onFailure: "local",
    });
    try {
      const decide = () =>
        store.window({
          key: "{sluice:api:ip:10.0.0.1}",
          algorithm: "log",
          limits: [{ limit: 1_000, windowMs: 60_000 }],
          cost: 1,
        });
      assert.equal((await decide()).source, "store");
      await primary.cli(["REPLICAOF", "127.0.0.1", String(other.port)]);
      assert.ok(
        await waitFor(async () => {
          await decide();
          return store.health().state === "down";
        }, 5_000),
        "the store was marked down",
      );
      // A replica answers PING: the probe must not bring the store up.
      const states = new Set<string>();
      const sources = new Set<string>();
      const until = Date.now() + 2_000;
      while (Date.now() < until) {
        sources.add((await decide()).source);
        states.add(store.health().state);
        await delay(50);
      }
      assert.deepEqual([...states], ["down"]);
      assert.deepEqual([...sources], ["local"]);
      await primary.cli(["REPLICAOF", "NO", "ONE"]);
      assert.ok(
        await waitFor(async () => (await decide()).source === "store", 5_000),
        "decided by Redis again once it takes writes",
      );
    } finally {
      await store.close();
    }
  },
);

redisTest(
  "cluster: with one master dead the store stays down (no flapping) until it returns",
  async () => {
    await using cluster = await RedisCluster.start();
    const store = new ResilientStore(await RedisStore.connect({ nodes: cluster.nodes }), {
      timeoutMs: 100,
      onFailure: "local",
    });
    try {
      // Keys on many slots, so some live on every master.
      const decide = (i: number) =>
        store.window({
          key: `{sluice:api:client-${i}}`,
          algorithm: "fixed",
          limits: [{ limit: 1_000, windowMs: 60_000 }],
          cost: 1,
        });
      for (let i = 0; i < 30; i++) assert.equal((await decide(i)).source, "store");
      await cluster.servers[0]!.kill();
      const batches: { state: string; ms: number }[] = [];
      const until = Date.now() + 3_000;
      while (Date.now() < until) {
        const state = store.health().state;
        const started = performance.now();
        await Promise.all(Array.from({ length: 30 }, (_, i) => decide(i)));
        batches.push({ state, ms: performance.now() - started });
        await delay(50);
      }
      // Once down, the fallback answers at once: no batch waits for the timeout again.
      const firstDown = batches.findIndex((batch) => batch.state === "down");
      assert.ok(firstDown >= 0, "the store was marked down");
      const after = batches.slice(firstDown);
      assert.deepEqual(
        after.filter((batch) => batch.state !== "down" || batch.ms >= 90),
        [],
        `once down, it stayed down while the master was dead, answering at once: ${
          after.map((batch) => `${batch.state}/${batch.ms.toFixed(0)}ms`).join(" ")
        }`,
      );
      await cluster.servers[0]!.restart();
      assert.ok(
        await waitFor(async () => {
          await decide(0);
          return store.health().state === "up";
        }, 10_000),
        `up again within 10 s of the master's return (${store.health().last_error})`,
      );
    } finally {
      await store.close();
    }
  },
);

/** Sends two requests of one key and expects both admitted. */
async function spendTwo(url: string, key: string): Promise<void> {
  assert.deepEqual([(await send(url, key)).status, (await send(url, key)).status], [200, 200]);
}

/** The ids of the clients connected to a Redis. */
async function clientIds(redis: RedisServer): Promise<string[]> {
  const list = await redis.cli(["CLIENT", "LIST"]);
  return [...list.matchAll(/^id=(\d+) .*cmd=(\S+)/gm)]
    .filter((match) => match[2] !== "client|list")
    .map((match) => match[1]!)
    .sort();
}

redisTest(
  "a reload that changes only the store's timeout or policy keeps its connection, counters and over-limit memory",
  async () => {
    await using upstream = startUpstream(() => new Response("ok"));
    await using redis = await RedisServer.start();
    await using gw = await gatewayOn(redis, "local", upstream.url, 2);
    await spendTwo(gw.url, "k");
    assert.equal((await send(gw.url, "k")).status, 429);
    const before = await clientIds(redis);
    assert.equal(before.length, 1);
    const text = await Deno.readTextFile(gw.config.file);
    await Deno.writeTextFile(
      gw.config.file,
      text.replace("timeout: 100ms, on_failure: local", "timeout: 150ms, on_failure: deny"),
    );
    const reload = await fetch(`${gw.adminUrl}/reload`, { method: "POST" });
    assert.equal(reload.status, 200);
    await reload.body?.cancel();
    assert.equal((await status(gw.adminUrl)).store.on_failure, "deny");
    assert.deepEqual(await clientIds(redis), before, "the same connection");
    assert.equal((await send(gw.url, "k")).status, 429);
    // The new policy is in force: with Redis gone, deny answers 503.
    await redis.kill();
    assert.ok(await waitFor(async () => (await send(gw.url, "other")).status === 503, 5_000));
  },
);

redisTest(
  "a reload onto a store that does not answer fails: the running store keeps deciding",
  async () => {
    await using upstream = startUpstream(() => new Response("ok"));
    await using redis = await RedisServer.start();
    await using gw = await gatewayOn(redis, "local", upstream.url, 2);
    await spendTwo(gw.url, "k");
    const text = await Deno.readTextFile(gw.config.file);
    await Deno.writeTextFile(
      gw.config.file,
      text.replace(redis.url, `redis://127.0.0.1:${freePort()}`),
    );
    const reload = await fetch(`${gw.adminUrl}/reload`, { method: "POST" });
    assert.equal(reload.status, 422);
    // With its cause, and no log line that would read as the running store's outage.
    assert.match(
      JSON.stringify(await reload.json()),
      /new store does not answer \(The store did not answer at start: .*(refused|connect)/i,
    );
    assert.equal(gw.logs.find("store marked down; decisions use the fallback"), undefined);
    const state = await status(gw.adminUrl);
    assert.equal(state.store.state, "up");
    // Swapped in, the dead store's empty fallback would have let this pass.
    assert.equal((await send(gw.url, "k")).status, 429);
  },
);

redisTest(
  "a Redis that answers PING but refuses the scripts (ACL without EVALSHA) is down from the start, and stays down",
  async () => {
    await using upstream = startUpstream(() => new Response("ok"));
    await using redis = await RedisServer.start();
    await redis.cli([
      "ACL",
      "SETUSER",
      "gateway",
      "on",
      ">pw",
      "~{sluice:*",
      "+@all",
      "-evalsha",
      "-eval",
    ]);
    const url = `redis://gateway:pw@127.0.0.1:${redis.port}`;
    await using gw = await startGateway(yaml(url, "deny"), {
      env: (name) => name === "UPSTREAM" ? upstream.url : undefined,
    });
    const first = await status(gw.adminUrl);
    assert.equal(first.store.state, "down");
    assert.match(first.store.last_error, /NOPERM/);
    // Logged at start with its cause.
    assert.match(
      String(gw.logs.find("store marked down; decisions use the fallback")?.error),
      /did not answer at start: NOPERM/,
    );
    const ready = await fetch(`${gw.adminUrl}/ready`);
    assert.equal(ready.status, 503);
    await ready.body?.cancel();
    // The probe makes a decision, not a PING: it is not marked up again between its tries.
    const states = new Set<string>();
    for (let i = 0; i < 15; i++) {
      states.add((await status(gw.adminUrl)).store.state);
      assert.equal((await send(gw.url, "a")).status, 503);
      await delay(100);
    }
    assert.deepEqual([...states], ["down"]);
    // Granted the scripts, it comes up.
    await redis.cli(["ACL", "SETUSER", "gateway", "+evalsha", "+eval"]);
    assert.ok(
      await waitFor(async () => (await status(gw.adminUrl)).store.state === "up", 10_000),
      "the store was not up within 10 s",
    );
    assert.equal((await send(gw.url, "a")).status, 200);
  },
);

redisTest(
  "a decision Redis makes after its timeout, for a request deny refused, is given back: no quota lost",
  async () => {
    await using upstream = startUpstream(() => new Response("ok"));
    await using redis = await RedisServer.start();
    await using gw = await gatewayOn(redis, "deny", upstream.url, 5);
    assert.equal((await send(gw.url, "k")).status, 200);
    // Redis holds writes for a while: the calls time out, deny answers 503,
    // and Redis runs them once the pause ends.
    await redis.cli(["CLIENT", "PAUSE", "600", "WRITE"]);
    const refused = await Promise.all([send(gw.url, "k"), send(gw.url, "k")]);
    assert.deepEqual(refused.map((answer) => answer.status), [503, 503]);
    await delay(900);
    // The two refused requests took nothing: 4 of the 5 are left.
    const after = [];
    for (let i = 0; i < 5; i++) after.push((await send(gw.url, "k")).status);
    assert.deepEqual(after, [200, 200, 200, 200, 429]);
  },
);

redisTest(
  "a refusal remembered from a count a late admission swelled is forgotten once that admission is given back",
  async () => {
    await using redis = await RedisServer.start();
    const store = new ResilientStore(await RedisStore.connect({ url: redis.url }), {
      timeoutMs: 200,
      onFailure: "deny",
    });
    try {
      const query = {
        key: "{sluice:r:swelled}",
        algorithm: "fixed" as const,
        limits: [{ limit: 5, windowMs: 3_600_000 }],
        cost: 1,
      };
      for (let i = 0; i < 4; i++) assert.equal((await store.window(query)).allowed, true);
      await redis.cli(["CLIENT", "PAUSE", "320", "WRITE"]);
      // The fifth times out (deny refuses it); Redis admits it once the pause
      // ends, just before it refuses the sixth, sent meanwhile: the sixth's
      // refusal is remembered, though the fifth's unit is then given back.
      const fifth = await store.window(query);
      assert.deepEqual([fifth.allowed, fifth.source], [false, "deny"]);
      const sixth = await store.window(query);
      assert.deepEqual([sixth.allowed, sixth.source], [false, "store"]);
      await delay(100);
      assert.equal(
        (await store.window({ ...query, cost: 0 })).states[0]!.remaining,
        1,
        "given back in Redis",
      );
      const seventh = await store.window(query);
      assert.deepEqual([seventh.allowed, seventh.source], [true, "store"]);
    } finally {
      await store.close();
    }
  },
);

redisTest(
  "a shadow step's late admission stays counted: its request passed whatever deny said",
  async () => {
    await using redis = await RedisServer.start();
    const store = new ResilientStore(await RedisStore.connect({ url: redis.url }), {
      timeoutMs: 100,
      onFailure: "deny",
    });
    try {
      const query = {
        key: "{sluice:r:shadow}",
        algorithm: "log" as const,
        limits: [{ limit: 5, windowMs: 3_600_000 }],
        cost: 1,
      };
      await redis.cli(["CLIENT", "PAUSE", "300", "WRITE"]);
      const shadowed = await store.window({ ...query, passesAnyway: true });
      assert.deepEqual([shadowed.allowed, shadowed.source], [false, "deny"]);
      const refused = await store.window(query);
      assert.deepEqual([refused.allowed, refused.source], [false, "deny"]);
      await delay(400);
      // The shadowed request's unit stays; the refused one's went back.
      assert.equal((await store.window({ ...query, cost: 0 })).states[0]!.remaining, 4);
    } finally {
      await store.close();
    }
  },
);
