/**
 * The Redis store (single node or Cluster, through ioredis): each decision is
 * one EVALSHA of the algorithm's script, falling back to EVAL when Redis does
 * not know the script yet (NOSCRIPT). Commands fail fast while disconnected;
 * ioredis keeps reconnecting in the background.
 */
import { Cluster, Redis, type RedisOptions } from "ioredis";
import { loadScripts, type Script, type ScriptName } from "./scripts.ts";
import {
  type BucketDecision,
  type BucketQuery,
  decodeWindowReply,
  limitKey,
  type Store,
  type WindowAlgorithm,
  type WindowDecision,
  type WindowQuery,
} from "./store.ts";

const SCRIPT_OF: Record<WindowAlgorithm, ScriptName> = {
  log: "sliding_log",
  counter: "sliding_counter",
  fixed: "fixed_window",
};

/** Options for {@linkcode RedisStore.connect}. */
export interface RedisStoreOptions {
  /** `redis://host:port/db` for a single node. */
  url?: string;
  /** Seed nodes (`redis://host:port`) for a cluster. */
  nodes?: readonly string[];
  /** How long to wait for the first connection before going on without it. @default 1000 */
  connectTimeoutMs?: number;
}

type Client = Redis | Cluster;

const BASE_OPTIONS: RedisOptions = {
  enableOfflineQueue: false,
  maxRetriesPerRequest: 0,
  enableAutoPipelining: true,
  lazyConnect: true,
  retryStrategy: (times: number) => Math.min(100 * times, 1_000),
};

/** A store on Redis or Redis Cluster. */
export class RedisStore implements Store {
  readonly kind: "redis" | "redis-cluster";
  readonly client: Client;
  #scripts: ReadonlyMap<ScriptName, Script>;

  private constructor(
    kind: "redis" | "redis-cluster",
    client: Client,
    scripts: ReadonlyMap<ScriptName, Script>,
  ) {
    this.kind = kind;
    this.client = client;
    this.#scripts = scripts;
  }

  /**
   * Creates the client and tries to connect within `connectTimeoutMs`; a
   * store that is down at start is returned all the same (its calls fail
   * until it comes up).
   */
  static async connect(options: RedisStoreOptions): Promise<RedisStore> {
    const scripts = await loadScripts();
    let store: RedisStore;
    if (options.nodes && options.nodes.length > 0) {
      const nodes = options.nodes.map((node) => {
        const url = new URL(node);
        return { host: url.hostname, port: Number(url.port || 6379) };
      });
      const first = new URL(options.nodes[0]!);
      const client = new Cluster(nodes, {
        enableOfflineQueue: false,
        lazyConnect: true,
        enableAutoPipelining: true,
        clusterRetryStrategy: (times: number) => Math.min(100 * times, 1_000),
        redisOptions: {
          ...BASE_OPTIONS,
          password: first.password ? decodeURIComponent(first.password) : undefined,
          username: first.username ? decodeURIComponent(first.username) : undefined,
        },
      });
      store = new RedisStore("redis-cluster", client, scripts);
    } else {
      const client = new Redis(options.url || "redis://127.0.0.1:6379", BASE_OPTIONS);
      store = new RedisStore("redis", client, scripts);
    }
    store.client.on("error", () => {
      // Failures surface as rejected calls; the resilient wrapper counts them.
    });
    const timeout = options.connectTimeoutMs ?? 1_000;
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      store.client.connect().catch(() => {}),
      new Promise((resolve) => timer = setTimeout(resolve, timeout)),
    ]);
    clearTimeout(timer);
    return store;
  }

  async #run(name: ScriptName, keys: string[], args: (string | number)[]): Promise<unknown> {
    const script = this.#scripts.get(name)!;
    try {
      return await this.client.evalsha(script.sha, keys.length, ...keys, ...args);
    } catch (error) {
      if (String((error as Error)?.message).includes("NOSCRIPT")) {
        return await this.client.eval(script.source, keys.length, ...keys, ...args);
      }
      throw error;
    }
  }

  async window(query: WindowQuery): Promise<WindowDecision> {
    const keys = query.limits.map((limit) => limitKey(query.key, query.algorithm, limit.windowMs));
    if (query.algorithm === "log") keys.push(`${query.key}:seq`);
    const args: (string | number)[] = [query.cost, query.now ?? 0, query.limits.length];
    for (const limit of query.limits) args.push(limit.limit, limit.windowMs);
    const reply = await this.#run(SCRIPT_OF[query.algorithm], keys, args) as number[];
    return decodeWindowReply(reply, query.limits);
  }

  async bucket(query: BucketQuery): Promise<BucketDecision> {
    const reply = await this.#run("token_bucket", [query.key], [
      query.rate,
      query.periodMs,
      query.burst,
      query.cost,
      query.now ?? 0,
      query.maxDelayMs,
    ]) as number[];
    return {
      allowed: Number(reply[0]) === 1,
      delayMs: Number(reply[1]),
      remaining: Number(reply[2]),
      retryAfterMs: Number(reply[3]),
      resetMs: Number(reply[4]),
    };
  }

  async hashGet(key: string, field: string): Promise<string | undefined> {
    return (await this.client.hget(key, field)) ?? undefined;
  }

  async ping(): Promise<void> {
    // A client whose first connection failed may have given up: the probe starts it again.
    const status = this.client.status;
    if (status === "wait" || status === "end") await this.client.connect().catch(() => {});
    if (this.client instanceof Cluster) {
      // A cluster is up when every master answers.
      await Promise.all(this.client.nodes("master").map((node) => node.ping()));
      if (this.client.nodes("master").length === 0) {
        throw new Error("Redis Cluster has no reachable master");
      }
      return;
    }
    await this.client.ping();
  }

  async close(): Promise<void> {
    try {
      await this.client.quit();
    } catch {
      this.client.disconnect();
    }
  }
}
