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

/** Quotes a policy name as an RFC 8941 string. */
function sfString(name: string): string {
  return `"${name.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/** Sets the headers of these policies on `headers`, keeping policies other plugins set. */
export function applyRateLimitHeaders(
  headers: Headers,
  reports: readonly PolicyReport[],
  mode: HeaderMode,
): void {
  if (mode === "none" || reports.length === 0) return;
  if (mode === "ietf" || mode === "both") {
    for (const report of reports) {
      const name = sfString(report.name);
      headers.append("ratelimit-policy", `${name};q=${report.quota};w=${report.windowSeconds}`);
      headers.append("ratelimit", `${name};r=${report.remaining};t=${report.resetSeconds}`);
    }
  }
  if (mode === "legacy" || mode === "both") {
    // The legacy headers hold one policy: the one with the least left.
    let tightest = reports[0]!;
    for (const report of reports) if (report.remaining < tightest.remaining) tightest = report;
    const existing = headers.get("x-ratelimit-remaining");
    if (existing !== null && Number(existing) <= tightest.remaining) return;
    headers.set("x-ratelimit-limit", String(tightest.quota));
    headers.set("x-ratelimit-remaining", String(tightest.remaining));
    headers.set("x-ratelimit-reset", String(tightest.resetSeconds));
  }
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
