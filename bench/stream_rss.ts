/**
 * `deno task bench:stream`: streams a large upload and a large download
 * through the gateway and samples the gateway process's resident memory
 * (VmRSS in /proc/PID/status) every 200 ms. A proxy that streams keeps its
 * RSS flat; one that buffers grows by about the body size.
 *
 *   STREAM_BYTES=1073741824   bytes in each direction (default 1 GiB)
 *   STREAM_TARGETS=sluice     run only the targets whose name contains this
 *   STREAM_TIMEOUT_SECONDS=120  give up on a transfer after this long (it is then not verified)
 *   BENCH_KEEP=1              keep the run's folder (configs, logs) under .bench/
 *
 * The upstream (bench/upstream.ts) checks every uploaded byte against a
 * pattern without keeping the body, and generates the download chunk by
 * chunk; this script checks every downloaded byte. The bare Deno fetch proxy
 * runs too, as the baseline.
 *
 * Linux only (it reads /proc).
 *
 * @module
 */
import http from "node:http";
import { once } from "node:events";
import { InterruptedError, PROJECT_ROOT, withChildren } from "./_children.ts";
import { type RunContext, type Server, startDenoScript, startSluice } from "./_servers.ts";
import { PatternChecker, patternChunks } from "./_pattern.ts";
import { markdownTable } from "./_table.ts";

const GIB = 1024 ** 3;
const MIB = 1024 ** 2;
const SAMPLE_MS = 200;

/** A proxy to stream through. */
export interface StreamTarget {
  name: string;
  start(run: RunContext, upstream: string): Promise<Server>;
}

/** What one target did. */
export interface StreamResult {
  name: string;
  bytes: number;
  /** RSS of the fresh process before the upload. */
  rssBeforeKiB: number;
  rssPeakUploadKiB: number;
  /** RSS of the fresh process before the download. */
  rssBeforeDownloadKiB: number;
  rssPeakDownloadKiB: number;
  upload: TransferResult;
  download: TransferResult;
}

/** One direction. */
export interface TransferResult {
  /** Bytes that should arrive. */
  expected: number;
  /** Bytes the sending side produced. */
  sent: number;
  /** Bytes the receiving side counted (0 when the upload did not finish). */
  bytes: number;
  /** Every byte arrived, in order, with the right value. */
  verified: boolean;
  firstMismatch: number | null;
  seconds: number;
  status: number;
  error?: string;
}

/** The targets, in the order they run. */
export const STREAM_TARGETS: readonly StreamTarget[] = [
  {
    name: "sluice: proxy only",
    start: (run, upstream) =>
      startSluice(run, {
        name: "sluice proxy only",
        upstream,
        // The upstream answers once the whole upload is in, and the proxy's
        // timeout runs until the answer's headers: give it room.
        upstreamTimeout: "1h",
      }),
  },
  {
    name: "bare Deno fetch proxy",
    start: (run, upstream) =>
      startDenoScript(run, "bare_proxy.ts", { name: "bare Deno fetch proxy", args: [upstream] }),
  },
];

/**
 * The resident set size of a process in KiB, from /proc/PID/status. Deno
 * lets only --allow-all read /proc/PID/, so without it `cat` reads the file
 * (--allow-run).
 */
export async function readRssKiB(pid: number): Promise<number> {
  const file = `/proc/${pid}/status`;
  let status: string;
  try {
    status = await Deno.readTextFile(file);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotCapable)) throw error;
    const output = await new Deno.Command("cat", { args: [file], stdout: "piped", stderr: "null" })
      .output();
    if (!output.success) throw new Error(`Cannot read ${file}: the process has exited`);
    status = new TextDecoder().decode(output.stdout);
  }
  const match = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status);
  if (!match) throw new Error(`Cannot read the RSS of process ${pid}: no VmRSS line`);
  return Number(match[1]);
}

/** Samples a process's RSS every 200 ms and keeps the peak of the current phase. */
class RssSampler {
  #pid: number;
  #timer: ReturnType<typeof setInterval> | undefined;
  #peak = 0;
  #sampling: Promise<void> = Promise.resolve();

  constructor(pid: number) {
    this.#pid = pid;
  }

  /** Starts a phase: the peak so far is forgotten. */
  async begin(): Promise<void> {
    this.#peak = await readRssKiB(this.#pid);
    this.#timer = setInterval(() => {
      this.#sampling = this.#sampling.then(() => this.#sample());
    }, SAMPLE_MS);
  }

  /** Ends a phase; resolves to its peak RSS in KiB. */
  async end(): Promise<number> {
    clearInterval(this.#timer);
    await this.#sampling;
    await this.#sample();
    return this.#peak;
  }

  async #sample(): Promise<void> {
    try {
      this.#peak = Math.max(this.#peak, await readRssKiB(this.#pid));
    } catch {
      // The process exited; the transfer will report the failure.
    }
  }
}

/**
 * Sends the upload with node:http, as curl or a browser would: a Content-Length
 * and writes that wait for `drain`. (Deno's own fetch, as an upload client,
 * sends a streamed body in small writes with Nagle on, and crawls at about
 * 1 MiB/s whatever the server; a gateway fed by curl moves 1 GiB in 1.5 s.)
 */
async function upload(url: string, bytes: number, timeoutMs: number): Promise<TransferResult> {
  const started = performance.now();
  let sent = 0;
  try {
    const target = new URL(`${url}/upload`);
    const { status, text } = await new Promise<{ status: number; text: string }>(
      (resolve, reject) => {
        const request = http.request({
          hostname: target.hostname,
          port: Number(target.port),
          path: target.pathname,
          method: "POST",
          headers: { "content-type": "application/octet-stream", "content-length": String(bytes) },
          signal: AbortSignal.timeout(timeoutMs),
        }, (response) => {
          let text = "";
          response.setEncoding("utf8");
          response.on("data", (chunk: string) => text += chunk);
          response.on("end", () => resolve({ status: response.statusCode ?? 0, text }));
          response.on("error", reject);
        });
        request.on("error", reject);
        (async () => {
          for (const chunk of patternChunks(bytes)) {
            sent += chunk.length;
            if (!request.write(chunk)) await once(request, "drain");
          }
          request.end();
        })().catch((error) => request.destroy(error));
      },
    );
    const seconds = (performance.now() - started) / 1000;
    let answer: { bytes?: number; first_mismatch?: number | null } = {};
    try {
      answer = JSON.parse(text);
    } catch {
      // Not the upstream's answer: reported below.
    }
    const received = answer.bytes ?? 0;
    const firstMismatch = answer.first_mismatch ?? null;
    return {
      expected: bytes,
      sent,
      bytes: received,
      verified: status === 200 && received === bytes && firstMismatch === null,
      firstMismatch,
      seconds,
      status,
      error: status === 200 ? undefined : text.slice(0, 300),
    };
  } catch (error) {
    return { ...failed(started, error, { timeoutMs, expected: bytes }), sent };
  }
}

async function download(url: string, bytes: number, timeoutMs: number): Promise<TransferResult> {
  const started = performance.now();
  const checker = new PatternChecker();
  try {
    const response = await fetch(`${url}/download?bytes=${bytes}`, {
      signal: AbortSignal.timeout(timeoutMs),
    });
    if (response.body) {
      for await (const chunk of response.body) checker.update(chunk);
    }
    return {
      expected: bytes,
      sent: bytes,
      bytes: checker.bytes,
      verified: response.status === 200 && checker.verified(bytes),
      firstMismatch: checker.firstMismatch ?? null,
      seconds: (performance.now() - started) / 1000,
      status: response.status,
    };
  } catch (error) {
    return {
      ...failed(started, error, { timeoutMs, expected: bytes }),
      sent: bytes,
      bytes: checker.bytes,
    };
  }
}

function failed(
  started: number,
  error: unknown,
  options: { timeoutMs: number; expected: number },
): TransferResult {
  const timedOut = (error as Error)?.name === "TimeoutError";
  return {
    expected: options.expected,
    sent: 0,
    bytes: 0,
    verified: false,
    firstMismatch: null,
    seconds: (performance.now() - started) / 1000,
    status: 0,
    error: timedOut
      ? `timed out after ${options.timeoutMs / 1000} s`
      : String((error as Error)?.message ?? error),
  };
}

interface Phase {
  rssBeforeKiB: number;
  rssPeakKiB: number;
  transfer: TransferResult;
}

/**
 * Starts the target afresh, then runs one transfer through it while sampling
 * its RSS. A fresh process per direction: a proxy still draining a failed
 * upload would slow the download and add to its memory.
 */
async function phase(
  label: string,
  start: () => Promise<Server>,
  transfer: (url: string) => Promise<TransferResult>,
): Promise<Phase> {
  const server = await start();
  try {
    const warm = await fetch(`${server.url}/`);
    await warm.body?.cancel();
    const rssBeforeKiB = await readRssKiB(server.pid);
    const sampler = new RssSampler(server.pid);
    await sampler.begin();
    const result = await transfer(server.url);
    const rssPeakKiB = await sampler.end();
    console.log(
      `  ${label}: RSS before ${mib(rssBeforeKiB)}, peak ${mib(rssPeakKiB)}; ${describe(result)}`,
    );
    return { rssBeforeKiB, rssPeakKiB, transfer: result };
  } finally {
    await server.stop();
  }
}

async function measure(
  target: StreamTarget,
  start: () => Promise<Server>,
  options: { bytes: number; timeoutMs: number },
): Promise<StreamResult> {
  const { bytes, timeoutMs } = options;
  const up = await phase("upload  ", start, (url) => upload(url, bytes, timeoutMs));
  const down = await phase("download", start, (url) => download(url, bytes, timeoutMs));
  return {
    name: target.name,
    bytes,
    rssBeforeKiB: up.rssBeforeKiB,
    rssPeakUploadKiB: up.rssPeakKiB,
    rssBeforeDownloadKiB: down.rssBeforeKiB,
    rssPeakDownloadKiB: down.rssPeakKiB,
    upload: up.transfer,
    download: down.transfer,
  };
}

function describe(transfer: TransferResult): string {
  const moved = Math.max(transfer.bytes, transfer.sent);
  const rate = transfer.seconds > 0 ? moved / MIB / transfer.seconds : 0;
  const verdict = transfer.verified
    ? "verified"
    : `NOT verified (status ${transfer.status}${
      transfer.firstMismatch === null ? "" : `, first wrong byte at ${transfer.firstMismatch}`
    }${transfer.error ? `: ${transfer.error}` : ""})`;
  const sent = transfer.bytes === 0 && transfer.sent > 0
    ? ` (${transfer.sent.toLocaleString("en-US")} sent)`
    : "";
  return `${transfer.bytes.toLocaleString("en-US")} of ${
    transfer.expected.toLocaleString("en-US")
  } bytes${sent} ${verdict}, ${transfer.seconds.toFixed(1)} s, ${rate.toFixed(0)} MiB/s`;
}

function mib(kib: number): string {
  return `${(kib / 1024).toFixed(1)} MiB`;
}

function transferCell(transfer: TransferResult): string {
  const bytes = transfer.bytes.toLocaleString("en-US");
  if (transfer.verified) return `${bytes} ok`;
  const sent = transfer.bytes === 0 && transfer.sent > 0
    ? `, ${transfer.sent.toLocaleString("en-US")} sent`
    : "";
  return `${bytes} FAILED (${transfer.error ?? `status ${transfer.status}`}${sent})`;
}

/** The results as a markdown table. */
export function renderStreamTable(results: readonly StreamResult[]): string {
  const rows = [
    [
      "configuration",
      "RSS before",
      "peak upload",
      "peak download",
      "upload bytes (upstream)",
      "download bytes (client)",
    ],
    ...results.map((result) => [
      result.name,
      mib(result.rssBeforeKiB),
      `${mib(result.rssPeakUploadKiB)} (+${mib(result.rssPeakUploadKiB - result.rssBeforeKiB)})`,
      `${mib(result.rssPeakDownloadKiB)} (+${
        mib(result.rssPeakDownloadKiB - result.rssBeforeDownloadKiB)
      })`,
      transferCell(result.upload),
      transferCell(result.download),
    ]),
  ];
  return markdownTable(rows);
}

function envInteger(name: string, fallback: number, min: number): number {
  const text = Deno.env.get(name);
  if (text === undefined || text === "") return fallback;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < min) {
    throw new Error(`Invalid ${name} "${text}": expected a whole number of at least ${min}`);
  }
  return value;
}

async function main(): Promise<number> {
  if (Deno.build.os !== "linux") {
    console.error("Cannot sample RSS: bench/stream_rss.ts reads /proc and runs on Linux only");
    return 1;
  }
  const bytes = envInteger("STREAM_BYTES", GIB, 0);
  const timeoutMs = envInteger("STREAM_TIMEOUT_SECONDS", 120, 1) * 1000;
  const only = Deno.env.get("STREAM_TARGETS") || undefined;
  const keep = Deno.env.get("BENCH_KEEP") === "1";
  const benchDir = `${PROJECT_ROOT}/.bench`;
  await Deno.mkdir(benchDir, { recursive: true });
  const workDir = await Deno.makeTempDir({ dir: benchDir, prefix: "stream-" });
  console.log(
    `sluice stream bench: ${bytes.toLocaleString("en-US")} bytes (${
      (bytes / MIB).toFixed(0)
    } MiB) up and down, RSS sampled every ${SAMPLE_MS} ms, at most ${
      timeoutMs / 1000
    } s a transfer, deno ${Deno.version.deno}`,
  );
  let ok = false;
  try {
    const results = await withChildren(async (children) => {
      const run: RunContext = { children, workDir };
      const upstream = await startDenoScript(run, "upstream.ts", { name: "stream upstream" });
      const results: StreamResult[] = [];
      for (const target of STREAM_TARGETS) {
        if (only && !target.name.includes(only)) continue;
        console.log(`${target.name}:`);
        const start = () => target.start(run, upstream.url);
        results.push(await measure(target, start, { bytes, timeoutMs }));
      }
      await upstream.stop();
      return results;
    });
    console.log(`\n${renderStreamTable(results)}\n`);
    const file = `${benchDir}/stream_rss.json`;
    await Deno.writeTextFile(
      file,
      JSON.stringify({ date: new Date().toISOString(), bytes, results }, null, 2) + "\n",
    );
    console.log(`results written to ${file}`);
    ok = results.every((result) => result.upload.verified && result.download.verified);
    if (!ok) console.error("Some transfers were not verified: see above");
  } catch (error) {
    if (!(error instanceof InterruptedError)) throw error;
    console.error(`${error.message}: no results written`);
    return error.exitCode;
  } finally {
    if (keep || !ok) console.log(`logs and configs kept in ${workDir}`);
    else await Deno.remove(workDir, { recursive: true }).catch(() => {});
  }
  return ok ? 0 : 1;
}

if (import.meta.main) {
  Deno.exit(await main());
}
