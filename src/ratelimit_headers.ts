/**
 * Rate-limit response headers: `RateLimit-Policy` and `RateLimit`
 * (draft-ietf-httpapi-ratelimit-headers-11) and the legacy
 * `X-RateLimit-Limit`, `-Remaining`, `-Reset`.
 */

/** Which headers a limit plugin writes. */
export type HeaderMode = "none" | "legacy" | "ietf" | "both";

/** One quota policy and where the client stands in it. */
export interface PolicyReport {
  /** The policy name, such as a tier name. */
  name: string;
  /** The quota: units per window. */
  quota: number;
  /** The window in seconds. */
  windowSeconds: number;
  remaining: number;
  /** Seconds until the quota next grows. */
  resetSeconds: number;
}

const quoted = new Map<string, string>();

/** Quotes a policy name as an RFC 8941 string (names come from the config: few, so kept). */
function sfString(name: string): string {
  let text = quoted.get(name);
  if (text === undefined) {
    text = `"${name.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
    if (quoted.size < 1_000) quoted.set(name, text);
  }
  return text;
}

/** One limit plugin's headers: its policy reports and which headers it writes. */
export interface RateLimitHeaderSet {
  reports: readonly PolicyReport[];
  mode: HeaderMode;
}

/**
 * The report the legacy headers show: the one with the least left; of equals,
 * the one that resets last (when none is left, that is when a request passes).
 */
function tightest(reports: readonly PolicyReport[]): PolicyReport {
  let least = reports[0]!;
  for (const report of reports) {
    if (
      report.remaining < least.remaining ||
      (report.remaining === least.remaining && report.resetSeconds > least.resetSeconds)
    ) {
      least = report;
    }
  }
  return least;
}

function writesIetf(mode: HeaderMode): boolean {
  return mode === "ietf" || mode === "both";
}

function writesLegacy(mode: HeaderMode): boolean {
  return mode === "legacy" || mode === "both";
}

/** The IETF field values of these reports: each policy, and where the client stands in it. */
function ietfValues(
  reports: readonly PolicyReport[],
  policies: string[],
  states: string[],
): void {
  for (const report of reports) {
    const name = sfString(report.name);
    policies.push(`${name};q=${report.quota};w=${report.windowSeconds}`);
    states.push(`${name};r=${report.remaining};t=${report.resetSeconds}`);
  }
}

/** Sets the headers of these policies on `headers`, keeping policies other plugins set. */
export function applyRateLimitHeaders(
  headers: Headers,
  reports: readonly PolicyReport[],
  mode: HeaderMode,
): void {
  if (mode === "none" || reports.length === 0) return;
  if (writesIetf(mode)) {
    const policies: string[] = [];
    const states: string[] = [];
    ietfValues(reports, policies, states);
    headers.append("ratelimit-policy", policies.join(", "));
    headers.append("ratelimit", states.join(", "));
  }
  if (writesLegacy(mode)) {
    // The legacy headers hold one policy: the one with the least left.
    const least = tightest(reports);
    const existing = headers.get("x-ratelimit-remaining");
    if (existing !== null && Number(existing) <= least.remaining) return;
    headers.set("x-ratelimit-limit", String(least.quota));
    headers.set("x-ratelimit-remaining", String(least.remaining));
    headers.set("x-ratelimit-reset", String(least.resetSeconds));
  }
}

/**
 * Adds the headers of several limit plugins to a header list that is about to
 * become a response, as {@linkcode applyRateLimitHeaders} would for each set
 * in turn: IETF policies accumulate, the legacy headers end on the tightest
 * (headers the list already holds, such as an upstream's, count too). Names
 * in `pairs` are in lower case, as a `Headers` object and the upstream client
 * give them.
 */
export function appendRateLimitHeaders(
  pairs: [string, string][],
  sets: readonly RateLimitHeaderSet[],
): void {
  let legacy: PolicyReport | undefined;
  let legacyRemaining = Infinity;
  let upstreamLegacy = false;
  for (const [name, value] of pairs) {
    if (name === "x-ratelimit-remaining") {
      legacyRemaining = Number(value);
      upstreamLegacy = true;
    } else if (name === "x-ratelimit-limit" || name === "x-ratelimit-reset") {
      // An upstream's partial trio is replaced whole, never merged with the gateway's.
      upstreamLegacy = true;
    }
  }
  // Every policy in one field line per header (a list, RFC 9651): each line
  // costs the HTTP server as much as a header.
  const policies: string[] = [];
  const states: string[] = [];
  for (const set of sets) {
    if (set.reports.length === 0) continue;
    if (writesIetf(set.mode)) ietfValues(set.reports, policies, states);
    if (writesLegacy(set.mode)) {
      const least = tightest(set.reports);
      if (!(legacyRemaining <= least.remaining)) {
        legacy = least;
        legacyRemaining = least.remaining;
      }
    }
  }
  if (policies.length > 0) {
    pairs.push(["ratelimit-policy", policies.join(", ")]);
    pairs.push(["ratelimit", states.join(", ")]);
  }
  if (!legacy) return;
  if (upstreamLegacy) {
    for (let i = pairs.length - 1; i >= 0; i--) {
      if (/^x-ratelimit-(limit|remaining|reset)$/.test(pairs[i]![0])) pairs.splice(i, 1);
    }
  }
  pairs.push(["x-ratelimit-limit", String(legacy.quota)]);
  pairs.push(["x-ratelimit-remaining", String(legacy.remaining)]);
  pairs.push(["x-ratelimit-reset", String(legacy.resetSeconds)]);
}

/** Whole seconds for a header: milliseconds rounded up. */
export function toSeconds(ms: number): number {
  return Math.max(0, Math.ceil(ms / 1000));
}

/**
 * Adds the headers to a response and returns it: the response itself, or a
 * copy when its headers are immutable (a plugin may return one from `fetch`).
 */
export function withRateLimitHeaders(
  response: Response,
  reports: readonly PolicyReport[],
  mode: HeaderMode,
): Response {
  if (mode === "none") return response;
  try {
    applyRateLimitHeaders(response.headers, reports, mode);
    return response;
  } catch {
    const copy = new Response(response.body, {
      status: response.status,
      statusText: response.statusText,
      headers: new Headers(response.headers),
    });
    applyRateLimitHeaders(copy.headers, reports, mode);
    return copy;
  }
}
