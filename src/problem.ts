/** RFC 9457 problem+json answers for everything the gateway says itself. */

/** What a problem answer says. */
export interface ProblemOptions {
  /** A URI naming the kind of problem. @default "about:blank" */
  type?: string;
  /** A short summary; defaults to the status text. */
  title?: string;
  /** What happened to this request. */
  detail?: string;
  /** Seconds to wait before a retry; sets `Retry-After` (whole seconds, at least 1). */
  retryAfterSeconds?: number;
  /** Extra headers for the answer. */
  headers?: HeadersInit;
  /** Extra members of the JSON body. */
  extensions?: Record<string, unknown>;
}

/** The prefix of the `type` URIs of sluice's own problems, such as `urn:sluice:problem:quota-exceeded`. */
export const PROBLEM_TYPE_BASE = "urn:sluice:problem:";

const STATUS_TITLES: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  413: "Content Too Large",
  429: "Too Many Requests",
  500: "Internal Server Error",
  501: "Not Implemented",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};

// Marks on the response itself (a property, not a WeakSet: nothing for the GC to track).
const GATEWAY_MADE = Symbol("sluice.gateway-made");
const CLIENT_CLOSED = Symbol("sluice.client-closed");
type Marked = Response & {
  [GATEWAY_MADE]?: true;
  [CLIENT_CLOSED]?: true;
};

/** True when the response was made by {@linkcode problem}: the gateway answered, not the upstream. */
export function isGatewayAnswer(response: Response): boolean {
  return (response as Marked)[GATEWAY_MADE] === true;
}

/** The answer, never sent, to a request whose client hung up (499, as nginx logs it). */
export function clientClosed(): Response {
  const response = new Response(null, { status: 499 }) as Marked;
  response[CLIENT_CLOSED] = true;
  return response;
}

/** True for {@linkcode clientClosed}'s answer (not an upstream's own 499). */
export function isClientClosed(response: Response): boolean {
  return (response as Marked)[CLIENT_CLOSED] === true;
}

/** The caller's headers as a list, without those for which `replaced(name)` holds. */
function headerPairs(
  init: HeadersInit | undefined,
  replaced: (lowerCaseName: string) => boolean,
): [string, string][] {
  if (init === undefined) return [];
  const pairs: [string, string][] = [];
  const entries: Iterable<[string, string]> | [string, string][] = init instanceof Headers
    ? init
    : Array.isArray(init)
    ? init as [string, string][]
    : Symbol.iterator in init
    ? init as Iterable<[string, string]>
    : Object.entries(init);
  for (const [name, value] of entries) {
    if (!replaced(name.toLowerCase())) pairs.push([name, value]);
  }
  return pairs;
}

/**
 * Builds an `application/problem+json` response.
 *
 * @example
 * ```ts
 * import { problem } from "./problem.ts";
 * const res = problem(429, { detail: "Quota spent", retryAfterSeconds: 3 });
 * res.headers.get("retry-after"); // "3"
 * ```
 */
export function problem(status: number, options: ProblemOptions = {}): Response {
  // Built member by member (no spreads): a refused request's answer is the
  // hot path of a gateway under attack.
  const body: Record<string, unknown> = {
    type: options.type ?? "about:blank",
    title: options.title ?? STATUS_TITLES[status] ?? "Error",
    status,
  };
  if (options.detail !== undefined) body.detail = options.detail;
  const extensions = options.extensions;
  if (extensions) { for (const name in extensions) body[name] = extensions[name]; }
  // One header list, validated once when the Response is built (a Headers
  // object here would be validated again when copied into the response).
  // 429 and 503 are not heuristically cacheable (RFC 9111, 4.2.2), so they
  // need no cache-control; leaving it off keeps a refusal's answer small.
  const noStore = status !== 429 && status !== 503;
  const retryAfter = options.retryAfterSeconds;
  const headers = headerPairs(
    options.headers,
    (name) =>
      name === "content-type" || (noStore && name === "cache-control") ||
      (retryAfter !== undefined && name === "retry-after"),
  );
  headers.push(["content-type", "application/problem+json"]);
  if (noStore) headers.push(["cache-control", "no-store"]);
  if (retryAfter !== undefined) {
    headers.push(["retry-after", String(Math.max(1, Math.ceil(retryAfter)))]);
  }
  const response = new Response(JSON.stringify(body), { status, headers });
  (response as Marked)[GATEWAY_MADE] = true;
  return response;
}
