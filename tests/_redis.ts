/**
 * Real redis-server processes for tests, on free ports, stopped by PID.
 * Where redis-server is not on PATH the tests registered with `redisTest` are
 * ignored, and one line says how many and why.
 */
import { delay, freePort } from "./_helpers.ts";

function onPath(command: string): boolean {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    try {
      if (Deno.statSync(`${dir}/${command}`).isFile) return true;
    } catch {
      // Not here.
    }
  }
  return false;
}

/** True when redis-server (and redis-cli) can be run. */
export const HAS_REDIS = onPath("redis-server") && onPath("redis-cli");

let ignored = 0;
if (!HAS_REDIS) {
  globalThis.addEventListener("unload", () => {
    if (ignored > 0) {
      console.log(
        `${ignored} Redis test${
          ignored === 1 ? "" : "s"
        } ignored: redis-server is not on PATH (apt-get install redis-server)`,
      );
    }
  });
}

/** Registers a test that needs Redis: ignored, and counted, when redis-server is missing. */
export function redisTest(name: string, fn: (t: Deno.TestContext) => Promise<void>): void {
  if (!HAS_REDIS) ignored++;
  Deno.test({ name, ignore: !HAS_REDIS, fn });
}

/** A running redis-server. */
export class RedisServer {
  readonly port: number;
  readonly dir: string;
  #child: Deno.ChildProcess | undefined;
  #extra: string[];

  private constructor(port: number, dir: string, extra: string[]) {
    this.port = port;
    this.dir = dir;
    this.#extra = extra;
  }

  /** Starts redis-server on a free port and waits until it answers. */
  static async start(extra: string[] = [], port = freePort()): Promise<RedisServer> {
    const dir = await Deno.makeTempDir({ prefix: "sluice-redis-" });
    const server = new RedisServer(port, dir, extra);
    await server.restart();
    return server;
  }

  /** `redis://127.0.0.1:<port>` */
  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** The process id, while running. */
  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /** Starts the process again on the same port (after {@linkcode RedisServer.kill}). */
  async restart(): Promise<void> {
    this.#child = new Deno.Command("redis-server", {
      args: [
        "--port",
        String(this.port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        this.dir,
        ...this.#extra,
      ],
      stdout: "null",
      stderr: "null",
    }).spawn();
    for (let i = 0; i < 200; i++) {
      if (await this.answers()) return;
      await delay(25);
    }
    throw new Error(`redis-server on port ${this.port} did not start`);
  }

  /** True when PING answers. */
  async answers(): Promise<boolean> {
    const result = await cli(this.port, ["PING"]).catch(() => "");
    return result.trim() === "PONG";
  }

  /** Runs redis-cli against this server. */
  cli(args: string[]): Promise<string> {
    return cli(this.port, args);
  }

  /** Kills the process at once (SIGKILL), as an outage would. */
  async kill(): Promise<void> {
    const child = this.#child;
    if (!child) return;
    this.#child = undefined;
    try {
      child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
    await child.status;
  }

  /** Stops the process and removes its directory. */
  async stop(): Promise<void> {
    await this.kill();
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

/** Runs redis-cli and returns its stdout; rejects on a non-zero exit. */
export async function cli(port: number, args: string[]): Promise<string> {
  const output = await new Deno.Command("redis-cli", {
    args: ["-h", "127.0.0.1", "-p", String(port), ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!output.success) throw new Error(new TextDecoder().decode(output.stderr));
  return new TextDecoder().decode(output.stdout);
}

/** The calls of one command in `INFO commandstats`, such as `evalsha`. */
export async function commandCalls(server: RedisServer, command: string): Promise<number> {
  const info = await server.cli(["INFO", "commandstats"]);
  const match = new RegExp(`cmdstat_${command}:calls=(\\d+)`).exec(info);
  return match ? Number(match[1]) : 0;
}

/** A 3-master Redis Cluster made with `redis-cli --cluster create`. */
export class RedisCluster {
  readonly servers: RedisServer[];

  private constructor(servers: RedisServer[]) {
    this.servers = servers;
  }

  /** Starts three cluster-enabled servers and joins them. */
  static async start(): Promise<RedisCluster> {
    const servers: RedisServer[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        servers.push(
          await RedisServer.start([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
          ]),
        );
      }
      const create = await new Deno.Command("redis-cli", {
        args: [
          "--cluster",
          "create",
          ...servers.map((server) => `127.0.0.1:${server.port}`),
          "--cluster-replicas",
          "0",
          "--cluster-yes",
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      if (!create.success) throw new Error(new TextDecoder().decode(create.stderr));
      for (let i = 0; i < 200; i++) {
        const states = await Promise.all(servers.map((server) => server.cli(["CLUSTER", "INFO"])));
        if (states.every((state) => state.includes("cluster_state:ok"))) {
          return new RedisCluster(servers);
        }
        await delay(50);
      }
      throw new Error("the cluster did not reach cluster_state:ok");
    } catch (error) {
      await Promise.all(servers.map((server) => server.stop()));
      throw error;
    }
  }

  /** Seed node URLs. */
  get nodes(): string[] {
    return this.servers.map((server) => server.url);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await Promise.all(this.servers.map((server) => server.stop()));
  }
}
