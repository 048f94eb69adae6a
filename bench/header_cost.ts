/**
 * `deno task bench:headers`: what each response header costs `Deno.serve`.
 * Starts one bare server per header count (bench/headers_server.ts), drives
 * them in interleaved rounds with wrk, and prints each one's median
 * requests/s and the time per request it implies. The limit plugins add five
 * headers to every answer (`headers: both`); this shows their price apart
 * from the gateway.
 *
 *   HEADER_COUNTS=4,9,14     header counts to compare
 *   BENCH_SECONDS=2          seconds per server and round
 *   BENCH_ROUNDS=5           rounds (the median is reported)
 *
 * @module
 */
import { findExecutable, InterruptedError, PROJECT_ROOT, withChildren } from "./_children.ts";
import { type Server, startDenoScript } from "./_servers.ts";
import { markdownTable } from "./_table.ts";
import { runWrk, type WrkResult } from "./_wrk.ts";
import { medianRound } from "./bench.ts";

function setting(name: string, fallback: string): string {
  return Deno.env.get(name) || fallback;
}

async function main(): Promise<number> {
  const wrk = await findExecutable(["wrk"]);
  if (!wrk) {
    console.error("Cannot run the benchmark: wrk is not installed (apt-get install wrk)");
    return 1;
  }
  const counts = setting("HEADER_COUNTS", "4,9,14").split(",").map(Number);
  if (counts.some((count) => !Number.isInteger(count) || count < 0)) {
    console.error(`Invalid HEADER_COUNTS: expected whole numbers, like 4,9,14`);
    return 1;
  }
  const seconds = Number(setting("BENCH_SECONDS", "2"));
  const rounds = Number(setting("BENCH_ROUNDS", "5"));
  await Deno.mkdir(`${PROJECT_ROOT}/.bench`, { recursive: true });
  const workDir = await Deno.makeTempDir({ dir: `${PROJECT_ROOT}/.bench`, prefix: "headers-" });
  try {
    const medians = await withChildren(async (children) => {
      const run = { children, workDir };
      const servers: Server[] = [];
      for (const count of counts) {
        servers.push(
          await startDenoScript(run, "headers_server.ts", {
            name: `${count} headers`,
            args: [String(count)],
          }),
        );
      }
      const results: WrkResult[][] = counts.map(() => []);
      for (let round = 1; round <= rounds && !children.interrupted; round++) {
        for (const [i, server] of servers.entries()) {
          const report = await runWrk(children, `${server.url}/`, {
            wrk,
            seconds,
            connections: 50,
            threads: 1,
            logFile: `${workDir}/wrk-${counts[i]}-${round}.txt`,
          });
          results[i]!.push(report);
        }
      }
      return results.map((rounds) => medianRound(rounds).requestsPerSec);
    });
    const base = medians[0]!;
    console.log(
      markdownTable([
        ["headers", "req/s (median)", "µs per request", "µs per header over the first row"],
        ...counts.map((count, i) => {
          const micros = 1e6 / medians[i]!;
          const extra = count === counts[0] ? "" : (
            (micros - 1e6 / base) / (count - counts[0]!)
          ).toFixed(2);
          return [
            String(count),
            Math.round(medians[i]!).toLocaleString("en-US"),
            micros.toFixed(1),
            extra,
          ];
        }),
      ]),
    );
    return 0;
  } catch (error) {
    if (!(error instanceof InterruptedError)) throw error;
    console.error(error.message);
    return 130;
  }
}

if (import.meta.main) {
  Deno.exit(await main());
}
