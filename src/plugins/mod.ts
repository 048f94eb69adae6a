/** The built-in plugins, registered by static import so `deno compile` bundles them. */
import type { PluginDefinition } from "../plugin.ts";
import identify from "./identify.ts";
import proxy from "./proxy.ts";
import slidingWindow from "./sliding_window.ts";
import tier from "./tier.ts";
import tokenBucket from "./token_bucket.ts";
import concurrency from "./concurrency.ts";
import circuitBreaker from "./circuit_breaker.ts";

/** Every built-in plugin by name. */
export const BUILTIN_PLUGINS: ReadonlyMap<string, PluginDefinition> = new Map<
  string,
  PluginDefinition
>(
  [
    identify,
    tier,
    slidingWindow,
    tokenBucket,
    circuitBreaker,
    concurrency,
    proxy,
  ].map((
    plugin,
  ) => [plugin.name, plugin as PluginDefinition]),
);
