/** One eviction rule for the small lookup caches of the hot path. */

/**
 * Sets `key` to `value` in `cache`, first dropping the oldest entry when the
 * cache already holds `max`, so it never grows past `max`. Returns `value`.
 */
export function rememberBounded<V>(cache: Map<string, V>, key: string, value: V, max: number): V {
  if (cache.size >= max) cache.delete(cache.keys().next().value!);
  cache.set(key, value);
  return value;
}
