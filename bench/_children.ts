/**
 * Child processes for the benchmarks: each server runs as its own process,
 * its output goes to a log file, and every one is stopped by PID when the run
 * ends, fails or is interrupted.
 */

/** The project root (the folder holding deno.json). */
export const PROJECT_ROOT: string = decodeURIComponent(new URL("..", import.meta.url).pathname)
  .replace(/\/$/, "");

const STOP_GRACE_MS = 3_000;
const READY_TIMEOUT_MS = 20_000;
const LOG_TAIL_CHARS = 2_000;

/** Options for {@linkcode ChildSet.spawn}. */
export interface SpawnOptions {
  /** The arguments. */
  args: string[];
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** The working directory. @default {@linkcode PROJECT_ROOT} */
  cwd?: string;
  /** Where stdout and stderr go; without it they are discarded. */
  logFile?: string;
  /** The signal that asks the process to stop. @default "SIGTERM" */
  stopSignal?: Deno.Signal;
}

/** A child started by a {@linkcode ChildSet}. */
export interface Child {
  readonly name: string;
  readonly pid: number;
  readonly logFile: string | undefined;
  /** Resolves when the process exits. */
  readonly status: Promise<Deno.CommandStatus>;
  /** Asks the process to stop, kills it after a grace period, waits for it. */
  stop(): Promise<void>;
  /** The end of its log, for error messages. */
  logTail(): Promise<string>;
}

/** Every child process of one run; {@linkcode ChildSet.stopAll} ends those still running. */
export class ChildSet {
  #children = new Set<Child>();
  #interrupted: Deno.Signal | undefined;

  /** The signal that interrupted the run, if one did. */
  get interrupted(): Deno.Signal | undefined {
    return this.#interrupted;
  }

  /** Stops every child and refuses to start more. */
  interrupt(signal: Deno.Signal): Promise<void> {
    this.#interrupted ??= signal;
    return this.stopAll();
  }

  /** Starts a process and tracks it until it exits. */
  async spawn(name: string, command: string, options: SpawnOptions): Promise<Child> {
    if (this.#interrupted) {
      throw new InterruptedError(this.#interrupted);
    }
    const logFile = options.logFile;
    const process = new Deno.Command(command, {
      args: options.args,
      env: options.env,
      cwd: options.cwd ?? PROJECT_ROOT,
      stdin: "null",
      stdout: logFile ? "piped" : "null",
      stderr: logFile ? "piped" : "null",
    }).spawn();
    let pumped: Promise<unknown> = Promise.resolve();
    if (logFile) {
      const file = await Deno.open(logFile, { write: true, create: true, append: true });
      const pump = async (stream: ReadableStream<Uint8Array>) => {
        for await (const chunk of stream) await file.write(chunk);
      };
      pumped = Promise.allSettled([pump(process.stdout), pump(process.stderr)])
        .finally(() => file.close());
    }
    const status = process.status.then(async (status) => {
      await pumped;
      this.#children.delete(child);
      return status;
    });
    const stopSignal = options.stopSignal ?? "SIGTERM";
    const child: Child = {
      name,
      pid: process.pid,
      logFile,
      status,
      async stop() {
        if (!signal(process, stopSignal)) return void await status;
        let timer: ReturnType<typeof setTimeout> | undefined;
        const exited = await Promise.race([
          status.then(() => true),
          new Promise<boolean>((resolve) =>
            timer = setTimeout(() => resolve(false), STOP_GRACE_MS)
          ),
        ]);
        clearTimeout(timer);
        if (!exited) signal(process, "SIGKILL");
        await status;
      },
      async logTail() {
        if (!logFile) return "";
        const text = await Deno.readTextFile(logFile).catch(() => "");
        return text.slice(-LOG_TAIL_CHARS);
      },
    };
    this.#children.add(child);
    return child;
  }

  /** Stops every child still running, all at once. */
  async stopAll(): Promise<void> {
    await Promise.allSettled([...this.#children].map((child) => child.stop()));
  }
}

/** Sends a signal; false when the process had already exited. */
function signal(process: Deno.ChildProcess, name: Deno.Signal): boolean {
  try {
    process.kill(name);
    return true;
  } catch {
    return false;
  }
}

/** Options for {@linkcode waitUntilReady}. */
export interface ReadyOptions {
  /** The status that means ready; any status when unset. */
  status?: number;
  /** @default 20000 */
  timeoutMs?: number;
}

/**
 * Polls `url` until it answers (with `options.status` when given). Throws when
 * the child exits first or the timeout passes, with the end of its log.
 */
export async function waitUntilReady(
  child: Child,
  url: string,
  options: ReadyOptions = {},
): Promise<void> {
  const deadline = Date.now() + (options.timeoutMs ?? READY_TIMEOUT_MS);
  let exited: Deno.CommandStatus | undefined;
  child.status.then((status) => exited = status);
  let last = "no answer yet";
  while (Date.now() < deadline) {
    if (exited) {
      throw new Error(
        `Cannot start ${child.name}: it exited with code ${exited.code}\n${await child.logTail()}`,
      );
    }
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(1_000) });
      await response.body?.cancel();
      if (options.status === undefined || response.status === options.status) return;
      last = `status ${response.status}`;
    } catch (error) {
      last = String((error as Error)?.message ?? error);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(
    `Cannot start ${child.name}: ${url} not ready after ${
      options.timeoutMs ?? READY_TIMEOUT_MS
    } ms (${last})\n${await child.logTail()}`,
  );
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** The first of these executables that exists (names are looked up in PATH). */
export async function findExecutable(candidates: readonly string[]): Promise<string | undefined> {
  const path = (Deno.env.get("PATH") ?? "").split(":").filter(Boolean);
  for (const candidate of candidates) {
    const options = candidate.includes("/")
      ? [candidate]
      : path.map((dir) => `${dir}/${candidate}`);
    for (const file of options) {
      try {
        const info = await Deno.stat(file);
        if (info.isFile && info.mode !== null && (info.mode & 0o111) !== 0) return file;
      } catch {
        // Not there: try the next.
      }
    }
  }
  return undefined;
}

/** Thrown when SIGINT or SIGTERM interrupted the run. */
export class InterruptedError extends Error {
  override name = "InterruptedError";
  constructor(readonly signal: Deno.Signal, options?: ErrorOptions) {
    super(`Interrupted by ${signal}`, options);
  }

  /** The exit code a shell expects after this signal. */
  get exitCode(): number {
    return this.signal === "SIGINT" ? 130 : 143;
  }
}

const INTERRUPT_EXIT_MS = 5_000;

/**
 * Runs `body`, then stops every child, also on error. On SIGINT or SIGTERM
 * the children are stopped at once, so `body` fails soon, and this throws
 * {@linkcode InterruptedError}; should `body` still hang, the process exits
 * after 5 s.
 */
export async function withChildren<T>(body: (children: ChildSet) => Promise<T>): Promise<T> {
  const children = new ChildSet();
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  const handlers = signals.map((name) => {
    const handler = () => {
      console.error(`\n${name} received: stopping the child processes`);
      const error = new InterruptedError(name);
      children.interrupt(name).finally(() => {
        const timer = setTimeout(() => Deno.exit(error.exitCode), INTERRUPT_EXIT_MS);
        Deno.unrefTimer(timer);
      });
    };
    Deno.addSignalListener(name, handler);
    return [name, handler] as const;
  });
  try {
    const result = await body(children);
    if (children.interrupted) throw new InterruptedError(children.interrupted);
    return result;
  } catch (error) {
    if (children.interrupted && !(error instanceof InterruptedError)) {
      throw new InterruptedError(children.interrupted, { cause: error });
    }
    throw error;
  } finally {
    await children.stopAll();
    for (const [name, handler] of handlers) Deno.removeSignalListener(name, handler);
  }
}
