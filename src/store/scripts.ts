/**
 * The Lua scripts, one per algorithm, read from `lua/` through
 * `import.meta.url` (so `deno compile --include lua` embeds them), with the
 * SHA1 that EVALSHA names them by.
 */

import { sha1Hex } from "../digest.ts";

/** The script names: `lua/<name>.lua`. */
export const SCRIPT_NAMES = [
  "sliding_log",
  "sliding_counter",
  "fixed_window",
  "token_bucket",
] as const;

/** One script name. */
export type ScriptName = typeof SCRIPT_NAMES[number];

/** A loaded script. */
export interface Script {
  readonly name: ScriptName;
  readonly source: string;
  /** Hex SHA1 of the source, as Redis computes it. */
  readonly sha: string;
}

let registry: Promise<ReadonlyMap<ScriptName, Script>> | undefined;

/** Every script with its SHA1, read once. */
export function loadScripts(): Promise<ReadonlyMap<ScriptName, Script>> {
  registry ??= (async () => {
    const scripts = new Map<ScriptName, Script>();
    for (const name of SCRIPT_NAMES) {
      const source = await Deno.readTextFile(new URL(`../../lua/${name}.lua`, import.meta.url));
      scripts.set(name, { name, source, sha: await sha1Hex(source) });
    }
    return scripts;
  })();
  registry.catch(() => registry = undefined);
  return registry;
}
