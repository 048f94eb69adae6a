/** The Redis store against real redis-server processes: scripts, keys, the cluster. */
import assert from "node:assert/strict";
import { RedisStore } from "../../src/store/redis_store.ts";
import { loadScripts, SCRIPT_NAMES } from "../../src/store/scripts.ts";
import { limitKey } from "../../src/store/store.ts";
import { RedisCluster, RedisServer, redisTest } from "../_redis.ts";

redisTest("each Lua script loads into Redis under the SHA1 the registry holds", async () => {
  await using server = await RedisServer.start();
  const scripts = await loadScripts();
  assert.deepEqual([...scripts.keys()], [...SCRIPT_NAMES]);
  for (const script of scripts.values()) {
    const sha = (await server.cli(["SCRIPT", "LOAD", script.source])).trim();
    assert.equal(sha, script.sha, script.name);
    assert.match(script.source, /^-- \w+\.lua: /, `${script.name} opens with its comment table`);
    assert.match(script.source, /KEYS\[/);
    assert.match(script.source, /ARGV\[1\]/);
  }
});

redisTest("a decision still works after SCRIPT FLUSH (EVALSHA falls back to EVAL)", async () => {
  await using server = await RedisServer.start();
  const store = await RedisStore.connect({ url: server.url });
  try {
    const query = {
      key: "{sluice:r:c}",
      algorithm: "log" as const,
      limits: [{ limit: 2, windowMs: 60_000 }],
      cost: 1,
    };
    assert.equal((await store.window(query)).allowed, true);
    await server.cli(["SCRIPT", "FLUSH"]);
    const second = await store.window(query);
    assert.equal(second.allowed, true);
    assert.equal(second.states[0]!.remaining, 0);
    assert.equal((await store.window(query)).allowed, false);
  } finally {
    await store.close();
  }
});

redisTest("every key a decision writes expires", async () => {
  await using server = await RedisServer.start();
  const store = await RedisStore.connect({ url: server.url });
  try {
    const limits = [{ limit: 5, windowMs: 10_000 }];
    for (const algorithm of ["log", "counter", "fixed"] as const) {
      await store.window({ key: "{sluice:r:c}", algorithm, limits, cost: 1 });
    }
    await store.bucket({
      key: "{sluice:r:c}:bucket",
      rate: 1,
      periodMs: 1000,
      burst: 5,
      cost: 1,
      maxDelayMs: 0,
    });
    const keys = (await server.cli(["KEYS", "*"])).trim().split("\n").filter(Boolean);
    assert.ok(keys.length >= 5, `keys: ${keys}`);
    for (const key of keys) {
      const ttl = Number((await server.cli(["PTTL", key])).trim());
      assert.ok(ttl > 0 && ttl <= 20_000, `${key} has PTTL ${ttl}`);
    }
    assert.ok(keys.includes(limitKey("{sluice:r:c}", "log", 10_000)));
  } finally {
    await store.close();
  }
});

redisTest("decisions take the time from Redis, not from the gateway", async () => {
  await using server = await RedisServer.start();
  const store = await RedisStore.connect({ url: server.url });
  try {
    const key = "{sluice:r:time}";
    await store.window({
      key,
      algorithm: "log",
      limits: [{ limit: 5, windowMs: 60_000 }],
      cost: 1,
    });
    const [entry] =
      (await server.cli(["ZRANGE", limitKey(key, "log", 60_000), "0", "0", "WITHSCORES"]))
        .trim().split("\n").slice(1);
    const [seconds, micros] = (await server.cli(["TIME"])).trim().split("\n").map(Number);
    const redisNow = seconds! * 1000 + Math.floor(micros! / 1000);
    assert.ok(
      Math.abs(Number(entry) - redisNow) < 5_000,
      `stored ${entry}, Redis time ${redisNow}`,
    );
  } finally {
    await store.close();
  }
});

redisTest("on a 3-master cluster every key of a decision lands in one slot", async () => {
  await using cluster = await RedisCluster.start();
  const store = await RedisStore.connect({ nodes: cluster.nodes });
  try {
    const query = {
      key: "{sluice:api:key:0123456789abcdef}",
      algorithm: "log" as const,
      limits: [{ limit: 3, windowMs: 1_000 }, { limit: 10, windowMs: 60_000 }],
      cost: 1,
    };
    const decisions = [];
    for (let i = 0; i < 4; i++) decisions.push(await store.window(query));
    assert.deepEqual(decisions.map((d) => d.allowed), [true, true, true, false]);
    assert.equal(decisions[3]!.violated, 0);
    // Different clients spread over the masters, and each still decides.
    for (let i = 0; i < 30; i++) {
      const decision = await store.window({ ...query, key: `{sluice:api:ip:10.0.0.${i}}` });
      assert.equal(decision.allowed, true);
    }
    const counts = await Promise.all(
      cluster.servers.map(async (s) => Number((await s.cli(["DBSIZE"])).trim())),
    );
    assert.ok(counts.filter((count) => count > 0).length >= 2, `keys per master: ${counts}`);
    await store.ping();
  } finally {
    await store.close();
  }
});
