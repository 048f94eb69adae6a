/** The `identify` plugin: who is calling (API key header, Bearer token, or client IP). */
import { z } from "zod";
import { type ClientIdentity, definePlugin, type RequestContext } from "../plugin.ts";
import { normalizeIp } from "../net/cidr.ts";
import { problem, PROBLEM_TYPE_BASE } from "../problem.ts";

const SOURCE_RE = /^(header:[A-Za-z0-9!#$%&'*+.^_`|~-]+|bearer|ip)$/;

const options = z.strictObject({
  from: z.array(
    z.string().regex(SOURCE_RE, {
      error: (issue) => `Unknown identity source "${issue.input}": use header:<name>, bearer or ip`,
    }),
  ).min(1).default(["ip"]),
  required: z.boolean().default(false),
});

type Source = { kind: "header"; name: string } | { kind: "bearer" } | { kind: "ip" };

function parseSource(text: string): Source {
  if (text === "ip") return { kind: "ip" };
  if (text === "bearer") return { kind: "bearer" };
  return { kind: "header", name: text.slice("header:".length).toLowerCase() };
}

const ID_CACHE_MAX = 10_000;
const idCache = new Map<string, string>();

/** The client id of an API key: `key:` and the first 16 hex digits of its SHA-256. */
export async function keyClientId(key: string): Promise<string> {
  const cached = idCache.get(key);
  if (cached !== undefined) return cached;
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(key));
  let hex = "";
  for (const byte of new Uint8Array(digest, 0, 8)) hex += byte.toString(16).padStart(2, "0");
  const id = `key:${hex}`;
  if (idCache.size >= ID_CACHE_MAX) idCache.delete(idCache.keys().next().value!);
  idCache.set(key, id);
  return id;
}

/**
 * The client's IP: the TCP peer, or, when the peer is a trusted proxy, the
 * right-most `X-Forwarded-For` hop that is not itself trusted.
 */
export function clientIp(
  request: Request,
  remoteAddr: string,
  isTrusted: (address: string) => boolean,
): string {
  if (!isTrusted(remoteAddr)) return normalizeIp(remoteAddr);
  const forwarded = request.headers.get("x-forwarded-for");
  if (!forwarded) return normalizeIp(remoteAddr);
  const hops = forwarded.split(",");
  let candidate = remoteAddr;
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = hops[i]!.trim();
    if (hop === "") continue;
    candidate = hop;
    if (!isTrusted(hop)) break;
  }
  return normalizeIp(candidate);
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
    return async function identify(ctx, next) {
      const ip = clientIp(ctx.request, ctx.remoteAddr, gateway.isTrustedProxy);
      const key = findKey(ctx, keySources);
      let client: ClientIdentity;
      if (key !== undefined) {
        client = { id: await keyClientId(key), kind: "key", key, ip };
      } else if (opts.required) {
        return problem(401, {
          type: `${PROBLEM_TYPE_BASE}missing-credentials`,
          title: "Missing credentials",
          detail: `This route needs an API key: send it as ${names}`,
          headers: keySources.some((source) => source.kind === "bearer")
            ? { "www-authenticate": 'Bearer realm="sluice"' }
            : undefined,
        });
      } else {
        client = { id: `ip:${ip}`, kind: "ip", ip };
      }
      ctx.client = client;
      return await next();
    };
  },
});
