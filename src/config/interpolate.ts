/** `${VAR}` and `${VAR:-default}` interpolation of config values. */

const PLACEHOLDER_RE = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;
/** A value that is one `${VAR}` (or `${VAR:-default}`) and nothing else. */
export const WHOLE_PLACEHOLDER_RE = /^\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\}$/;

/** Reads one environment variable; `undefined` when it is not set. */
export type EnvLookup = (name: string) => string | undefined;

/** Reads from the process environment. A variable the process may not read counts as unset. */
export function processEnv(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}

/** Raised when a placeholder names a variable that is unset and has no default. */
export class InterpolationError extends Error {
  override name = "InterpolationError";
  constructor(readonly variable: string) {
    super(
      `Environment variable ${variable} is not set: set it, or give a default as \${${variable}:-value}`,
    );
  }
}

/** True when the text holds at least one placeholder. */
export function hasPlaceholder(text: string): boolean {
  PLACEHOLDER_RE.lastIndex = 0;
  return PLACEHOLDER_RE.test(text);
}

/** True when the whole text is exactly one placeholder, so its value may take a number or boolean type. */
export function isWholePlaceholder(text: string): boolean {
  return WHOLE_PLACEHOLDER_RE.test(text);
}

/**
 * Replaces every `${VAR}` and `${VAR:-default}` in the text.
 *
 * @example
 * ```ts
 * import { interpolate } from "./interpolate.ts";
 * interpolate("${PORT:-8080}", () => undefined); // "8080"
 * ```
 */
export function interpolate(text: string, env: EnvLookup): string {
  return text.replace(
    PLACEHOLDER_RE,
    (_all, name: string, fallback: string | undefined) => {
      const value = env(name);
      if (value !== undefined && value !== "") return value;
      if (fallback !== undefined) return fallback;
      if (value !== undefined) return value;
      throw new InterpolationError(name);
    },
  );
}

/** Text whose placeholders were swapped for tokens that are safe anywhere in YAML. */
export interface ProtectedText {
  /** The text with each placeholder replaced by a token of letters, digits and underscores. */
  text: string;
  /** Puts the placeholders back into a string taken from the parsed text. */
  restore(value: string): string;
}

const TOKEN_RE = /__sluice_var_(\d+)__/g;

/**
 * Swaps each placeholder for a plain token before the YAML is parsed, so that
 * `{ token: ${ADMIN_TOKEN:-} }` is valid inside a flow mapping, where `{` and
 * `}` would otherwise end it. Lines stay where they were.
 */
export function protectPlaceholders(text: string): ProtectedText {
  const placeholders: string[] = [];
  const replaced = text.replace(PLACEHOLDER_RE, (placeholder) => {
    placeholders.push(placeholder);
    return `__sluice_var_${placeholders.length - 1}__`;
  });
  return {
    text: replaced,
    restore: (value) =>
      placeholders.length === 0
        ? value
        : value.replace(TOKEN_RE, (token, index: string) => placeholders[Number(index)] ?? token),
  };
}
