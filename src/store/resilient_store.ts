/**
 * A store outage as policy: every call to the remote store is bounded by
 * `timeout`; a failed call is answered by `on_failure` (allow, deny, or the
 * local memory store). After a few consecutive failures the store is marked
 * down: calls go to the fallback at once, with no wait, while a background
 * probe reconnects. A client found over its limit is remembered locally until
 * its reset, so its further requests cost no store call.
 */
import type { Logger } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import { CallTimeouts, StoreTimeoutError } from "./call_timeouts.ts";
import { MemoryStore } from "./memory_store.ts";
import type {
  BucketQuery,
  DecisionSource,
  FailurePolicy,
  LimitStore,
  SourcedBucketDecision,
  SourcedWindowDecision,
  Store,
  StoreHealth,
  StoreKind,
  WindowDecision,
  WindowQuery,
} from "./store.ts";

/** Options for {@linkcode ResilientStore}. */
export interface ResilientStoreOptions {
  /** The longest wait for one store call, in ms. */
  timeoutMs: number;
  onFailure: FailurePolicy;
  metrics?: Metrics;
  log?: Logger;
  /**
   * Failures within about a second that mark the store down, when they are
   * also a fifth of the calls (one master of a cluster is a third). @default 3
   */
  failureThreshold?: number;
  /** How often the probe tries a down store, in ms. @default 500 */
  probeIntervalMs?: number;
  /** The local clock, for the over-limit cache. @default Date.now */
  clock?: () => number;
  /**
   * Start marked down, for this reason (the store did not answer at start, or
   * refused the probe); the probe brings it up. `true` gives a generic reason.
   * @default false
   */
  startDown?: boolean | string;
}

const DENY_CACHE_MAX = 100_000;

interface CachedDenial {
  /** When the store decided. */
  at: number;
  until: number;
  cost: number;
  decision: WindowDecision;
}

/** Wraps a store with timeouts, a failure policy, a down state with a probe, and an over-limit cache. */
export class ResilientStore implements LimitStore {
  readonly primary: Store;
  readonly local: MemoryStore;
  #options:
    & Required<Omit<ResilientStoreOptions, "metrics" | "log" | "startDown">>
    & ResilientStoreOptions;
  #down = false;
  /** Failures since the last success (for /status). */
  #failures = 0;
  /** Calls and failures in the last two 1 s buckets: [the one before, this one]. */
  #recentCalls = [0, 0];
  #recentFailures = [0, 0];
  #bucketStart = -Infinity;
  /** The first failure counted in those buckets. */
  #firstFailureAt: number | undefined;
  #timeouts = new CallTimeouts();
  #since = new Date();
  #lastError: string | null = null;
  #probe: ReturnType<typeof setInterval> | undefined;
  #probing = false;
  #denials = new Map<string, CachedDenial>();
  #denialsSweptAt = -Infinity;
  #closed = false;

  constructor(primary: Store, options: ResilientStoreOptions) {
    this.primary = primary;
    this.#options = {
      failureThreshold: 3,
      probeIntervalMs: 500,
      clock: Date.now,
      ...options,
    };
    this.local = primary instanceof MemoryStore ? primary : new MemoryStore();
    if (options.startDown && primary !== this.local) {
      this.#lastError = typeof options.startDown === "string"
        ? options.startDown
        : "The store did not answer at start";
      // Unlogged: createStore says it, for a store that is going to serve.
      this.#markDown(true);
    }
  }

  /**
   * Takes a new timeout and failure policy, keeping the connection, the
   * down state, the fallback's counters and the over-limit cache: what a
   * reload that changes only those two needs.
   */
  reconfigure(options: { timeoutMs: number; onFailure: FailurePolicy }): void {
    this.#options.timeoutMs = options.timeoutMs;
    this.#options.onFailure = options.onFailure;
  }

  /** The store's kind. */
  get kind(): StoreKind {
    return this.primary.kind;
  }

  /** The store's health. */
  health(): StoreHealth {
    return {
      kind: this.primary.kind,
      state: this.#down ? "down" : "up",
      on_failure: this.#options.onFailure,
      since: this.#since.toISOString(),
      consecutive_failures: this.#failures,
      last_error: this.#lastError,
    };
  }

  /** A sliding-window decision; never rejects. */
  window(query: WindowQuery): Promise<SourcedWindowDecision> {
    if (this.primary === this.local) {
      // The memory store as the store: decided at once, no promise of its own.
      const decision = this.local.decideWindow(query);
      return Promise.resolve({
        allowed: decision.allowed,
        retryAfterMs: decision.retryAfterMs,
        violated: decision.violated,
        states: decision.states,
        source: "store",
      });
    }
    return this.#remoteWindow(query);
  }

  async #remoteWindow(query: WindowQuery): Promise<SourcedWindowDecision> {
    // No refusal remembered (a limiter whose clients are within their limits):
    // no key to build for a cache that has nothing.
    if (query.cost > 0 && this.#denials.size > 0) {
      const cached = this.#cachedDenial(denialKey(query), query.cost);
      if (cached) return cached;
    }
    if (this.#down) return this.#windowFallback(query);
    // What the fallback answered, when it answered in the store's place.
    let answered: SourcedWindowDecision | undefined;
    try {
      const decision = await this.#call(() => this.primary.window(query), (late) => {
        // Admitted after its timeout, when the fallback had refused the
        // request: the units it counted were for a request that never
        // passed, and go back. (One the fallback let through stays counted,
        // as does a shadow step's, whose request passes anyway.)
        if (
          late.allowed && late.stamp && query.cost > 0 && answered?.allowed === false &&
          !query.passesAnyway
        ) {
          // A refusal this instance remembered meanwhile may have come from
          // the count this admission swelled: once the units are back, the
          // store decides the next request again.
          this.primary.refundWindow?.(query, late.stamp).then(
            () => this.#denials.size > 0 && this.#denials.delete(denialKey(query)),
            () => {},
          );
        }
      });
      if (!decision.allowed && query.cost > 0 && decision.retryAfterMs > 0) {
        this.#rememberDenial(denialKey(query), query.cost, decision);
      }
      // The store's decision is a fresh object: it is marked, not copied.
      (decision as { source?: DecisionSource }).source = "store";
      return decision as SourcedWindowDecision;
    } catch {
      answered = await this.#windowFallback(query);
      return answered as SourcedWindowDecision;
    }
  }

  /** One hash field; bounded by the timeout, rejects when the store fails. */
  hashGet(key: string, field: string): Promise<string | undefined> {
    if (this.primary === this.local) return this.local.hashGet(key, field);
    // The memory store holds no hashes: its "no such field" would read as an
    // unknown API key. While the store is down the lookup fails, and the caller
    // keeps what it knew.
    if (this.#down) return Promise.reject(new Error(`${this.primary.kind} store is down`));
    return this.#call(() => this.primary.hashGet(key, field));
  }

  /** A token-bucket decision; never rejects. */
  async bucket(query: BucketQuery): Promise<SourcedBucketDecision> {
    if (this.primary === this.local) {
      return { ...(await this.local.bucket(query)), source: "store" };
    }
    if (this.#down) return this.#bucketFallback(query);
    try {
      const decision = await this.#call(() => this.primary.bucket(query), (late) => {
        // Answered after its timeout, when the fallback had already answered:
        // the tokens it took serve no one, so they go back.
        if (late.allowed && query.cost > 0) {
          this.primary.bucket({ ...query, cost: -query.cost, refundOf: late.reservation })
            .catch(() => {});
        }
      });
      return { ...decision, source: "store" };
    } catch {
      return this.#bucketFallback(query);
    }
  }

  async refundBucket(query: BucketQuery, source: DecisionSource): Promise<void> {
    if (this.primary === this.local || source === "local") {
      await this.local.bucket(query);
      return;
    }
    // allow and deny took nothing; a store that is down keeps what it took.
    if (source !== "store" || this.#down) return;
    try {
      await this.#call(() => this.primary.bucket(query));
    } catch {
      // Lost with the store: it keeps the tokens, which errs on the side of the limit.
    }
  }

  /**
   * One store call, bounded by the timeout: settles with the call, or rejects
   * with a StoreTimeoutError when the ticker finds it out of time (one
   * promise per call, no race). `late` gets an answer that came after that.
   */
  #call<T>(run: () => Promise<T>, late?: (result: T) => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timed = this.#timeouts.start(this.#options.timeoutMs, (error) => {
        this.#observe(timed.started);
        this.#failed(error);
        reject(error);
      });
      let call: Promise<T>;
      try {
        call = run();
      } catch (error) {
        call = Promise.reject(error);
      }
      call.then(
        (result) => {
          if (!this.#timeouts.done(timed)) {
            late?.(result); // Answered after its timeout.
            return;
          }
          const now = performance.now();
          this.#options.metrics?.storeDuration.observe((now - timed.started) / 1000);
          this.#failures = 0;
          this.#count(now, false);
          resolve(result);
        },
        (error) => {
          if (!this.#timeouts.done(timed)) return;
          this.#observe(timed.started);
          this.#failed(error);
          reject(error);
        },
      );
    });
  }

  #observe(started: number): void {
    this.#options.metrics?.storeDuration.observe((performance.now() - started) / 1000);
  }

  #failed(error: unknown): void {
    // Calls that fail because the store was closed under them say nothing of its health.
    if (this.#closed) return;
    const now = performance.now();
    this.#failures++;
    this.#count(now, true);
    this.#firstFailureAt ??= now;
    this.#lastError = String((error as Error)?.message ?? error);
    this.#options.metrics?.storeErrors.inc({
      reason: error instanceof StoreTimeoutError ? "timeout" : "error",
    });
    // Down: failures that are many, and not few among many calls. Successes
    // in between do not clear them: a cluster with one master dead fails a
    // third of the calls, each after the whole timeout. Timeouts must also
    // span at least one timeout: a burst of calls that all time out at once
    // is one slow moment of a busy gateway, not an outage.
    const failures = this.#recentFailures[0]! + this.#recentFailures[1]!;
    const calls = this.#recentCalls[0]! + this.#recentCalls[1]!;
    const spans = !(error instanceof StoreTimeoutError) ||
      now - this.#firstFailureAt >= this.#options.timeoutMs;
    if (
      !this.#down && failures >= this.#options.failureThreshold && failures * 5 >= calls && spans
    ) {
      this.#markDown();
    }
  }

  /** Counts one call's outcome in the current 1 s bucket. */
  #count(now: number, failed: boolean): void {
    if (now - this.#bucketStart >= 1_000) {
      const recent = now - this.#bucketStart < 2_000;
      this.#recentCalls = [recent ? this.#recentCalls[1]! : 0, 0];
      this.#recentFailures = [recent ? this.#recentFailures[1]! : 0, 0];
      if (this.#recentFailures[0] === 0) this.#firstFailureAt = undefined;
      this.#bucketStart = now;
    }
    this.#recentCalls[1]!++;
    if (failed) this.#recentFailures[1]!++;
  }

  #markDown(quiet = false): void {
    this.#down = true;
    this.#since = new Date();
    if (!quiet) this.logDown();
    this.#probe = setInterval(() => this.#tryProbe(), this.#options.probeIntervalMs);
  }

  /** Logs that the store is down, with its last error. */
  logDown(): void {
    this.#options.log?.error("store marked down; decisions use the fallback", {
      store: this.primary.kind,
      on_failure: this.#options.onFailure,
      error: this.#lastError,
    });
  }

  async #tryProbe(): Promise<void> {
    if (this.#probing || this.#closed) return;
    this.#probing = true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await Promise.race([
        this.primary.ping(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new StoreTimeoutError("probe timed out")),
            this.#options.timeoutMs * 5,
          );
        }),
      ]);
      clearInterval(this.#probe);
      this.#probe = undefined;
      this.#down = false;
      this.#failures = 0;
      this.#recentCalls = [0, 0];
      this.#recentFailures = [0, 0];
      this.#firstFailureAt = undefined;
      this.#since = new Date();
      this.#options.log?.info("store is up again", { store: this.primary.kind });
    } catch (error) {
      this.#lastError = String((error as Error)?.message ?? error);
    } finally {
      clearTimeout(timer);
      this.#probing = false;
    }
  }

  #cachedDenial(key: string, cost: number): SourcedWindowDecision | undefined {
    const cached = this.#denials.get(key);
    if (!cached) return undefined;
    const now = this.#options.clock();
    if (now >= cached.until) {
      this.#denials.delete(key);
      return undefined;
    }
    // Only the same cost waits the same: a larger one may wait longer (log, counter).
    if (cost !== cached.cost) return undefined;
    const left = cached.until - now;
    const elapsed = now - cached.at;
    return {
      ...cached.decision,
      retryAfterMs: left,
      // Every reset counts down from when the store decided.
      states: cached.decision.states.map((state, i) => {
        const resetMs = Math.max(0, state.resetMs - elapsed);
        return i === cached.decision.violated
          ? { ...state, remaining: 0, resetMs: Math.min(resetMs, left) }
          : { ...state, resetMs };
      }),
      source: "cache",
    };
  }

  #rememberDenial(key: string, cost: number, decision: WindowDecision): void {
    const now = this.#options.clock();
    if (this.#denials.size >= DENY_CACHE_MAX) {
      // Full (many clients over their limits at once): expired entries go at
      // most once a second, then the oldest tenth, so a denial never pays for
      // a scan of the whole cache.
      if (now - this.#denialsSweptAt >= 1_000) {
        this.#denialsSweptAt = now;
        for (const [k, v] of this.#denials) if (v.until <= now) this.#denials.delete(k);
      }
      if (this.#denials.size >= DENY_CACHE_MAX) {
        let evict = Math.ceil(DENY_CACHE_MAX / 10);
        for (const k of this.#denials.keys()) {
          this.#denials.delete(k);
          if (--evict === 0) break;
        }
      }
    }
    this.#denials.set(key, {
      at: now,
      until: now + decision.retryAfterMs,
      cost,
      decision,
    });
  }

  async #windowFallback(query: WindowQuery): Promise<SourcedWindowDecision> {
    switch (this.#options.onFailure) {
      case "local":
        return { ...(await this.local.window(query)), source: "local" };
      case "allow":
        return {
          allowed: true,
          retryAfterMs: 0,
          violated: -1,
          states: query.limits.map((limit) => ({ ...limit, remaining: limit.limit, resetMs: 0 })),
          source: "allow",
        };
      case "deny":
        return {
          allowed: false,
          retryAfterMs: Math.max(1_000, this.#options.probeIntervalMs),
          violated: -1,
          states: query.limits.map((limit) => ({ ...limit, remaining: 0, resetMs: 0 })),
          source: "deny",
        };
    }
  }

  async #bucketFallback(query: BucketQuery): Promise<SourcedBucketDecision> {
    switch (this.#options.onFailure) {
      case "local":
        return { ...(await this.local.bucket(query)), source: "local" };
      case "allow":
        return {
          allowed: true,
          delayMs: 0,
          remaining: query.burst,
          retryAfterMs: 0,
          resetMs: 0,
          reservation: 0,
          source: "allow",
        };
      case "deny":
        return {
          allowed: false,
          delayMs: 0,
          remaining: 0,
          retryAfterMs: Math.max(1_000, this.#options.probeIntervalMs),
          resetMs: 0,
          reservation: 0,
          source: "deny",
        };
    }
  }

  /** Stops the probe and closes both stores. */
  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#probe);
    this.#probe = undefined;
    this.#timeouts.stop();
    if (this.local !== this.primary) await this.local.close();
    await this.primary.close();
  }
}

function denialKey(query: WindowQuery): string {
  let key = `${query.algorithm}|${query.key}`;
  for (const limit of query.limits) key += `|${limit.limit}/${limit.windowMs}`;
  return key;
}
