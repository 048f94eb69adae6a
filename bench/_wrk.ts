/** Running wrk and reading its report. */
import type { ChildSet } from "./_children.ts";

/** What one wrk run measured. */
export interface WrkResult {
  requestsPerSec: number;
  /** The median latency in milliseconds. */
  p50Ms: number;
  /** The 99th percentile latency in milliseconds. */
  p99Ms: number;
  /** Requests completed. */
  requests: number;
  /** Responses with a status of 400 or more (wrk calls them "Non-2xx or 3xx"). */
  non2xx: number;
  /** Connect, read, write and timeout errors. */
  socketErrors: { connect: number; read: number; write: number; timeout: number };
}

const TIME_UNITS_MS: Record<string, number> = {
  us: 0.001,
  ms: 1,
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
};

/** Parses a wrk time such as `812.00us`, `1.20ms` or `2.01s` to milliseconds. */
export function parseWrkTime(text: string): number {
  const match = /^([\d.]+)(us|ms|s|m|h)$/.exec(text.trim());
  if (!match) {
    throw new Error(`Cannot read wrk time "${text}": expected a number and us, ms, s, m or h`);
  }
  // Rounded to a nanosecond so 812.00us reads as 0.812, not 0.8120000000000001.
  return Math.round(Number(match[1]) * TIME_UNITS_MS[match[2]!]! * 1e6) / 1e6;
}

/** Reads the report of `wrk --latency`. */
export function parseWrk(text: string): WrkResult {
  const rps = /^Requests\/sec:\s+([\d.]+)/m.exec(text);
  const p50 = /^\s+50(?:\.0+)?%\s+(\S+)\s*$/m.exec(text);
  const p99 = /^\s+99(?:\.0+)?%\s+(\S+)\s*$/m.exec(text);
  if (!rps || !p50 || !p99) {
    throw new Error(
      `Cannot read the wrk report: expected "Requests/sec" and the --latency distribution\n${text}`,
    );
  }
  const requests = /^\s*(\d+) requests in /m.exec(text);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(text);
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text);
  return {
    requestsPerSec: Number(rps[1]),
    p50Ms: parseWrkTime(p50[1]!),
    p99Ms: parseWrkTime(p99[1]!),
    requests: requests ? Number(requests[1]) : 0,
    non2xx: non2xx ? Number(non2xx[1]) : 0,
    socketErrors: {
      connect: socket ? Number(socket[1]) : 0,
      read: socket ? Number(socket[2]) : 0,
      write: socket ? Number(socket[3]) : 0,
      timeout: socket ? Number(socket[4]) : 0,
    },
  };
}

/** Options for {@linkcode runWrk}. */
export interface WrkOptions {
  /** The wrk executable. */
  wrk: string;
  seconds: number;
  connections: number;
  threads: number;
  /** Where wrk's report is kept. */
  logFile: string;
}

/** Runs `wrk -tT -cC -dSs --latency url` as a child of `children` and reads its report. */
export async function runWrk(
  children: ChildSet,
  url: string,
  options: WrkOptions,
): Promise<WrkResult> {
  await Deno.remove(options.logFile).catch(() => {});
  const child = await children.spawn("wrk", options.wrk, {
    args: [
      `-t${options.threads}`,
      `-c${options.connections}`,
      `-d${options.seconds}s`,
      "--latency",
      url,
    ],
    logFile: options.logFile,
  });
  const status = await child.status;
  const report = await Deno.readTextFile(options.logFile).catch(() => "");
  if (!status.success) {
    throw new Error(`wrk failed with code ${status.code} against ${url}\n${report}`);
  }
  return parseWrk(report);
}
