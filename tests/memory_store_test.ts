/**
 * The memory store, decision by decision, with an explicit `now`: each window
 * algorithm's quota, retry-after, remaining and reset; several limits decided
 * all-or-nothing; cost; the shaping token bucket; and the sweep that keeps
 * memory bounded.
 */
import assert from "node:assert/strict";
import { MemoryStore } from "../src/store/memory_store.ts";
import type {
  BucketQuery,
  WindowAlgorithm,
  WindowDecision,
  WindowLimit,
  WindowQuery,
} from "../src/store/store.ts";

const ALGORITHMS: readonly WindowAlgorithm[] = ["log", "counter", "fixed"];
const KEY = "{sluice:r:c}";
/** A time far from 0, aligned to every window used here (so a fixed window starts at T0). */
const T0 = 1_700_000_000_000;

function newStore(clock?: () => number): MemoryStore {
  return new MemoryStore({ sweep: false, clock });
}

function windowQuery(
  algorithm: WindowAlgorithm,
  limits: readonly WindowLimit[],
  now: number,
  cost = 1,
): WindowQuery {
  return { key: KEY, algorithm, limits, cost, now };
}

/** Asserts a denied decision's retry-after is exact: one ms earlier still fails, then it passes. */
async function assertRetryExact(
  store: MemoryStore,
  query: WindowQuery,
  denied: WindowDecision,
): Promise<void> {
  assert.equal(denied.allowed, false);
  assert.ok(denied.retryAfterMs >= 1, `retryAfterMs ${denied.retryAfterMs}`);
  const at = query.now! + denied.retryAfterMs;
  const early = await store.window({ ...query, now: at - 1 });
  assert.equal(early.allowed, false, `still denied 1 ms before the retry-after (${at - 1})`);
  const onTime = await store.window({ ...query, now: at });
  assert.equal(onTime.allowed, true, `allowed at now + retryAfterMs (${at})`);
}

for (const algorithm of ALGORITHMS) {
  Deno.test(`${algorithm}: exactly the limit is admitted, then requests are denied`, async () => {
    const store = newStore();
    const limits = [{ limit: 5, windowMs: 10_000 }];
    for (let i = 0; i < 5; i++) {
      const decision = await store.window(windowQuery(algorithm, limits, T0 + 100 + i));
      assert.equal(decision.allowed, true, `request ${i + 1}`);
      assert.equal(decision.violated, -1);
      assert.equal(decision.retryAfterMs, 0);
      assert.equal(decision.states[0]!.remaining, 4 - i);
    }
    for (let i = 0; i < 3; i++) {
      const decision = await store.window(windowQuery(algorithm, limits, T0 + 200 + i));
      assert.equal(decision.allowed, false, `request ${6 + i}`);
      assert.equal(decision.violated, 0);
      assert.equal(decision.states[0]!.remaining, 0);
    }
    await store.close();
  });

  Deno.test(`${algorithm}: a request costing more than the limit is always denied`, async () => {
    const store = newStore();
    const limits = [{ limit: 3, windowMs: 10_000 }];
    const decision = await store.window(windowQuery(algorithm, limits, T0 + 5, 4));
    assert.equal(decision.allowed, false);
    assert.equal(decision.violated, 0);
    assert.equal(decision.retryAfterMs, 10_000);
    assert.equal(decision.states[0]!.remaining, 3, "nothing was taken");
    const later = await store.window(windowQuery(algorithm, limits, T0 + 5 + 10_000 * 5, 4));
    assert.equal(later.allowed, false, "not even on an idle key, much later");
    assert.equal(store.size, 0, "a denied request stores nothing");
    await store.close();
  });

  Deno.test(`${algorithm}: cost takes several units at once`, async () => {
    const store = newStore();
    const limits = [{ limit: 10, windowMs: 10_000 }];
    const at = (ms: number, cost: number) =>
      store.window(windowQuery(algorithm, limits, T0 + ms, cost));
    assert.equal((await at(1, 4)).states[0]!.remaining, 6);
    assert.equal((await at(2, 4)).states[0]!.remaining, 2);
    const tooMuch = await at(3, 3);
    assert.equal(tooMuch.allowed, false, "4 + 4 + 3 > 10");
    assert.equal(tooMuch.states[0]!.remaining, 2, "the denied request took nothing");
    const fits = await at(4, 2);
    assert.equal(fits.allowed, true, "4 + 4 + 2 = 10");
    assert.equal(fits.states[0]!.remaining, 0);
    assert.equal((await at(5, 1)).allowed, false);
    await store.close();
  });

  Deno.test(`${algorithm}: cost 0 reads the state without taking from it`, async () => {
    const store = newStore();
    const limits = [{ limit: 3, windowMs: 10_000 }];
    const empty = await store.window(windowQuery(algorithm, limits, T0 + 1, 0));
    assert.equal(empty.allowed, true);
    assert.equal(empty.states[0]!.remaining, 3);
    assert.equal(store.size, 0, "a read of an unknown key stores nothing");
    await store.window(windowQuery(algorithm, limits, T0 + 2));
    for (let i = 0; i < 10; i++) {
      const read = await store.window(windowQuery(algorithm, limits, T0 + 3 + i, 0));
      assert.equal(read.allowed, true);
      assert.equal(read.states[0]!.remaining, 2);
    }
    assert.equal((await store.window(windowQuery(algorithm, limits, T0 + 20))).allowed, true);
    assert.equal((await store.window(windowQuery(algorithm, limits, T0 + 21))).allowed, true);
    assert.equal((await store.window(windowQuery(algorithm, limits, T0 + 22))).allowed, false);
    const full = await store.window(windowQuery(algorithm, limits, T0 + 23, 0));
    assert.equal(full.allowed, true, "a read passes even when the quota is used up");
    assert.equal(full.states[0]!.remaining, 0);
    await store.close();
  });

  Deno.test(`${algorithm}: a request denied by one limit takes from none`, async () => {
    const store = newStore();
    // The first limit refuses: the second (longer) limit keeps its remaining.
    const limits = [{ limit: 2, windowMs: 1_000 }, { limit: 5, windowMs: 10_000 }];
    const at = (ms: number, cost = 1) =>
      store.window(windowQuery(algorithm, limits, T0 + ms, cost));
    await at(10);
    const second = await at(20);
    assert.equal(second.allowed, true);
    assert.deepEqual(second.states.map((s) => s.remaining), [0, 3]);
    for (let i = 0; i < 4; i++) {
      const denied = await at(30 + i);
      assert.equal(denied.allowed, false);
      assert.equal(denied.violated, 0);
      assert.deepEqual(denied.states.map((s) => s.remaining), [0, 3], "the long limit kept 3");
    }
    assert.equal((await at(40, 0)).states[1]!.remaining, 3, "a read agrees");

    // The second limit refuses: the first keeps its remaining.
    const other = newStore();
    const limits2 = [{ limit: 5, windowMs: 1_000 }, { limit: 2, windowMs: 10_000 }];
    const at2 = (ms: number, cost = 1) =>
      other.window(windowQuery(algorithm, limits2, T0 + ms, cost));
    await at2(10);
    await at2(20);
    const denied = await at2(30);
    assert.equal(denied.allowed, false);
    assert.equal(denied.violated, 1);
    assert.deepEqual(denied.states.map((s) => s.remaining), [3, 0]);
    const read = await at2(40, 0);
    assert.deepEqual(read.states.map((s) => s.remaining), [3, 0], "the short limit kept 3");

    // Both refuse: the one that sets the wait (the 10 s limit) is named.
    const both = await at2(50, 4);
    assert.equal(both.allowed, false);
    assert.equal(both.violated, 1);
    assert.ok(both.retryAfterMs > 1_000, `retry after ${both.retryAfterMs} ms`);
    await store.close();
    await other.close();
  });
}

for (const algorithm of ALGORITHMS) {
  Deno.test(`${algorithm}: limits that share a window count a request once`, async () => {
    // `limits: [3/10s, 5/10s]` keeps one counter for the 10 s window.
    const store = newStore();
    const limits = [{ limit: 3, windowMs: 10_000 }, { limit: 5, windowMs: 10_000 }];
    for (let i = 0; i < 3; i++) {
      const decision = await store.window(windowQuery(algorithm, limits, T0 + 100 + i));
      assert.equal(decision.allowed, true, `request ${i + 1} of 3`);
      assert.deepEqual(decision.states.map((s) => s.remaining), [2 - i, 4 - i]);
    }
    const denied = await store.window(windowQuery(algorithm, limits, T0 + 200));
    assert.equal(denied.allowed, false);
    assert.equal(denied.violated, 0);
    assert.deepEqual(denied.states.map((s) => s.remaining), [0, 2]);
    await store.close();
  });
}

Deno.test("log: remaining and reset follow the oldest admitted unit", async () => {
  const store = newStore();
  const W = 10_000;
  const limits = [{ limit: 3, windowMs: W }];
  const at = (ms: number, cost = 1) => store.window(windowQuery("log", limits, T0 + ms, cost));
  const first = await at(1_000);
  assert.deepEqual(first.states[0], { limit: 3, windowMs: W, remaining: 2, resetMs: W });
  const second = await at(4_000);
  assert.equal(second.states[0]!.resetMs, 1_000 + W - 4_000);
  await at(6_000);
  const denied = await at(8_000);
  assert.equal(denied.allowed, false);
  assert.equal(denied.retryAfterMs, 1_000 + W - 8_000, "until the oldest unit leaves");
  assert.equal(denied.states[0]!.resetMs, 1_000 + W - 8_000);
  // At 1_000 + W the first unit is out of the window (t - W, t]: one unit back.
  const back = await at(1_000 + W, 0);
  assert.equal(back.states[0]!.remaining, 1);
  assert.equal(back.states[0]!.resetMs, 4_000 + W - (1_000 + W));
  const idle = await at(6_000 + W, 0);
  assert.deepEqual(idle.states[0], { limit: 3, windowMs: W, remaining: 3, resetMs: 0 });
  await store.close();
});

Deno.test("log: retry-after is exact, with one limit and with several", async () => {
  const store = newStore();
  const one = [{ limit: 3, windowMs: 10_000 }];
  for (const ms of [1_000, 2_500, 2_500]) {
    await store.window(windowQuery("log", one, T0 + ms));
  }
  const query = windowQuery("log", one, T0 + 4_000);
  await assertRetryExact(store, query, await store.window(query));

  // A cost-2 request must wait for the two oldest units.
  const costly = newStore();
  for (const ms of [1_000, 2_000, 3_000]) {
    await costly.window(windowQuery("log", one, T0 + ms));
  }
  const costlyQuery = windowQuery("log", one, T0 + 4_000, 2);
  const costlyDenied = await costly.window(costlyQuery);
  assert.equal(costlyDenied.retryAfterMs, 2_000 + 10_000 - 4_000);
  await assertRetryExact(costly, costlyQuery, costlyDenied);

  // Two limits: the answer is the later of the two waits.
  const multi = newStore();
  const two = [{ limit: 2, windowMs: 1_000 }, { limit: 4, windowMs: 10_000 }];
  for (const ms of [0, 100, 2_000, 2_100]) {
    assert.equal((await multi.window(windowQuery("log", two, T0 + ms))).allowed, true);
  }
  const multiQuery = windowQuery("log", two, T0 + 2_200);
  const multiDenied = await multi.window(multiQuery);
  // Both refuse; the 10 s limit sets the wait, so it is the one named.
  assert.equal(multiDenied.violated, 1);
  assert.equal(multiDenied.retryAfterMs, Math.max(2_000 + 1_000, 0 + 10_000) - 2_200);
  await assertRetryExact(multi, multiQuery, multiDenied);
  await Promise.all([store.close(), costly.close(), multi.close()]);
});

Deno.test("fixed: windows are aligned to the clock; remaining, reset and retry", async () => {
  const store = newStore();
  const W = 1_000;
  const limits = [{ limit: 2, windowMs: W }];
  const at = (ms: number, cost = 1) => store.window(windowQuery("fixed", limits, T0 + ms, cost));
  const first = await at(300);
  assert.deepEqual(first.states[0], { limit: 2, windowMs: W, remaining: 1, resetMs: 700 });
  await at(999);
  const query = windowQuery("fixed", limits, T0 + 999);
  const denied = await store.window(query);
  assert.equal(denied.retryAfterMs, 1, "the next window starts in 1 ms");
  assert.equal(denied.states[0]!.resetMs, 1);
  await assertRetryExact(store, query, denied);
  // The new window at T0 + 1000 admitted one; a burst across the boundary reaches 2 + 2.
  assert.equal((await at(1_001)).allowed, true);
  assert.equal((await at(1_002)).allowed, false);
  const midQuery = windowQuery("fixed", limits, T0 + 1_400);
  const mid = await store.window(midQuery);
  assert.equal(mid.retryAfterMs, 600);
  await assertRetryExact(store, midQuery, mid);
  await store.close();
});

/** The counter's rule, written out: allowed when prev * (W - r) + (curr + cost) * W <= limit * W. */
function counterAllows(
  prev: number,
  curr: number,
  cost: number,
  limit: number,
  windowMs: number,
  r: number,
): boolean {
  return prev * (windowMs - r) + (curr + cost) * windowMs <= limit * windowMs;
}

Deno.test("counter: remaining and reset come from the weighted two-bucket estimate", async () => {
  const store = newStore();
  const W = 1_000;
  const L = 10;
  const limits = [{ limit: L, windowMs: W }];
  const at = (ms: number, cost = 1) => store.window(windowQuery("counter", limits, T0 + ms, cost));
  // Eight units in bucket 0.
  assert.deepEqual((await at(100, 8)).states[0], {
    limit: L,
    windowMs: W,
    remaining: 2,
    resetMs: 900,
  });
  // 300 ms into bucket 1 the previous bucket weighs 8 * 700 / 1000 = 5.6.
  const read = await at(1_300, 0);
  assert.deepEqual(read.states[0], {
    limit: L,
    windowMs: W,
    remaining: Math.floor((L * W - 8 * 700) / W),
    resetMs: 700,
  });
  const taken = await at(1_300, 3);
  assert.equal(taken.allowed, true, "5.6 + 3 <= 10");
  assert.equal(taken.states[0]!.remaining, Math.floor((L * W - 8 * 700 - 3 * W) / W));
  // Two buckets later nothing is left of either.
  const idle = await at(3_000, 0);
  assert.deepEqual(idle.states[0], { limit: L, windowMs: W, remaining: L, resetMs: W });
  await store.close();
});

Deno.test("counter: admits exactly what its estimate allows, and retry-after is exact", async () => {
  const W = 1_000;
  const L = 10;
  const limits = [{ limit: L, windowMs: W }];
  // Case 1: the current bucket has room, the previous bucket's weight must shrink.
  {
    const store = newStore();
    await store.window(windowQuery("counter", limits, T0 + 500, 10));
    let curr = 0;
    const r = 250;
    for (;;) {
      const decision = await store.window(windowQuery("counter", limits, T0 + W + r));
      assert.equal(decision.allowed, counterAllows(10, curr, 1, L, W, r), `curr ${curr}`);
      if (!decision.allowed) break;
      curr++;
    }
    assert.ok(curr + 1 <= L, "denied by the previous bucket's weight");
    const query = windowQuery("counter", limits, T0 + W + r);
    const denied = await store.window(query);
    // The smallest wait after which the rule holds, found by trying every ms.
    let wait = 1;
    while (!counterAllows(10, curr, 1, L, W, r + wait)) wait++;
    assert.equal(denied.retryAfterMs, wait);
    await assertRetryExact(store, query, denied);
    await store.close();
  }
  // Case 2: the current bucket alone is over; the wait runs into the next bucket.
  {
    const store = newStore();
    await store.window(windowQuery("counter", limits, T0 + 100, 9));
    const query = windowQuery("counter", limits, T0 + 600, 2);
    const denied = await store.window(query);
    assert.equal(denied.allowed, false);
    // Next bucket: prev = 9, curr = 0, need 9 * (W - r) + 2 * W <= 10 * W.
    let r = 0;
    while (!counterAllows(9, 0, 2, L, W, r)) r++;
    assert.equal(denied.retryAfterMs, W - 600 + r);
    await assertRetryExact(store, query, denied);
    await store.close();
  }
  // Two limits: the later of the two waits.
  {
    const store = newStore();
    const two = [{ limit: 2, windowMs: 1_000 }, { limit: 3, windowMs: 5_000 }];
    for (const ms of [100, 200, 1_800]) {
      assert.equal((await store.window(windowQuery("counter", two, T0 + ms))).allowed, true);
    }
    // Both refuse: the 1 s limit for 150 ms, the 5 s limit into its next bucket.
    const query = windowQuery("counter", two, T0 + 1_850);
    const denied = await store.window(query);
    assert.equal(denied.allowed, false);
    assert.equal(denied.violated, 1, "the limit that sets the wait is named");
    let r = 0;
    while (!counterAllows(3, 0, 1, 3, 5_000, r)) r++;
    assert.equal(denied.retryAfterMs, 5_000 - 1_850 + r, "the later of the two waits");
    await assertRetryExact(store, query, denied);
    await store.close();
  }
});

function bucketQuery(now: number, overrides: Partial<BucketQuery> = {}): BucketQuery {
  return {
    key: `${KEY}:bucket`,
    rate: 1,
    periodMs: 1_000,
    burst: 3,
    cost: 1,
    maxDelayMs: 0,
    now,
    ...overrides,
  };
}

Deno.test("bucket: a full bucket admits its burst at once, then refuses", async () => {
  const store = newStore();
  for (let i = 0; i < 3; i++) {
    const decision = await store.bucket(bucketQuery(T0));
    assert.equal(decision.allowed, true);
    assert.equal(decision.delayMs, 0);
    assert.equal(decision.remaining, 2 - i);
    assert.equal(decision.resetMs, (i + 1) * 1_000, "one period per missing token");
  }
  const refused = await store.bucket(bucketQuery(T0));
  assert.equal(refused.allowed, false);
  assert.equal(refused.retryAfterMs, 1_000);
  assert.equal(refused.remaining, 0);
  const read = await store.bucket(bucketQuery(T0 + 500, { cost: 0 }));
  assert.equal(read.allowed, true);
  assert.equal(read.remaining, 0, "half a token");
  assert.equal(read.resetMs, 2_500);
  assert.equal((await store.bucket(bucketQuery(T0 + 500))).allowed, false, "the read took none");
  await store.close();
});

Deno.test("bucket: tokens refill at the rate, never beyond the burst", async () => {
  const store = newStore();
  for (let i = 0; i < 3; i++) await store.bucket(bucketQuery(T0));
  assert.equal((await store.bucket(bucketQuery(T0 + 999))).allowed, false, "0.999 tokens");
  assert.equal((await store.bucket(bucketQuery(T0 + 1_000))).allowed, true, "1 token");
  assert.equal((await store.bucket(bucketQuery(T0 + 1_000))).allowed, false);
  // A long idle time refills to the burst and no further.
  const idle = T0 + 1_000_000;
  assert.equal((await store.bucket(bucketQuery(idle, { cost: 0 }))).remaining, 3);
  for (let i = 0; i < 3; i++) {
    assert.equal((await store.bucket(bucketQuery(idle))).allowed, true);
  }
  assert.equal((await store.bucket(bucketQuery(idle))).allowed, false);
  // A request costing more than the burst can never be served.
  const huge = await store.bucket(bucketQuery(idle + 100_000, { cost: 4, maxDelayMs: 60_000 }));
  assert.equal(huge.allowed, false);
  assert.equal(huge.retryAfterMs, 1_000);
  await store.close();
});

Deno.test("bucket: waits are reserved in order up to max delay; a refusal reserves nothing", async () => {
  const store = newStore();
  const shaped = (now: number, cost = 1) =>
    store.bucket(bucketQuery(now, { burst: 2, maxDelayMs: 3_000, cost }));
  assert.equal((await shaped(T0)).delayMs, 0);
  assert.equal((await shaped(T0)).delayMs, 0);
  const delays = [];
  for (let i = 0; i < 3; i++) {
    const decision = await shaped(T0);
    assert.equal(decision.allowed, true);
    assert.equal(decision.remaining, 0);
    delays.push(decision.delayMs);
  }
  assert.deepEqual(delays, [1_000, 2_000, 3_000], "each waiter waits for the next free token");
  assert.equal((await shaped(T0, 0)).resetMs, 5_000, "three reserved plus two to fill");
  for (let i = 0; i < 3; i++) {
    const refused = await shaped(T0);
    assert.equal(refused.allowed, false, "a fourth wait would be 4 s > max delay 3 s");
    assert.equal(refused.delayMs, 0);
    assert.equal(refused.retryAfterMs, 4_000 - 3_000);
  }
  // Had the refusals reserved anything, these would wait longer than 3 s.
  assert.equal((await shaped(T0 + 999)).allowed, false);
  const next = await shaped(T0 + 1_000);
  assert.equal(next.allowed, true);
  assert.equal(next.delayMs, 3_000, "served at T0 + 4 s, after the three earlier waiters");
  // A cost-2 request waits for two tokens after every reservation.
  const pair = await shaped(T0 + 3_000, 2);
  assert.equal(pair.allowed, true);
  assert.equal(pair.delayMs, 3_000, "its second token is free at T0 + 6 s");
  await store.close();
});

Deno.test("bucket: a token given back (cost -1) shortens the next wait, up to the burst", async () => {
  const store = newStore();
  const shaped = (now: number, cost = 1) =>
    store.bucket(bucketQuery(now, { burst: 2, maxDelayMs: 3_000, cost }));
  for (let i = 0; i < 5; i++) await shaped(T0);
  assert.equal((await shaped(T0)).allowed, false, "three waiters: the queue is full");
  const back = await shaped(T0, -1);
  assert.equal(back.allowed, true);
  assert.equal(back.resetMs, 4_000, "two reserved plus two to fill");
  const next = await shaped(T0);
  assert.equal(next.allowed, true, "the waiter that left made room");
  assert.equal(next.delayMs, 3_000);
  // On a full bucket a token given back is lost: the bucket holds at most its burst.
  const idle = T0 + 100_000;
  assert.equal((await shaped(idle, -1)).remaining, 2);
  await shaped(idle);
  await shaped(idle);
  assert.equal((await shaped(idle)).delayMs, 1_000, "two tokens, not three");
  await store.close();
});

Deno.test("sweep drops expired entries of every kind, and only those", async () => {
  let now = T0;
  const store = newStore(() => now);
  const limits = [{ limit: 5, windowMs: 1_000 }, { limit: 50, windowMs: 10_000 }];
  const clients = 40;
  for (let i = 0; i < clients; i++) {
    for (const algorithm of ALGORITHMS) {
      await store.window({ key: `{sluice:r:${i}}`, algorithm, limits, cost: 1 });
    }
    await store.bucket({
      key: `{sluice:r:${i}}:bucket`,
      rate: 10,
      periodMs: 1_000,
      burst: 10,
      cost: 3,
      maxDelayMs: 0,
    });
  }
  // Per client: 2 log + 2 counter + 2 fixed entries + 1 bucket.
  const entries = clients * 7;
  assert.equal(store.size, entries);
  assert.equal(store.sweep(), 0, "nothing has expired yet");
  assert.equal(store.size, entries);

  // After 1 s the 1 s log and fixed-window entries are over: only they go.
  now = T0 + 1_000;
  assert.equal(store.sweep(), 2 * clients);
  assert.equal(store.size, entries - 2 * clients);

  // Sweeping a slice at a time goes on where the last slice stopped.
  now = T0 + 60_000;
  const live = store.size;
  let dropped = 0;
  for (let i = 0; i < 10 && store.size > 0; i++) {
    const slice = store.sweep(50);
    assert.ok(slice <= 50, `dropped ${slice} in a slice of 50`);
    dropped += slice;
  }
  assert.equal(dropped, live);
  assert.equal(store.size, 0, "every window has passed: the store is empty");
  await store.close();
});

Deno.test("expired entries stay bounded however fast new clients come (the sweep keeps pace)", async () => {
  let now = T0;
  const store = newStore(() => now);
  const limits = [{ limit: 5, windowMs: 1_000 }];
  // 40,000 new clients a second, twice the background sweep's 20,000 a second,
  // for 20 s: about 40,000 are live at any time.
  let client = 0;
  for (let second = 0; second < 20; second++) {
    for (let i = 0; i < 40_000; i++) {
      now = T0 + second * 1_000 + Math.floor(i / 40);
      store.decideWindow({ key: `{sluice:r:${client++}}`, algorithm: "fixed", limits, cost: 1 });
    }
    store.sweep(); // what the timer does once a second
  }
  assert.ok(store.size <= 3 * 40_000, `${store.size} entries for about 40,000 live clients`);
  await store.close();
});

for (const algorithm of ALGORITHMS) {
  Deno.test(`${algorithm}: with none left, the reset is when the next request passes`, async () => {
    // A counter's old bucket still weighs after its own bucket ends: there the
    // quota has not grown yet, so the reset must look past it.
    const W = 4_000;
    const limits = [{ limit: 3, windowMs: W }];
    const store = newStore();
    // Start at T0 aligned down to a bucket, so the counter's buckets are known.
    const start = Math.floor(T0 / W) * W;
    // Two units late in one bucket, the third early in the next (a fixed
    // window would start afresh there: all three go in one bucket for it).
    const [a, b, c] = algorithm === "fixed" ? [1_000, 1_100, 1_200] : [3_000, 3_100, 4_200];
    for (const ms of [a, b]) await store.window(windowQuery(algorithm, limits, start + ms));
    const last = await store.window(windowQuery(algorithm, limits, start + c));
    assert.equal(last.allowed, true);
    assert.equal(last.states[0]!.remaining, 0);
    const deniedAt = c + 100;
    const denied = await store.window(windowQuery(algorithm, limits, start + deniedAt));
    assert.equal(denied.allowed, false);
    assert.equal(denied.states[0]!.resetMs, denied.retryAfterMs, "reset = retry after, none left");
    const passAt = deniedAt + denied.retryAfterMs;
    assert.equal(last.states[0]!.resetMs, passAt - c, "the last admitted request saw it too");
    await assertRetryExact(store, windowQuery(algorithm, limits, start + deniedAt), denied);
    await store.close();
  });
}
