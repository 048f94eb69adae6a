/** Reading wrk reports, choosing the median round and rendering the bench table (bench/). */
import assert from "node:assert/strict";
import { parseWrk, parseWrkTime } from "../bench/_wrk.ts";
import { markdownTable } from "../bench/_table.ts";
import { medianRound, pairedRatio } from "../bench/bench.ts";

const REPORT = `Running 3s test @ http://127.0.0.1:36509/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   280.52us  215.32us  12.43ms   93.07%
    Req/Sec   179.43k    12.01k  193.52k    80.00%
  Latency Distribution
     50%  158.00us
     75%  302.00us
     90%  512.00us
     99%    1.01ms
  535784 requests in 3.00s, 85.84MB read
  Socket errors: connect 0, read 3, write 0, timeout 7
  Non-2xx or 3xx responses: 12
Requests/sec: 178536.94
Transfer/sec:     28.61MB
`;

Deno.test("parseWrk reads requests/s, p50 and p99 in milliseconds, and the errors", () => {
  assert.deepEqual(parseWrk(REPORT), {
    requestsPerSec: 178536.94,
    p50Ms: 0.158,
    p99Ms: 1.01,
    requests: 535784,
    non2xx: 12,
    socketErrors: { connect: 0, read: 3, write: 0, timeout: 7 },
  });
});

Deno.test("parseWrk reports no errors when wrk prints none", () => {
  const clean = REPORT.replace(/^\s+(Socket errors|Non-2xx).*\n/gm, "");
  const result = parseWrk(clean);
  assert.equal(result.non2xx, 0);
  assert.deepEqual(result.socketErrors, { connect: 0, read: 0, write: 0, timeout: 0 });
});

Deno.test("parseWrk names what is missing from a report without --latency", () => {
  assert.throws(
    () => parseWrk(REPORT.replace(/Latency Distribution[\s\S]*?99%.*\n/, "")),
    /--latency distribution/,
  );
});

Deno.test("parseWrkTime converts every unit wrk prints", () => {
  assert.equal(parseWrkTime("812.00us"), 0.812);
  assert.equal(parseWrkTime("1.20ms"), 1.2);
  assert.equal(parseWrkTime("2.01s"), 2010);
  assert.equal(parseWrkTime("1.00m"), 60_000);
  assert.throws(() => parseWrkTime("3 parsecs"), /Cannot read wrk time/);
});

Deno.test("markdownTable aligns the columns", () => {
  assert.equal(
    markdownTable([["name", "req/s"], ["a", "12"], ["longer", "1,234"]]),
    [
      "| name   | req/s |",
      "|:-------|------:|",
      "| a      |    12 |",
      "| longer | 1,234 |",
    ].join("\n"),
  );
});

Deno.test("the bench reports the median round: the middle one, or the lower middle of an even count", () => {
  const round = (requestsPerSec: number) => ({ ...parseWrk(REPORT), requestsPerSec });
  assert.equal(medianRound([round(30), round(10), round(20)]).requestsPerSec, 20);
  assert.equal(medianRound([round(40), round(10), round(30), round(20)]).requestsPerSec, 20);
  assert.equal(medianRound([round(7)]).requestsPerSec, 7);
});

Deno.test("a bench ratio pairs rounds of the same number: a slow round of both cancels out", () => {
  // Round 2 was slow for everything; each round the configuration did half the reference.
  assert.equal(pairedRatio([50, 10, 60], [100, 20, 120]), 0.5);
  // The median of the per-round ratios (1/4, 1/2, 1), not the ratio of the medians (30/20).
  assert.equal(pairedRatio([10, 30, 40], [40, 60, 40]), 0.5);
  // An even count takes the lower middle ratio; rounds without a partner are left out.
  assert.equal(pairedRatio([10, 20, 30, 40, 99], [10, 10, 10, 10]), 2);
  assert.equal(pairedRatio([], [10]), undefined);
});
