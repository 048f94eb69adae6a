/**
 * Upstream deadlines for every request in flight, on one shared ticker
 * instead of a timer and an abort listener per request (both cost a proxy
 * measurably). A request whose upstream has not answered by its deadline is
 * aborted as timed out; one still waiting after a short grace starts
 * listening for its client hanging up, and is aborted when it does.
 */

const TICK_MS = 10;
const LISTEN_AFTER_MS = 20;

/** One request's wait for its upstream. */
export class Deadline {
  readonly controller = new AbortController();
  timedOut = false;
  #deadline: number;
  readonly #timeoutMs: number;
  readonly #listenAt: number;
  readonly #client: () => AbortSignal;
  #onAbort: (() => void) | undefined;
  #clientSignal: AbortSignal | undefined;

  constructor(timeoutMs: number, client: () => AbortSignal, now: number) {
    this.#deadline = now + timeoutMs;
    this.#timeoutMs = timeoutMs;
    this.#listenAt = now + LISTEN_AFTER_MS;
    this.#client = client;
  }

  /** The signal to give the upstream request. */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** True when the client hung up (only known once listening began). */
  get clientGone(): boolean {
    return this.#clientSignal?.aborted ?? false;
  }

  /** Counts the timeout again from now (the request body's last byte went out just now). */
  extend(now = performance.now()): void {
    if (!this.timedOut) this.#deadline = now + this.#timeoutMs;
  }

  /** Returns false once the deadline has fired and the request need not be watched. */
  tick(now: number): boolean {
    if (now >= this.#deadline) {
      this.timedOut = true;
      this.controller.abort(new DOMException("upstream timeout", "TimeoutError"));
      return false;
    }
    if (!this.#onAbort && now >= this.#listenAt) {
      const signal = this.#client();
      this.#clientSignal = signal;
      if (signal.aborted) {
        this.controller.abort(signal.reason);
        return false;
      }
      this.#onAbort = () => this.controller.abort(signal.reason);
      signal.addEventListener("abort", this.#onAbort, { once: true });
    }
    return true;
  }

  /** Stops listening for the client. */
  detach(): void {
    if (this.#onAbort) this.#clientSignal?.removeEventListener("abort", this.#onAbort);
    this.#onAbort = undefined;
  }
}

/** The shared ticker. */
export class Deadlines {
  #watched = new Set<Deadline>();
  #timer: ReturnType<typeof setInterval> | undefined;

  /** Starts watching a request's upstream wait. */
  start(timeoutMs: number, client: () => AbortSignal): Deadline {
    const deadline = new Deadline(timeoutMs, client, performance.now());
    this.#watched.add(deadline);
    if (this.#timer === undefined) {
      this.#timer = setInterval(() => this.#tick(), TICK_MS);
    }
    return deadline;
  }

  /** Stops watching (the upstream answered or failed). */
  stop(deadline: Deadline): void {
    deadline.detach();
    this.#watched.delete(deadline);
    if (this.#watched.size === 0 && this.#timer !== undefined) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
  }

  #tick(): void {
    const now = performance.now();
    for (const deadline of this.#watched) {
      if (!deadline.tick(now)) {
        deadline.detach();
        this.#watched.delete(deadline);
      }
    }
  }
}
