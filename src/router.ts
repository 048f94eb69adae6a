/** Route matching: path prefix on the normalized path, methods, host. */

/** What a route matches, as written under `match:`. */
export interface MatchSpec {
  path_prefix?: string;
  methods?: readonly string[];
  host?: string;
}

/** Tests one request against one route's match. */
export type RouteMatcher = (method: string, host: string | null, path: string) => boolean;

/**
 * Compiles a match. A path prefix matches on segment boundaries (`/pay`
 * matches `/pay` and `/pay/x`, not `/payments`); a prefix ending in `/`
 * matches what starts with it. A host matches without its port, case-blind;
 * `*.example.com` matches any subdomain.
 */
export function compileMatch(spec: MatchSpec): RouteMatcher {
  const prefix = spec.path_prefix;
  const methods = spec.methods ? new Set(spec.methods) : undefined;
  const host = spec.host?.toLowerCase();
  const wildcard = host?.startsWith("*.") ? host.slice(1) : undefined;
  let pathMatches: (path: string) => boolean = () => true;
  if (prefix && prefix !== "/") {
    if (prefix.endsWith("/")) {
      pathMatches = (path) => path.startsWith(prefix) || path === prefix.slice(0, -1);
    } else {
      const withSlash = prefix + "/";
      pathMatches = (path) => path === prefix || path.startsWith(withSlash);
    }
  }
  return (method, requestHost, path) => {
    if (methods && !methods.has(method)) return false;
    if (host) {
      const name = hostName(requestHost);
      if (wildcard ? !name.endsWith(wildcard) : name !== host) return false;
    }
    return pathMatches(path);
  };
}

/** The host of a Host header, in lower case, without its port (`[::1]` keeps its brackets). */
export function hostName(header: string | null): string {
  if (!header) return "";
  const value = header.toLowerCase();
  if (value.startsWith("[")) {
    const end = value.indexOf("]");
    return end >= 0 ? value.slice(0, end + 1) : value;
  }
  const colon = value.indexOf(":");
  return colon >= 0 ? value.slice(0, colon) : value;
}

const MALFORMED_ESCAPE = /%(?![0-9A-Fa-f]{2})/;

/** True when a `%` in `path` starts no percent-escape (`/100%`, `/%%32e`): not a valid URI path. */
export function hasMalformedEscape(path: string): boolean {
  return path.includes("%") && MALFORMED_ESCAPE.test(path);
}
const UNRESERVED_ESCAPE = /%(2[dDeE]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA]|5[fF]|7[eE])/g;

/**
 * Decodes the percent-escapes of unreserved characters (letters, digits,
 * `-`, `.`, `_`, `~`) in a path: `/%70ay` is `/pay` (RFC 3986, 6.2.2.2), so a
 * route cannot be dodged by escaping its letters. Other escapes (`%2F`,
 * `%20`, UTF-8) stay as they are.
 */
export function decodeUnreserved(path: string): string {
  // A % that starts no escape (`%%32e`) would make new escapes once decoded: left as is.
  if (!path.includes("%") || MALFORMED_ESCAPE.test(path)) return path;
  return path.replace(
    UNRESERVED_ESCAPE,
    (_, hex: string) => String.fromCharCode(parseInt(hex, 16)),
  );
}

const HOST = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(?::\d{0,5})?$/;

/**
 * True unless the request's Host header is more than a host: a name, an IPv4
 * address or a bracketed IPv6 one, and a port (RFC 9110, 7.2); an empty or
 * missing Host passes (RFC 9112, 3.2). Deno makes a request's URL of its Host
 * and its target, so a "/", "?" or "#" in the Host would change the path.
 */
export function hasPlainHost(request: Request): boolean {
  const host = request.headers.get("host");
  return host === null || host === "" || HOST.test(host);
}
