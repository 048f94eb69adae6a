/** The Redis store against real redis-server processes: scripts, keys, the cluster. */
import assert from "node:assert/strict";
import { RedisStore } from "../../src/store/redis_store.ts";
import { MemoryStore } from "../../src/store/memory_store.ts";
import { loadScripts, SCRIPT_NAMES } from "../../src/store/scripts.ts";
import { limitKey } from "../../src/store/store.ts";
import { RedisCluster, RedisServer, redisTest } from "../_redis.ts";
import { freePort, repoPath } from "../_helpers.ts";

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
    // One key per algorithm's limit, and the bucket's.
    assert.equal(keys.length, 4, `keys: ${keys}`);
    for (const key of keys) {
      const ttl = Number((await server.cli(["PTTL", key])).trim());
      assert.ok(ttl > 0 && ttl <= 20_000, `${key} has PTTL ${ttl}`);
    }
    assert.ok(keys.includes(limitKey("{sluice:r:c}", "log", 10_000)));
  } finally {
    await store.close();
  }
});

redisTest(
  "counter and fixed keys hold only the buckets that still count, until they stop counting",
  async () => {
    await using server = await RedisServer.start();
    const store = await RedisStore.connect({ url: server.url });
    try {
      const limits = [{ limit: 100, windowMs: 1_000 }];
      const ttl = async (key: string) => Number((await server.cli(["PTTL", key])).trim());
      const at = (algorithm: "counter" | "fixed", now: number) =>
        store.window({ key: "{sluice:r:b}", algorithm, limits, cost: 1, now });
      const counter = limitKey("{sluice:r:b}", "counter", 1_000);
      const fixed = limitKey("{sluice:r:b}", "fixed", 1_000);
      // Bucket 10000, then twice in bucket 10001: the counter's bucket 10001 counts
      // until bucket 10002 ends, the fixed window's until bucket 10001 ends.
      for (const now of [10_000_500, 10_001_200, 10_001_900]) {
        await at("counter", now);
        await at("fixed", now);
      }
      assert.ok(
        (await ttl(counter)) <= 10_003_000 - 10_001_200,
        `counter PTTL ${await ttl(counter)}`,
      );
      assert.ok((await ttl(fixed)) <= 10_002_000 - 10_001_200, `fixed PTTL ${await ttl(fixed)}`);
      assert.equal((await server.cli(["HLEN", counter])).trim(), "2");
      // Bucket 10003: buckets 10000 and 10001 no longer count.
      const next = await at("counter", 10_003_100);
      assert.equal(next.states[0]!.remaining, 99);
      assert.deepEqual((await server.cli(["HKEYS", counter])).trim().split("\n"), ["10003"]);
    } finally {
      await store.close();
    }
  },
);

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

redisTest(
  "an admission given back by its stamp leaves every algorithm's count as if never made",
  async () => {
    await using server = await RedisServer.start();
    const store = await RedisStore.connect({ url: server.url });
    try {
      for (const algorithm of ["log", "counter", "fixed"] as const) {
        for (const cost of [1, 3]) {
          const query = {
            key: `{sluice:r:back-${algorithm}-${cost}}`,
            algorithm,
            limits: [{ limit: 10, windowMs: 60_000 }, { limit: 20, windowMs: 3_600_000 }],
            cost,
          };
          const kept = await store.window(query); // another request's, which stays counted
          const given = await store.window(query);
          assert.equal(given.allowed, true);
          assert.ok(given.stamp, `${algorithm}: a stamp`);
          await store.refundWindow(query, given.stamp!);
          const after = await store.window({ ...query, cost: 0 });
          assert.deepEqual(
            after.states.map((state) => state.remaining),
            kept.states.map((state) => state.remaining),
            `${algorithm}, cost ${cost}`,
          );
        }
      }
    } finally {
      await store.close();
    }
  },
);

redisTest("the log counts every unit when Redis's clock repeats a microsecond", async () => {
  // Log members are named after Redis's time: a clock set back can repeat a
  // name still in the log. The script with TIME pinned shows every unit counted.
  await using server = await RedisServer.start();
  const source = (await loadScripts()).get("sliding_log")!.source;
  const pinned = source.replace("redis.call('TIME')", "{ '1700000000', '250000' }");
  assert.notEqual(pinned, source);
  const key = "{sluice:r:clock}:log:60000";
  // The reply's numbers, then its stamp: the members' name, or "" once a name was repeated.
  const reply = async (...args: string[]) => {
    const lines = (await server.cli(["EVAL", pinned, ...args])).split("\n");
    return [...lines.slice(0, 5).map(Number), lines[5]];
  };
  const decide = (cost: number) => reply("1", key, String(cost), "0", "1", "10", "60000");
  assert.deepEqual(await decide(1), [1, 0, 0, 9, 60_000, "1700000000.250000"]);
  assert.deepEqual(await decide(1), [1, 0, 0, 8, 60_000, ""]);
  // Names of another form (stamp-1, -2, -3) are new the first time.
  assert.deepEqual(await decide(3), [1, 0, 0, 5, 60_000, "1700000000.250000"]);
  assert.deepEqual(await decide(3), [1, 0, 0, 2, 60_000, ""]);
  assert.equal((await server.cli(["ZCARD", key])).trim(), "8");
  assert.deepEqual((await decide(3)).slice(0, 4), [0, 60_000, 1, 2]);

  // A name repeated from an earlier time (the clock went back 50 s) leaves the
  // earlier unit where it was: at 115 s it is still in its window.
  const other = "{sluice:r:clock2}:log:60000";
  const at = (now: number, cost: number) =>
    reply("1", other, String(cost), String(now), "1", "10", "60000");
  await at(100_000, 1);
  await at(50_000, 1);
  assert.equal((await at(115_000, 0))[3], 9);
});

redisTest(
  "on a 3-master cluster, decisions made together for clients on different masters all pass",
  async () => {
    await using cluster = await RedisCluster.start();
    const store = await RedisStore.connect({ nodes: cluster.nodes });
    try {
      const limits = [{ limit: 5, windowMs: 60_000 }];
      for (const algorithm of ["log", "counter", "fixed"] as const) {
        // Twelve clients in one turn of the event loop: their keys hash to every master.
        const decisions = await Promise.all(
          Array.from(
            { length: 12 },
            (_, i) =>
              store.window({ key: `{sluice:r:ip:10.0.0.${i}}`, algorithm, limits, cost: 1 }),
          ),
        );
        assert.deepEqual(
          decisions.map((d) => d.states[0]!.remaining),
          Array(12).fill(4),
          algorithm,
        );
      }
    } finally {
      await store.close();
    }
  },
);

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

redisTest(
  "on a cluster, decisions for a slot being migrated follow its ASK redirects and stay exact",
  async () => {
    await using cluster = await RedisCluster.start();
    const store = await RedisStore.connect({ nodes: cluster.nodes });
    try {
      const key = "{sluice:r:moving}";
      const slot = (await cluster.servers[0]!.cli(["CLUSTER", "KEYSLOT", `${key}:log:60000`]))
        .trim();
      // The master holding the slot, and another one to move it to.
      const ids = await Promise.all(
        cluster.servers.map(async (server) => (await server.cli(["CLUSTER", "MYID"])).trim()),
      );
      const nodes = await cluster.servers[0]!.cli(["CLUSTER", "NODES"]);
      const source = cluster.servers.findIndex((_, i) =>
        nodes.split("\n").some((line) =>
          line.startsWith(ids[i]!) &&
          line.split(" ").slice(8).some((range) => {
            const [from, to = from] = range.split("-").map(Number);
            return from! <= Number(slot) && Number(slot) <= to!;
          })
        )
      );
      assert.ok(source >= 0, `no master holds slot ${slot}`);
      const target = (source + 1) % 3;
      await cluster.servers[target]!.cli(["CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source]!]);
      await cluster.servers[source]!.cli(["CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target]!]);
      const query = {
        key,
        algorithm: "log" as const,
        limits: [{ limit: 10, windowMs: 60_000 }],
        cost: 1,
      };
      // Concurrent, as a gateway's requests are: they leave in one turn of the event loop.
      const outcomes = await Promise.allSettled(
        Array.from({ length: 20 }, () => store.window(query)),
      );
      const failed = outcomes.filter((outcome) => outcome.status === "rejected");
      assert.deepEqual(
        failed.map((outcome) => String((outcome as PromiseRejectedResult).reason?.message)),
        [],
      );
      const allowed = outcomes.filter((outcome) =>
        outcome.status === "fulfilled" && outcome.value.allowed
      ).length;
      assert.equal(allowed, 10);
      // The new key was written where the slot is going.
      const keysIn = async (server: RedisServer) =>
        Number(await server.cli(["CLUSTER", "COUNTKEYSINSLOT", slot]));
      assert.deepEqual(
        [await keysIn(cluster.servers[source]!), await keysIn(cluster.servers[target]!)],
        [0, 1],
      );
    } finally {
      await store.close();
    }
  },
);

/** A TCP relay to Redis; `silence()` makes its first connection swallow what the client sends. */
class Relay {
  readonly #listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  readonly #conns: Deno.Conn[] = [];
  readonly #tasks: Promise<unknown>[] = [];
  #silent = false;
  connections = 0;

  constructor(redisPort: number) {
    this.#tasks.push(this.#accept(redisPort));
  }

  get url(): string {
    return `redis://127.0.0.1:${(this.#listener.addr as Deno.NetAddr).port}`;
  }

  silence(): void {
    this.#silent = true;
  }

  async #accept(redisPort: number): Promise<void> {
    try {
      for await (const client of this.#listener) {
        const index = ++this.connections;
        const redis = await Deno.connect({ hostname: "127.0.0.1", port: redisPort });
        this.#conns.push(client, redis);
        this.#tasks.push(
          this.#pipe(client, redis, () => index === 1 && this.#silent),
          this.#pipe(redis, client, () => false),
        );
      }
    } catch {
      // Closed.
    }
  }

  async #pipe(from: Deno.Conn, to: Deno.Conn, swallow: () => boolean): Promise<void> {
    const buffer = new Uint8Array(16 * 1024);
    try {
      while (true) {
        const n = await from.read(buffer);
        if (n === null) break;
        if (!swallow()) await to.write(buffer.subarray(0, n));
      }
    } catch {
      // Closed.
    }
  }

  async close(): Promise<void> {
    this.#listener.close();
    for (const conn of this.#conns) {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
    }
    await Promise.all(this.#tasks);
  }
}

redisTest(
  "a connection that stops answering without closing is replaced after a PING gets no answer",
  async () => {
    await using server = await RedisServer.start();
    const relay = new Relay(server.port);
    const store = await RedisStore.connect({ url: relay.url });
    try {
      // A sliding log: a fixed window could roll over between the two decisions.
      const query = {
        key: "{sluice:r:c}",
        algorithm: "log" as const,
        limits: [{ limit: 5, windowMs: 60_000 }],
        cost: 1,
      };
      assert.equal((await store.window(query)).allowed, true);
      relay.silence();
      await assert.rejects(store.ping(), /PING got no answer within 1000 ms/);
      let pong = false;
      for (let i = 0; i < 50 && !pong; i++) {
        pong = await store.ping().then(() => true, () => false);
        if (!pong) await new Promise((resolve) => setTimeout(resolve, 100));
      }
      assert.equal(pong, true, "a new connection answers");
      assert.equal(relay.connections, 2);
      assert.equal((await store.window(query)).states[0]!.remaining, 3, "counters kept in Redis");
    } finally {
      await store.close();
      await relay.close();
    }
  },
);

redisTest(
  "a request of a large cost is decided on Redis as on memory (the log adds its units in slices)",
  async () => {
    await using server = await RedisServer.start();
    const redis = await RedisStore.connect({ url: server.url });
    const memory = new MemoryStore({ sweep: false });
    try {
      for (const cost of [5_000, 20_000, 80_000]) {
        const query = {
          key: "{sluice:r:big}",
          algorithm: "log" as const,
          limits: [{ limit: 100_000, windowMs: 3_600_000 }],
          cost,
          now: 1_000_000 + cost,
        };
        const onRedis = await redis.window(query);
        const onMemory = await memory.window(query);
        assert.equal(onRedis.allowed, onMemory.allowed, `cost ${cost}`);
        assert.equal(onRedis.states[0]!.remaining, onMemory.states[0]!.remaining, `cost ${cost}`);
      }
      assert.equal(Number(await server.cli(["ZCARD", "{sluice:r:big}:log:3600000"])), 25_000);
    } finally {
      await redis.close();
      await memory.close();
    }
  },
);

/** A one-node cluster holding every slot, on `server`, announced as `ip`. */
async function oneNodeCluster(server: RedisServer, ip: string): Promise<void> {
  await server.cli(["CONFIG", "SET", "cluster-announce-ip", ip]);
  await server.cli(["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]);
  for (let i = 0; i < 200; i++) {
    if ((await server.cli(["CLUSTER", "INFO"])).includes("cluster_state:ok")) return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error("the one-node cluster did not come up");
}

redisTest("a cluster seed written as an IPv6 address ([::1]) connects", async () => {
  await using server = await RedisServer.start([
    "--cluster-enabled",
    "yes",
    "--bind",
    "127.0.0.1 ::1",
  ]);
  await oneNodeCluster(server, "::1");
  const store = await RedisStore.connect({ nodes: [`redis://[::1]:${server.port}`] });
  try {
    await store.ping();
    const query = {
      key: "{sluice:r:c}",
      algorithm: "log" as const,
      limits: [{ limit: 1, windowMs: 60_000 }],
      cost: 1,
    };
    assert.equal((await store.window(query)).allowed, true);
    assert.equal((await store.window(query)).allowed, false);
  } finally {
    await store.close();
  }
});

redisTest(
  "rediss:// cluster nodes are reached over TLS, as a single rediss:// node is",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "sluice-tls-" });
    const openssl = async (...args: string[]) => {
      const out = await new Deno.Command("openssl", { args, cwd: dir, stderr: "piped" }).output();
      if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
    };
    // A CA, and a server certificate it signs for 127.0.0.1.
    await openssl(
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "1",
      "-subj",
      "/CN=ca",
      "-keyout",
      "ca.key",
      "-out",
      "ca.crt",
    );
    await Deno.writeTextFile(`${dir}/ext`, "subjectAltName=IP:127.0.0.1\n");
    await openssl(
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-subj",
      "/CN=127.0.0.1",
      "-keyout",
      "srv.key",
      "-out",
      "srv.csr",
    );
    await openssl(
      "x509",
      "-req",
      "-in",
      "srv.csr",
      "-CA",
      "ca.crt",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-days",
      "1",
      "-extfile",
      "ext",
      "-out",
      "srv.crt",
    );
    const tlsPort = freePort();
    await using server = await RedisServer.start([
      "--tls-port",
      String(tlsPort),
      "--tls-cert-file",
      `${dir}/srv.crt`,
      "--tls-key-file",
      `${dir}/srv.key`,
      "--tls-ca-cert-file",
      `${dir}/ca.crt`,
      "--tls-auth-clients",
      "no",
      "--tls-cluster",
      "yes",
      "--cluster-enabled",
      "yes",
    ]);
    try {
      await oneNodeCluster(server, "127.0.0.1");
      // The CA is trusted through DENO_CERT, read when a process starts: the client runs in one.
      const script = `
      import { RedisStore } from ${
        JSON.stringify(new URL("../../src/store/redis_store.ts", import.meta.url).href)
      };
      const store = await RedisStore.connect({ nodes: ["rediss://127.0.0.1:${tlsPort}"] });
      try {
        await store.ping();
        console.log("ping ok");
      } catch (error) {
        console.log(String(error));
      } finally {
        await store.close();
      }
    `;
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["eval", "--config", repoPath("deno.json"), script],
        env: { DENO_CERT: `${dir}/ca.crt` },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout).trim();
      assert.equal(text, "ping ok", new TextDecoder().decode(out.stderr));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

redisTest(
  "a token refund goes back only while its reservation is the latest, on memory and Redis alike",
  async () => {
    await using server = await RedisServer.start();
    const redis = await RedisStore.connect({ url: server.url });
    const memory = new MemoryStore({ sweep: false });
    try {
      for (const [name, store] of [["memory", memory], ["redis", redis]] as const) {
        const T = 1_000_000;
        const take = (key: string) =>
          store.bucket({
            key,
            rate: 10,
            periodMs: 1_000,
            burst: 1,
            cost: 1,
            maxDelayMs: 2_000,
            now: T,
          });
        const refund = (key: string, refundOf: number) =>
          store.bucket({
            key,
            rate: 10,
            periodMs: 1_000,
            burst: 1,
            cost: -1,
            maxDelayMs: 2_000,
            now: T,
            refundOf,
          });
        const key = `{sluice:r:bucket-${name}}`;
        const a = await take(key); // passes
        const b = await take(key); // waits 100 ms
        const c = await take(key); // waits 200 ms, behind b
        assert.deepEqual([a.delayMs, b.delayMs, c.delayMs], [0, 100, 200], name);
        assert.deepEqual([a.reservation, b.reservation, c.reservation], [1, 2, 3], name);
        // b leaves while c waits behind it (on another instance, say): its slot is lost,
        // not handed to the next newcomer beside c.
        await refund(key, b.reservation);
        const d = await take(key);
        assert.equal(d.delayMs, 300, `${name}: a newcomer after a lost slot`);
        // d leaves with no one behind it: its tokens go back.
        await refund(key, d.reservation);
        const e = await take(key);
        assert.equal(e.delayMs, 300, `${name}: d's slot given back`);
      }
    } finally {
      await redis.close();
      await memory.close();
    }
  },
);
