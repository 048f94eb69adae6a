/** Rate-limit headers: written into a header list as a response is built, or added to a response afterwards. */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  appendRateLimitHeaders,
  applyRateLimitHeaders,
  type HeaderMode,
  type PolicyReport,
  type RateLimitHeaderSet,
} from "../src/ratelimit_headers.ts";

const report = fc.record({
  name: fc.constantFrom("free", "paid", "10/s", 'odd "name"'),
  quota: fc.integer({ min: 1, max: 1000 }),
  windowSeconds: fc.integer({ min: 1, max: 3600 }),
  remaining: fc.integer({ min: 0, max: 4 }), // small, so that ties happen
  resetSeconds: fc.integer({ min: 0, max: 3600 }),
}) as fc.Arbitrary<PolicyReport>;

const headerSet = fc.record({
  reports: fc.array(report, { minLength: 0, maxLength: 3 }),
  mode: fc.constantFrom<HeaderMode>("none", "legacy", "ietf", "both"),
});

/** Header name and values as a client reads them. */
function seen(headers: Headers): Record<string, string | null> {
  const names = [
    "ratelimit-policy",
    "ratelimit",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "server",
  ];
  return Object.fromEntries(names.map((name) => [name, headers.get(name)]));
}

Deno.test("headers built into the answer read the same as headers each plugin adds afterwards", () => {
  fc.assert(
    fc.property(
      fc.array(headerSet, { maxLength: 3 }),
      fc.option(fc.integer({ min: 0, max: 4 })),
      (sets: RateLimitHeaderSet[], upstreamRemaining: number | null) => {
        const upstream: [string, string][] = [["server", "upstream"]];
        if (upstreamRemaining !== null) {
          upstream.push(["x-ratelimit-limit", "1000"]);
          upstream.push(["x-ratelimit-remaining", String(upstreamRemaining)]);
          upstream.push(["x-ratelimit-reset", "9"]);
        }
        const afterwards = new Headers(upstream);
        for (const set of sets) applyRateLimitHeaders(afterwards, set.reports, set.mode);
        const pairs: [string, string][] = upstream.map(([name, value]) => [name, value]);
        appendRateLimitHeaders(pairs, sets);
        assert.deepEqual(seen(new Headers(pairs)), seen(afterwards));
      },
    ),
    { numRuns: 500 },
  );
});

Deno.test("the legacy headers show the tightest policy; IETF lists every policy in one line", () => {
  const pairs: [string, string][] = [];
  appendRateLimitHeaders(pairs, [
    {
      reports: [{ name: "10/s", quota: 10, windowSeconds: 1, remaining: 9, resetSeconds: 1 }],
      mode: "both",
    },
    {
      reports: [{ name: "free", quota: 60, windowSeconds: 60, remaining: 3, resetSeconds: 40 }],
      mode: "both",
    },
  ]);
  // One field line per header, the policies listed in it.
  assert.deepEqual(pairs.map(([name]) => name), [
    "ratelimit-policy",
    "ratelimit",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
  ]);
  const headers = new Headers(pairs);
  assert.equal(headers.get("ratelimit-policy"), `"10/s";q=10;w=1, "free";q=60;w=60`);
  assert.equal(headers.get("ratelimit"), `"10/s";r=9;t=1, "free";r=3;t=40`);
  assert.equal(headers.get("x-ratelimit-limit"), "60");
  assert.equal(headers.get("x-ratelimit-remaining"), "3");
  assert.equal(headers.get("x-ratelimit-reset"), "40");
});
