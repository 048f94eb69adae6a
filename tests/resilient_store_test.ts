/** The failure policy around a remote store, with a fake store whose answers the test controls. */
import assert from "node:assert/strict";
import { MemoryStore } from "../src/store/memory_store.ts";
import { ResilientStore } from "../src/store/resilient_store.ts";
import type { Store, WindowDecision, WindowQuery } from "../src/store/store.ts";

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A remote store that answers through a memory store after `delayMs`, or fails while `failing`. */
class FakeRemote implements Store {
  readonly kind = "redis" as const;
  calls = 0;
  delayMs = 0;
  failing = false;
  /** Calls wait until the store is closed, and then fail (as a closed connection fails them). */
  hanging = false;
  #hung: (() => void)[] = [];
  #memory = new MemoryStore();

  async window(query: WindowQuery): Promise<WindowDecision> {
    this.calls++;
    if (this.hanging) {
      await new Promise<void>((resolve) => this.#hung.push(resolve));
      throw new Error("the connection was closed");
    }
    if (this.delayMs > 0) await delay(this.delayMs);
    if (this.failing) throw new Error("connection refused");
    return this.#memory.window(query);
  }
  bucket(): never {
    throw new Error("not used");
  }
  hashGet(): Promise<undefined> {
    return Promise.resolve(undefined);
  }
  ping(): Promise<void> {
    return this.failing ? Promise.reject(new Error("connection refused")) : Promise.resolve();
  }
  async close(): Promise<void> {
    for (const wake of this.#hung.splice(0)) wake();
    await this.#memory.close();
  }
}

const query = (limit: number): WindowQuery => ({
  key: "{sluice:r:c}",
  algorithm: "log",
  limits: [{ limit, windowMs: 60_000 }],
  cost: 1,
});

Deno.test("a call slower than the timeout is answered by the policy at the timeout, and counts as a failure", async () => {
  const remote = new FakeRemote();
  const store = new ResilientStore(remote, { timeoutMs: 30, onFailure: "deny" });
  try {
    remote.delayMs = 300;
    const started = performance.now();
    const decision = await store.window(query(5));
    const waited = performance.now() - started;
    assert.equal(decision.source, "deny");
    assert.equal(decision.allowed, false);
    assert.ok(
      waited < 250,
      `answered by the policy after ${waited.toFixed(0)} ms, not the store's 300`,
    );
    assert.equal(store.health().consecutive_failures, 1);
    assert.match(store.health().last_error!, /did not answer within 30 ms/);
    remote.delayMs = 0;
    await delay(300); // The late answer arrives and is ignored.
    const next = await store.window(query(5));
    assert.equal(next.source, "store");
    assert.equal(store.health().consecutive_failures, 0);
  } finally {
    await store.close();
  }
});

Deno.test("failures in a row mark the store down: the fallback answers without calling it, until the probe sees it again", async () => {
  const remote = new FakeRemote();
  const store = new ResilientStore(remote, {
    timeoutMs: 50,
    onFailure: "local",
    failureThreshold: 3,
    probeIntervalMs: 20,
  });
  try {
    remote.failing = true;
    for (let i = 0; i < 3; i++) assert.equal((await store.window(query(5))).source, "local");
    assert.equal(store.health().state, "down");
    const callsWhenDown = remote.calls;
    for (let i = 0; i < 5; i++) assert.equal((await store.window(query(100))).source, "local");
    assert.equal(remote.calls, callsWhenDown, "no store call while down");
    remote.failing = false;
    for (let i = 0; i < 50 && store.health().state === "down"; i++) await delay(20);
    assert.equal(store.health().state, "up");
    assert.equal((await store.window(query(100))).source, "store");
  } finally {
    await store.close();
  }
});

Deno.test("a client over its limit is answered from memory until its reset, with no store call", async () => {
  const remote = new FakeRemote();
  const store = new ResilientStore(remote, { timeoutMs: 100, onFailure: "allow" });
  try {
    assert.equal((await store.window(query(1))).allowed, true);
    const denied = await store.window(query(1));
    assert.equal(denied.allowed, false);
    assert.equal(denied.source, "store");
    const calls = remote.calls;
    const cached = await store.window(query(1));
    assert.equal(cached.allowed, false);
    assert.equal(cached.source, "cache");
    assert.ok(cached.retryAfterMs > 0 && cached.retryAfterMs <= denied.retryAfterMs);
    assert.equal(remote.calls, calls);
  } finally {
    await store.close();
  }
});

Deno.test("a remembered refusal answers only the same cost: a larger one asks the store", async () => {
  const remote = new FakeRemote();
  const store = new ResilientStore(remote, { timeoutMs: 100, onFailure: "allow" });
  const costing = (cost: number): WindowQuery => ({ ...query(4), cost });
  try {
    for (let i = 0; i < 4; i++) assert.equal((await store.window(costing(1))).allowed, true);
    assert.equal((await store.window(costing(1))).source, "store");
    assert.equal((await store.window(costing(1))).source, "cache");
    const calls = remote.calls;
    const larger = await store.window(costing(3));
    assert.equal(larger.source, "store");
    assert.equal(remote.calls, calls + 1);
  } finally {
    await store.close();
  }
});

Deno.test("closing the store with calls in flight does not mark it down (nor leave its probe running)", async () => {
  const remote = new FakeRemote();
  const store = new ResilientStore(remote, {
    timeoutMs: 5_000,
    onFailure: "allow",
    failureThreshold: 3,
    probeIntervalMs: 20,
  });
  remote.hanging = true;
  const inFlight = [1, 2, 3, 4].map((i) => store.window({ ...query(5), key: `{sluice:r:${i}}` }));
  await delay(10);
  await store.close();
  const decisions = await Promise.all(inFlight);
  assert.deepEqual(decisions.map((decision) => decision.source), [
    "allow",
    "allow",
    "allow",
    "allow",
  ]);
  assert.equal(store.health().state, "up");
  assert.equal(store.health().consecutive_failures, 0);
  // The test's sanitizers fail it if a probe interval was left running.
});

Deno.test("when 100,000 clients are over their limits, the oldest leave the over-limit cache, the newest stay", async () => {
  const remote = new FakeRemote();
  const store = new ResilientStore(remote, { timeoutMs: 1_000, onFailure: "allow" });
  const over = (i: number): WindowQuery => ({ ...query(0), key: `{sluice:r:${i}}` });
  try {
    const clients = 100_000 + 10;
    for (let i = 0; i < clients; i++) assert.equal((await store.window(over(i))).source, "store");
    const calls = remote.calls;
    assert.equal((await store.window(over(clients - 1))).source, "cache", "the newest");
    assert.equal(remote.calls, calls);
    assert.equal((await store.window(over(0))).source, "store", "the oldest was evicted");
    assert.equal(remote.calls, calls + 1);
  } finally {
    await store.close();
  }
});

Deno.test("a call that never answers leaves no timeout ticker running: a program that closed the store exits", async () => {
  const script = `
    import { ResilientStore } from ${
    JSON.stringify(new URL("../src/store/resilient_store.ts", import.meta.url).href)
  };
    const silent = {
      kind: "redis",
      window: () => new Promise(() => {}),
      bucket: () => new Promise(() => {}),
      hashGet: () => new Promise(() => {}),
      ping: () => Promise.reject(new Error("down")),
      close: () => Promise.resolve(),
    };
    const store = new ResilientStore(silent, { timeoutMs: 20, onFailure: "allow" });
    const decision = await store.window({
      key: "{k}", algorithm: "log", limits: [{ limit: 1, windowMs: 1000 }], cost: 1,
    });
    await store.close();
    console.log(decision.source);
  `;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-check", script],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // A live 5 ms ticker would keep the process running for good.
  const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
  const { code, stdout, stderr } = await child.output();
  clearTimeout(timer);
  assert.equal(code, 0, `exit ${code}: ${new TextDecoder().decode(stderr)}`);
  assert.equal(new TextDecoder().decode(stdout).trim(), "allow");
});

/** A bucket of one token a minute. */
const BUCKET = {
  key: "{sluice:r:c}:bucket",
  rate: 1,
  periodMs: 60_000,
  burst: 1,
  maxDelayMs: 0,
};

Deno.test("tokens go back to the store that gave them: a reservation made locally during an outage is not refunded into the shared store", async () => {
  const remoteCosts: number[] = [];
  const shared = new MemoryStore();
  const remote: Store = {
    kind: "redis",
    window: (query) => shared.window(query),
    bucket: (query) => {
      remoteCosts.push(query.cost);
      return shared.bucket(query);
    },
    hashGet: () => Promise.resolve(undefined),
    ping: () => Promise.resolve(),
    close: () => shared.close(),
  };
  const store = new ResilientStore(remote, {
    timeoutMs: 50,
    onFailure: "local",
    startDown: true,
    probeIntervalMs: 50,
  });
  try {
    const local = await store.bucket({ ...BUCKET, cost: 1 });
    assert.equal(local.source, "local");
    for (let i = 0; i < 100 && store.health().state !== "up"; i++) await delay(20);
    assert.equal(store.health().state, "up");
    await store.refundBucket({ ...BUCKET, cost: -1 }, local.source);
    assert.deepEqual(remoteCosts, [], "the shared store got nothing back it never gave");
    assert.equal(
      (await store.local.bucket({ ...BUCKET, cost: 1 })).allowed,
      true,
      "the local one did",
    );
    // A fallback that took nothing gets nothing back.
    await store.refundBucket({ ...BUCKET, cost: -1 }, "allow");
    assert.deepEqual(remoteCosts, []);
    // A token the shared store gave goes back there.
    const shared1 = await store.bucket({ ...BUCKET, cost: 1 });
    assert.equal(shared1.source, "store");
    await store.refundBucket({ ...BUCKET, cost: -1 }, shared1.source);
    assert.deepEqual(remoteCosts, [1, -1]);
  } finally {
    await store.close();
  }
});

Deno.test("a bucket call that answers after its timeout gives its tokens back: the fallback answered instead", async () => {
  const shared = new MemoryStore();
  let slow = true;
  const remote: Store = {
    kind: "redis",
    window: (query) => shared.window(query),
    bucket: async (query) => {
      if (slow && query.cost > 0) await delay(150);
      return shared.bucket(query);
    },
    hashGet: () => Promise.resolve(undefined),
    ping: () => Promise.resolve(),
    close: () => shared.close(),
  };
  const store = new ResilientStore(remote, { timeoutMs: 30, onFailure: "deny" });
  try {
    const refused = await store.bucket({ ...BUCKET, cost: 1 });
    assert.equal(refused.source, "deny");
    await delay(300); // The late answer arrives, and its token goes back.
    slow = false;
    const next = await store.bucket({ ...BUCKET, cost: 1 });
    assert.equal(next.source, "store");
    assert.equal(next.allowed, true, "the token the late call took was given back");
  } finally {
    await store.close();
  }
});

Deno.test("a remembered refusal counts every limit's reset down from when the store decided", async () => {
  let now = 1_700_000_000_000;
  const memory = new MemoryStore({ sweep: false, clock: () => now });
  const remote = {
    kind: "redis" as const,
    window: (query: WindowQuery) => memory.window(query),
    bucket: () => Promise.reject(new Error("not used")),
    hashGet: () => Promise.resolve(undefined),
    ping: () => Promise.resolve(),
    close: () => memory.close(),
  };
  const store = new ResilientStore(remote, {
    timeoutMs: 100,
    onFailure: "allow",
    clock: () => now,
  });
  const limits = [{ limit: 2, windowMs: 10_000 }, { limit: 100, windowMs: 3_600_000 }];
  const ask = () => store.window({ key: "{sluice:r:c}", algorithm: "log", limits, cost: 1 });
  try {
    await ask();
    await ask();
    assert.equal((await ask()).source, "store");
    now += 9_000;
    const cached = await ask();
    assert.equal(cached.source, "cache");
    const fresh = memory.decideWindow({ key: "{sluice:r:c}", algorithm: "log", limits, cost: 0 });
    assert.deepEqual(
      cached.states.map((state) => state.resetMs),
      fresh.states.map((state) => state.resetMs),
    );
    assert.deepEqual(cached.states.map((state) => state.resetMs), [1_000, 3_591_000]);
  } finally {
    await store.close();
  }
});

Deno.test("failures among successes mark the store down when they are a fifth of the calls, not when they are few", async () => {
  // A remote where some keys always fail, as those on a dead master of a cluster do.
  const memory = new MemoryStore({ sweep: false });
  const remote = {
    kind: "redis-cluster" as const,
    window: (query: WindowQuery) =>
      query.key.includes("dead")
        ? Promise.reject(new Error("Connection is closed."))
        : memory.window(query),
    bucket: () => Promise.reject(new Error("not used")),
    hashGet: () => Promise.resolve(undefined),
    ping: () => Promise.reject(new Error("Connection is closed.")),
    close: () => memory.close(),
  };
  const ask = (store: ResilientStore, key: string) =>
    store.window({ ...query(1_000), key: `{sluice:r:${key}}` });
  const third = new ResilientStore(remote, { timeoutMs: 100, onFailure: "local" });
  try {
    for (let i = 0; i < 30; i++) await ask(third, i % 3 === 0 ? `dead-${i}` : `live-${i}`);
    assert.equal(third.health().state, "down");
    assert.equal((await ask(third, "dead-0")).source, "local");
  } finally {
    await third.close();
  }
  const few = new ResilientStore(remote, { timeoutMs: 100, onFailure: "local" });
  try {
    for (let i = 0; i < 200; i++) await ask(few, i % 50 === 0 ? `dead-${i}` : `live-${i}`);
    assert.equal(few.health().state, "up", "4 failures in 200 calls");
    assert.equal((await ask(few, "live-1")).source, "store");
  } finally {
    await few.close();
  }
});
