/** The token-bucket plugin's leases (src/plugins/token_bucket.ts), on the memory store. */
import assert from "node:assert/strict";
import tokenBucket from "../src/plugins/token_bucket.ts";
import { MemoryStore } from "../src/store/memory_store.ts";
import { ResilientStore } from "../src/store/resilient_store.ts";
import type { Handler } from "../src/plugin.ts";
import { createHandler, requestContext } from "../src/testing.ts";

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const ok = () => Promise.resolve(new Response("ok"));

Deno.test("a leased bucket never lets more through than burst + rate x time, even as it refills", async () => {
  // 1000/s with a burst of 40: a lease holds 10 tokens for up to 50 ms.
  const handler = await createHandler(tokenBucket, { rate: "1000/s", burst: 40 });
  const admitted: number[] = [];
  const call = () =>
    handler(requestContext(new Request("http://gw/x")), () => {
      admitted.push(performance.now());
      return ok();
    });
  await call(); // takes a lease; the bucket refills to full while it is held
  await delay(35);
  admitted.length = 0;
  const started = performance.now();
  const answers = await Promise.all(Array.from({ length: 100 }, call));
  const elapsed = (admitted.at(-1) ?? started) - started;
  const passed = answers.filter((answer) => answer.status === 200).length;
  const bound = 40 + Math.ceil(elapsed * 1) + 1;
  assert.ok(passed <= bound, `${passed} passed in ${elapsed.toFixed(1)} ms; at most ${bound}`);
});

Deno.test("instances that see few requests stop leasing, so they do not starve each other", async () => {
  const store = new ResilientStore(new MemoryStore({ sweep: false }), {
    timeoutMs: 100,
    onFailure: "local",
  });
  try {
    // 16 instances share one bucket of 1000/s; 700 requests/s go round-robin over them.
    const handlers: Handler[] = [];
    for (let i = 0; i < 16; i++) {
      handlers.push(
        await createHandler(tokenBucket, { rate: "1000/s", burst: 40 }, { services: { store } }),
      );
    }
    let allowed = 0;
    let refused = 0;
    let next = 0;
    const end = performance.now() + 1_500;
    while (performance.now() < end) {
      const batch = Array.from(
        { length: 7 },
        () => handlers[next++ % handlers.length]!(requestContext(new Request("http://gw/x")), ok),
      );
      for (const answer of await Promise.all(batch)) answer.status === 200 ? allowed++ : refused++;
      await delay(10);
    }
    assert.ok(
      refused <= (allowed + refused) * 0.1,
      `${refused} of ${allowed + refused} refused at 70% of the rate`,
    );
  } finally {
    await store.close();
  }
});
