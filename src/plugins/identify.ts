/**
 * The `identify` plugin: who is calling (API key header, Bearer token, a
 * claim of a verified JWT, or client IP).
 */
import { keyDigest, knownKeyDigest } from "../digest.ts";
import { z } from "zod";
import { type ClientIdentity, definePlugin, type RequestContext } from "../plugin.ts";
import { normalizeIp, parseIp } from "../net/cidr.ts";
import { problem, PROBLEM_TYPE_BASE } from "../problem.ts";
import { duration } from "../config/schema.ts";
import { rememberBounded } from "../bounded_map.ts";
import { claimValue, JWT_ALGORITHMS, type JwtOutcome, JwtVerifier } from "../jwt.ts";

// A claim name is any visible ASCII text (namespaced claims hold ":" and "/").
const SOURCE_RE = /^(header:[A-Za-z0-9!#$%&'*+.^_`|~-]+|bearer|jwt:[\x21-\x7e]+|ip)$/;

const oneOrMany = z.union([z.string().min(1), z.array(z.string().min(1)).min(1)])
  .transform((value) => typeof value === "string" ? [value] : value);

const jwtOptions = z.strictObject({
  /** A shared secret (HS256, HS384, HS512), at least 32 bytes. */
  secret: z.string().optional(),
  /** A PEM public key (RS*, PS*, ES*, EdDSA). */
  public_key: z.string().optional(),
  /** A JSON Web Key Set: `{ keys: [...] }`. */
  jwks: z.strictObject({ keys: z.array(z.looseObject({ kty: z.string() })).min(1) }).optional(),
  /** The algorithms accepted; by default every one the key allows. */
  algorithms: z.array(z.enum(JWT_ALGORITHMS)).min(1)
    .optional(),
  /** `iss` must be (one of) this. */
  issuer: oneOrMany.optional(),
  /** `aud` must name (one of) this. */
  audience: oneOrMany.optional(),
  /** Leeway for `exp` and `nbf`. */
  clock_skew: duration().default(60_000),
  /** A claim naming the caller's tier (for the `tier` step). */
  tier_claim: z.string().regex(/^[\x21-\x7e]+$/, { error: "Expected a claim name" }).optional(),
}).refine(
  (value) =>
    [value.secret, value.public_key, value.jwks].filter((key) => key !== undefined).length === 1,
  { error: "Give the key in exactly one of secret, public_key or jwks" },
);

const options = z.strictObject({
  from: z.array(
    z.string().regex(SOURCE_RE, {
      error: (issue) =>
        `Unknown identity source "${issue.input}": use header:<name>, bearer, jwt:<claim> or ip`,
    }),
  ).min(1).default(["ip"]),
  required: z.boolean().default(false),
  /** How `jwt:<claim>` sources check tokens. */
  jwt: jwtOptions.optional(),
}).refine((value) => !value.required || value.from.some((source) => source !== "ip"), {
  error:
    "Cannot require a key without a key source: add header:<name>, bearer or jwt:<claim> to from",
  path: ["required"],
}).refine((value) => value.jwt || !value.from.some((source) => source.startsWith("jwt:")), {
  error:
    "A jwt:<claim> source needs the key that signs the tokens: add jwt: { secret: ... }, { public_key: ... } or { jwks: ... }",
  path: ["jwt"],
}).refine((value) => !value.jwt || value.from.some((source) => source.startsWith("jwt:")), {
  error: "jwt is set but no source reads a token: add jwt:<claim> (such as jwt:sub) to from",
  path: ["jwt"],
}).refine((value) => {
  const lastJwt = value.from.findLastIndex((source) => source.startsWith("jwt:"));
  return lastJwt < 0 || !value.from.slice(0, lastJwt).some(readsAuthorization);
}, {
  error:
    "Put jwt:<claim> before bearer and header:authorization in from: a source before it takes every token as a key, unverified",
  path: ["from"],
});

/** True for a source that takes the Authorization header as a key. */
function readsAuthorization(source: string): boolean {
  return source === "bearer" || source.toLowerCase() === "header:authorization";
}

type Source =
  | { kind: "header"; name: string }
  | { kind: "bearer" }
  | { kind: "jwt"; claim: string }
  | { kind: "ip" };

function parseSource(text: string): Source {
  if (text === "ip") return { kind: "ip" };
  if (text === "bearer") return { kind: "bearer" };
  if (text.startsWith("jwt:")) return { kind: "jwt", claim: text.slice("jwt:".length) };
  return { kind: "header", name: text.slice("header:".length).toLowerCase() };
}

/** Verified tokens remembered per identify step, so a token is verified once, not per request. */
const TOKEN_CACHE_MAX = 10_000;
/** Longer tokens are verified every time: a client must not park megabytes here. */
const TOKEN_CACHE_MAX_LENGTH = 4_096;

type TokenCheck = Extract<JwtOutcome, { ok: true }>;

/** The tokens one identify step verified lately, checked again only for their time limits. */
class TokenCache {
  #verifier: JwtVerifier;
  #verified = new Map<string, TokenCheck>();

  constructor(verifier: JwtVerifier) {
    this.#verifier = verifier;
  }

  /** The outcome for `token` now: from memory when it verified before, else a promise of it. */
  check(token: string): JwtOutcome | Promise<JwtOutcome> {
    const now = Date.now();
    const known = this.#verified.get(token);
    if (known && now < known.expiresAtMs && now >= known.notBeforeMs) return known;
    return this.#verifier.verify(token, now).then((outcome) => {
      if (outcome.ok && token.length <= TOKEN_CACHE_MAX_LENGTH) {
        this.#verified.delete(token);
        rememberBounded(this.#verified, token, outcome, TOKEN_CACHE_MAX);
      } else if (!outcome.ok) {
        this.#verified.delete(token);
      }
      return outcome;
    });
  }
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

/** The token of an `Authorization: Bearer <token>` header, if any. */
function bearerToken(headers: Headers): string | undefined {
  const value = headers.get("authorization");
  if (value && /^bearer\s+/i.test(value)) {
    const token = value.replace(/^bearer\s+/i, "").trim();
    if (token) return token;
  }
  return undefined;
}

/** Who a source named: an API key, or a verified token's claim (and the tier it claims). */
type Found = { kind: "key"; value: string } | {
  kind: "jwt";
  /** What the id is made from: the claim's name and value, apart from any API key. */
  identity: string;
  value: string;
  tier: string | undefined;
};

/** What the sources said: a caller, nobody, or a refusal (a token that does not verify). */
type Finding = Found | Response | undefined;

export default definePlugin({
  name: "identify",
  options,
  async create(opts, { gateway, pipeline, position, log }) {
    const sources = opts.from.map(parseSource);
    const keySources = sources.filter((source) => source.kind !== "ip");
    const later = pipeline.slice(position + 1);
    if (
      sources.some((source) => source.kind === "header" || source.kind === "bearer") &&
      later.includes("sliding-window") && !later.includes("tier")
    ) {
      // Any text is a key here: counted as itself, each made-up key is a fresh quota.
      log.warn(
        "API keys are counted per key, but no tier step checks them: a caller gets a fresh quota with each made-up key; add a tier step (unknown_key: reject, or a tier) to count unknown keys by address",
      );
    }
    const names = opts.from.filter((source) => source !== "ip").join(", ");
    const bearerIsKey = sources.some((source) => source.kind === "bearer");
    const tokens = opts.jwt
      ? new TokenCache(
        await JwtVerifier.create({
          secret: opts.jwt.secret,
          publicKey: opts.jwt.public_key,
          jwks: opts.jwt.jwks,
          algorithms: opts.jwt.algorithms,
          issuers: opts.jwt.issuer,
          audiences: opts.jwt.audience,
          clockSkewMs: opts.jwt.clock_skew,
        }),
      )
      : undefined;

    /** The first source from `index` on that names the caller; a promise only while a token is verified. */
    function find(headers: Headers, index: number): Finding | Promise<Finding> {
      for (let i = index; i < keySources.length; i++) {
        const source = keySources[i]!;
        if (source.kind === "header") {
          const value = headers.get(source.name)?.trim();
          if (value) return { kind: "key", value };
        } else if (source.kind === "bearer") {
          const token = bearerToken(headers);
          if (token) return { kind: "key", value: token };
        } else if (source.kind === "jwt") {
          const token = bearerToken(headers);
          if (!token) continue;
          const outcome = tokens!.check(token);
          return outcome instanceof Promise
            ? outcome.then((settled) => afterToken(headers, i, source.claim, settled))
            : afterToken(headers, i, source.claim, outcome);
        }
      }
      return undefined;
    }

    function afterToken(
      headers: Headers,
      index: number,
      claim: string,
      outcome: JwtOutcome,
    ): Finding | Promise<Finding> {
      if (!outcome.ok) {
        // An opaque token is an API key when `bearer` is a source too.
        if (outcome.notJwt && bearerIsKey) return find(headers, index + 1);
        return invalidToken(outcome.reason);
      }
      const value = claimValue(outcome.claims, claim);
      // A valid token without this claim: the next source may name the caller.
      if (value === undefined) return find(headers, index + 1);
      const tierClaim = opts.jwt?.tier_claim;
      const tier = tierClaim === undefined ? undefined : outcome.claims[tierClaim];
      return {
        kind: "jwt",
        // The claim's name and type count: sub "x" is not client_id "x", nor 42 "42".
        identity: JSON.stringify([claim, outcome.claims[claim]]),
        value,
        tier: typeof tier === "string" ? tier : undefined,
      };
    }

    function settle(
      ctx: RequestContext,
      next: () => Promise<Response>,
      ip: string,
      found: Finding,
    ): Response | Promise<Response> {
      if (found instanceof Response) return found;
      if (found === undefined) {
        if (opts.required) {
          return problem(401, {
            type: `${PROBLEM_TYPE_BASE}missing-credentials`,
            title: "Missing credentials",
            detail: `This route needs an API key: send it as ${names}`,
            // A 401 names how to authenticate (RFC 9110, 11.6.1): a bearer
            // token, or an API key in a header (no registered scheme: Kong's way).
            headers: {
              "www-authenticate": keySources.some((source) => source.kind !== "header")
                ? 'Bearer realm="sluice"'
                : 'ApiKey realm="sluice"',
            },
          });
        }
        ctx.client = { id: `ip:${ip}`, kind: "ip", ip };
        return next();
      }
      // A token's caller has ids of its own (jwt:): anyone may send any text
      // as an API key, and it must not be a way to pass as someone's subject.
      const hashed = found.kind === "jwt" ? found.identity : found.value;
      const prefix = found.kind === "jwt" ? "jwt:" : "key:";
      const identify = (digest: string): ClientIdentity =>
        found.kind === "jwt"
          ? {
            id: prefix + digest.slice(0, 16),
            kind: "jwt",
            key: found.value,
            ip,
            tier: found.tier,
          }
          : { id: prefix + digest.slice(0, 16), kind: "key", key: found.value, ip };
      const known = knownKeyDigest(hashed);
      if (known !== undefined) {
        ctx.client = identify(known);
        return next();
      }
      return keyDigest(hashed).then((digest) => {
        ctx.client = identify(digest);
        return next();
      });
    }

    // Not an async function: the common paths (an IP, a key or token seen
    // before) add no promise of their own to the request.
    return function identify(ctx, next) {
      const ip = clientIp(ctx.request, ctx.remoteAddr, gateway.isTrustedProxy);
      const found = find(ctx.request.headers, 0);
      return found instanceof Promise
        ? found.then((settled) => settle(ctx, next, ip, settled))
        : settle(ctx, next, ip, found);
    };
  },
});

/** The 401 for a bearer token that is not accepted (RFC 6750 3.1). */
function invalidToken(reason: string): Response {
  return problem(401, {
    type: `${PROBLEM_TYPE_BASE}invalid-token`,
    title: "Invalid token",
    detail: `The bearer token is not accepted: ${reason}`,
    // The reason is in the body only: it may quote the token, which is no header text.
    headers: { "www-authenticate": 'Bearer realm="sluice", error="invalid_token"' },
  });
}
