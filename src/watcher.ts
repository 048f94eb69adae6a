/** Watches the config file and the custom plugin files it names, debounced. */

/** Calls back once per burst of changes to any of the watched files. */
export class FileWatcher {
  #watchers: Deno.FsWatcher[] = [];
  #files = new Set<string>();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #onChange: (files: string[]) => void;
  #debounceMs: number;
  #changed = new Set<string>();
  #closed = false;

  constructor(onChange: (files: string[]) => void, debounceMs = 150) {
    this.#onChange = onChange;
    this.#debounceMs = debounceMs;
  }

  /** Watches exactly these files (absolute paths) from now on. */
  watch(files: readonly string[]): void {
    if (this.#closed) return;
    const next = new Set(files);
    if (next.size === this.#files.size && [...next].every((file) => this.#files.has(file))) return;
    this.#stopWatchers();
    this.#files = next;
    // Directories, not files: editors that save by rename replace the inode.
    const dirs = new Set([...next].map((file) => file.slice(0, file.lastIndexOf("/")) || "/"));
    for (const dir of dirs) {
      let watcher: Deno.FsWatcher;
      try {
        watcher = Deno.watchFs(dir, { recursive: false });
      } catch {
        continue;
      }
      this.#watchers.push(watcher);
      this.#pump(watcher);
    }
  }

  async #pump(watcher: Deno.FsWatcher): Promise<void> {
    try {
      for await (const event of watcher) {
        if (event.kind === "access") continue;
        const hits = event.paths.filter((path) => this.#files.has(path));
        if (hits.length === 0) continue;
        for (const hit of hits) this.#changed.add(hit);
        if (this.#timer !== undefined) clearTimeout(this.#timer);
        this.#timer = setTimeout(() => {
          this.#timer = undefined;
          const changed = [...this.#changed];
          this.#changed.clear();
          if (!this.#closed) this.#onChange(changed);
        }, this.#debounceMs);
      }
    } catch {
      // The watcher was closed.
    }
  }

  #stopWatchers(): void {
    for (const watcher of this.#watchers) {
      try {
        watcher.close();
      } catch {
        // Already closed.
      }
    }
    this.#watchers = [];
  }

  /** Stops watching. */
  close(): void {
    this.#closed = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#stopWatchers();
  }
}
