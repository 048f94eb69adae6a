/** The `identify` plugin: who is calling (API key header, Bearer token, or client IP). */
import { keyDigest, knownKeyDigest } from "../digest.ts";
import { z } from "zod";
import { type ClientIdentity, definePlugin, type RequestContext } from "../plugin.ts";
import { normalizeIp, parseIp } from "../net/cidr.ts";
import { problem, PROBLEM_TYPE_BASE } from "../problem.ts";

const SOURCE_RE = /^(header:[A-Za-z0-9!#$%&'*+.^_`|~-]+|bearer|ip)$/;

const options = z.strictObject({
  from: z.array(
    z.string().regex(SOURCE_RE, {
      error: (issue) => `Unknown identity source "${issue.input}": use header:<name>, bearer or ip`,
    }),
  ).min(1).default(["ip"]),
  required: z.boolean().default(false),
}).refine((value) => !value.required || value.from.some((source) => source !== "ip"), {
  error: "Cannot require a key without a key source: add header:<name> or bearer to from",
  path: ["required"],
});

type Source = { kind: "header"; name: string } | { kind: "bearer" } | { kind: "ip" };

function parseSource(text: string): Source {
  if (text === "ip") return { kind: "ip" };
  if (text === "bearer") return { kind: "bearer" };
  return { kind: "header", name: text.slice("header:".length).toLowerCase() };
}

/** The client id of an API key: `key:` and the first 16 hex digits of its SHA-256. */
export async function keyClientId(key: string): Promise<string> {
  return `key:${(await keyDigest(key)).slice(0, 16)}`;
}

/**
 * The address in one `X-Forwarded-For` hop, in canonical form, or `undefined`
 * when the hop is not an address. Some proxies add a port
 * (`203.0.113.7:4711`, `[2001:db8::7]:4711`); it is dropped.
 */
function hopAddress(hop: string): string | undefined {
  let text = hop.trim();
  const bracketed = /^\[([^\]]+)\](?::\d{1,5})?$/.exec(text);
  if (bracketed) text = bracketed[1]!;
  else if (/^[\d.]+:\d{1,5}$/.test(text)) text = text.slice(0, text.indexOf(":"));
  return parseIp(text) ? normalizeIp(text) : undefined;
}

/**
 * The client's IP: the TCP peer, or, when the peer is a trusted proxy, the
 * right-most `X-Forwarded-For` hop that is not itself trusted. The walk stops
 * at a hop that is not an address (`unknown`, garbage): the client is then the
 * last trusted hop before it, never text a caller made up.
 */
export function clientIp(
  request: Request,
  remoteAddr: string,
  isTrusted: (address: string) => boolean,
): string {
  const peer = normalizeIp(remoteAddr);
  if (!isTrusted(peer)) return peer;
  const forwarded = request.headers.get("x-forwarded-for");
  if (!forwarded) return peer;
  const hops = forwarded.split(",");
  let candidate = peer;
  for (let i = hops.length - 1; i >= 0; i--) {
    if (hops[i]!.trim() === "") continue;
    const address = hopAddress(hops[i]!);
    if (address === undefined) break;
    candidate = address;
    if (!isTrusted(address)) break;
  }
  return candidate;
}

function findKey(ctx: RequestContext, sources: readonly Source[]): string | undefined {
  const headers = ctx.request.headers;
  for (const source of sources) {
    if (source.kind === "header") {
      const value = headers.get(source.name)?.trim();
      if (value) return value;
    } else if (source.kind === "bearer") {
      const value = headers.get("authorization");
      if (value && /^bearer\s+/i.test(value)) {
        const token = value.replace(/^bearer\s+/i, "").trim();
        if (token) return token;
      }
    }
  }
  return undefined;
}

export default definePlugin({
  name: "identify",
  options,
  create(opts, { gateway }) {
    const sources = opts.from.map(parseSource);
    const keySources = sources.filter((source) => source.kind !== "ip");
    const names = opts.from.filter((source) => source !== "ip").join(", ");
    // Not an async function: the common paths (an IP, a key seen before) add
    // no promise of their own to the request.
    return function identify(ctx, next) {
      const ip = clientIp(ctx.request, ctx.remoteAddr, gateway.isTrustedProxy);
      const key = findKey(ctx, keySources);
      if (key === undefined) {
        if (opts.required) {
          return problem(401, {
            type: `${PROBLEM_TYPE_BASE}missing-credentials`,
            title: "Missing credentials",
            detail: `This route needs an API key: send it as ${names}`,
            headers: keySources.some((source) => source.kind === "bearer")
              ? { "www-authenticate": 'Bearer realm="sluice"' }
              : undefined,
          });
        }
        ctx.client = { id: `ip:${ip}`, kind: "ip", ip };
        return next();
      }
      const known = knownKeyDigest(key);
      if (known !== undefined) {
        ctx.client = { id: `key:${known.slice(0, 16)}`, kind: "key", key, ip };
        return next();
      }
      return keyClientId(key).then((id) => {
        ctx.client = { id, kind: "key", key, ip } satisfies ClientIdentity;
        return next();
      });
    };
  },
});
