/**
 * The in-memory store: the same algorithms as `lua/*.lua`, in TypeScript, with
 * the same integer arithmetic, so both give the same decisions on the same
 * trace. Memory is bounded: every entry has an expiry and a sweep drops the
 * expired ones a slice at a time.
 */
import {
  type BucketDecision,
  type BucketQuery,
  limitKey,
  type Store,
  type WindowDecision,
  type WindowQuery,
} from "./store.ts";

interface LogEntry {
  kind: "log";
  /** Admitted units as [time, units] runs, oldest first, from index `head`. */
  runs: number[];
  /** Where the live runs start: trimming moves it instead of shifting the array. */
  head: number;
  /** Units in `runs`. */
  total: number;
  expiresAt: number;
}

interface CounterEntry {
  kind: "counter";
  bucket: number;
  curr: number;
  prev: number;
  expiresAt: number;
}

interface FixedEntry {
  kind: "fixed";
  bucket: number;
  count: number;
  expiresAt: number;
}

interface BucketEntry {
  kind: "bucket";
  tokens: number;
  at: number;
  /** Reservations so far (see {@linkcode BucketQuery.refundOf}). */
  reservations: number;
  expiresAt: number;
}

type Entry = LogEntry | CounterEntry | FixedEntry | BucketEntry;

const SWEEP_INTERVAL_MS = 1_000;
const SWEEP_SLICE = 20_000;

/** Options for {@linkcode MemoryStore}. */
export interface MemoryStoreOptions {
  /** The clock in ms. @default Date.now */
  clock?: () => number;
  /** Sweep expired entries in the background. @default true */
  sweep?: boolean;
}

/** The embedded store of one gateway instance. */
export class MemoryStore implements Store {
  readonly kind = "memory" as const;
  #entries = new Map<string, Entry>();
  #clock: () => number;
  #timer: ReturnType<typeof setInterval> | undefined;
  #sweepCursor: Iterator<[string, Entry]> | undefined;

  constructor(options: MemoryStoreOptions = {}) {
    this.#clock = options.clock ?? Date.now;
    if (options.sweep ?? true) {
      this.#timer = setInterval(() => this.sweep(), SWEEP_INTERVAL_MS);
      Deno.unrefTimer(this.#timer);
    }
  }

  /** The number of live entries (for tests and memory measurements). */
  get size(): number {
    return this.#entries.size;
  }

  /** Drops up to `slice` expired entries, continuing where the last sweep stopped. */
  sweep(slice = SWEEP_SLICE, now = this.#clock()): number {
    let dropped = 0;
    for (let seen = 0; seen < slice; seen++) {
      this.#sweepCursor ??= this.#entries.entries();
      const next = this.#sweepCursor.next();
      if (next.done) {
        this.#sweepCursor = undefined;
        break;
      }
      const [key, entry] = next.value;
      if (entry.expiresAt <= now) {
        this.#entries.delete(key);
        dropped++;
      }
    }
    return dropped;
  }

  /**
   * Sets an entry; a new one also has the next 2 in the sweep's order looked at: the
   * sweep then keeps pace with any rate of new clients (expired entries
   * stay at most about as many as live ones), not only 20,000 a second.
   */
  #add(key: string, entry: Entry, now: number): void {
    const size = this.#entries.size;
    this.#entries.set(key, entry);
    if (this.#entries.size > size) this.sweep(2, now);
  }

  #get<K extends Entry["kind"]>(
    key: string,
    kind: K,
    now: number,
  ): Extract<Entry, { kind: K }> | undefined {
    const entry = this.#entries.get(key);
    if (!entry) return undefined;
    if (entry.kind !== kind || entry.expiresAt <= now) {
      this.#entries.delete(key);
      return undefined;
    }
    return entry as Extract<Entry, { kind: K }>;
  }

  window(query: WindowQuery): Promise<WindowDecision> {
    return Promise.resolve(this.decideWindow(query));
  }

  /** {@linkcode MemoryStore.window} without the promise. */
  decideWindow(query: WindowQuery): WindowDecision {
    const now = query.now ?? this.#clock();
    switch (query.algorithm) {
      case "log":
        return this.#log(query, now);
      case "counter":
        return this.#counter(query, now);
      case "fixed":
        return this.#fixed(query, now);
    }
  }

  #log(query: WindowQuery, now: number): WindowDecision {
    const { cost, limits } = query;
    let allowed = true;
    let retry = 0;
    let violated = -1;
    const entries: (LogEntry | undefined)[] = [];
    const keys: string[] = [];
    for (let i = 0; i < limits.length; i++) {
      const { limit, windowMs } = limits[i]!;
      const key = limitKey(query.key, "log", windowMs);
      keys.push(key);
      const entry = this.#get(key, "log", now);
      if (entry) trimLog(entry, now - windowMs);
      entries.push(entry);
      const count = entry?.total ?? 0;
      if (count + cost > limit) {
        allowed = false;
        let wait = windowMs;
        if (cost <= limit) wait = unitTime(entry!, count + cost - limit - 1) + windowMs - now;
        // The violated limit named in the answer is the one that sets the wait.
        if (violated < 0 || wait > retry) violated = i;
        if (wait > retry) retry = wait;
      }
    }
    // Limits with the same window share one log: the request is logged in it once.
    const written = limits.length > 1 ? new Map<string, LogEntry>() : undefined;
    const states = limits.map(({ limit, windowMs }, i) => {
      let entry = entries[i];
      const key = keys[i]!;
      if (allowed && cost > 0 && written?.has(key)) {
        entry = written.get(key);
      } else if (allowed && cost > 0) {
        if (!entry) {
          entry = { kind: "log", runs: [], head: 0, total: 0, expiresAt: now + windowMs };
          this.#add(key, entry, now);
        }
        const last = entry.runs.length - 2;
        if (last >= entry.head && entry.runs[last] === now) entry.runs[last + 1]! += cost;
        else entry.runs.push(now, cost);
        entry.total += cost;
        entry.expiresAt = now + windowMs;
        written?.set(key, entry);
      }
      const remaining = Math.max(0, limit - (entry?.total ?? 0));
      const oldest = entry && entry.runs.length > entry.head ? entry.runs[entry.head]! : undefined;
      return {
        limit,
        windowMs,
        remaining,
        resetMs: oldest === undefined ? 0 : oldest + windowMs - now,
      };
    });
    return { allowed, retryAfterMs: retry, violated, states };
  }

  #counter(query: WindowQuery, now: number): WindowDecision {
    const { cost, limits } = query;
    let allowed = true;
    let retry = 0;
    let violated = -1;
    const views = limits.map(({ limit, windowMs }, i) => {
      const key = limitKey(query.key, "counter", windowMs);
      const bucket = Math.floor(now / windowMs);
      const r = now - bucket * windowMs;
      const entry = this.#get(key, "counter", now);
      let curr = 0;
      let prev = 0;
      if (entry) {
        if (entry.bucket === bucket) {
          curr = entry.curr;
          prev = entry.prev;
        } else if (entry.bucket === bucket - 1) {
          prev = entry.curr;
        }
      }
      if (prev * (windowMs - r) + (curr + cost) * windowMs > limit * windowMs) {
        allowed = false;
        const wait = counterWait(prev, curr, cost, limit, windowMs, r);
        // The violated limit named in the answer is the one that sets the wait.
        if (violated < 0 || wait > retry) violated = i;
        if (wait > retry) retry = wait;
      }
      return { key, bucket, r, curr, prev };
    });
    const states = limits.map(({ limit, windowMs }, i) => {
      const view = views[i]!;
      let curr = view.curr;
      if (allowed && cost > 0) {
        curr += cost;
        this.#add(view.key, {
          kind: "counter",
          bucket: view.bucket,
          curr,
          prev: view.prev,
          expiresAt: now + 2 * windowMs,
        }, now);
      }
      const scaled = limit * windowMs - view.prev * (windowMs - view.r) - curr * windowMs;
      const remaining = Math.max(0, Math.floor(scaled / windowMs));
      return {
        limit,
        windowMs,
        remaining,
        // None left: the quota next grows when one unit would pass, which may
        // be past the bucket's end (the old bucket still weighs there).
        resetMs: remaining > 0
          ? windowMs - view.r
          : counterWait(view.prev, curr, 1, limit, windowMs, view.r),
      };
    });
    return { allowed, retryAfterMs: retry, violated, states };
  }

  #fixed(query: WindowQuery, now: number): WindowDecision {
    const { cost, limits } = query;
    let allowed = true;
    let retry = 0;
    let violated = -1;
    const views = limits.map(({ limit, windowMs }, i) => {
      const key = limitKey(query.key, "fixed", windowMs);
      const bucket = Math.floor(now / windowMs);
      const entry = this.#get(key, "fixed", now);
      const count = entry && entry.bucket === bucket ? entry.count : 0;
      if (count + cost > limit) {
        allowed = false;
        const wait = cost > limit ? windowMs : (bucket + 1) * windowMs - now;
        // The violated limit named in the answer is the one that sets the wait.
        if (violated < 0 || wait > retry) violated = i;
        if (wait > retry) retry = wait;
      }
      return { key, bucket, count };
    });
    const states = limits.map(({ limit, windowMs }, i) => {
      const view = views[i]!;
      const reset = (view.bucket + 1) * windowMs - now;
      let count = view.count;
      if (allowed && cost > 0) {
        count += cost;
        this.#add(view.key, {
          kind: "fixed",
          bucket: view.bucket,
          count,
          expiresAt: now + reset,
        }, now);
      }
      return { limit, windowMs, remaining: Math.max(0, limit - count), resetMs: reset };
    });
    return { allowed, retryAfterMs: retry, violated, states };
  }

  bucket(query: BucketQuery): Promise<BucketDecision> {
    const now = query.now ?? this.#clock();
    const { rate, periodMs, burst, cost, maxDelayMs } = query;
    const entry = this.#get(query.key, "bucket", now);
    let tokens = entry?.tokens ?? burst;
    let at = entry?.at ?? now;
    let reservations = entry?.reservations ?? 0;
    if (now > at) {
      tokens = Math.min(burst, tokens + (now - at) * rate / periodMs);
      at = now;
    }
    let allowed = true;
    let delay = 0;
    let retry = 0;
    const after = tokens - cost;
    if (after < 0) {
      delay = Math.ceil(-after * periodMs / rate);
      if (delay > maxDelayMs || cost > burst) {
        allowed = false;
        retry = cost > burst ? periodMs : Math.max(1, delay - maxDelayMs);
        delay = 0;
      }
    }
    // A refund behind a later reservation is lost: nothing changes.
    const stale = cost < 0 && (query.refundOf ?? 0) > 0 && query.refundOf !== reservations;
    if ((cost < 0 && !stale) || (allowed && cost > 0)) {
      tokens = cost < 0 ? Math.min(burst, after) : after;
      if (cost > 0) reservations++;
      this.#add(query.key, {
        kind: "bucket",
        tokens,
        at,
        reservations,
        expiresAt: now + Math.ceil((burst - tokens) * periodMs / rate) + 1_000,
      }, now);
    }
    return Promise.resolve({
      allowed,
      delayMs: delay,
      remaining: Math.max(0, Math.floor(tokens)),
      retryAfterMs: retry,
      resetMs: Math.max(0, Math.ceil((burst - tokens) * periodMs / rate)),
      reservation: reservations,
    });
  }

  /** The memory store holds no hashes: API keys in a Redis hash need a Redis store. */
  hashGet(_key: string, _field: string): Promise<string | undefined> {
    return Promise.resolve(undefined);
  }

  ping(): Promise<void> {
    return Promise.resolve();
  }

  close(): Promise<void> {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#entries.clear();
    return Promise.resolve();
  }
}

/**
 * How long a counter limit makes a request of `cost` wait, from `r` ms into
 * the current bucket holding `curr` units after one of `prev`: within this
 * bucket once the previous one weighs little enough, else in the next bucket
 * once this one does. At least 1 ms; a whole window for a cost above the limit.
 */
function counterWait(
  prev: number,
  curr: number,
  cost: number,
  limit: number,
  windowMs: number,
  r: number,
): number {
  if (cost > limit) return windowMs;
  let wait = windowMs;
  if (curr + cost <= limit) {
    wait = windowMs - Math.floor(((limit - cost - curr) * windowMs) / prev) - r;
  } else if (curr > 0) {
    wait = windowMs - r + (windowMs - Math.floor(((limit - cost) * windowMs) / curr));
  }
  return wait < 1 ? 1 : wait;
}

/** Drops the runs at or before `cutoff` (they left the window). */
function trimLog(entry: LogEntry, cutoff: number): void {
  const runs = entry.runs;
  let head = entry.head;
  let units = 0;
  while (head < runs.length && runs[head]! <= cutoff) {
    units += runs[head + 1]!;
    head += 2;
  }
  entry.total -= units;
  // Compact now and then, so the dropped runs do not pile up.
  if (head > 1024 && head * 2 > runs.length) {
    runs.splice(0, head);
    head = 0;
  }
  entry.head = head;
}

/** The time of the unit at 0-based position `index`, oldest first. */
function unitTime(entry: LogEntry, index: number): number {
  let seen = 0;
  for (let i = entry.head; i < entry.runs.length; i += 2) {
    seen += entry.runs[i + 1]!;
    if (seen > index) return entry.runs[i]!;
  }
  return entry.runs[entry.runs.length - 2] ?? 0;
}
