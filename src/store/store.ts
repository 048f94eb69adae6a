/**
 * The narrow store interface: what the limit plugins need of a store, no more.
 * Every algorithm is one call, atomic on the store, with the store's clock.
 */
import type { EnvLookup } from "../config/interpolate.ts";

/** The sliding-window algorithms. */
export type WindowAlgorithm = "log" | "counter" | "fixed";

/** One limit: `limit` units per `windowMs`. */
export interface WindowLimit {
  readonly limit: number;
  readonly windowMs: number;
}

/** One sliding-window decision to make. */
export interface WindowQuery {
  /** The decision's base key, `{sluice:<route>:<client>}`; every key it uses shares its hash slot. */
  readonly key: string;
  readonly algorithm: WindowAlgorithm;
  /** Every limit, decided together: admitted to all or to none. */
  readonly limits: readonly WindowLimit[];
  /** Units this request takes; 0 only reads. */
  readonly cost: number;
  /**
   * The request passes whatever the answer (`shadow: true`): an admission the
   * store makes after its timeout counts it, and is not given back.
   */
  readonly passesAnyway?: boolean;
  /** Tests only: the time in ms instead of the store's clock. */
  readonly now?: number;
}

/** Where one limit stands after a decision. */
export interface LimitState {
  readonly limit: number;
  readonly windowMs: number;
  readonly remaining: number;
  /** Milliseconds until the limit's quota next grows. */
  readonly resetMs: number;
}

/** The answer to a {@linkcode WindowQuery}. */
export interface WindowDecision {
  readonly allowed: boolean;
  /** When denied: milliseconds until the same request would pass. */
  readonly retryAfterMs: number;
  /** When denied: the index of the limit that refused with the longest wait (the first of equals), else -1. */
  readonly violated: number;
  /** One per limit, in order. */
  readonly states: readonly LimitState[];
  /**
   * Redis only: what names this call's admission, for
   * {@linkcode Store.refundWindow} to give it back ("" or absent: it cannot be).
   */
  readonly stamp?: string;
}

/** One token-bucket decision to make. */
export interface BucketQuery {
  readonly key: string;
  /** Tokens added per period. */
  readonly rate: number;
  readonly periodMs: number;
  /** The most tokens the bucket holds. */
  readonly burst: number;
  /** Tokens this request takes; 0 only reads; negative gives tokens back (a waiter that left). */
  readonly cost: number;
  /** The longest wait a request may be given for its tokens. */
  readonly maxDelayMs: number;
  /**
   * For a refund (a negative cost): the {@linkcode BucketDecision.reservation}
   * that took the tokens. They go back only while it is the bucket's latest:
   * given back behind a later waiter's slot, they would let a newcomer through
   * beside that waiter. Without it a refund always goes back.
   */
  readonly refundOf?: number;
  readonly now?: number;
}

/** The answer to a {@linkcode BucketQuery}. */
export interface BucketDecision {
  readonly allowed: boolean;
  /** When allowed: how long to wait before the request may go on. */
  readonly delayMs: number;
  readonly remaining: number;
  /** When refused: milliseconds until the same request would be given a wait within max_delay. */
  readonly retryAfterMs: number;
  /** Milliseconds until the bucket is full again. */
  readonly resetMs: number;
  /** The bucket's count of reservations after this decision: this one's number, when it took tokens. */
  readonly reservation: number;
}

/** The store kinds of the config. */
export type StoreKind = "memory" | "redis" | "redis-cluster";

/** A rate-limit store. */
export interface Store {
  readonly kind: StoreKind;
  window(query: WindowQuery): Promise<WindowDecision>;
  bucket(query: BucketQuery): Promise<BucketDecision>;
  /**
   * Gives back the units an admission counted (`query` as it was decided,
   * `stamp` from its decision), where the store can: for an answer that came
   * after the caller had stopped waiting for it.
   */
  refundWindow?(query: WindowQuery, stamp: string): Promise<void>;
  /** One field of a hash (`HGET`), or undefined. */
  hashGet(key: string, field: string): Promise<string | undefined>;
  /** Resolves when the store answers. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

/** The store kind in force: `kind`, else redis when a url (or `REDIS_URL`) is given, else memory. */
export function storeKind(
  config: { kind?: StoreKind; url?: string; nodes?: readonly string[] },
  env: EnvLookup,
): StoreKind {
  if (config.kind) return config.kind;
  if (config.nodes && config.nodes.length > 0) return "redis-cluster";
  return config.url || env("REDIS_URL") ? "redis" : "memory";
}

/** The key of one limit of a window decision: the window, never the limit, so a tier change keeps counters. */
export function limitKey(base: string, algorithm: WindowAlgorithm, windowMs: number): string {
  return `${base}:${algorithm}:${windowMs}`;
}

/** Decodes the flat array the window scripts return. */
export function decodeWindowReply(
  reply: readonly (number | string)[],
  limits: readonly WindowLimit[],
): WindowDecision {
  const states: LimitState[] = limits.map((limit, i) => ({
    limit: limit.limit,
    windowMs: limit.windowMs,
    remaining: Number(reply[3 + 2 * i]),
    resetMs: Number(reply[4 + 2 * i]),
  }));
  const stamp = reply[3 + 2 * limits.length];
  return {
    allowed: Number(reply[0]) === 1,
    retryAfterMs: Number(reply[1]),
    violated: Number(reply[2]) - 1,
    states,
    ...(stamp === undefined ? {} : { stamp: String(stamp) }),
  };
}

/** Where a decision came from: the store, the over-limit cache, or a failure policy. */
export type DecisionSource = "store" | "cache" | "allow" | "deny" | "local";

/** A window decision with where it came from. */
export interface SourcedWindowDecision extends WindowDecision {
  readonly source: DecisionSource;
}

/** A bucket decision with where it came from. */
export interface SourcedBucketDecision extends BucketDecision {
  readonly source: DecisionSource;
}

/** What the failure policy is. */
export type FailurePolicy = "allow" | "deny" | "local";

/** The store's health, as `/status` and `/ready` show it. */
export interface StoreHealth {
  kind: StoreKind;
  state: "up" | "down";
  on_failure: FailurePolicy;
  since: string;
  consecutive_failures: number;
  last_error: string | null;
}

/** The store as plugins see it: decisions never fail, a failure policy answers instead. */
export interface LimitStore {
  readonly kind: StoreKind;
  window(query: WindowQuery): Promise<SourcedWindowDecision>;
  bucket(query: BucketQuery): Promise<SourcedBucketDecision>;
  /**
   * Gives tokens back (`query.cost` negative) to the store that took them, by
   * the source of the decision that took them: the shared store or this
   * instance's; a fallback that took nothing gets nothing. Never rejects.
   */
  refundBucket(query: BucketQuery, source: DecisionSource): Promise<void>;
  /** One field of a hash (`HGET`), or undefined; rejects when the store fails. */
  hashGet(key: string, field: string): Promise<string | undefined>;
  health(): StoreHealth;
}
