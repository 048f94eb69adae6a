/**
 * Circuit breakers, one per upstream target. Outcomes are counted in time
 * buckets over a rolling window; the breaker opens when
 * `failures / requests >= failure_ratio` with `requests >= min_requests`,
 * answers at once while open, and after `open_for` lets `probes` requests
 * through (half-open): their success closes it, a failure opens it again.
 */
import { ContextKey } from "./plugin.ts";
import { problem, PROBLEM_TYPE_BASE } from "./problem.ts";

/** A breaker's state. */
export type BreakerState = "closed" | "half-open" | "open";

/** The breaker's settings. */
export interface BreakerOptions {
  failureRatio: number;
  minRequests: number;
  windowMs: number;
  openForMs: number;
  probes: number;
  /** Upstream statuses that count as failures. */
  failureStatuses: ReadonlySet<number>;
}

const BUCKETS = 10;

/** Where {@linkcode Breaker.record} counted an outcome: a bucket of the window, or a probe. */
export type Counted =
  | { readonly epoch: number; readonly bucket: number; readonly index: number }
  | { readonly probeOf: number };

/** The numeric value of a state in `sluice_breaker_state`. */
export const STATE_VALUE: Record<BreakerState, number> = { closed: 0, "half-open": 1, open: 2 };

/** One target's breaker. */
export class Breaker {
  #options: BreakerOptions;
  #state: BreakerState = "closed";
  #openedAt = 0;
  #bucketMs: number;
  #starts = new Array<number>(BUCKETS).fill(-1);
  #requests = new Array<number>(BUCKETS).fill(0);
  #failures = new Array<number>(BUCKETS).fill(0);
  #probesStarted = 0;
  #probesPassed = 0;
  /** When the breaker last half-opened: what started before is no probe. */
  #halfOpenedAt = 0;
  /** The half-open spell whose probes closed the breaker (their late failures open it again). */
  #closedBy = -1;
  #closedAt = 0;
  /** Counts since the last reset: a late failure counts only among its own. */
  #epoch = 0;
  #onChange: (from: BreakerState, to: BreakerState) => void;

  constructor(
    options: BreakerOptions,
    onChange: (from: BreakerState, to: BreakerState) => void = () => {},
  ) {
    this.#options = options;
    this.#bucketMs = Math.max(1, Math.ceil(options.windowMs / BUCKETS));
    this.#onChange = onChange;
  }

  /**
   * Takes new settings (a reload), keeping the state: an open breaker stays
   * open (for the new `open_for` from when it opened). Outcomes counted so far
   * go only when the window changes, whose buckets they were counted in.
   */
  configure(options: BreakerOptions): void {
    if (options.windowMs !== this.#options.windowMs) {
      this.#bucketMs = Math.max(1, Math.ceil(options.windowMs / BUCKETS));
      this.#reset();
    }
    this.#options = options;
  }

  /** The state now (an open breaker whose time is up reads half-open). */
  state(now = Date.now()): BreakerState {
    if (this.#state === "open" && now - this.#openedAt >= this.#options.openForMs) {
      this.#move("half-open");
      this.#halfOpenedAt = now;
      this.#probesStarted = 0;
      this.#probesPassed = 0;
    }
    return this.#state;
  }

  /** Milliseconds until an open breaker half-opens (0 when it is not open). */
  openLeft(now = Date.now()): number {
    return this.state(now) === "open" ? this.#openedAt + this.#options.openForMs - now : 0;
  }

  /** True when a request may go to the target now; no side effect. */
  available(now = Date.now()): boolean {
    const state = this.state(now);
    if (state === "closed") return true;
    if (state === "half-open") return this.#probesStarted < this.#options.probes;
    return false;
  }

  /** Takes a turn: true when the request may go (a half-open breaker counts it as a probe). */
  acquire(now = Date.now()): boolean {
    if (!this.available(now)) return false;
    if (this.#state === "half-open") this.#probesStarted++;
    return true;
  }

  /**
   * Gives back a turn that ended with no outcome (the client hung up).
   * `startedAt` is when the turn was taken: one from before the breaker
   * half-opened was no probe, and frees none.
   */
  cancel(startedAt = Date.now()): void {
    if (this.#state !== "half-open" || startedAt < this.#halfOpenedAt) return;
    if (this.#probesStarted > 0) this.#probesStarted--;
  }

  /**
   * Records the outcome of a request that {@linkcode Breaker.acquire} let
   * through at `startedAt`. While half-open, only the probes' outcomes count:
   * a request from before (slower than `open_for`) neither closes nor reopens it.
   * Returns where the outcome was counted, for {@linkcode Breaker.recordLateFailure}.
   */
  record(ok: boolean, now = Date.now(), startedAt = now): Counted | undefined {
    const state = this.state(now);
    if (state === "half-open") {
      if (startedAt < this.#halfOpenedAt) return undefined;
      if (!ok) {
        this.#open(now);
        return undefined;
      }
      const probe: Counted = { probeOf: this.#halfOpenedAt };
      if (++this.#probesPassed >= this.#options.probes) {
        this.#reset();
        this.#move("closed");
        this.#closedBy = this.#halfOpenedAt;
        this.#closedAt = now;
      }
      return probe;
    }
    if (state === "open") return undefined;
    const index = this.#count(now, !ok);
    return { epoch: this.#epoch, bucket: this.#starts[index]!, index };
  }

  /**
   * Turns an outcome recorded as a success into a failure: the answer's body
   * was cut short by the upstream after its head came. It counts where its
   * success was counted (the request is not counted again), while that bucket
   * is still in the window; a probe's late failure opens the breaker again,
   * also when the probes had closed it. `stalled`: the upstream stopped
   * sending (the read timeout), which says it fails now: once the head's
   * bucket has left the window, that counts as a failed request now.
   */
  recordLateFailure(counted: Counted | undefined, now = Date.now(), stalled = false): void {
    if (!counted) return;
    const state = this.state(now);
    if ("probeOf" in counted) {
      // Once closed, only while the window still holds the probes' evidence:
      // a stream cut an hour later says nothing of the spell that closed it.
      const sameEpisode = state === "half-open"
        ? this.#halfOpenedAt === counted.probeOf
        : state === "closed" && this.#closedBy === counted.probeOf &&
          now - this.#closedAt < this.#options.windowMs;
      if (sameEpisode) this.#open(now);
      return;
    }
    if (state !== "closed") return;
    if (
      counted.epoch === this.#epoch && this.#starts[counted.index] === counted.bucket &&
      counted.bucket > now - this.#options.windowMs
    ) {
      this.#failures[counted.index]!++;
    } else if (stalled) {
      this.#count(now, true);
    } else {
      return;
    }
    this.#openIfFailing(now);
  }

  /** Counts one request in the current bucket; returns the bucket's index. */
  #count(now: number, failure: boolean): number {
    const index = Math.floor(now / this.#bucketMs) % BUCKETS;
    const start = Math.floor(now / this.#bucketMs) * this.#bucketMs;
    if (this.#starts[index] !== start) {
      this.#starts[index] = start;
      this.#requests[index] = 0;
      this.#failures[index] = 0;
    }
    this.#requests[index]!++;
    if (failure) this.#failures[index]!++;
    this.#openIfFailing(now);
    return index;
  }

  /** Opens the breaker when the window's failures say so. */
  #openIfFailing(now: number): void {
    let requests = 0;
    let failures = 0;
    for (let i = 0; i < BUCKETS; i++) {
      if (this.#starts[i]! > now - this.#options.windowMs) {
        requests += this.#requests[i]!;
        failures += this.#failures[i]!;
      }
    }
    if (
      requests >= this.#options.minRequests && failures / requests >= this.#options.failureRatio
    ) {
      this.#open(now);
    }
  }

  /** True when the status counts as a failure. */
  isFailureStatus(status: number): boolean {
    return this.#options.failureStatuses.has(status);
  }

  #open(now: number): void {
    this.#openedAt = now;
    this.#reset();
    this.#move("open");
  }

  #reset(): void {
    this.#epoch++;
    this.#starts.fill(-1);
    this.#requests.fill(0);
    this.#failures.fill(0);
  }

  #move(to: BreakerState): void {
    const from = this.#state;
    if (from === to) return;
    this.#state = to;
    this.#onChange(from, to);
  }
}

/** The breakers of one route's targets. */
export class BreakerSet {
  #options: BreakerOptions;
  #generation = 0;
  #breakers = new Map<string, Breaker>();
  /** Called on every transition; the pipeline that owns the set may replace it. */
  onChange: (target: string, from: BreakerState, to: BreakerState) => void = () => {};

  constructor(options: BreakerOptions) {
    this.#options = options;
  }

  /** The settings in force. */
  get options(): BreakerOptions {
    return this.#options;
  }

  /**
   * Takes new settings for every breaker, keeping their states (see
   * {@linkcode Breaker.configure}), unless settings of a later `generation`
   * (a newer pipeline's) were taken already: a request still running on the
   * pipeline a reload replaced does not bring its settings back.
   */
  configure(options: BreakerOptions, generation: number): void {
    if (generation <= this.#generation) return;
    this.#generation = generation;
    if (options === this.#options) return;
    this.#options = options;
    for (const breaker of this.#breakers.values()) breaker.configure(options);
  }

  /** The breaker of one target, made on first use. */
  of(target: string): Breaker {
    let breaker = this.#breakers.get(target);
    if (!breaker) {
      breaker = new Breaker(this.#options, (from, to) => this.onChange(target, from, to));
      this.#breakers.set(target, breaker);
    }
    return breaker;
  }

  /** Each target's state. */
  states(targets: readonly string[], now = Date.now()): Record<string, BreakerState> {
    return Object.fromEntries(targets.map((target) => [target, this.of(target).state(now)]));
  }

  /** Milliseconds until the first of the targets' open breakers half-opens (0 when one is not open). */
  openLeft(targets: readonly string[], now = Date.now()): number {
    return Math.min(...targets.map((target) => this.of(target).openLeft(now)));
  }

  /** The worst state among the targets. */
  worst(targets: readonly string[], now = Date.now()): BreakerState {
    let worst: BreakerState = "closed";
    for (const target of targets) {
      const state = this.of(target).state(now);
      if (STATE_VALUE[state] > STATE_VALUE[worst]) worst = state;
    }
    return worst;
  }
}

/** Where the circuit-breaker plugin hands its breakers to the proxy for one request. */
export const BREAKERS: ContextKey<BreakerSet> = new ContextKey<BreakerSet>("sluice.breakers");

/** The 503 of a route whose upstream targets are all open: nothing is called. */
export function circuitOpen(route: string, retryAfterMs: number): Response {
  return problem(503, {
    type: `${PROBLEM_TYPE_BASE}circuit-open`,
    title: "Circuit open",
    detail: `The upstream of route "${route}" is failing; it is not called for now`,
    retryAfterSeconds: Math.max(1, retryAfterMs) / 1000,
  });
}
