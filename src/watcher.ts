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
/**
 * Paths are watched again this long after a change has settled: a watch set
 * at once on the path of a folder just replaced whole reported nothing (Deno 2.9).
 */
const SETTLE_MS = 300;
/**
 * How often each file's identity (inode, size, mtime) is checked, for the
 * changes no event reports: after a folder is replaced whole, its new watch
 * may stay silent.
 */
const POLL_MS = 2_000;

/**
 * True when this process may read `path` without asking: with a narrow
 * `--allow-read` (the start task's `--allow-read=.`), looking at a folder
 * outside it would stop the process at a permission prompt in a terminal.
 */
function mayRead(path: string): boolean {
  return Deno.permissions.querySync({ name: "read", path }).state === "granted";
}

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
      // A folder this process may not read is taken as written: it cannot be looked into.
      if (!mayRead(candidate)) {
        prefix = candidate;
        continue;
      }
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
  #settle: ReturnType<typeof setTimeout> | undefined;
  #poll: ReturnType<typeof setInterval> | undefined;
  /** Each file's identity when last looked at. */
  #seen = new Map<string, string>();
  #files = new Set<string>();
  /** Paths whose change may change a watched file: the files, their links, real files and folders. */
  #paths = new Set<string>();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #onChange: (files: string[]) => void;
  #debounceMs: number;
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
    this.#seen = new Map([...next].map((file) => [file, identity(file)]));
    this.#rewatch();
    if (this.#poll === undefined) {
      this.#poll = setInterval(() => this.#check(), POLL_MS);
      Deno.unrefTimer(this.#poll);
    }
  }

  /** Any file whose identity changed though no event said so counts as changed. */
  #check(): void {
    for (const file of this.#files) {
      const now = identity(file);
      if (now === this.#seen.get(file)) continue;
      this.#seen.set(file, now);
      this.#changedNow();
      return;
    }
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
      if (!mayRead(dir)) continue;
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
        this.#changedNow();
      }
    } catch {
      // The watcher was closed.
    }
  }

  /**
   * Something changed: call back once the burst is over, with every file
   * (which one changed is not always known: a link or folder moved), and
   * watch where the paths lead now.
   */
  #changedNow(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (this.#closed) return;
      for (const file of this.#files) this.#seen.set(file, identity(file));
      this.#onChange([...this.#files]);
      // The links and folders may lead elsewhere now: watch there, once it has settled.
      clearTimeout(this.#settle);
      this.#settle = setTimeout(() => {
        this.#settle = undefined;
        if (!this.#closed) this.#rewatch();
      }, SETTLE_MS);
    }, this.#debounceMs);
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
    clearTimeout(this.#timer);
    this.#timer = undefined;
    clearTimeout(this.#settle);
    this.#settle = undefined;
    clearInterval(this.#poll);
    this.#poll = undefined;
    this.#stopWatchers();
  }
}

/** What the file is now (through any links): its inode, size and mtime, or "missing". */
function identity(file: string): string {
  if (!mayRead(file)) return "unreadable";
  try {
    const info = Deno.statSync(file);
    return `${info.dev}:${info.ino}:${info.size}:${info.mtime?.getTime()}`;
  } catch {
    return "missing";
  }
}
