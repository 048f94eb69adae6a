/**
 * `deno task bench`: the same load against each configuration, on 127.0.0.1,
 * with wrk; prints requests/s, p50 and p99, the ratios to the bare Deno
 * proxy, to nginx as a proxy and to sluice proxy-only, and the CPU time each
 * server spent per request (its processes, from /proc; n/a off Linux), and
 * writes `.bench/results.json`.
 *
 * Every configuration is started first; then each round measures them all in
 * turn, and a configuration's result is its median round. On a small shared
 * machine one measurement moves by 20-40%; interleaved rounds expose every
 * configuration to the same slow and fast moments. A ratio between two
 * configurations is the median of their per-round ratios (round N against
 * round N), so those swings mostly cancel out of it.
 *
 *   BENCH_SECONDS=4          seconds of load per configuration and round
 *   BENCH_ROUNDS=5           rounds (the median round is reported)
 *   BENCH_WARMUP_SECONDS=1   seconds of unmeasured load before the first round (0 for none)
 *   BENCH_CONNECTIONS=50     wrk connections (-c)
 *   BENCH_THREADS=1          wrk threads (-t)
 *   BENCH_ONLY=sluice        run only the configurations whose name contains this
 *   BENCH_KEEP=1             keep the run's folder (configs, logs) under .bench/
 *   NGINX=/path/to/nginx     the nginx to use; NGINX=none runs without it (Deno upstream)
 *
 * Each server is its own child process; every child is stopped when the run
 * ends, fails or is interrupted.
 *
 * @module
 */
import {
  type ChildSet,
  findExecutable,
  InterruptedError,
  PROJECT_ROOT,
  withChildren,
} from "./_children.ts";
import {
  type RunContext,
  type Server,
  slug,
  startDenoScript,
  startNginxProxy,
  startNginxUpstream,
  startRedis,
  startSluice,
} from "./_servers.ts";
import { cpuSeconds } from "./_cpu.ts";
import { markdownTable } from "./_table.ts";
import { runWrk, type WrkResult } from "./_wrk.ts";

/** What a configuration is given to start. */
export interface Setup extends RunContext {
  /** The upstream every proxy forwards to. */
  upstream: Server;
  /** The nginx executable, when installed. */
  nginx: string | undefined;
  /** A Redis for the store, when redis-server is installed. */
  redis: Server | undefined;
}

/** One thing to measure. */
export interface Configuration {
  name: string;
  /** Why it cannot run here (it is then skipped); undefined when it can. */
  unavailable?(setup: Setup): string | undefined;
  /** Starts it; resolves once it answers. */
  start(setup: Setup): Promise<Server>;
  /** The status every answer should have (429 for a configuration that limits everything). @default 200 */
  expectStatus?: number;
}

/** One configuration's outcome. */
export interface BenchResult {
  name: string;
  status: "ok" | "skipped" | "failed";
  /** Why it was skipped or failed. */
  reason?: string;
  /** The median round. */
  wrk?: RoundResult;
  /** Requests/s of every round, in order. */
  rounds?: number[];
  /** Its requests/s over the bare Deno proxy's: the median of the per-round ratios. */
  vsBareProxy?: number;
  /** Its requests/s over nginx-as-proxy's: the median of the per-round ratios. */
  vsNginxProxy?: number;
  /** Its requests/s over sluice proxy-only's: the median of the per-round ratios. */
  vsSluiceProxy?: number;
  /** The status its answers should have. */
  expectStatus?: number;
}

const BARE_PROXY = "bare Deno fetch proxy";
const NGINX_PROXY = "nginx proxy";
const SLUICE_PROXY = "sluice: proxy only";

/** A limit no benchmark client reaches: the limiter decides, never refuses. */
const UNLIMITED_TIERS = `tiers:
  free: { limit: 100000000, window: 1s }`;
/** One request an hour: every client of the bench is over its limit after its first request. */
const OVER_LIMIT_TIERS = `tiers:
  free: { limit: 1, window: 1h }`;
const LIMITER =
  "[ { identify: {} }, { tier: {} }, { sliding-window: { limit: tier } }, { proxy: {} } ]";
const FULL_PIPELINE = `
      - identify: { from: [header:x-api-key, ip] }
      - tier: { default: free }
      - sliding-window: { limit: tier }
      - token-bucket: { rate: 100000000/s, max_delay: 250ms }
      - circuit-breaker: { failure_ratio: 0.5, min_requests: 20, window: 10s, open_for: 30s, probes: 3 }
      - concurrency: { max: 10000, queue: 100, queue_timeout: 1s }
      - proxy: {}`;
const noRedis = ({ redis }: Setup) => redis ? undefined : "redis-server is not installed";
const redisStore = (setup: Setup) => `store: { kind: redis, url: ${setup.redis!.url} }`;

/** The configurations, in the order they run. Add new ones here. */
export const CONFIGURATIONS: readonly Configuration[] = [
  {
    name: "upstream alone",
    start: ({ upstream }) => Promise.resolve({ ...upstream, stop: () => Promise.resolve() }),
  },
  {
    name: BARE_PROXY,
    start: (setup) =>
      startDenoScript(setup, "bare_proxy.ts", { name: BARE_PROXY, args: [setup.upstream.url] }),
  },
  {
    name: NGINX_PROXY,
    unavailable: ({ nginx }) => nginx ? undefined : "nginx is not installed",
    start: (setup) => startNginxProxy(setup, setup.nginx!, setup.upstream.url),
  },
  {
    name: SLUICE_PROXY,
    start: (setup) =>
      startSluice(setup, {
        name: "sluice proxy only",
        upstream: setup.upstream.url,
        pipeline: "[ { proxy: {} } ]",
      }),
  },
  {
    name: "sluice: limiter, memory",
    start: (setup) =>
      startSluice(setup, {
        name: "sluice limiter memory",
        upstream: setup.upstream.url,
        pipeline: LIMITER,
        extraYaml: `store: { kind: memory }\n${UNLIMITED_TIERS}`,
      }),
  },
  {
    // The same decisions without the five header lines `headers: both` adds
    // to every answer: what the limiter costs apart from Deno's price per header.
    name: "sluice: limiter, memory, headers: none",
    start: (setup) =>
      startSluice(setup, {
        name: "sluice limiter memory no headers",
        upstream: setup.upstream.url,
        pipeline:
          "[ { identify: {} }, { tier: {} }, { sliding-window: { limit: tier, headers: none } }, { proxy: {} } ]",
        extraYaml: `store: { kind: memory }\n${UNLIMITED_TIERS}`,
      }),
  },
  {
    name: "sluice: limiter, Redis",
    unavailable: noRedis,
    start: (setup) =>
      startSluice(setup, {
        name: "sluice limiter redis",
        upstream: setup.upstream.url,
        pipeline: LIMITER,
        extraYaml: `${redisStore(setup)}\n${UNLIMITED_TIERS}`,
      }),
  },
  {
    name: "sluice: limiter, Redis, every client over its limit",
    unavailable: noRedis,
    expectStatus: 429,
    start: (setup) =>
      startSluice(setup, {
        name: "sluice limiter redis over limit",
        upstream: setup.upstream.url,
        pipeline: LIMITER,
        extraYaml: `${redisStore(setup)}\n${OVER_LIMIT_TIERS}`,
      }),
  },
  {
    name: "sluice: full pipeline, memory",
    start: (setup) =>
      startSluice(setup, {
        name: "sluice full pipeline memory",
        upstream: setup.upstream.url,
        pipeline: FULL_PIPELINE,
        extraYaml: `store: { kind: memory }\n${UNLIMITED_TIERS}`,
      }),
  },
  {
    name: "sluice: full pipeline, Redis",
    unavailable: noRedis,
    start: (setup) =>
      startSluice(setup, {
        name: "sluice full pipeline redis",
        upstream: setup.upstream.url,
        pipeline: FULL_PIPELINE,
        extraYaml: `${redisStore(setup)}\n${UNLIMITED_TIERS}`,
      }),
  },
  {
    name: "sluice: full pipeline, Redis, every client over its limit",
    unavailable: noRedis,
    expectStatus: 429,
    start: (setup) =>
      startSluice(setup, {
        name: "sluice full pipeline redis over limit",
        upstream: setup.upstream.url,
        pipeline: FULL_PIPELINE,
        extraYaml: `${redisStore(setup)}\n${OVER_LIMIT_TIERS}`,
      }),
  },
];

interface Settings {
  seconds: number;
  rounds: number;
  warmupSeconds: number;
  connections: number;
  threads: number;
  only: string | undefined;
  keep: boolean;
}

function envNumber(name: string, fallback: number, min: number): number {
  const text = Deno.env.get(name);
  if (text === undefined || text === "") return fallback;
  const value = Number(text);
  if (!Number.isFinite(value) || value < min) {
    throw new Error(`Invalid ${name} "${text}": expected a number of at least ${min}`);
  }
  return value;
}

function readSettings(): Settings {
  return {
    seconds: envNumber("BENCH_SECONDS", 4, 1),
    rounds: envNumber("BENCH_ROUNDS", 5, 1),
    warmupSeconds: envNumber("BENCH_WARMUP_SECONDS", 1, 0),
    connections: envNumber("BENCH_CONNECTIONS", 50, 1),
    threads: envNumber("BENCH_THREADS", 1, 1),
    only: Deno.env.get("BENCH_ONLY") || undefined,
    keep: Deno.env.get("BENCH_KEEP") === "1",
  };
}

/** Checks that `url` answers as expected (200 with the upstream's body, or `status`) before it is measured. */
async function checkAnswers(url: string, status = 200): Promise<void> {
  const response = await fetch(`${url}/`, { signal: AbortSignal.timeout(5_000) });
  const body = await response.text();
  if (status === 200 ? response.status !== 200 || body !== "ok" : response.status !== status) {
    throw new Error(
      `Cannot measure ${url}: GET / answered ${response.status} ${
        JSON.stringify(body.slice(0, 200))
      }, expected ${status === 200 ? '200 "ok"' : status}`,
    );
  }
}

type BenchSetup = Setup & { wrk: string; settings: Settings };

/** A configuration that is running and answers as it should, with its rounds so far. */
interface Running {
  configuration: Configuration;
  server: Server;
  rounds: RoundResult[];
}

/** One round: wrk's report and the CPU the server spent per request. */
export interface RoundResult extends WrkResult {
  /** CPU microseconds of the server's processes per request; undefined where /proc cannot tell. */
  cpuMicrosPerRequest?: number;
}

/** Starts a configuration and checks its answers; a skip or failure is returned as its result. */
async function launch(
  configuration: Configuration,
  setup: BenchSetup,
): Promise<Running | BenchResult> {
  const reason = configuration.unavailable?.(setup);
  if (reason) return { name: configuration.name, status: "skipped", reason };
  let server: Server | undefined;
  try {
    server = await configuration.start(setup);
    if (configuration.expectStatus) {
      // The first request may still pass (it spends the quota); the rest are refused.
      await fetch(`${server.url}/`).then((response) => response.body?.cancel());
    }
    await checkAnswers(server.url, configuration.expectStatus);
    return { configuration, server, rounds: [] };
  } catch (error) {
    await server?.stop();
    return {
      name: configuration.name,
      status: "failed",
      reason: String((error as Error)?.message ?? error),
    };
  }
}

/** One round of load against a running configuration (after a warm-up in the first round). */
async function measureRound(running: Running, setup: BenchSetup, round: number): Promise<void> {
  const { settings } = setup;
  const name = slug(running.configuration.name);
  const wrkOptions = {
    wrk: setup.wrk,
    connections: settings.connections,
    threads: settings.threads,
  };
  const url = `${running.server.url}/`;
  if (round === 1 && settings.warmupSeconds > 0) {
    await runWrk(setup.children, url, {
      ...wrkOptions,
      seconds: settings.warmupSeconds,
      logFile: `${setup.workDir}/wrk-${name}-warmup.txt`,
    });
  }
  const cpuBefore = await cpuSeconds(running.server.pid);
  const report = await runWrk(setup.children, url, {
    ...wrkOptions,
    seconds: settings.seconds,
    logFile: `${setup.workDir}/wrk-${name}-${round}.txt`,
  });
  const cpuAfter = await cpuSeconds(running.server.pid);
  const cpuMicrosPerRequest = cpuBefore !== undefined && cpuAfter !== undefined &&
      report.requests > 0
    ? (cpuAfter - cpuBefore) * 1e6 / report.requests
    : undefined;
  running.rounds.push({ ...report, cpuMicrosPerRequest });
}

/** The round with the median requests/s (the lower middle one of an even count). */
export function medianRound<R extends WrkResult>(rounds: readonly R[]): R {
  const sorted = [...rounds].sort((a, b) => a.requestsPerSec - b.requestsPerSec);
  return sorted[Math.floor((sorted.length - 1) / 2)]!;
}

/**
 * The middle of the per-round ratios of `rounds` to `reference` (each round
 * against the reference's round of the same number; the lower middle one of
 * an even count). Rounds are interleaved, so the two measurements of a pair
 * were taken moments apart, in the same state of the machine: the machine's
 * swings, which move one configuration's rounds by 20-40%, mostly cancel.
 */
export function pairedRatio(
  rounds: readonly number[],
  reference: readonly number[],
): number | undefined {
  const ratios: number[] = [];
  for (let i = 0; i < Math.min(rounds.length, reference.length); i++) {
    if (reference[i]! > 0) ratios.push(rounds[i]! / reference[i]!);
  }
  if (ratios.length === 0) return undefined;
  ratios.sort((a, b) => a - b);
  return ratios[Math.floor((ratios.length - 1) / 2)];
}

function addRatios(results: BenchResult[]): void {
  const roundsOf = (name: string) =>
    results.find((result) => result.name === name && result.status === "ok")?.rounds;
  const bare = roundsOf(BARE_PROXY);
  const nginx = roundsOf(NGINX_PROXY);
  const sluice = roundsOf(SLUICE_PROXY);
  for (const result of results) {
    if (!result.rounds) continue;
    if (bare) result.vsBareProxy = pairedRatio(result.rounds, bare);
    if (nginx) result.vsNginxProxy = pairedRatio(result.rounds, nginx);
    if (sluice) result.vsSluiceProxy = pairedRatio(result.rounds, sluice);
  }
}

function formatMs(ms: number): string {
  return ms < 10 ? `${ms.toFixed(2)} ms` : ms < 100 ? `${ms.toFixed(1)} ms` : `${ms.toFixed(0)} ms`;
}

function formatRatio(ratio: number | undefined): string {
  return ratio === undefined ? "n/a" : `${ratio.toFixed(2)}×`;
}

/** The lowest and highest round in thousands of requests/s: `17.9-19.0k`. */
function formatRounds(rounds: readonly number[]): string {
  const k = (value: number) => (value / 1000).toFixed(1);
  return `${k(Math.min(...rounds))}-${k(Math.max(...rounds))}k`;
}

/** The results as a markdown table, then a line for each run with errors, skip or failure. */
export function renderTable(results: readonly BenchResult[]): string {
  const rows = [
    [
      "configuration",
      "req/s",
      "rounds",
      "p50",
      "p99",
      "vs bare proxy",
      "vs nginx proxy",
      "vs sluice proxy",
      "CPU µs/req",
    ],
    ...results.map((result) =>
      result.wrk
        ? [
          result.name,
          Math.round(result.wrk.requestsPerSec).toLocaleString("en-US"),
          formatRounds(result.rounds ?? [result.wrk.requestsPerSec]),
          formatMs(result.wrk.p50Ms),
          formatMs(result.wrk.p99Ms),
          formatRatio(result.vsBareProxy),
          formatRatio(result.vsNginxProxy),
          formatRatio(result.vsSluiceProxy),
          result.wrk.cpuMicrosPerRequest === undefined
            ? "n/a"
            : result.wrk.cpuMicrosPerRequest.toFixed(1),
        ]
        : [result.name, result.status, "", "", "", "", "", "", ""]
    ),
  ];
  const notes: string[] = [];
  for (const result of results) {
    if (result.status !== "ok") {
      notes.push(`- ${result.name}: ${result.status}: ${result.reason ?? ""}`);
      continue;
    }
    const { non2xx, socketErrors } = result.wrk!;
    const socket = socketErrors.connect + socketErrors.read + socketErrors.write +
      socketErrors.timeout;
    // A configuration that refuses everything on purpose answers no 2xx.
    if ((non2xx > 0 && !result.expectStatus) || socket > 0) {
      notes.push(
        `- ${result.name}: ${non2xx} responses of status 400 or more, socket errors ${
          JSON.stringify(socketErrors)
        } (its numbers are not comparable)`,
      );
    }
  }
  return [markdownTable(rows), ...(notes.length ? ["", ...notes] : [])].join("\n");
}

async function versionOf(command: string, args: string[]): Promise<string> {
  try {
    const output = await new Deno.Command(command, { args, stdout: "piped", stderr: "piped" })
      .output();
    const text = new TextDecoder().decode(output.stdout) + new TextDecoder().decode(output.stderr);
    return text.split("\n").find((line) => line.trim())?.trim() ?? "";
  } catch {
    return "";
  }
}

async function main(): Promise<number> {
  const settings = readSettings();
  const wrk = await findExecutable(["wrk"]);
  if (!wrk) {
    console.error(
      "Cannot run the benchmark: wrk is not installed (apt-get install wrk, or build it from https://github.com/wg/wrk)",
    );
    return 1;
  }
  const nginxEnv = Deno.env.get("NGINX");
  const nginx = nginxEnv === "none" ? undefined : await findExecutable(
    nginxEnv
      ? [nginxEnv]
      : ["nginx", "/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"],
  );
  const configurations = CONFIGURATIONS.filter((configuration) =>
    !settings.only || configuration.name.includes(settings.only)
  );
  const benchDir = `${PROJECT_ROOT}/.bench`;
  await Deno.mkdir(benchDir, { recursive: true });
  const workDir = await Deno.makeTempDir({ dir: benchDir, prefix: "run-" });
  const machine = {
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    os: `${Deno.build.os} ${Deno.osRelease()}`,
    cpus: navigator.hardwareConcurrency,
    wrk: await versionOf(wrk, ["-v"]),
    nginx: nginx ? await versionOf(nginx, ["-v"]) : "not installed",
  };
  console.log(
    `sluice bench: ${settings.rounds} rounds of ${settings.seconds} s per configuration ` +
      `(+${settings.warmupSeconds} s warm-up), ` +
      `wrk -t${settings.threads} -c${settings.connections}, ${machine.cpus} CPUs, ` +
      `deno ${machine.deno}, nginx: ${machine.nginx.replace(/^nginx version: /, "")}`,
  );
  let failed = false;
  try {
    const results = await withChildren(async (children: ChildSet) => {
      const run: RunContext = { children, workDir };
      const upstream = nginx
        ? await startNginxUpstream(run, nginx)
        : await startDenoScript(run, "upstream.ts", { name: "deno upstream" });
      console.log(
        `upstream: ${nginx ? "nginx" : "Deno.serve (nginx is not installed)"} at ${upstream.url}`,
      );
      const redisServer = await findExecutable(["redis-server", "/usr/bin/redis-server"]);
      const redis = redisServer && configurations.some((c) => c.name.includes("Redis"))
        ? await startRedis(run, redisServer)
        : undefined;
      const setup = { ...run, upstream, nginx, redis, wrk, settings };
      const outcomes: (Running | BenchResult)[] = [];
      for (const configuration of configurations) {
        if (children.interrupted) break;
        console.log(`starting: ${configuration.name}`);
        const outcome = await launch(configuration, setup);
        if ("status" in outcome && outcome.status === "failed") {
          console.error(`  failed: ${outcome.reason}`);
        }
        if ("status" in outcome && outcome.status === "skipped") {
          console.log(`  skipped: ${outcome.reason}`);
        }
        outcomes.push(outcome);
      }
      const running = outcomes.filter((outcome): outcome is Running => "server" in outcome);
      const failures = new Map<Running, string>();
      for (let round = 1; round <= settings.rounds && !children.interrupted; round++) {
        console.log(`round ${round} of ${settings.rounds}`);
        for (const entry of running) {
          if (children.interrupted) break;
          if (failures.has(entry)) continue;
          try {
            await measureRound(entry, setup, round);
          } catch (error) {
            const reason = String((error as Error)?.message ?? error);
            failures.set(entry, reason);
            console.error(`  ${entry.configuration.name} failed: ${reason}`);
          }
        }
      }
      for (const entry of running) await entry.server.stop();
      const results: BenchResult[] = outcomes.map((outcome) => {
        if (!("server" in outcome)) return outcome;
        const { configuration, rounds } = outcome;
        const failure = failures.get(outcome);
        if (failure !== undefined || rounds.length === 0) {
          return {
            name: configuration.name,
            status: "failed",
            reason: failure ?? "interrupted before a round",
          };
        }
        return {
          name: configuration.name,
          status: "ok",
          wrk: medianRound(rounds),
          rounds: rounds.map((round) => round.requestsPerSec),
          expectStatus: configuration.expectStatus,
        };
      });
      await upstream.stop();
      await redis?.stop();
      return results;
    });
    addRatios(results);
    failed = results.some((result) => result.status === "failed");
    console.log(`\n${renderTable(results)}\n`);
    const file = `${benchDir}/results.json`;
    await Deno.writeTextFile(
      file,
      JSON.stringify(
        {
          date: new Date().toISOString(),
          settings: {
            seconds: settings.seconds,
            rounds: settings.rounds,
            warmupSeconds: settings.warmupSeconds,
            connections: settings.connections,
            threads: settings.threads,
          },
          machine,
          upstream: nginx ? "nginx" : "deno",
          results,
        },
        null,
        2,
      ) + "\n",
    );
    console.log(`results written to ${file}`);
  } catch (error) {
    if (!(error instanceof InterruptedError)) throw error;
    console.error(`${error.message}: no results written`);
    return error.exitCode;
  } finally {
    if (settings.keep || failed) console.log(`logs and configs kept in ${workDir}`);
    else await Deno.remove(workDir, { recursive: true }).catch(() => {});
  }
  return failed ? 1 : 0;
}

if (import.meta.main) {
  Deno.exit(await main());
}
