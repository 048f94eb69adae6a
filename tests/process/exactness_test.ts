/**
 * The promise users buy: the limit is exact, never one request over, for every
 * algorithm, on one instance or on many sharing Redis or a Redis Cluster.
 * Gateways run as processes, as users run them, and take a burst of
 * concurrent requests from one client spread over all of them.
 */
import assert from "node:assert/strict";
import { delay, startUpstream, tempConfig } from "../_helpers.ts";
import { RedisCluster, RedisServer, redisTest } from "../_redis.ts";
import { type GatewayProcess, kill, spawnGateway } from "../_process.ts";

const LIMIT = 50;
const REQUESTS = 300;
const WINDOW_MS = 60_000;
const ALGORITHMS = ["log", "counter", "fixed"] as const;
/** Fixed and counter windows align to floor(now / window): a burst starts no closer to the edge. */
const EDGE_MARGIN_MS = 5_000;

type Algorithm = typeof ALGORITHMS[number];

/** Starts `count` gateways in parallel; when one fails, the others are stopped too. */
async function spawnGateways(configFile: string, count: number): Promise<GatewayProcess[]> {
  const results = await Promise.allSettled(
    Array.from({ length: count }, () => spawnGateway(configFile, { logLevel: "warn" })),
  );
  const started = results.flatMap((result) => result.status === "fulfilled" ? [result.value] : []);
  const failed = results.find((result) => result.status === "rejected");
  if (failed) {
    await stopGateways(started);
    throw failed.reason;
  }
  return started;
}

async function stopGateways(gateways: readonly GatewayProcess[]): Promise<void> {
  for (const gateway of gateways) kill(gateway.child);
  await Promise.all(gateways.map((gateway) => gateway.exited));
}

function configYaml(store: string, upstream: string): string {
  const routes = ALGORITHMS.map((algorithm) => `
  - name: ${algorithm}
    match: { path_prefix: /${algorithm} }
    upstream: { url: ${upstream} }
    pipeline:
      - identify: { from: [header:x-api-key, ip] }
      - sliding-window: { limit: ${LIMIT}, window: 1m, algorithm: ${algorithm} }
      - proxy: {}`).join("");
  return `listen: { hostname: 127.0.0.1 }
admin: { port: \${ADMIN_PORT} }
store: ${store}
routes:${routes}
`;
}

/**
 * The defaults users run with: a 100 ms timeout and the local fallback. The
 * burst makes the gateways busy, and time a gateway spends too busy to read
 * the reply does not count against the store, so no call falls back.
 */
const STORE_POLICY = "timeout: 100ms, on_failure: local";

interface Answer {
  status: number;
  contentType: string | null;
  retryAfter: string | null;
  policy: string | null;
  rateLimit: string | null;
  body: string;
}

/** Waits, when the current window of the store's clock ends within the margin, for the next one. */
async function awayFromWindowEdge(now: () => Promise<number>): Promise<void> {
  const left = WINDOW_MS - (await now()) % WINDOW_MS;
  if (left < EDGE_MARGIN_MS) await delay(left + 250);
}

/** The Redis clock (`TIME`) in milliseconds. */
async function redisNow(server: RedisServer): Promise<number> {
  const [seconds, micros] = (await server.cli(["TIME"])).trim().split(/\s+/).map(Number);
  return seconds! * 1_000 + Math.floor(micros! / 1_000);
}

/** Fires the burst at one algorithm's route, round-robin over the gateways, all at once. */
function burst(gateways: readonly GatewayProcess[], algorithm: Algorithm): Promise<Answer[]> {
  const key = `exact-${algorithm}-${crypto.randomUUID()}`;
  return Promise.all(Array.from({ length: REQUESTS }, async (_, i) => {
    const gateway = gateways[i % gateways.length]!;
    const response = await fetch(`${gateway.url}/${algorithm}/item/${i}`, {
      headers: { "x-api-key": key },
    });
    return {
      status: response.status,
      contentType: response.headers.get("content-type"),
      retryAfter: response.headers.get("retry-after"),
      policy: response.headers.get("ratelimit-policy"),
      rateLimit: response.headers.get("ratelimit"),
      body: await response.text(),
    };
  }));
}

function tally(answers: readonly Answer[]): Record<number, number> {
  const counts: Record<number, number> = {};
  for (const answer of answers) counts[answer.status] = (counts[answer.status] ?? 0) + 1;
  return counts;
}

function assertExact(answers: readonly Answer[], upstreamHits: number): void {
  const counts = tally(answers);
  assert.deepEqual(
    counts,
    { 200: LIMIT, 429: REQUESTS - LIMIT },
    `expected exactly ${LIMIT} × 200 and ${REQUESTS - LIMIT} × 429, got ${JSON.stringify(counts)}`,
  );
  assert.equal(upstreamHits, LIMIT, "the upstream saw a different number of requests");
  for (const answer of answers) {
    assert.match(answer.policy ?? "", /;q=50;w=60$/, "RateLimit-Policy missing or wrong");
    assert.match(answer.rateLimit ?? "", /;r=\d+;t=\d+$/, "RateLimit missing or wrong");
    if (answer.status !== 429) continue;
    assert.match(answer.contentType ?? "", /^application\/problem\+json/);
    assert.equal(JSON.parse(answer.body).status, 429);
    assert.match(answer.retryAfter ?? "", /^\d+$/, "Retry-After is not whole seconds");
    // The counter's estimate may ask for a little more than one window early in a bucket.
    const retryAfter = Number(answer.retryAfter);
    assert.ok(retryAfter >= 1 && retryAfter <= 120, `Retry-After ${retryAfter} outside 1..120`);
    assert.match(answer.rateLimit!, /;r=0;/, "a 429 must report nothing remaining");
  }
  // Each admission took one unit: the admitted see every remaining count from 49 down to 0 once.
  const remaining = answers.filter((answer) => answer.status === 200)
    .map((answer) => Number(/;r=(\d+);/.exec(answer.rateLimit!)![1]))
    .sort((a, b) => a - b);
  assert.deepEqual(remaining, Array.from({ length: LIMIT }, (_, i) => i));
}

/** Starts `instances` gateways on `store`, then checks every algorithm's burst. */
async function checkExactness(
  t: Deno.TestContext,
  options: { store: string; instances: number; now: () => Promise<number> },
): Promise<void> {
  const hits = new Map<string, number>();
  await using upstream = startUpstream((request) => {
    const algorithm = new URL(request.url).pathname.split("/")[1]!;
    hits.set(algorithm, (hits.get(algorithm) ?? 0) + 1);
    return new Response("from upstream");
  });
  await using config = await tempConfig(configYaml(options.store, upstream.url));
  const gateways = await spawnGateways(config.file, options.instances);
  try {
    for (const algorithm of ALGORITHMS) {
      await t.step(algorithm, async () => {
        await awayFromWindowEdge(options.now);
        const answers = await burst(gateways, algorithm);
        assertExact(answers, hits.get(algorithm) ?? 0);
      });
    }
  } finally {
    await stopGateways(gateways);
  }
}

redisTest(
  "3 gateways sharing one Redis admit exactly the limit, for every algorithm",
  async (t) => {
    const redis = await RedisServer.start();
    try {
      await checkExactness(t, {
        store: `{ kind: redis, url: "${redis.url}", ${STORE_POLICY} }`,
        instances: 3,
        now: () => redisNow(redis),
      });
    } finally {
      await redis.stop();
    }
  },
);

redisTest(
  "3 gateways sharing a 3-master Redis Cluster admit exactly the limit, for every algorithm",
  async (t) => {
    const cluster = await RedisCluster.start();
    try {
      const nodes = cluster.nodes.map((node) => `"${node}"`).join(", ");
      await checkExactness(t, {
        store: `{ kind: redis-cluster, nodes: [${nodes}], ${STORE_POLICY} }`,
        instances: 3,
        now: () => redisNow(cluster.servers[0]!),
      });
    } finally {
      await cluster[Symbol.asyncDispose]();
    }
  },
);

Deno.test("one gateway on the memory store admits exactly the limit, for every algorithm", async (t) => {
  await checkExactness(t, {
    store: "{ kind: memory }",
    instances: 1,
    now: () => Promise.resolve(Date.now()),
  });
});
