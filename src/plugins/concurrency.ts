/**
 * The `concurrency` plugin: at most `max` requests of the route in flight to
 * the upstream (until their response has been sent in full); up to `queue` more wait
 * in FIFO order for up to `queue_timeout`; beyond that, 503 with Retry-After.
 * A client that hangs up while queued leaves the queue at once.
 */
import { z } from "zod";
import { duration } from "../config/schema.ts";
import { definePlugin } from "../plugin.ts";
import { waitPastSpentQuota } from "../response_headers.ts";
import { clientClosed, isGatewayAnswer, problem, PROBLEM_TYPE_BASE } from "../problem.ts";
import { isBodyComplete } from "../http1_client.ts";

interface Waiter {
  grant: () => void;
  settled: boolean;
}

/** A counting semaphore with a bounded FIFO queue. */
export class Semaphore {
  max: number;
  queueMax: number;
  #active = 0;
  #queue: Waiter[] = [];
  #generation = 0;

  constructor(max: number, queueMax: number) {
    this.max = max;
    this.queueMax = queueMax;
  }

  get active(): number {
    return this.#active;
  }

  get waiting(): number {
    return this.#queue.length;
  }

  /** Takes a free slot at once when there is one and no one is in line. */
  tryAcquire(): boolean {
    if (this.#active >= this.max || this.#queue.length > 0) return false;
    this.#active++;
    return true;
  }

  /**
   * Takes a slot: "ok" at once or after waiting in line, "full" when the line
   * is full, "timeout" after `timeoutMs` in line, "aborted" when `signal` fires.
   */
  acquire(signal: AbortSignal, timeoutMs: number): Promise<"ok" | "full" | "timeout" | "aborted"> {
    if (this.#active < this.max && this.#queue.length === 0) {
      this.#active++;
      return Promise.resolve("ok");
    }
    if (this.#queue.length >= this.queueMax) return Promise.resolve("full");
    if (signal.aborted) return Promise.resolve("aborted");
    return new Promise((resolve) => {
      const leave = (result: "timeout" | "aborted") => {
        if (waiter.settled) return;
        waiter.settled = true;
        const index = this.#queue.indexOf(waiter);
        if (index >= 0) this.#queue.splice(index, 1);
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
        resolve(result);
      };
      const onAbort = () => leave("aborted");
      const waiter: Waiter = {
        settled: false,
        grant: () => {
          waiter.settled = true;
          clearTimeout(timer);
          signal.removeEventListener("abort", onAbort);
          resolve("ok");
        },
      };
      const timer = setTimeout(() => leave("timeout"), timeoutMs);
      signal.addEventListener("abort", onAbort, { once: true });
      this.#queue.push(waiter);
    });
  }

  /**
   * Takes new limits (a reload), keeping the requests in flight and in line:
   * a larger `max` lets waiters in at once; a smaller one admits no one until
   * the requests in flight are under it. A shorter line turns no one away.
   */
  resize(max: number, queueMax: number, generation: number): void {
    // A request still running on a pipeline a reload replaced brings back no old limits.
    if (generation <= this.#generation) return;
    this.#generation = generation;
    this.max = max;
    this.queueMax = queueMax;
    while (this.#active < this.max && this.#queue.length > 0) {
      this.#active++;
      this.#queue.shift()!.grant();
    }
  }

  /** Gives a slot back: the first in line gets it. */
  release(): void {
    const next = this.#active > this.max ? undefined : this.#queue.shift();
    if (next) {
      // The slot passes straight to the next waiter: active stays the same.
      next.grant();
    } else {
      this.#active--;
    }
  }
}

/** Pipelines built so far: a later build's limits win over an earlier one's. */
let builds = 0;

export default definePlugin({
  name: "concurrency",
  options: z.strictObject({
    max: z.number().int().min(1),
    queue: z.number().int().min(0).default(0),
    queue_timeout: duration({ timer: true }).default(1_000),
  }),
  create(opts, { route, keep, onStatus }) {
    const generation = ++builds;
    // Kept across hot swaps, new options too: the requests in flight and in
    // line before a reload still count against the new max.
    const semaphore = keep(() => new Semaphore(opts.max, opts.queue), { acrossOptions: true });
    onStatus(() => ({
      concurrency: { max: opts.max, inflight: semaphore.active, queued: semaphore.waiting },
    }));

    return async function concurrency(ctx, next) {
      // This pipeline's limits apply from its first request (a build that fails changes none).
      semaphore.resize(opts.max, opts.queue, generation);
      const result = semaphore.tryAcquire()
        ? "ok"
        : await semaphore.acquire(ctx.signal, opts.queue_timeout);
      if (result === "aborted") return clientClosed();
      if (result !== "ok") {
        return problem(503, {
          type: `${PROBLEM_TYPE_BASE}concurrency-limit`,
          title: "Too busy",
          detail: result === "full"
            ? `Route "${route.name}" has ${opts.max} requests in flight and ${opts.queue} waiting`
            : `No slot freed within ${opts.queue_timeout} ms`,
          retryAfterSeconds: Math.max(
            1,
            Math.ceil(waitPastSpentQuota(ctx, opts.queue_timeout) / 1000),
          ),
        });
      }
      let response: Response;
      try {
        response = await next();
      } catch (error) {
        semaphore.release();
        throw error;
      }
      // Reading `response.body` turns a body held in memory into a stream, which
      // Deno then sends in more steps: ask the cheap questions first.
      if (isGatewayAnswer(response) || isBodyComplete(response) || !response.body) {
        // The upstream is done: nothing of this answer is still coming from it.
        semaphore.release();
      } else {
        // A streamed body: the slot is held until it has been sent in full (or the client left).
        const release = () => semaphore.release();
        ctx.completed.then(release, release);
      }
      return response;
    };
  },
});
