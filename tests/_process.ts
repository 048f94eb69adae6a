/** Gateways as processes, as users run them: `main.ts --config FILE`, stopped by PID. */
import { freePort, repoPath, waitFor } from "./_helpers.ts";

/** A gateway process. */
export interface GatewayProcess {
  child: Deno.ChildProcess;
  url: string;
  adminUrl: string;
  /** Resolves with the exit code and every stdout line once the process exits. */
  exited: Promise<{ code: number; lines: string[] }>;
}

/** Options for {@linkcode spawnGateway}. */
export interface SpawnOptions {
  /** The listen port (env PORT). @default a free port */
  port?: number;
  /** The admin port, as env ADMIN_PORT (configs write `admin: { port: ${ADMIN_PORT} }`). @default a free port */
  adminPort?: number;
  /** LOG_LEVEL. @default "info" */
  logLevel?: string;
  /** The most file descriptors the process may hold (`ulimit -n`). @default the test's own */
  fdLimit?: number;
}

/**
 * Starts `main.ts --config FILE` and resolves once `/status` answers with the
 * store up (a store still connecting is marked down).
 */
export async function spawnGateway(
  configFile: string,
  options: SpawnOptions = {},
): Promise<GatewayProcess> {
  const port = options.port ?? freePort();
  const adminPort = options.adminPort ?? freePort();
  const deno = [Deno.execPath()];
  if (options.fdLimit !== undefined) {
    deno.unshift("sh", "-c", `ulimit -n ${options.fdLimit} && exec "$0" "$@"`);
  }
  const child = new Deno.Command(deno[0]!, {
    args: [
      ...deno.slice(1),
      "run",
      "--config",
      repoPath("deno.json"),
      "--allow-net",
      "--allow-read",
      "--allow-env",
      repoPath("main.ts"),
      "--config",
      configFile,
    ],
    env: {
      PORT: String(port),
      ADMIN_PORT: String(adminPort),
      NO_COLOR: "1",
      LOG_LEVEL: options.logLevel ?? "info",
    },
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const exited = child.output().then((output) => ({
    code: output.code,
    lines: new TextDecoder().decode(output.stdout).split("\n").filter((line) => line !== ""),
  }));
  const adminUrl = `http://127.0.0.1:${adminPort}`;
  const up = await waitFor(async () => {
    try {
      const response = await fetch(`${adminUrl}/status`);
      return response.ok && (await response.json()).store.state === "up";
    } catch {
      return false;
    }
  }, 20_000);
  if (!up) {
    kill(child);
    const { code, lines } = await exited;
    throw new Error(`The gateway did not start: exit ${code}\n${lines.join("\n")}`);
  }
  return { child, url: `http://127.0.0.1:${port}`, adminUrl, exited };
}

/** Sends SIGKILL, ignoring a process already gone. */
export function kill(child: Deno.ChildProcess, signal: Deno.Signal = "SIGKILL"): void {
  try {
    child.kill(signal);
  } catch {
    // Already gone.
  }
}
