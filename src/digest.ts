/** Hex digests through Web Crypto. */

import { rememberBounded } from "./bounded_map.ts";

async function hexDigest(algorithm: "SHA-1" | "SHA-256", text: string): Promise<string> {
  const digest = await crypto.subtle.digest(algorithm, new TextEncoder().encode(text));
  let hex = "";
  for (const byte of new Uint8Array(digest)) hex += byte.toString(16).padStart(2, "0");
  return hex;
}

/** Hex SHA-256 of a text. */
export function sha256Hex(text: string): Promise<string> {
  return hexDigest("SHA-256", text);
}

/** Hex SHA-1 of a text (Redis names scripts by it). */
export function sha1Hex(text: string): Promise<string> {
  return hexDigest("SHA-1", text);
}

const KEY_CACHE_MAX = 10_000;
/** Longer keys are hashed every time, not remembered: a client must not park megabytes here. */
const KEY_CACHE_MAX_LENGTH = 256;
const keyDigests = new Map<string, string>();

/** The SHA-256 hex of an API key if it was hashed lately: no work, no promise. */
export function knownKeyDigest(key: string): string | undefined {
  return keyDigests.get(key);
}

/**
 * The SHA-256 hex of an API key, remembered for the next requests (bounded):
 * identify makes the client id from it and tier looks the key up by it, so a
 * key is hashed once, not once per plugin per request.
 */
export async function keyDigest(key: string): Promise<string> {
  const known = keyDigests.get(key);
  if (known !== undefined) return known;
  const digest = await sha256Hex(key);
  if (key.length > KEY_CACHE_MAX_LENGTH) return digest;
  return rememberBounded(keyDigests, key, digest, KEY_CACHE_MAX);
}
