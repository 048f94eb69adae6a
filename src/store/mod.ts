/** Makes the configured store. */
import type { EnvLookup } from "../config/interpolate.ts";
import type { GatewayConfig } from "../config/schema.ts";
import type { Logger } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import { MemoryStore } from "./memory_store.ts";
import { RedisStore } from "./redis_store.ts";
import { parseRedisUrl } from "./resp_client.ts";
import { ResilientStore } from "./resilient_store.ts";
import { storeKind } from "./store.ts";

/** The store section as the config gives it. */
export type StoreConfig = GatewayConfig["store"];

/**
 * `REDIS_URL`, when the store will connect to it: a redis store (or a cluster
 * without nodes) with no url. Throws, naming the variable, when it cannot be read.
 */
export function envRedisUrl(
  config: Pick<StoreConfig, "kind" | "url" | "nodes">,
  env: EnvLookup,
): string | undefined {
  const kind = storeKind(config, env);
  if (kind === "memory" || config.url || (kind === "redis-cluster" && config.nodes?.length)) {
    return undefined;
  }
  const url = env("REDIS_URL") || undefined;
  if (url !== undefined) {
    try {
      parseRedisUrl(url);
    } catch (error) {
      throw new Error(`REDIS_URL: ${(error as Error).message}`);
    }
  }
  return url;
}

/** Connects the configured store, wrapped with its failure policy. A Redis that is down at start is not fatal. */
export async function createStore(
  config: StoreConfig,
  options: {
    env: EnvLookup;
    metrics: Metrics;
    log: Logger;
    /** A store a reload tries, not yet serving: a store down at start is not logged. */
    candidate?: boolean;
  },
): Promise<ResilientStore> {
  const kind = storeKind(config, options.env);
  const url = config.url || envRedisUrl(config, options.env) || "redis://127.0.0.1:6379";
  const primary = kind === "memory" ? new MemoryStore() : await RedisStore.connect(
    kind === "redis-cluster" ? { nodes: config.nodes?.length ? config.nodes : [url] } : { url },
  );
  // A store that does not answer at start begins marked down: the fallback
  // answers and the probe brings it up, instead of every first request timing out.
  let down: string | false = false;
  if (kind !== "memory") {
    let timer: ReturnType<typeof setTimeout> | undefined;
    down = await Promise.race([
      primary.ping().then(
        (): false => false,
        (error) => `The store did not answer at start: ${(error as Error)?.message ?? error}`,
      ),
      new Promise<string>((resolve) =>
        timer = setTimeout(() => resolve("The store did not answer at start within 2 s"), 2_000)
      ),
    ]);
    clearTimeout(timer);
  }
  const store = new ResilientStore(primary, {
    startDown: down,
    timeoutMs: config.timeout,
    onFailure: config.on_failure,
    metrics: options.metrics,
    log: options.log.child({ component: "store" }),
  });
  if (down && !options.candidate) store.logDown();
  return store;
}
