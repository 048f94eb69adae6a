/** Parsing of the duration (`250ms`, `10s`, `1m`, `1h`, `1d`) and rate (`N/s`, `N/m`, `N/h`) strings used in the config. */

const DURATION_UNITS: Record<string, number> = {
  ms: 1,
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

const DURATION_RE = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/;
const RATE_RE = /^(\d+(?:\.\d+)?)\/(s|m|h|d)$/;

/** A rate: `count` events per `periodMs` milliseconds. */
export interface Rate {
  count: number;
  periodMs: number;
}

/**
 * Parses a duration such as `250ms`, `10s`, `1m`, `1h` or `1d` into milliseconds.
 *
 * @example
 * ```ts
 * import { parseDuration } from "./duration.ts";
 * parseDuration("1m"); // 60000
 * ```
 */
export function parseDuration(text: string): number {
  const match = DURATION_RE.exec(text.trim());
  if (!match) {
    throw new RangeError(
      `Invalid duration "${text}": write a number followed by ms, s, m, h or d, such as 250ms or 10s`,
    );
  }
  return Math.round(Number(match[1]) * DURATION_UNITS[match[2]!]!);
}

/**
 * Parses a rate such as `50/s`, `600/m` or `1000/h`.
 *
 * @example
 * ```ts
 * import { parseRate } from "./duration.ts";
 * parseRate("50/s"); // { count: 50, periodMs: 1000 }
 * ```
 */
export function parseRate(text: string): Rate {
  const match = RATE_RE.exec(text.trim());
  if (!match) {
    throw new RangeError(
      `Invalid rate "${text}": write a count, a slash and s, m, h or d, such as 50/s or 600/m`,
    );
  }
  const count = Number(match[1]);
  if (count <= 0) {
    throw new RangeError(`Invalid rate "${text}": the count must be above 0`);
  }
  return { count, periodMs: DURATION_UNITS[match[2]!]! };
}

/**
 * Writes milliseconds as a duration in the largest whole unit: `1m`, `10s`,
 * `250ms`. The inverse of {@linkcode parseDuration} for whole units.
 *
 * @example
 * ```ts
 * import { formatDuration } from "./duration.ts";
 * formatDuration(60000); // "1m"
 * ```
 */
export function formatDuration(ms: number): string {
  for (const unit of ["d", "h", "m", "s"]) {
    const size = DURATION_UNITS[unit]!;
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}
