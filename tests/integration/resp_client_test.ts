/** The RESP client against a real redis-server: pipelining, AUTH and SELECT, loss and return of Redis. */
import assert from "node:assert/strict";
import { parseRedisUrl, RespClient } from "../../src/store/resp_client.ts";
import { RedisServer, redisTest } from "../_redis.ts";

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

redisTest(
  "commands sent together are answered in order, non-ASCII keys and values intact",
  async () => {
    await using server = await RedisServer.start();
    const client = new RespClient(parseRedisUrl(server.url));
    try {
      await client.connect();
      const replies = await Promise.all(
        Array.from({ length: 1_000 }, () => client.send(["INCR", "counter:ü"])),
      );
      assert.deepEqual(replies, Array.from({ length: 1_000 }, (_, i) => i + 1));
      const value = "grüße, 世界 ".repeat(10_000); // larger than one read
      assert.equal(await client.send(["SET", "text:é", value]), "OK");
      assert.equal(await client.send(["GET", "text:é"]), value);
      assert.equal(await client.send(["GET", "missing"]), null);
      assert.equal((await server.cli(["GET", "counter:ü"])).trim(), "1000");
      await assert.rejects(client.send(["NOSUCHCOMMAND"]), /unknown command/);
      assert.equal(
        await client.send(["PING"]),
        "PONG",
        "an error reply leaves the connection usable",
      );
    } finally {
      await client.close();
    }
  },
);

redisTest(
  "credentials and database come from the URL; a wrong password is a clear error",
  async () => {
    await using server = await RedisServer.start();
    await server.cli(["ACL", "SETUSER", "gateway", "on", ">s3cret", "~*", "+@all"]);
    const client = new RespClient(
      parseRedisUrl(`redis://gateway:s3cret@127.0.0.1:${server.port}/3`),
    );
    try {
      await client.connect();
      await client.send(["SET", "where", "db3"]);
      assert.equal((await server.cli(["-n", "3", "GET", "where"])).trim(), "db3");
      assert.equal((await server.cli(["-n", "0", "EXISTS", "where"])).trim(), "0");
    } finally {
      await client.close();
    }
    const wrong = new RespClient(parseRedisUrl(`redis://gateway:nope@127.0.0.1:${server.port}`));
    try {
      await assert.rejects(
        wrong.connect(),
        /Cannot connect to Redis at 127\.0\.0\.1:\d+: WRONGPASS/,
      );
      await assert.rejects(wrong.send(["PING"]), /is not connected: WRONGPASS/);
    } finally {
      await wrong.close();
    }
  },
);

redisTest(
  "Redis killed: waiting commands fail, new ones fail at once, and it reconnects on its own",
  async () => {
    await using server = await RedisServer.start();
    const client = new RespClient(parseRedisUrl(server.url));
    try {
      await client.connect();
      // A command Redis is still busy with when it dies.
      const busy = client.send(["EVAL", "local t = redis.call('TIME') while true do end", 0]);
      busy.catch(() => {});
      await delay(50);
      await server.kill();
      await assert.rejects(busy, /went away/);
      assert.equal(client.state === "open", false);
      await assert.rejects(client.send(["PING"]), /is not connected/);
      await server.restart();
      let answer: unknown;
      for (let i = 0; i < 100 && answer === undefined; i++) {
        await delay(100);
        answer = await client.send(["PING"]).catch(() => undefined);
      }
      assert.equal(answer, "PONG", "connected again within 10 s");
    } finally {
      await client.close();
    }
  },
);

/**
 * A relay to Redis that holds the traffic of its Nth connection for
 * `holdMs[N - 1]` ms (a slow connection, seen by the client as one still being
 * made while its SELECT is unanswered) and closes each side when the other does.
 */
function slowRelay(redisPort: number, holdMs: number[]): { url: string; close(): void } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  (async () => {
    let accepted = 0;
    for await (const client of listener) {
      const hold = holdMs[accepted++] ?? 0;
      const redis = await Deno.connect({ hostname: "127.0.0.1", port: redisPort });
      conns.push(client, redis);
      await delay(hold);
      client.readable.pipeTo(redis.writable).catch(() => {});
      redis.readable.pipeTo(client.writable).catch(() => {});
    }
  })().catch(() => {});
  return {
    url: `redis://127.0.0.1:${(listener.addr as Deno.NetAddr).port}/1`,
    close() {
      listener.close();
      for (const conn of conns) {
        try {
          conn.close();
        } catch {
          // Already closed.
        }
      }
    },
  };
}

redisTest(
  "a connection Redis cuts is made again at once, and commands sent meanwhile wait for it",
  async () => {
    await using server = await RedisServer.start();
    const relay = slowRelay(server.port, [0, 50, 400]);
    const client = new RespClient(parseRedisUrl(relay.url));
    const pings = async () =>
      Number(/cmdstat_ping:calls=(\d+)/.exec(await server.cli(["INFO", "commandstats"]))?.[1] ?? 0);
    const pingWhileConnecting = async () => {
      for (let i = 0; i < 2_000 && client.state !== "connecting"; i++) await delay(1);
      assert.equal(client.state, "connecting", "connecting again at once");
      return await Promise.allSettled(Array.from({ length: 20 }, () => client.send(["PING"])));
    };
    try {
      await client.connect();
      await delay(1_100); // an established connection, as a Redis `timeout` or a proxy cuts
      await server.cli(["CLIENT", "KILL", "TYPE", "normal"]);
      const replies = await pingWhileConnecting();
      assert.deepEqual(
        replies.map((reply) => reply.status === "fulfilled" ? reply.value : reply.reason.message),
        Array(20).fill("PONG"),
      );
      // A connection slower to come than a caller waits: its commands fail, and are never sent.
      await delay(1_100);
      const before = await pings();
      await server.cli(["CLIENT", "KILL", "TYPE", "normal"]);
      const late = await pingWhileConnecting();
      assert.ok(
        late.every((reply) =>
          reply.status === "rejected" && /is not connected/.test(reply.reason.message)
        ),
      );
      await delay(500);
      assert.equal(client.state, "open");
      assert.equal(await pings(), before);
    } finally {
      await client.close();
      relay.close();
    }
  },
);

redisTest(
  "a connection Redis drops as soon as it is made (maxclients) is tried again at most 10 times a second",
  async () => {
    await using server = await RedisServer.start();
    const client = new RespClient(parseRedisUrl(server.url));
    const other = new RespClient(parseRedisUrl(server.url));
    try {
      await client.connect();
      await other.connect();
      await delay(1_100);
      await other.send(["CONFIG", "SET", "maxclients", "1"]);
      await other.send(["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
      await delay(1_500);
      const stats = String(await other.send(["INFO", "stats"]));
      const refused = Number(/rejected_connections:(\d+)/.exec(stats)?.[1]);
      // Not a loop that reconnects as fast as it can: at most 10 a second.
      assert.ok(refused >= 2 && refused <= 20, `connections refused in 1.5 s: ${refused}`);
      await other.send(["CONFIG", "SET", "maxclients", "100"]);
      let answer: unknown;
      for (let i = 0; i < 30 && answer === undefined; i++) {
        await delay(100);
        answer = await client.send(["PING"]).catch(() => undefined);
      }
      assert.equal(answer, "PONG", "connected again once Redis takes clients");
    } finally {
      await client.close();
      await other.close();
    }
  },
);

redisTest("a closed client rejects commands and does not reconnect", async () => {
  await using server = await RedisServer.start();
  const client = new RespClient(parseRedisUrl(server.url));
  await client.connect();
  await client.close();
  assert.equal(client.state, "closed");
  await assert.rejects(client.send(["PING"]), /The Redis client is closed/);
  await assert.rejects(client.connect(), /The Redis client is closed/);
  await delay(300);
  assert.equal(client.state, "closed");
  const clients = await server.cli(["CLIENT", "LIST"]);
  assert.equal(clients.trim().split("\n").length, 1, `only redis-cli is connected: ${clients}`);
});

redisTest("a password given for a Redis that has none connects (as ioredis does)", async () => {
  await using server = await RedisServer.start();
  const url = server.url.replace("redis://", "redis://:not-needed@");
  const client = new RespClient({ ...parseRedisUrl(url), db: 2 });
  try {
    await client.connect();
    assert.equal(await client.send(["SET", "k", "v"]), "OK");
    assert.equal((await server.cli(["-n", "2", "GET", "k"])).trim(), "v", "SELECT still ran");
  } finally {
    await client.close();
  }
});
