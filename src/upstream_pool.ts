/**
 * Picking an upstream target: round robin or least in flight, skipping
 * targets whose breaker is open and targets already tried for this request.
 */
import type { BreakerSet } from "./breaker.ts";

/** How a pool picks. */
export type Balance = "round_robin" | "least_inflight";

/** The targets of one route, with what is in flight to each. */
export class TargetPool {
  readonly targets: readonly string[];
  readonly balance: Balance;
  #next = 0;
  #inflight: Map<string, number>;

  constructor(targets: readonly string[], balance: Balance) {
    this.targets = targets;
    this.balance = balance;
    this.#inflight = new Map(targets.map((target) => [target, 0]));
  }

  /** Requests in flight to a target. */
  inflight(target: string): number {
    return this.#inflight.get(target) ?? 0;
  }

  /** True when no request is in flight to any target. */
  get idle(): boolean {
    for (const count of this.#inflight.values()) if (count > 0) return false;
    return true;
  }

  /**
   * Takes a target for one attempt: not in `tried`, and let through by its
   * breaker (which counts a half-open probe). Undefined when none is left.
   */
  take(tried: ReadonlySet<string>, breakers?: BreakerSet): string | undefined {
    const count = this.targets.length;
    const order: string[] = [];
    for (let i = 0; i < count; i++) {
      const target = this.targets[(this.#next + i) % count]!;
      if (!tried.has(target)) order.push(target);
    }
    if (this.balance === "least_inflight") {
      // Stable: ties keep round-robin order.
      order.sort((a, b) => this.inflight(a) - this.inflight(b));
    }
    const now = Date.now();
    for (const target of order) {
      if (breakers && !breakers.of(target).acquire(now)) continue;
      this.#next = (this.targets.indexOf(target) + 1) % count;
      this.#inflight.set(target, this.inflight(target) + 1);
      return target;
    }
    return undefined;
  }

  /** Ends an attempt on a target. */
  done(target: string): void {
    this.#inflight.set(target, Math.max(0, this.inflight(target) - 1));
  }
}
