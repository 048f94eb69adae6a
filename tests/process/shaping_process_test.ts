/** The shaper on Redis across two gateway processes, and a drain with requests still waiting. */
import assert from "node:assert/strict";
import { delay, startUpstream, tempConfig } from "../_helpers.ts";
import { RedisServer, redisTest } from "../_redis.ts";
import { spawnGateway } from "../_process.ts";

function yaml(upstream: string, store: string, steps: string): string {
  return `admin: { port: \${ADMIN_PORT} }
store: ${store}
shutdown: { grace: 10s }
routes:
  - name: api
    upstream: { url: ${upstream} }
    pipeline:
${steps}
      - proxy: {}
`;
}

redisTest(
  "the Redis-backed shaper spreads a burst across 2 gateway processes like one",
  async () => {
    const arrivals: number[] = [];
    await using upstream = startUpstream(() => {
      arrivals.push(performance.now());
      return new Response("ok");
    });
    await using redis = await RedisServer.start();
    await using config = await tempConfig(yaml(
      upstream.url,
      `{ kind: redis, url: ${redis.url} }`,
      "      - token-bucket: { rate: 10/s, burst: 1, max_delay: 2s }",
    ));
    const gateways = await Promise.all([spawnGateway(config.file), spawnGateway(config.file)]);
    try {
      const statuses = await Promise.all(Array.from({ length: 6 }, async (_, i) => {
        const response = await fetch(`${gateways[i % 2]!.url}/x`);
        await response.body?.cancel();
        return response.status;
      }));
      assert.deepEqual(statuses, [200, 200, 200, 200, 200, 200]);
      arrivals.sort((a, b) => a - b);
      const spread = arrivals.at(-1)! - arrivals[0]!;
      assert.ok(spread >= 420 && spread <= 900, `spread ${Math.round(spread)} ms`);
      for (let i = 1; i < arrivals.length; i++) {
        assert.ok(
          arrivals[i]! - arrivals[i - 1]! >= 50,
          `gap ${i}: ${Math.round(arrivals[i]! - arrivals[i - 1]!)} ms`,
        );
      }
    } finally {
      for (const gateway of gateways) gateway.child.kill("SIGTERM");
      await Promise.all(gateways.map((gateway) => gateway.exited));
    }
  },
);

Deno.test("SIGTERM with requests queued for a slot and waiting for tokens: none is lost", async () => {
  let served = 0;
  await using upstream = startUpstream(async () => {
    await delay(100);
    served++;
    return new Response("served");
  });
  await using config = await tempConfig(yaml(
    upstream.url,
    "{ kind: memory }",
    `      - token-bucket: { rate: 20/s, burst: 2, max_delay: 3s }
      - concurrency: { max: 1, queue: 20, queue_timeout: 5s }`,
  ));
  const gateway = await spawnGateway(config.file);
  const requests = Array.from({ length: 8 }, async () => {
    const response = await fetch(`${gateway.url}/x`);
    return { status: response.status, body: await response.text() };
  });
  await delay(150);
  gateway.child.kill("SIGTERM");
  const results = await Promise.all(requests);
  assert.deepEqual(results, Array(8).fill({ status: 200, body: "served" }));
  assert.equal(served, 8);
  const { code, lines } = await gateway.exited;
  assert.equal(code, 0);
  assert.equal(JSON.parse(lines.at(-1)!).drained, true);
});
