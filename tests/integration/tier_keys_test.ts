/** Where the tier plugin finds keys: a keys file (watched) and a Redis hash with a local cache. */
import assert from "node:assert/strict";
import { sha256Hex } from "../../src/digest.ts";
import { startGateway, startUpstream, waitFor } from "../_helpers.ts";
import { RedisServer, redisTest } from "../_redis.ts";

function yaml(upstream: string, keys: string, store = ""): string {
  return `${store}tiers:
  free: { limit: 1, window: 1h }
  gold: { limit: 3, window: 1h }
keys:
${keys}
routes:
  - name: api
    upstream: { url: ${upstream} }
    pipeline:
      - identify: { from: [header:x-api-key] }
      - tier: { default: free, unknown_key: reject, cache_ttl: 200ms }
      - sliding-window: { limit: tier }
      - proxy: {}
`;
}

async function policy(url: string, key: string): Promise<string | number> {
  const response = await fetch(url, { headers: { "x-api-key": key } });
  await response.body?.cancel();
  return response.status === 200 ? response.headers.get("ratelimit-policy")! : response.status;
}

Deno.test("a keys file gives tiers, and editing it reloads", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(
    yaml(upstream.url, "  - { file: ./keys.yaml }"),
    {},
    { "keys.yaml": `- { key: file-key, tier: gold, name: from-file }\n` },
  );
  assert.equal(await policy(gw.url, "file-key"), `"gold";q=3;w=3600`);
  assert.equal(await policy(gw.url, "new-key"), 401);
  const hashed = await sha256Hex("new-key");
  await Deno.writeTextFile(
    `${gw.config.dir}/keys.yaml`,
    `- { key: file-key, tier: gold }\n- { key: "sha256:${hashed}", tier: free }\n`,
  );
  assert.ok(await waitFor(async () => (await policy(gw.url, "new-key")) === `"free";q=1;w=3600`));
});

Deno.test("a keys file naming an unknown tier is a config error", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await assert.rejects(
    startGateway(yaml(upstream.url, "  - { file: ./keys.yaml }"), {}, {
      "keys.yaml": `- { key: a, tier: gold }\n- { key: b, tier: platinum }\n`,
    }),
    /keys\[0\]\.file: .*keys\.yaml:2: unknown tier "platinum"/,
  );
});

redisTest(
  "keys in a Redis hash (SHA-256 fields) give tiers, cached locally for cache_ttl",
  async () => {
    await using upstream = startUpstream(() => new Response("ok"));
    await using redis = await RedisServer.start();
    await redis.cli(["HSET", "sluice:keys", await sha256Hex("redis-key"), "gold"]);
    await using gw = await startGateway(
      yaml(
        upstream.url,
        "  - { redis_hash: sluice:keys }",
        `store: { kind: redis, url: ${redis.url} }\n`,
      ),
    );
    assert.equal(await policy(gw.url, "redis-key"), `"gold";q=3;w=3600`);
    assert.equal(await policy(gw.url, "later-key"), 401);
    // A hash value that is no tier (an object's own words, too) is an unknown key, never a 500.
    for (const value of ["constructor", "toString", "__proto__", "platinum"]) {
      await redis.cli(["HSET", "sluice:keys", await sha256Hex(`odd-${value}`), value]);
      assert.equal(await policy(gw.url, `odd-${value}`), 401, value);
    }
    await redis.cli(["HSET", "sluice:keys", await sha256Hex("later-key"), "free"]);
    assert.ok(
      await waitFor(async () => (await policy(gw.url, "later-key")) === `"free";q=1;w=3600`, 3_000),
    );
  },
);

redisTest(
  "while Redis is down, a key read from its hash before keeps its tier, and is read again once Redis is back",
  async () => {
    await using upstream = startUpstream(() => new Response("ok"));
    await using redis = await RedisServer.start();
    await redis.cli(["HSET", "sluice:keys", await sha256Hex("gold-key"), "gold"]);
    await redis.cli(["HSET", "sluice:keys", await sha256Hex("unread-key"), "gold"]);
    await using gw = await startGateway(
      yaml(
        upstream.url,
        "  - { redis_hash: sluice:keys }",
        `store: { kind: redis, url: ${redis.url}, on_failure: local }\n`,
      ),
    );
    const storeState = async () =>
      (await (await fetch(`${gw.adminUrl}/status`)).json()).store.state as string;
    assert.equal(await policy(gw.url, "gold-key"), `"gold";q=3;w=3600`);
    await redis.kill();
    // Requests without a key fail against the store until it is marked down.
    assert.ok(
      await waitFor(async () => {
        await (await fetch(gw.url)).body?.cancel();
        return (await storeState()) === "down";
      }, 5_000),
      "the store is marked down",
    );
    await new Promise((resolve) => setTimeout(resolve, 300)); // past cache_ttl
    assert.equal(await policy(gw.url, "gold-key"), `"gold";q=3;w=3600`, "during the outage");
    // A key never read cannot be told known or unknown: it is not refused as
    // unknown, it gets the default tier, counted as its address (whose one
    // request an hour the keyless requests above spent).
    const unread = await fetch(gw.url, { headers: { "x-api-key": "unread-key" } });
    await unread.body?.cancel();
    assert.equal(unread.status, 429);
    assert.equal(unread.headers.get("ratelimit-policy"), `"free";q=1;w=3600`);
    // Redis comes back empty; the key is written again, with another tier.
    await redis.restart();
    await redis.cli(["HSET", "sluice:keys", await sha256Hex("gold-key"), "free"]);
    assert.ok(
      await waitFor(async () => (await policy(gw.url, "gold-key")) === `"free";q=1;w=3600`, 10_000),
      "after the outage the key is read from Redis again",
    );
  },
);

redisTest(
  "with on_failure: deny, a key the store cannot look up is no 401: the limit step answers 503 (the tier step with none after it), or a shadow lets it through",
  async () => {
    await using upstream = startUpstream(() => new Response("ok"));
    await using redis = await RedisServer.start();
    const config = (limit: string) =>
      yaml(
        upstream.url,
        "  - { redis_hash: sluice:keys }",
        `store: { kind: redis, url: ${redis.url}, on_failure: deny, timeout: 50ms }\n`,
      ).replace("{ limit: tier }", limit);
    await using enforcing = await startGateway(config("{ limit: tier }"));
    await using shadow = await startGateway(config("{ limit: tier, shadow: true }"));
    // No limit step after the tier: failing closed is the tier step's to do.
    await using unlimited = await startGateway(
      config("{ limit: tier }").replace("      - sliding-window: { limit: tier }\n", ""),
    );
    await redis.kill();
    const send = (url: string) => fetch(url, { headers: { "x-api-key": "some-key" } });

    const refused = await send(enforcing.url);
    assert.equal(refused.status, 503);
    assert.equal(refused.headers.get("www-authenticate"), null);
    assert.equal((await refused.json()).type, "urn:sluice:problem:limit-store-unavailable");
    assert.ok(Number(refused.headers.get("retry-after")) >= 1);

    const passed = await send(shadow.url);
    await passed.body?.cancel();
    assert.equal(passed.status, 200);

    const closed = await send(unlimited.url);
    assert.equal(closed.status, 503);
    assert.equal((await closed.json()).type, "urn:sluice:problem:limit-store-unavailable");
  },
);

redisTest(
  "an unknown key is remembered only briefly: added to the hash, it works within seconds",
  async () => {
    await using upstream = startUpstream(() => new Response("ok"));
    await using redis = await RedisServer.start();
    await using gw = await startGateway(
      yaml(
        upstream.url,
        "  - { redis_hash: sluice:keys }",
        `store: { kind: redis, url: ${redis.url} }\n`,
      ).replace("cache_ttl: 200ms", "cache_ttl: 1h"),
    );
    assert.equal(await policy(gw.url, "new-key"), 401);
    await redis.cli(["HSET", "sluice:keys", await sha256Hex("new-key"), "gold"]);
    const started = Date.now();
    assert.ok(
      await waitFor(async () => (await policy(gw.url, "new-key")) === `"gold";q=3;w=3600`, 8_000),
      "the key was not read again",
    );
    assert.ok(Date.now() - started < 7_000, `took ${Date.now() - started} ms`);
  },
);
