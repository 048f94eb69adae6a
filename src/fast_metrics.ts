/**
 * A counter and a histogram for the metrics every request touches. A
 * prom-client child hashes and validates its labels on every call (0.1 µs for
 * a counter, 0.24 µs for a histogram here); a child of these is one object
 * whose numbers grow, looked at only when `/metrics` is scraped. They register
 * in a prom-client registry, which renders them exactly as it renders its own.
 */

type Labels<L extends string> = Record<L, string | number>;

/** What a registry asks of a metric (the shape prom-client's own metrics give). */
interface Exported {
  name: string;
  help: string;
  type: "counter" | "histogram";
  aggregator: "sum";
  values: { labels: Record<string, string | number>; value: number; metricName?: string }[];
}

abstract class FastMetric<L extends string, C> {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly L[];
  readonly aggregator = "sum" as const;
  abstract readonly type: "counter" | "histogram";
  #children = new Map<string, { labels: Labels<L>; child: C }>();

  constructor(options: { name: string; help: string; labelNames?: readonly L[] }) {
    this.name = options.name;
    this.help = options.help;
    this.labelNames = options.labelNames ?? [];
  }

  protected abstract make(): C;

  /** The child of one label set, by values in `labelNames` order or by name. */
  protected child(...args: (string | number)[] | [Partial<Labels<L>>]): C {
    const first = args[0];
    const labels = {} as Labels<L>;
    if (first !== undefined && typeof first === "object") {
      for (const name of this.labelNames) labels[name] = (first as Labels<L>)[name];
    } else {
      this.labelNames.forEach((name, i) => labels[name] = args[i] as string | number);
    }
    for (const name of this.labelNames) {
      if (labels[name] === undefined) {
        throw new Error(`Metric ${this.name}: label "${name}" has no value`);
      }
    }
    const key = this.labelNames.map((name) => String(labels[name])).join("\u0000");
    let entry = this.#children.get(key);
    if (!entry) {
      entry = { labels, child: this.make() };
      this.#children.set(key, entry);
    }
    return entry.child;
  }

  protected entries(): Iterable<{ labels: Labels<L>; child: C }> {
    return this.#children.values();
  }

  /** Forgets every label set. */
  reset(): void {
    this.#children.clear();
  }

  /** Forgets the label sets `gone` picks (a child still held counts on, unseen). */
  removeWhere(gone: (labels: Labels<L>) => boolean): void {
    for (const [key, entry] of this.#children) if (gone(entry.labels)) this.#children.delete(key);
  }

  protected abstract values(): Exported["values"];

  /** What the registry renders. */
  get(): Promise<Exported> {
    return Promise.resolve({
      name: this.name,
      help: this.help,
      type: this.type,
      aggregator: this.aggregator,
      values: this.values(),
    });
  }
}

/** One counter series. */
export interface CounterChild {
  inc(amount?: number): void;
}

class CounterCell implements CounterChild {
  value = 0;
  /** Shown once counted in (as prom-client shows a series once it is used). */
  shown = false;
  inc(amount = 1): void {
    if (!(amount >= 0)) throw new Error(`A counter only goes up: cannot add ${amount}`);
    this.value += amount;
    this.shown = true;
  }
}

/** A counter; `labels(...)` gives a series to keep and `inc()` on the hot path. */
export class FastCounter<L extends string = string> extends FastMetric<L, CounterCell> {
  readonly type = "counter" as const;

  constructor(options: { name: string; help: string; labelNames?: readonly L[] }) {
    super(options);
    // Without labels there is one series, shown from the start.
    if (this.labelNames.length === 0) this.child().shown = true;
  }

  protected make(): CounterCell {
    return new CounterCell();
  }

  /** The series of one label set. */
  labels(...args: (string | number)[] | [Partial<Labels<L>>]): CounterChild {
    return this.child(...args);
  }

  /** Adds to the series of `labels` (1 by default). */
  inc(labels: Partial<Labels<L>> = {}, amount = 1): void {
    this.child(labels).inc(amount);
  }

  protected values(): Exported["values"] {
    return [...this.entries()].filter(({ child }) => child.shown)
      .map(({ labels, child }) => ({ labels, value: child.value }));
  }
}

/** One histogram series. */
export interface HistogramChild {
  observe(value: number): void;
}

class HistogramCell implements HistogramChild {
  /** Observations per bucket (not cumulative); the last is above every bound. */
  readonly counts: number[];
  sum = 0;
  count = 0;
  /** Shown once observed into (as prom-client shows a series once it is used). */
  shown = false;

  constructor(readonly bounds: readonly number[]) {
    this.counts = new Array(bounds.length + 1).fill(0);
  }

  observe(value: number): void {
    if (!Number.isFinite(value)) throw new TypeError(`Cannot observe ${value}`);
    const bounds = this.bounds;
    let i = 0;
    while (i < bounds.length && value > bounds[i]!) i++;
    this.counts[i]!++;
    this.sum += value;
    this.count++;
    this.shown = true;
  }
}

/** A histogram with fixed buckets; `labels(...)` gives a series to keep and `observe()` on the hot path. */
export class FastHistogram<L extends string = string> extends FastMetric<L, HistogramCell> {
  readonly type = "histogram" as const;
  readonly buckets: readonly number[];

  constructor(
    options: { name: string; help: string; labelNames?: readonly L[]; buckets: readonly number[] },
  ) {
    super(options);
    this.buckets = [...options.buckets].sort((a, b) => a - b);
    // Without labels there is one series, shown from the start.
    if (this.labelNames.length === 0) this.child().shown = true;
  }

  protected make(): HistogramCell {
    return new HistogramCell(this.buckets);
  }

  /** The series of one label set. */
  labels(...args: (string | number)[] | [Partial<Labels<L>>]): HistogramChild {
    return this.child(...args);
  }

  /** Observes one value: in the series of `labels`, or of no labels. */
  observe(labels: Partial<Labels<L>> | number, value?: number): void {
    if (typeof labels === "number") this.child().observe(labels);
    else this.child(labels).observe(value!);
  }

  protected values(): Exported["values"] {
    const out: Exported["values"] = [];
    for (const { labels, child } of this.entries()) {
      if (!child.shown) continue;
      let cumulative = 0;
      this.buckets.forEach((bound, i) => {
        cumulative += child.counts[i]!;
        out.push({
          labels: { le: bound, ...labels },
          value: cumulative,
          metricName: `${this.name}_bucket`,
        });
      });
      out.push({
        labels: { le: "+Inf", ...labels },
        value: child.count,
        metricName: `${this.name}_bucket`,
      });
      out.push({ labels, value: child.sum, metricName: `${this.name}_sum` });
      out.push({ labels, value: child.count, metricName: `${this.name}_count` });
    }
    return out;
  }
}
