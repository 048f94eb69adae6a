/** A bound on how long a step of loading may take. */

/**
 * What `run` gives, or a rejection with `message` once `ms` pass without it:
 * a plugin whose import or `create()` never finishes must not hold every
 * later reload (and shutdown) behind it.
 */
export async function withinTime<T>(
  run: () => T | Promise<T>,
  ms: number,
  message: string,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      Promise.resolve().then(run),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(message)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
