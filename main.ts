/**
 * sluice: a rate-limiting and traffic-shaping HTTP gateway.
 *
 *   deno task start                    serve config/gateway.yaml (or SLUICE_CONFIG)
 *   main.ts --config FILE              serve FILE
 *   main.ts --check FILE               validate FILE: exit 0, or print every error and exit 1
 *
 * @module
 */
import { ConfigError, formatIssue, loadConfig } from "./src/config/load_config.ts";
import { checkPipelines, Gateway } from "./src/gateway.ts";
import { isLogLevel, Logger, parseLogLevel } from "./src/log.ts";
import { BUILTIN_PLUGINS } from "./src/plugins/mod.ts";
import { envRedisUrl } from "./src/store/mod.ts";

const DEFAULT_CONFIG = "config/gateway.yaml";

/**
 * The config to serve when none is named: `config/gateway.yaml` in the working
 * directory, else the one shipped beside this file (embedded by `deno compile`).
 */
function defaultConfig(): string {
  try {
    Deno.statSync(DEFAULT_CONFIG);
    return DEFAULT_CONFIG;
  } catch {
    // Decoded: a checkout under "My Projects" is /My Projects, not /My%20Projects.
    return decodeURIComponent(new URL(`./${DEFAULT_CONFIG}`, import.meta.url).pathname);
  }
}

const USAGE = `Usage: main.ts [--config FILE] [--check FILE]
  --config FILE   the config file (default: $SLUICE_CONFIG or ${DEFAULT_CONFIG})
  --check FILE    validate FILE and exit: 0 when valid, 1 with every error
  --help          this text`;

interface Args {
  config?: string;
  check?: string;
  help: boolean;
}

function parseArgs(argv: readonly string[]): Args {
  const args: Args = { help: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const [flag, inline] = arg.includes("=") ? arg.split(/=(.*)/s, 2) : [arg, undefined];
    const value = () => {
      const next = inline ?? argv[++i];
      if (next === undefined) throw new Error(`Missing value for ${flag}`);
      return next;
    };
    switch (flag) {
      case "--config":
      case "-c":
        args.config = value();
        break;
      case "--check":
      case "-t":
        args.check = value();
        break;
      case "--help":
      case "-h":
        args.help = true;
        break;
      default:
        throw new Error(`Unknown argument "${arg}"`);
    }
  }
  return args;
}

/**
 * What is wrong with the environment variables the gateway reads besides the
 * file's `${VAR}`s (`REDIS_URL` is checked with the store that would use it).
 */
function environmentErrors(): string[] {
  const errors: string[] = [];
  const port = Deno.env.get("PORT");
  if (port && !(/^\d{1,5}$/.test(port) && Number(port) <= 65535)) {
    errors.push(`PORT="${port}": a port is a whole number from 0 to 65535`);
  }
  const level = Deno.env.get("LOG_LEVEL");
  if (level && !isLogLevel(level)) {
    errors.push(`LOG_LEVEL="${level}": write debug, info, warn or error`);
  }
  return errors;
}

async function check(file: string): Promise<number> {
  const environment = environmentErrors();
  for (const error of environment) console.error(error);
  try {
    const loaded = await loadConfig(file, { plugins: BUILTIN_PLUGINS });
    try {
      envRedisUrl(loaded.config.store, (name) => Deno.env.get(name));
    } catch (error) {
      environment.push((error as Error).message);
      console.error(environment.at(-1));
    }
    // Each plugin is created too, as a start would: some refuse only then,
    // and some warn (printed, without failing the check).
    await checkPipelines(loaded, {
      log: new Logger("warn", {
        sink: (line) => {
          const { msg, level: _level, time: _time, ...fields } = JSON.parse(line);
          const extra = Object.keys(fields).length > 0 ? ` ${JSON.stringify(fields)}` : "";
          console.error(`${loaded.file}: warning: ${msg}${extra}`);
        },
      }),
      env: (name) => Deno.env.get(name),
    });
    if (environment.length > 0) {
      console.error(
        `${loaded.file}: ok, but the environment has ${environment.length} error${
          environment.length === 1 ? "" : "s"
        }`,
      );
      return 1;
    }
    console.log(
      `${loaded.file}: ok (${loaded.routes.length} route${loaded.routes.length === 1 ? "" : "s"})`,
    );
    return 0;
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    for (const issue of error.issues) console.error(formatIssue(error.file, issue));
    console.error(
      `${error.file}: ${error.issues.length} error${error.issues.length === 1 ? "" : "s"}`,
    );
    return 1;
  }
}

/** A signal repeated sooner than this after the first is the same one, delivered twice. */
const SECOND_SIGNAL_AFTER_MS = 500;

async function serve(file: string, log: Logger): Promise<number> {
  const environment = environmentErrors();
  if (environment.length > 0) {
    log.error("cannot start: the environment has errors", { errors: environment });
    return 1;
  }
  let gateway: Gateway;
  try {
    gateway = await Gateway.start({ configFile: file, logger: log });
  } catch (error) {
    if (error instanceof ConfigError) {
      log.error("cannot start: the config has errors", {
        file: error.file,
        errors: error.issues.map((issue) => formatIssue(error.file, issue)),
      });
      return 1;
    }
    log.error("cannot start", { error });
    return 1;
  }
  const { promise: stopped, resolve } = Promise.withResolvers<number>();
  let firstSignalAt: number | undefined;
  const stop = (signal: string) => {
    if (firstSignalAt !== undefined) {
      // One Ctrl-C can arrive twice (from the terminal and from `deno task`),
      // a moment apart: only a signal sent again later is a second one.
      if (performance.now() - firstSignalAt < SECOND_SIGNAL_AFTER_MS) return;
      // A second signal (Ctrl-C again) does not wait for the grace period.
      log.warn("second signal: exiting without waiting for requests in flight", { signal });
      Deno.exit(signal === "SIGINT" ? 130 : 143);
    }
    firstSignalAt = performance.now();
    log.info("signal received", { signal });
    gateway.shutdown().then(() => resolve(0), () => resolve(1));
  };
  Deno.addSignalListener("SIGTERM", () => stop("SIGTERM"));
  Deno.addSignalListener("SIGINT", () => stop("SIGINT"));
  Deno.addSignalListener("SIGHUP", () => {
    gateway.reload("SIGHUP").catch(() => {});
  });
  return await stopped;
}

if (import.meta.main) {
  const log = new Logger(parseLogLevel(Deno.env.get("LOG_LEVEL")));
  let args: Args;
  try {
    args = parseArgs(Deno.args);
  } catch (error) {
    console.error(`${(error as Error).message}\n${USAGE}`);
    Deno.exit(2);
  }
  if (args.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  if (args.check !== undefined) Deno.exit(await check(args.check));
  Deno.exit(await serve(args.config ?? Deno.env.get("SLUICE_CONFIG") ?? defaultConfig(), log));
}
