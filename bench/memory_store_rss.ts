/**
 * The memory store at many distinct clients: each round, CLIENTS new clients
 * (default 1,000,000) make one request each, then their windows pass and the
 * background sweep runs. Memory follows the clients of one window, never the
 * total seen: heap and RSS stay flat from round to round.
 * `deno task bench:memory` (CLIENTS=N, ROUNDS=N to change).
 */
import { MemoryStore } from "../src/store/memory_store.ts";
import type { WindowAlgorithm } from "../src/store/store.ts";

const CLIENTS = Number(Deno.env.get("CLIENTS") ?? 1_000_000);
const ROUNDS = Number(Deno.env.get("ROUNDS") ?? 3);
const mib = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(0)} MiB`;
const gc = (globalThis as { gc?: () => void }).gc ?? (() => {});

console.log(
  `| algorithm | round | clients seen | live entries | heap used | RSS | entries after sweep | heap after sweep |`,
);
console.log("| --- | --- | --- | --- | --- | --- | --- | --- |");
for (const algorithm of ["log", "counter", "fixed"] as WindowAlgorithm[]) {
  let now = 1_000_000;
  const store = new MemoryStore({ clock: () => now, sweep: false });
  const limits = [{ limit: 60, windowMs: 60_000 }];
  for (let round = 1; round <= ROUNDS; round++) {
    for (let i = 0; i < CLIENTS; i++) {
      const id = round * CLIENTS + i;
      await store.window({ key: `{sluice:api:ip:client-${id}}`, algorithm, limits, cost: 1 });
    }
    gc();
    const live = store.size;
    const heap = Deno.memoryUsage().heapUsed;
    const rss = Deno.memoryUsage().rss;
    // The windows pass; the sweep drops what expired, a slice at a time as it does in the gateway.
    now += 3 * 60_000;
    for (let pass = 0; pass < 1_000 && store.size > 0; pass++) store.sweep();
    gc();
    console.log(
      `| ${algorithm} | ${round} | ${round * CLIENTS} | ${live} | ${mib(heap)} | ${
        mib(rss)
      } | ${store.size} | ${mib(Deno.memoryUsage().heapUsed)} |`,
    );
  }
  await store.close();
}
