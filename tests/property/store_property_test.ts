/**
 * Properties of the store algorithms on random traces: the sliding log never
 * admits more than a limit in any window, fixed windows never more than a
 * limit per aligned window, retry-after is exact, and the memory store and
 * Redis (one node, then a 3-master cluster) give the same decisions on the
 * same trace.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { MemoryStore } from "../../src/store/memory_store.ts";
import { RedisStore } from "../../src/store/redis_store.ts";
import type {
  BucketQuery,
  Store,
  WindowAlgorithm,
  WindowDecision,
  WindowLimit,
} from "../../src/store/store.ts";
import { RedisCluster, RedisServer, redisTest } from "../_redis.ts";

const ALGORITHMS: readonly WindowAlgorithm[] = ["log", "counter", "fixed"];

/** One request of a trace. */
interface Arrival {
  time: number;
  cost: number;
}

/** Sorted arrivals from gaps, starting at `start`. */
function arrivalsArb(
  start: fc.Arbitrary<number>,
  maxGap: number,
  cost: { min: number; max: number },
  maxLength: number,
): fc.Arbitrary<Arrival[]> {
  const step = fc.record({ gap: fc.integer({ min: 0, max: maxGap }), cost: fc.integer(cost) });
  return fc.tuple(start, fc.array(step, { minLength: 1, maxLength, size: "max" }))
    .map(([first, steps]) => {
      let time = first;
      return steps.map((s) => ({ time: time += s.gap, cost: s.cost }));
    });
}

/** One or two limits with distinct small windows. */
const smallLimitsArb = fc.uniqueArray(
  fc.record({ limit: fc.integer({ min: 1, max: 6 }), windowMs: fc.integer({ min: 1, max: 50 }) }),
  { minLength: 1, maxLength: 2, selector: (l) => l.windowMs },
);

/** Feeds the trace to one store under one key and returns the decisions. */
async function runWindows(
  store: Store,
  key: string,
  algorithm: WindowAlgorithm,
  limits: readonly WindowLimit[],
  trace: readonly Arrival[],
): Promise<WindowDecision[]> {
  const decisions = [];
  for (const { time, cost } of trace) {
    // A Redis decision's stamp names its admission (for a give-back): no part of the decision.
    const { stamp: _stamp, ...decision } = await store.window({
      key,
      algorithm,
      limits,
      cost,
      now: time,
    });
    decisions.push(decision);
  }
  return decisions;
}

/** The most units admitted in any window (t - windowMs, t] ending at an arrival. */
function maxInSlidingWindow(admitted: readonly Arrival[], windowMs: number): number {
  let most = 0;
  for (const end of admitted) {
    let sum = 0;
    for (const a of admitted) {
      if (a.time > end.time - windowMs && a.time <= end.time) sum += a.cost;
    }
    most = Math.max(most, sum);
  }
  return most;
}

function admittedOf(trace: readonly Arrival[], decisions: readonly WindowDecision[]): Arrival[] {
  return trace.filter((_, i) => decisions[i]!.allowed);
}

Deno.test("property: the log never admits more than a limit in any sliding window", async () => {
  await fc.assert(
    fc.asyncProperty(
      arrivalsArb(fc.integer({ min: 0, max: 1e12 }), 20, { min: 1, max: 3 }, 60),
      smallLimitsArb,
      async (trace, limits) => {
        const store = new MemoryStore({ sweep: false });
        const decisions = await runWindows(store, "{p}", "log", limits, trace);
        const admitted = admittedOf(trace, decisions);
        for (const { limit, windowMs } of limits) {
          const most = maxInSlidingWindow(admitted, windowMs);
          assert.ok(most <= limit, `${most} units in ${windowMs} ms, limit ${limit}`);
        }
        // Not vacuous: a request that fits every limit on an empty key is admitted.
        if (trace[0]!.cost <= Math.min(...limits.map((l) => l.limit))) {
          assert.equal(decisions[0]!.allowed, true);
        }
        await store.close();
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("property: fixed windows never admit more than a limit per aligned window", async () => {
  await fc.assert(
    fc.asyncProperty(
      arrivalsArb(fc.integer({ min: 0, max: 1e12 }), 20, { min: 1, max: 3 }, 60),
      smallLimitsArb,
      async (trace, limits) => {
        const store = new MemoryStore({ sweep: false });
        const decisions = await runWindows(store, "{p}", "fixed", limits, trace);
        await store.close();
        // Admitted exactly when the request fits every limit's current aligned window.
        trace.forEach(({ time, cost }, i) => {
          const fits = limits.every((l) =>
            admittedIn(trace, decisions, i, l.windowMs, Math.floor(time / l.windowMs)) + cost <=
              l.limit
          );
          assert.equal(decisions[i]!.allowed, fits, `arrival ${i} at ${time}`);
        });
        for (const { limit, windowMs } of limits) {
          const perWindow = new Map<number, number>();
          for (const { time, cost } of admittedOf(trace, decisions)) {
            const window = Math.floor(time / windowMs);
            perWindow.set(window, (perWindow.get(window) ?? 0) + cost);
          }
          for (const [window, used] of perWindow) {
            assert.ok(used <= limit, `${used} units in window ${window} of ${windowMs} ms`);
          }
        }
      },
    ),
    { numRuns: 300 },
  );
});

/** Units admitted before arrival `before` in aligned window `window` of `windowMs`. */
function admittedIn(
  trace: readonly Arrival[],
  decisions: readonly WindowDecision[],
  before: number,
  windowMs: number,
  window: number,
): number {
  let sum = 0;
  for (let i = 0; i < before; i++) {
    if (decisions[i]!.allowed && Math.floor(trace[i]!.time / windowMs) === window) {
      sum += trace[i]!.cost;
    }
  }
  return sum;
}

Deno.test("property: retry-after is exact: denied 1 ms before, admitted at it", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom(...ALGORITHMS),
      arrivalsArb(fc.integer({ min: 0, max: 1e12 }), 15, { min: 1, max: 3 }, 40),
      smallLimitsArb,
      async (algorithm, trace, limits) => {
        const store = new MemoryStore({ sweep: false });
        const decisions = await runWindows(store, "{p}", algorithm, limits, trace);
        await store.close();
        const smallest = Math.min(...limits.map((l) => l.limit));
        for (let i = 0; i < trace.length; i++) {
          const { time, cost } = trace[i]!;
          const decision = decisions[i]!;
          if (decision.allowed || cost > smallest) continue;
          // Replay the trace up to this arrival into a fresh store, then ask again later.
          for (const offset of [decision.retryAfterMs - 1, decision.retryAfterMs]) {
            const replay = new MemoryStore({ sweep: false });
            await runWindows(replay, "{p}", algorithm, limits, trace.slice(0, i));
            const later = await replay.window({
              key: "{p}",
              algorithm,
              limits,
              cost,
              now: time + offset,
            });
            assert.equal(
              later.allowed,
              offset === decision.retryAfterMs,
              `${algorithm}: arrival ${i} at ${time} retried after ${offset} of ${decision.retryAfterMs} ms`,
            );
            await replay.close();
          }
        }
      },
    ),
    { numRuns: 150 },
  );
});

// ---- Memory and Redis give the same decisions ----

/**
 * Redis expires keys by its own clock while the trace runs on `now`. Every
 * TTL a script sets must outlast the trace's real run time, so times are
 * whole seconds plus under 500 ms and windows whole seconds: the shortest
 * TTL (the rest of a fixed window) is over 500 ms. The base is aligned to
 * every window.
 */
const BASE = 60_000 * 28_333_333;

/** Sorted arrivals at BASE + whole seconds + under 500 ms. */
function redisTraceArb(minCost: number): fc.Arbitrary<Arrival[]> {
  return fc.array(
    fc.record({
      second: fc.integer({ min: 0, max: 20 }),
      ms: fc.oneof(fc.constantFrom(0, 1, 250, 499), fc.integer({ min: 0, max: 499 })),
      cost: fc.integer({ min: minCost, max: 3 }),
    }),
    { minLength: 1, maxLength: 40, size: "max" },
  ).map((steps) =>
    steps.map((s) => ({ time: BASE + s.second * 1_000 + s.ms, cost: s.cost }))
      .sort((a, b) => a.time - b.time)
  );
}

/** Arrivals at BASE + these offsets, for the examples every run checks. */
function at(...arrivals: [offset: number, cost: number][]): Arrival[] {
  return arrivals.map(([offset, cost]) => ({ time: BASE + offset, cost }));
}

/** One or two limits with windows of 1 to 6 s; two limits may share a window. */
const redisLimitsArb = fc.array(
  fc.record({
    limit: fc.integer({ min: 1, max: 6 }),
    windowMs: fc.integer({ min: 1, max: 6 }).map((s) => s * 1_000),
  }),
  { minLength: 1, maxLength: 2 },
);

/** Token-bucket parameters; costs of -1 give a token back (a waiter that left). */
const bucketArb = fc.record({
  rate: fc.integer({ min: 1, max: 5 }),
  periodMs: fc.oneof(fc.constantFrom(1_000, 1_500, 3_000), fc.integer({ min: 100, max: 5_000 })),
  burst: fc.integer({ min: 1, max: 6 }),
  maxDelayMs: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 4_000 })),
});

let run = 0;

/**
 * Checks that `redis` decides every window algorithm and the bucket as the
 * memory store does. Each property first runs examples that once told them
 * apart: two limits with one window, and token counts whose last bits
 * decide a ceil().
 */
async function assertSameDecisions(redis: RedisStore, numRuns: number): Promise<void> {
  const sharedWindow = [{ limit: 3, windowMs: 4_000 }, { limit: 5, windowMs: 4_000 }];
  for (const algorithm of ALGORITHMS) {
    await fc.assert(
      fc.asyncProperty(redisTraceArb(0), redisLimitsArb, async (trace, limits) => {
        const key = `{sluice:prop:${algorithm}:${run++}}`;
        const memory = new MemoryStore({ sweep: false });
        const expected = await runWindows(memory, key, algorithm, limits, trace);
        const actual = await runWindows(redis, key, algorithm, limits, trace);
        await memory.close();
        for (let i = 0; i < trace.length; i++) {
          assert.deepEqual(
            actual[i],
            expected[i],
            `${algorithm}: arrival ${i} at +${trace[i]!.time - BASE} ms, cost ${trace[i]!.cost}`,
          );
        }
      }),
      { numRuns, examples: [[at([0, 1], [1, 1], [2, 1], [3, 1], [4, 0]), sharedWindow]] },
    );
  }
  await fc.assert(
    fc.asyncProperty(redisTraceArb(-1), bucketArb, async (trace, params) => {
      const key = `{sluice:prop:bucket:${run++}}`;
      const memory = new MemoryStore({ sweep: false });
      for (let i = 0; i < trace.length; i++) {
        const { time, cost } = trace[i]!;
        const query: BucketQuery = { key, ...params, cost, now: time };
        // Reservation numbers start again when a bucket's key expires, which
        // here follows two clocks (the trace's in memory, the real one in
        // Redis): compared apart from them, every decision is the same.
        const { reservation: _memoryCount, ...expected } = await memory.bucket(query);
        const { reservation: _redisCount, ...actual } = await redis.bucket(query);
        assert.deepEqual(
          actual,
          expected,
          `bucket: arrival ${i} at +${time - BASE} ms, cost ${cost}`,
        );
      }
      await memory.close();
    }),
    {
      numRuns,
      examples: [
        [at([0, 1], [83, 1], [83, 0]), { rate: 1, periodMs: 1_500, burst: 1, maxDelayMs: 1_417 }],
        [at([0, 1], [125, 2], [1_000, 0]), { rate: 1, periodMs: 3_000, burst: 3, maxDelayMs: 0 }],
      ],
    },
  );
  // Waiters that hang up before their slot: each store checks its own
  // reservation numbers, and both must give back, or lose, the same slots.
  const hangUps = fc.array(fc.option(fc.double({ min: 0, max: 0.99, noNaN: true })), {
    minLength: 40,
    maxLength: 40,
  });
  await fc.assert(
    fc.asyncProperty(
      redisTraceArb(1),
      bucketArb.map((params) => ({ ...params, maxDelayMs: 4_000 })),
      hangUps,
      async (trace, params, leaves) => {
        const key = `{sluice:prop:refund:${run++}}`;
        const memory = new MemoryStore({ sweep: false });
        type Pending = { time: number; cost: number; memory: number; redis: number; of: number };
        const pending: Pending[] = [];
        const decide = async (what: string, query: BucketQuery, refunds?: Pending) => {
          const expected = await memory.bucket(
            refunds ? { ...query, refundOf: refunds.memory } : query,
          );
          const actual = await redis.bucket(
            refunds ? { ...query, refundOf: refunds.redis } : query,
          );
          const { reservation: memoryNumber, ...expectedDecision } = expected;
          const { reservation: redisNumber, ...actualDecision } = actual;
          assert.deepEqual(actualDecision, expectedDecision, what);
          return { expected: expectedDecision, memoryNumber, redisNumber };
        };
        const flush = async (until: number) => {
          pending.sort((a, b) => a.time - b.time);
          while (pending.length > 0 && pending[0]!.time <= until) {
            const refund = pending.shift()!;
            await decide(
              `refund of arrival ${refund.of} at +${refund.time - BASE} ms`,
              { key, ...params, cost: -refund.cost, now: refund.time },
              refund,
            );
          }
        };
        for (let i = 0; i < trace.length; i++) {
          const { time, cost } = trace[i]!;
          await flush(time);
          const { expected, memoryNumber, redisNumber } = await decide(
            `arrival ${i} at +${time - BASE} ms, cost ${cost}`,
            { key, ...params, cost, now: time },
          );
          const leave = leaves[i];
          if (expected.allowed && expected.delayMs > 0 && leave !== null && leave !== undefined) {
            pending.push({
              time: time + Math.floor(leave * expected.delayMs),
              cost,
              memory: memoryNumber,
              redis: redisNumber,
              of: i,
            });
          }
        }
        await flush(Infinity);
        await memory.close();
      },
    ),
    { numRuns },
  );
}

redisTest("property: memory, Redis and Redis Cluster give the same decisions", async (t) => {
  const server = await RedisServer.start();
  let cluster: RedisCluster | undefined;
  const stores: RedisStore[] = [];
  try {
    const single = await RedisStore.connect({ url: server.url });
    stores.push(single);
    await t.step("one Redis node", () => assertSameDecisions(single, 50));
    cluster = await RedisCluster.start();
    const clustered = await RedisStore.connect({ nodes: cluster.nodes });
    stores.push(clustered);
    await t.step("a 3-master Redis Cluster", () => assertSameDecisions(clustered, 15));
  } finally {
    await Promise.all(stores.map((store) => store.close()));
    await cluster?.[Symbol.asyncDispose]();
    await server.stop();
  }
});
