/** Hex digests through Web Crypto. */

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
