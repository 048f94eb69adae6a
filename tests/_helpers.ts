/** Shared test helpers: temp config files, gateways and upstreams on free ports. */
import { Gateway, type GatewayOptions } from "../src/gateway.ts";
import { Logger, type LogLevel } from "../src/log.ts";

/** A temp directory holding a config file. */
export interface TempConfig {
  dir: string;
  file: string;
  write(text: string): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Writes YAML to `gateway.yaml` in a new temp directory. */
export async function tempConfig(yaml: string): Promise<TempConfig> {
  const dir = await Deno.makeTempDir({ prefix: "sluice-test-" });
  const file = `${dir}/gateway.yaml`;
  await Deno.writeTextFile(file, yaml);
  return {
    dir,
    file,
    write: (text) => Deno.writeTextFile(file, text),
    async [Symbol.asyncDispose]() {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

/** Log lines a test can read. */
export class LogCapture {
  readonly lines: Record<string, unknown>[] = [];
  readonly raw: string[] = [];
  logger(level: LogLevel = "debug"): Logger {
    return new Logger(level, {
      sink: (line) => {
        this.raw.push(line);
        this.lines.push(JSON.parse(line));
      },
    });
  }
  find(msg: string): Record<string, unknown> | undefined {
    return this.lines.find((line) => line.msg === msg);
  }
}

/** A running gateway and its config, closed by `await using`. */
export interface TestGateway {
  gateway: Gateway;
  config: TempConfig;
  logs: LogCapture;
  url: string;
  adminUrl: string;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Starts a gateway on free ports with this YAML (listen and admin ports are overridden); `files` are written beside it first. */
export async function startGateway(
  yaml: string,
  options: Partial<GatewayOptions> = {},
  files: Record<string, string> = {},
): Promise<TestGateway> {
  const config = await tempConfig(yaml);
  for (const [name, text] of Object.entries(files)) {
    await Deno.writeTextFile(`${config.dir}/${name}`, text);
  }
  const logs = new LogCapture();
  let gateway: Gateway;
  try {
    gateway = await Gateway.start({
      configFile: config.file,
      port: 0,
      hostname: "127.0.0.1",
      adminPort: 0,
      logger: logs.logger(),
      processMetrics: false,
      debounceMs: 50,
      env: (name) => name === "PORT" ? undefined : Deno.env.get(name),
      ...options,
    });
  } catch (error) {
    await config[Symbol.asyncDispose]();
    throw error;
  }
  return {
    gateway,
    config,
    logs,
    url: `http://127.0.0.1:${gateway.addr.port}`,
    adminUrl: `http://127.0.0.1:${gateway.adminAddr.port}`,
    async [Symbol.asyncDispose]() {
      await gateway.shutdown(2_000);
      await config[Symbol.asyncDispose]();
    },
  };
}

/** An upstream server on a free port. */
export interface TestUpstream {
  url: string;
  port: number;
  server: Deno.HttpServer<Deno.NetAddr>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Starts `handler` as an upstream on 127.0.0.1 and a free port. */
export function startUpstream(
  handler: (
    request: Request,
    info: Deno.ServeHandlerInfo<Deno.NetAddr>,
  ) => Response | Promise<Response>,
): TestUpstream {
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, handler);
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    port: server.addr.port,
    server,
    async [Symbol.asyncDispose]() {
      await server.shutdown();
    },
  };
}

/** An upstream that answers with what it received, as JSON. */
export function startEchoUpstream(): TestUpstream {
  return startUpstream(async (request, info) => {
    const url = new URL(request.url);
    const body = request.body ? await request.text() : "";
    return Response.json({
      method: request.method,
      path: url.pathname,
      search: url.search,
      headers: [...request.headers],
      body,
      remote: info.remoteAddr.hostname,
    });
  });
}

/** Resolves after `ms` milliseconds. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` until it returns true or `timeoutMs` passes; returns the last result. */
export async function waitFor(
  check: () => boolean | Promise<boolean>,
  timeoutMs = 5_000,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await delay(20);
  }
  return await check();
}

/** A free TCP port on 127.0.0.1 (for a server that is not started yet). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** The absolute path of a file in the repository. */
export function repoPath(relative: string): string {
  return decodeURIComponent(new URL(`../${relative}`, import.meta.url).pathname);
}
