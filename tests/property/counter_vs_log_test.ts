/**
 * The sliding counter against the exact sliding log on a bursty, seeded
 * trace: bursts straddle the bucket boundaries, where the counter's two-bucket
 * estimate errs most. The log never admits more than the limit in any
 * sliding window; the counter follows its estimate rule exactly and stays
 * under twice the limit. Prints how often the two disagree.
 */
import assert from "node:assert/strict";
import { MemoryStore } from "../../src/store/memory_store.ts";
import type { WindowAlgorithm } from "../../src/store/store.ts";

const LIMIT = 10;
const WINDOW_MS = 1_000;
const BUCKETS = 60;
const SEED = 20_240_601;
/** Aligned to the window, so bucket k starts at T0 + k * WINDOW_MS. */
const T0 = 1_700_000_000_000;

/** mulberry32: a small seeded PRNG, so the trace is the same on every run. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/** Bursts of 5 to 24 requests within 40 ms of each bucket boundary, over a light background. */
function burstyTrace(seed: number): number[] {
  const random = prng(seed);
  const times: number[] = [];
  for (let k = 1; k < BUCKETS; k++) {
    const boundary = T0 + k * WINDOW_MS;
    const burst = 5 + Math.floor(random() * 20);
    for (let i = 0; i < burst; i++) times.push(boundary - 40 + Math.floor(random() * 80));
    const background = Math.floor(random() * 4);
    for (let i = 0; i < background; i++) times.push(boundary + Math.floor(random() * WINDOW_MS));
  }
  return times.sort((a, b) => a - b);
}

async function decide(algorithm: WindowAlgorithm, times: readonly number[]): Promise<boolean[]> {
  const store = new MemoryStore({ sweep: false });
  const limits = [{ limit: LIMIT, windowMs: WINDOW_MS }];
  const allowed = [];
  for (const now of times) {
    allowed.push((await store.window({ key: "{c}", algorithm, limits, cost: 1, now })).allowed);
  }
  await store.close();
  return allowed;
}

/** The most admitted in any window (t - W, t] ending at an admitted request. */
function maxInSlidingWindow(times: readonly number[], allowed: readonly boolean[]): number {
  const admitted = times.filter((_, i) => allowed[i]);
  let most = 0;
  let start = 0;
  for (let end = 0; end < admitted.length; end++) {
    while (admitted[start]! <= admitted[end]! - WINDOW_MS) start++;
    most = Math.max(most, end - start + 1);
  }
  return most;
}

Deno.test("counter vs log on bursts at bucket boundaries", async () => {
  const times = burstyTrace(SEED);
  const log = await decide("log", times);
  const counter = await decide("counter", times);

  // The counter decides by its estimate, recomputed here from what it admitted.
  const perBucket = new Map<number, number>();
  times.forEach((now, i) => {
    const bucket = Math.floor(now / WINDOW_MS);
    const r = now - bucket * WINDOW_MS;
    const prev = perBucket.get(bucket - 1) ?? 0;
    const curr = perBucket.get(bucket) ?? 0;
    const expected = prev * (WINDOW_MS - r) + (curr + 1) * WINDOW_MS <= LIMIT * WINDOW_MS;
    assert.equal(
      counter[i],
      expected,
      `request ${i} at +${now - T0} ms: prev ${prev}, curr ${curr}`,
    );
    if (expected) perBucket.set(bucket, curr + 1);
  });

  const differ = times.filter((_, i) => log[i] !== counter[i]).length;
  const logMost = maxInSlidingWindow(times, log);
  const counterMost = maxInSlidingWindow(times, counter);
  const percent = (100 * differ / times.length).toFixed(1);
  console.log(
    `counter vs log: ${differ} of ${times.length} decisions differ (${percent}%); ` +
      `counter admitted at most ${counterMost} in any sliding window (limit ${LIMIT})`,
  );
  const counterOnly = times.filter((_, i) => counter[i] && !log[i]).length;
  const logOnly = times.filter((_, i) => log[i] && !counter[i]).length;
  console.log(
    `  admitted by the counter only: ${counterOnly}; by the log only: ${logOnly}; ` +
      `log admitted at most ${logMost} in any sliding window`,
  );

  assert.ok(logMost <= LIMIT, `the log admitted ${logMost} in one window, limit ${LIMIT}`);
  // True count <= curr + prev * r / W <= L + prev * (W - 1) / W < 2L.
  assert.ok(counterMost < 2 * LIMIT, `the counter admitted ${counterMost}, bound ${2 * LIMIT}`);
  // The trace is meant to show the estimate's error; a trace where they agree tests nothing.
  assert.ok(differ > 0, "the bursty trace should make the counter and the log disagree");
});
