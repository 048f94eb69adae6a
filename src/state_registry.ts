/**
 * Plugin state that outlives pipelines. A pipeline build asks for state by
 * key; a key the running pipeline already uses gets the same value. When the
 * build is swapped in, state no new entry asked for is disposed; when it
 * fails, state made for it is disposed and the running state is untouched.
 */

interface StateEntry {
  value: unknown;
  dispose?: (value: unknown) => void;
}

/** The state of the running pipeline. */
export class StateRegistry {
  #live = new Map<string, StateEntry>();

  /** Starts collecting the state of a new pipeline. */
  begin(): StateBuild {
    return new StateBuild(this.#live, (next) => {
      const previous = this.#live;
      this.#live = next;
      for (const [key, entry] of previous) {
        if (!next.has(key)) disposeEntry(entry);
      }
    });
  }

  /** Disposes every entry (at shutdown). */
  clear(): void {
    for (const entry of this.#live.values()) disposeEntry(entry);
    this.#live = new Map();
  }
}

/** The state one pipeline build asked for. */
export class StateBuild {
  #live: ReadonlyMap<string, StateEntry>;
  #next = new Map<string, StateEntry>();
  #created = new Map<string, StateEntry>();
  #install: (next: Map<string, StateEntry>) => void;
  #done = false;

  constructor(
    live: ReadonlyMap<string, StateEntry>,
    install: (next: Map<string, StateEntry>) => void,
  ) {
    this.#live = live;
    this.#install = install;
  }

  /** The value under the key: the running one, or a new one from `init`. */
  keep<T>(key: string, init: () => T, dispose?: (value: T) => void): T {
    if (this.#done) throw new Error(`Cannot keep state "${key}": the pipeline build is over`);
    const existing = this.#next.get(key) ?? this.#live.get(key);
    if (existing) {
      this.#next.set(key, existing);
      return existing.value as T;
    }
    const entry: StateEntry = { value: init(), dispose: dispose as StateEntry["dispose"] };
    this.#next.set(key, entry);
    this.#created.set(key, entry);
    return entry.value as T;
  }

  /** Makes this build's state the running state; what it did not ask for is disposed. */
  commit(): void {
    this.#finish();
    this.#install(this.#next);
  }

  /** Drops this build's new state; the running state is untouched. */
  abort(): void {
    this.#finish();
    for (const entry of this.#created.values()) disposeEntry(entry);
  }

  #finish(): void {
    if (this.#done) throw new Error("Cannot finish a pipeline build twice");
    this.#done = true;
  }
}

function disposeEntry(entry: StateEntry): void {
  try {
    entry.dispose?.(entry.value);
  } catch {
    // A failing dispose must not stop a swap.
  }
}

/** JSON with sorted object keys, so equal options give equal text. */
export function stableStringify(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(stableStringify).join(",")}]`;
  if (typeof value === "object" && value !== null) {
    const entries = Object.keys(value).sort().map((key) =>
      `${JSON.stringify(key)}:${stableStringify((value as Record<string, unknown>)[key])}`
    );
    return `{${entries.join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
}
