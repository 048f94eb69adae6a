/**
 * The Redis store (single node or Cluster): each decision is one EVALSHA of
 * the algorithm's script, falling back to EVAL when Redis does not know the
 * script yet (NOSCRIPT). Commands fail fast while disconnected, and the client
 * reconnects in the background. A single node is reached through sluice's own
 * RESP client (`resp_client.ts`); a cluster through ioredis `Cluster`.
 */
import { Cluster, type RedisOptions } from "ioredis";
import { parseRedisUrl, RespClient, type RespReply } from "./resp_client.ts";
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

/** The few commands the store sends, whichever client carries them. */
interface Commands {
  evalsha(
    sha: string,
    keys: readonly string[],
    args: readonly (string | number)[],
  ): Promise<unknown>;
  eval(
    source: string,
    keys: readonly string[],
    args: readonly (string | number)[],
  ): Promise<unknown>;
  hget(key: string, field: string): Promise<string | null>;
  /** Hears of a failed script call (a node that became a replica answers READONLY). */
  failed?(error: unknown): void;
  ping(): Promise<void>;
  /** Connects, or starts connecting again after giving up; rejects when it cannot. */
  connect(): Promise<void>;
  close(): Promise<void>;
}

function isNoScript(error: unknown): boolean {
  return String((error as Error)?.message).startsWith("NOSCRIPT");
}

/** How long the probe's PING may take before the connection is replaced. */
const PING_TIMEOUT_MS = 1_000;

class PingTimeout extends Error {
  override name = "PingTimeout";
  constructor() {
    super(`PING got no answer within ${PING_TIMEOUT_MS} ms`);
  }
}

/** A node that cannot take writes: a replica (after a failover), one cut off from its primary too. */
const NOT_WRITABLE = /^(READONLY|MASTERDOWN)\b/;

/** One node through {@linkcode RespClient}. */
class NodeCommands implements Commands {
  #client: RespClient;

  constructor(client: RespClient) {
    this.#client = client;
  }

  evalsha(
    sha: string,
    keys: readonly string[],
    args: readonly (string | number)[],
  ): Promise<RespReply> {
    return this.#client.send(["EVALSHA", sha, keys.length, ...keys, ...args]);
  }

  eval(
    source: string,
    keys: readonly string[],
    args: readonly (string | number)[],
  ): Promise<RespReply> {
    return this.#client.send(["EVAL", source, keys.length, ...keys, ...args]);
  }

  async hget(key: string, field: string): Promise<string | null> {
    return await this.#client.send(["HGET", key, field]) as string | null;
  }

  failed(error: unknown): void {
    if (!NOT_WRITABLE.test((error as Error)?.message ?? "")) return;
    // A failover made this node a replica. A new connection finds the primary
    // where the URL's host name now points (DNS, a proxy, Sentinel's address);
    // until one takes writes, the probe's decision (a write) fails the same way.
    this.#client.reset(`it answered ${(error as Error).message.split(" ")[0]}`);
  }

  async ping(): Promise<void> {
    await this.connect();
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await Promise.race([
        this.#client.send(["PING"]),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new PingTimeout()), PING_TIMEOUT_MS);
        }),
      ]);
    } catch (error) {
      // A connection that does not even answer PING may be dead without
      // knowing it (cut off, no reset): start a new one.
      if (error instanceof PingTimeout) this.#client.reset(error.message);
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  connect(): Promise<void> {
    return this.#client.connect();
  }

  close(): Promise<void> {
    return this.#client.close();
  }
}

/** A cluster through ioredis. */
class ClusterCommands implements Commands {
  #cluster: Cluster;

  constructor(cluster: Cluster) {
    this.#cluster = cluster;
    cluster.on("error", () => {
      // Failures surface as rejected calls; the resilient wrapper counts them.
    });
  }

  evalsha(
    sha: string,
    keys: readonly string[],
    args: readonly (string | number)[],
  ): Promise<unknown> {
    return this.#cluster.evalsha(sha, keys.length, ...keys, ...args);
  }

  eval(
    source: string,
    keys: readonly string[],
    args: readonly (string | number)[],
  ): Promise<unknown> {
    return this.#cluster.eval(source, keys.length, ...keys, ...args);
  }

  hget(key: string, field: string): Promise<string | null> {
    return this.#cluster.hget(key, field);
  }

  async ping(): Promise<void> {
    await this.connect().catch(() => {});
    const masters = this.#cluster.nodes("master");
    if (masters.length === 0) throw new Error("Redis Cluster has no reachable master");
    // A cluster is up when every slot's master answers. ioredis drops a master
    // it lost from nodes(): the survivors alone would answer, and the store
    // would flap up and down while a master is dead.
    const live = new Map(
      masters.map((node) => [`${node.options.host}:${node.options.port}`, node]),
    );
    const owners = new Set<string>();
    const slots = this.#cluster.slots;
    for (let slot = 0; slot < 16_384; slot++) {
      const owner = slots[slot]?.[0];
      if (owner === undefined) throw new Error(`Redis Cluster slot ${slot} has no master`);
      owners.add(owner);
    }
    for (const owner of owners) {
      if (!live.has(owner)) throw new Error(`Redis Cluster master ${owner} is unreachable`);
    }
    await Promise.all([...owners].map((owner) => live.get(owner)!.ping()));
  }

  async connect(): Promise<void> {
    // A client whose first connection failed may have given up: start it again.
    const status = this.#cluster.status;
    if (status === "wait" || status === "end") await this.#cluster.connect();
  }

  async close(): Promise<void> {
    try {
      await this.#cluster.quit();
    } catch {
      this.#cluster.disconnect();
    }
  }
}

const NODE_OPTIONS: RedisOptions = {
  enableOfflineQueue: false,
  maxRetriesPerRequest: 0,
  // Not on a cluster's node connections: ioredis answers an ASK redirect (a
  // slot being migrated) with ASKING then the command, and a pipelined ASKING
  // goes out after the command it was for, which then bounces back until it
  // fails. The cluster pipelines what it can on its own.
  enableAutoPipelining: false,
  lazyConnect: true,
  retryStrategy: (times: number) => Math.min(100 * times, 1_000),
};

/** The decision the probe makes: one unit in a 1 s window, in the keys' namespace an ACL for sluice allows. */
const PROBE: WindowQuery = {
  key: "{sluice:probe}",
  algorithm: "fixed",
  limits: [{ limit: 1_000_000_000, windowMs: 1_000 }],
  cost: 1,
};

/** A store on Redis or Redis Cluster. */
export class RedisStore implements Store {
  readonly kind: "redis" | "redis-cluster";
  #commands: Commands;
  #scripts: ReadonlyMap<ScriptName, Script>;

  private constructor(
    kind: "redis" | "redis-cluster",
    commands: Commands,
    scripts: ReadonlyMap<ScriptName, Script>,
  ) {
    this.kind = kind;
    this.#commands = commands;
    this.#scripts = scripts;
  }

  /**
   * Creates the client and tries to connect within `connectTimeoutMs`; a
   * store that is down at start is returned all the same (its calls fail
   * until it comes up).
   */
  static async connect(options: RedisStoreOptions): Promise<RedisStore> {
    const scripts = await loadScripts();
    const timeout = options.connectTimeoutMs ?? 1_000;
    let store: RedisStore;
    if (options.nodes && options.nodes.length > 0) {
      const seeds = options.nodes.map(parseRedisUrl);
      const first = seeds[0]!;
      if (seeds.some((seed) => seed.tls !== first.tls)) {
        throw new Error("Redis Cluster nodes must all be redis:// or all be rediss://");
      }
      const cluster = new Cluster(
        seeds.map((seed) => ({ host: seed.hostname, port: seed.port })),
        {
          enableOfflineQueue: false,
          lazyConnect: true,
          enableAutoPipelining: true,
          // ioredis groups a turn's commands by the slot of their first
          // argument: for a script that is its SHA, not a key, and one pipeline
          // of keys on several masters fails whole. Scripts go on their own.
          autoPipeliningIgnoredCommands: ["evalsha", "eval"],
          clusterRetryStrategy: (times: number) => Math.min(100 * times, 1_000),
          // The slot table is read again every second: a master that returns
          // (or a replica promoted in its place) is found while the store is
          // down and sends nothing that would tell ioredis.
          slotsRefreshInterval: 1_000,
          redisOptions: {
            ...NODE_OPTIONS,
            password: first.password,
            username: first.username,
            // rediss:// nodes speak TLS, as a single rediss:// node does.
            ...(first.tls ? { tls: {} } : {}),
          },
        },
      );
      store = new RedisStore("redis-cluster", new ClusterCommands(cluster), scripts);
    } else {
      const client = new RespClient({
        ...parseRedisUrl(options.url || "redis://127.0.0.1:6379"),
        connectTimeoutMs: timeout,
      });
      store = new RedisStore("redis", new NodeCommands(client), scripts);
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      store.#commands.connect().catch(() => {}),
      new Promise((resolve) => timer = setTimeout(resolve, timeout)),
    ]);
    clearTimeout(timer);
    return store;
  }

  /** EVALSHA of the script, or EVAL of its source when Redis answers NOSCRIPT. */
  async #run(name: ScriptName, keys: string[], args: (string | number)[]): Promise<unknown> {
    const script = this.#scripts.get(name)!;
    try {
      return await this.#commands.evalsha(script.sha, keys, args);
    } catch (error) {
      if (!isNoScript(error)) {
        this.#commands.failed?.(error);
        throw error;
      }
      return await this.#commands.eval(script.source, keys, args);
    }
  }

  async window(query: WindowQuery): Promise<WindowDecision> {
    const keys = query.limits.map((limit) => limitKey(query.key, query.algorithm, limit.windowMs));
    const args: (string | number)[] = [query.cost, query.now ?? 0, query.limits.length];
    for (const limit of query.limits) args.push(limit.limit, limit.windowMs);
    const reply = await this.#run(SCRIPT_OF[query.algorithm], keys, args) as number[];
    return decodeWindowReply(reply, query.limits);
  }

  async refundWindow(query: WindowQuery, stamp: string): Promise<void> {
    if (!stamp || query.cost <= 0) return;
    const keys = query.limits.map((limit) => limitKey(query.key, query.algorithm, limit.windowMs));
    const args: (string | number)[] = [-query.cost, 0, query.limits.length];
    for (const limit of query.limits) args.push(limit.limit, limit.windowMs);
    args.push(stamp);
    await this.#run(SCRIPT_OF[query.algorithm], keys, args);
  }

  async bucket(query: BucketQuery): Promise<BucketDecision> {
    const reply = await this.#run("token_bucket", [query.key], [
      query.rate,
      query.periodMs,
      query.burst,
      query.cost,
      query.now ?? 0,
      query.maxDelayMs,
      query.refundOf ?? 0,
    ]) as number[];
    return {
      allowed: Number(reply[0]) === 1,
      delayMs: Number(reply[1]),
      remaining: Number(reply[2]),
      retryAfterMs: Number(reply[3]),
      resetMs: Number(reply[4]),
      reservation: Number(reply[5] ?? 0),
    };
  }

  async hashGet(key: string, field: string): Promise<string | undefined> {
    return (await this.#commands.hget(key, field)) ?? undefined;
  }

  /**
   * Passes when a decision would: Redis answers, and runs a script that
   * writes. A PING alone passes where every decision fails, as for an ACL user
   * without EVALSHA or a Redis at `maxmemory` under `noeviction`; the store
   * would then be marked up and down again every probe.
   */
  async ping(): Promise<void> {
    await this.#commands.ping();
    await this.window(PROBE);
  }

  close(): Promise<void> {
    return this.#commands.close();
  }
}
