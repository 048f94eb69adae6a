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
