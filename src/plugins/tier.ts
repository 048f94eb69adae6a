/**
 * The `tier` plugin: the caller's API key -> its tier, from the config's
 * `keys` (list or keys files) or a Redis hash (`redis_hash`, fields are the
 * SHA-256 hex of keys, values tier names) with a local TTL cache. A caller
 * without a key gets the `default` tier. A caller named by a verified JWT
 * gets the tier its `tier_claim` names, else the default: never a key's.
 */
import { z } from "zod";
import { duration } from "../config/schema.ts";
import { rememberBounded } from "../bounded_map.ts";
import { keyDigest } from "../digest.ts";
import { definePlugin, type RequestContext } from "../plugin.ts";
import { problem, PROBLEM_TYPE_BASE } from "../problem.ts";
import { clientIdOf, storeUnavailable } from "./_limit.ts";

const CACHE_MAX = 50_000;
/** Unknown keys are remembered apart, fewer and shorter: junk keys must not push out known ones. */
const MISSES_MAX = 10_000;
const MISS_TTL_MS = 5_000;
/** At most one warning per this long about keys the store could not look up. */
const WARN_EVERY_MS = 10_000;
/** A key the store could not look up (it failed, and the key was never cached). */
const UNREADABLE = Symbol("unreadable");

export default definePlugin({
  name: "tier",
  options: z.strictObject({
    /** The tier of callers without a key. */
    default: z.string().min(1).default("free"),
    /** An unknown key: `reject` (401), or the tier to give it. */
    unknown_key: z.string().min(1).default("reject"),
    /** How long a tier read from a Redis hash is cached locally. */
    cache_ttl: duration().default(30_000),
  }),
  create(options, { gateway, pipeline, position, log, route }) {
    const tiers = gateway.tiers;
    const known = Object.keys(tiers);
    for (
      const [what, name] of [["default", options.default], ["unknown_key", options.unknown_key]]
    ) {
      if (what === "unknown_key" && name === "reject") continue;
      if (!Object.hasOwn(tiers, name!)) {
        throw new Error(
          `${what}: tier "${name}" is not defined under tiers (defined: ${
            known.join(", ") || "none"
          })`,
        );
      }
    }
    if (!pipeline.slice(0, position).includes("identify")) {
      throw new Error("tier needs an identify step before it in the pipeline");
    }
    const keys = gateway.keys;
    const hashes = gateway.keyHashes;
    const limitFollows = pipeline.slice(position + 1).some((step) =>
      step === "sliding-window" || step === "token-bucket"
    );
    // Keys found, by digest, oldest first: kept past cache_ttl for a store that fails.
    const cache = new Map<string, { tier: string; until: number }>();
    // Keys not found, for a short while.
    const misses = new Map<string, number>();

    let warnedAt = -Infinity;
    let unwarned = 0;

    async function fromHashes(digest: string): Promise<string | undefined | typeof UNREADABLE> {
      const now = Date.now();
      const cached = cache.get(digest);
      if (cached && cached.until > now) return cached.tier;
      if (!cached && (misses.get(digest) ?? 0) > now) return undefined;
      let tier: string | undefined;
      for (const hash of hashes) {
        try {
          tier = await gateway.store.hashGet(hash, digest);
        } catch (error) {
          // The store is failing: use what we knew, however old. A key never
          // seen is not unknown, only unread: `decide` says what it gets.
          unwarned++;
          if (now - warnedAt >= WARN_EVERY_MS) {
            log.warn("cannot read API keys from the store", { hash, error, lookups: unwarned });
            warnedAt = now;
            unwarned = 0;
          }
          return cached?.tier ?? UNREADABLE;
        }
        if (tier !== undefined) break;
      }
      if (tier === undefined) {
        cache.delete(digest);
        misses.delete(digest);
        rememberBounded(misses, digest, now + Math.min(options.cache_ttl, MISS_TTL_MS), MISSES_MAX);
        return undefined;
      }
      // A refreshed key moves to the end, so it is the last to go.
      cache.delete(digest);
      rememberBounded(cache, digest, { tier, until: now + options.cache_ttl }, CACHE_MAX);
      misses.delete(digest);
      return tier;
    }

    // Not an async function: a caller without a key adds no promise of its own.
    return function tier(ctx, next) {
      const client = ctx.client;
      if (client?.kind === "jwt") {
        // A verified token is looked up in no key list (its claim is no secret):
        // its tier is the one it claims, when that is a tier, else the default.
        ctx.tier = client.tier !== undefined && Object.hasOwn(tiers, client.tier)
          ? client.tier
          : options.default;
        gateway.clients.seen(clientIdOf(ctx), ctx.tier, route.name);
        return next();
      }
      if (!client?.key) {
        ctx.tier = options.default;
        // /clients/{id} shows the tier, on a route with no limit step too.
        gateway.clients.seen(clientIdOf(ctx), ctx.tier, route.name);
        return next();
      }
      return decide(ctx, client.key).then((answer) => answer ?? next());
    };

    /** Sets the caller's tier, or answers 401 for an unknown key. */
    async function decide(ctx: RequestContext, key: string): Promise<Response | undefined> {
      const digest = await keyDigest(key);
      let name: string | undefined | typeof UNREADABLE = keys.get(digest)?.tier;
      if (name === undefined && hashes.length > 0) name = await fromHashes(digest);
      if (name === UNREADABLE) {
        // A store that is down is `on_failure`'s business, never the key's:
        // the caller gets the default tier, counted as its address (a made-up
        // key must bring no fresh quota), and the limit steps after this one
        // apply the policy (a 503 under deny, unless they are shadows). With
        // none after it, failing closed is this step's to do.
        if (!limitFollows && gateway.store.health().on_failure === "deny") {
          return storeUnavailable(1_000);
        }
        name = options.default;
        countAsAddress(ctx);
      } else if (name === undefined || !Object.hasOwn(tiers, name)) {
        if (options.unknown_key === "reject") {
          return problem(401, {
            type: `${PROBLEM_TYPE_BASE}unknown-api-key`,
            title: "Unknown API key",
            detail: "The API key sent is not known to this gateway",
            headers: {
              "www-authenticate": sentAsBearer(ctx, key)
                ? 'Bearer realm="sluice", error="invalid_token"'
                : 'ApiKey realm="sluice"',
            },
          });
        }
        name = options.unknown_key;
        countAsAddress(ctx);
      }
      ctx.tier = name;
      gateway.clients.seen(clientIdOf(ctx), name, route.name);
      return undefined;
    }
  },
});

/**
 * A key nobody knows names nobody: it is counted as its address, as if it had
 * sent no key. Counted as itself, every made-up key would bring a fresh quota.
 */
function countAsAddress(ctx: RequestContext): void {
  const client = ctx.client!;
  ctx.client = { id: `ip:${client.ip}`, kind: "ip", key: client.key, ip: client.ip };
}

/**
 * True when the key came as a bearer token: `Authorization: Bearer <key>`
 * (the `bearer` source), or that whole header (`header:authorization`).
 */
function sentAsBearer(ctx: RequestContext, key: string): boolean {
  const header = ctx.request.headers.get("authorization") ?? "";
  const match = /^bearer\s+(.+)$/i.exec(header);
  return match !== null && (match[1]!.trim() === key || header.trim() === key);
}
