/**
 * How long the event loop was too busy to run timers: a ticker that adds up
 * how late it fires. Runs only while someone is measuring.
 */

const INTERVAL_MS = 5;

/** Accumulates event-loop lag while at least one user holds it. */
export class LoopLag {
  #total = 0;
  #last = 0;
  #users = 0;
  #timer: ReturnType<typeof setInterval> | undefined;

  /** Starts measuring (counted; the ticker runs while any user holds it). */
  hold(): void {
    if (this.#users++ > 0) return;
    this.#last = performance.now();
    this.#timer = setInterval(() => {
      const now = performance.now();
      const late = now - this.#last - INTERVAL_MS;
      if (late > 0) this.#total += late;
      this.#last = now;
    }, INTERVAL_MS);
    Deno.unrefTimer(this.#timer);
  }

  /** Stops measuring for one user. */
  release(): void {
    if (--this.#users > 0) return;
    this.#users = 0;
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** Milliseconds of lag so far, including a stall still going on. */
  total(): number {
    if (this.#users === 0) return this.#total;
    return this.#total + Math.max(0, performance.now() - this.#last - INTERVAL_MS);
  }
}
