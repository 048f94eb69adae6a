/**
 * Watches the config file and the custom plugin files it names, debounced.
 *
 * Files are often not edited in place: editors save by rename, Kubernetes
 * swaps a ConfigMap's `..data` symlink to a new folder, deploys repoint a
 * `current -> releases/N` symlink or replace a whole folder. So each file is
 * watched through its folder, through the folder of every symlink on its way
 * to the real file, and through its folder's parent; and after any change the
 * watches are set up again, on whatever the paths lead to now.
 */

const MAX_LINKS = 40;

/** The symlinks met while resolving `path` (each as the path it was met at), and the real file. */
export function symlinkChain(path: string): { links: string[]; real: string } {
  const links: string[] = [];
  const resolve = (input: string, depth: number): string => {
    let prefix = "";
    const parts = input.split("/").filter((part) => part !== "" && part !== ".");
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i]!;
      if (part === "..") {
        prefix = prefix.slice(0, prefix.lastIndexOf("/"));
        continue;
      }
      const candidate = `${prefix}/${part}`;
      let info: Deno.FileInfo;
      try {
        info = Deno.lstatSync(candidate);
      } catch {
        // Not there (yet): the rest is taken as written.
        return [candidate, ...parts.slice(i + 1)].join("/");
      }
      if (!info.isSymlink || depth >= MAX_LINKS) {
        prefix = candidate;
        continue;
      }
      links.push(candidate);
      const target = Deno.readLinkSync(candidate);
      prefix = resolve(target.startsWith("/") ? target : `${prefix}/${target}`, depth + 1);
    }
    return prefix || "/";
  };
  return { links, real: resolve(path, 0) };
}

function dirOf(path: string): string {
  return path.slice(0, path.lastIndexOf("/")) || "/";
}

/** Calls back once per burst of changes to any of the watched files. */
export class FileWatcher {
  #watchers: Deno.FsWatcher[] = [];
  #files = new Set<string>();
  /** Paths whose change may change a watched file: the files, their links, real files and folders. */
  #paths = new Set<string>();
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
    this.#files = next;
    this.#rewatch();
  }

  #rewatch(): void {
    this.#stopWatchers();
    const paths = new Set<string>();
    const dirs = new Set<string>();
    for (const file of this.#files) {
      const { links, real } = symlinkChain(file);
      // The file's folder, and that folder in its parent (a folder replaced whole).
      const dir = dirOf(file);
      paths.add(file).add(real).add(dir);
      dirs.add(dir).add(dirOf(dir)).add(dirOf(real));
      for (const link of links) {
        paths.add(link);
        dirs.add(dirOf(link));
      }
    }
    this.#paths = paths;
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
        if (!event.paths.some((path) => this.#paths.has(path))) continue;
        // Which file changed is not always known (a link or folder moved): all may have.
        for (const file of this.#files) this.#changed.add(file);
        if (this.#timer !== undefined) clearTimeout(this.#timer);
        this.#timer = setTimeout(() => {
          this.#timer = undefined;
          const changed = [...this.#changed];
          this.#changed.clear();
          if (this.#closed) return;
          // The links may lead elsewhere now: watch where they lead.
          this.#rewatch();
          this.#onChange(changed);
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
