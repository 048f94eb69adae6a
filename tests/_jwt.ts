/** Signing JWTs for tests, with Web Crypto (independent of src/jwt.ts, which only verifies). */

const encoder = new TextEncoder();

/** base64url without padding. */
export function base64Url(bytes: Uint8Array | string): string {
  const data = typeof bytes === "string" ? encoder.encode(bytes) : bytes;
  let binary = "";
  for (const byte of data) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** How each algorithm signs. */
const SIGN: Record<string, AlgorithmIdentifier | RsaPssParams | EcdsaParams> = {
  HS256: "HMAC",
  HS384: "HMAC",
  HS512: "HMAC",
  RS256: "RSASSA-PKCS1-v1_5",
  PS256: { name: "RSA-PSS", saltLength: 32 },
  ES256: { name: "ECDSA", hash: "SHA-256" },
  ES384: { name: "ECDSA", hash: "SHA-384" },
  EdDSA: "Ed25519",
};

/**
 * A compact JWS of `claims` (an object, or JSON text as it is), signed with
 * `key` (a CryptoKey, or a secret for HS*).
 */
export async function signJwt(
  alg: string,
  key: CryptoKey | string,
  claims: Record<string, unknown> | string,
  header: Record<string, unknown> = {},
): Promise<string> {
  const signingKey = typeof key === "string"
    ? await crypto.subtle.importKey(
      "raw",
      encoder.encode(key),
      { name: "HMAC", hash: `SHA-${alg.slice(2)}` },
      false,
      ["sign"],
    )
    : key;
  const head = base64Url(JSON.stringify({ alg, typ: "JWT", ...header }));
  const body = base64Url(typeof claims === "string" ? claims : JSON.stringify(claims));
  const signature = await crypto.subtle.sign(
    SIGN[alg]!,
    signingKey,
    encoder.encode(`${head}.${body}`),
  );
  return `${head}.${body}.${base64Url(new Uint8Array(signature))}`;
}

/** Key generation parameters per algorithm. */
const GENERATE: Record<string, RsaHashedKeyGenParams | EcKeyGenParams | Algorithm> = {
  RS256: {
    name: "RSASSA-PKCS1-v1_5",
    modulusLength: 2048,
    publicExponent: new Uint8Array([1, 0, 1]),
    hash: "SHA-256",
  },
  PS256: {
    name: "RSA-PSS",
    modulusLength: 2048,
    publicExponent: new Uint8Array([1, 0, 1]),
    hash: "SHA-256",
  },
  ES256: { name: "ECDSA", namedCurve: "P-256" },
  ES384: { name: "ECDSA", namedCurve: "P-384" },
  EdDSA: { name: "Ed25519" },
};

/** A key pair for `alg`, with its public key as PEM and as a JWK. */
export async function keyPair(
  alg: string,
): Promise<{ privateKey: CryptoKey; pem: string; jwk: JsonWebKey }> {
  const pair = await crypto.subtle.generateKey(GENERATE[alg]!, true, [
    "sign",
    "verify",
  ]) as CryptoKeyPair;
  const spki = new Uint8Array(await crypto.subtle.exportKey("spki", pair.publicKey));
  let binary = "";
  for (const byte of spki) binary += String.fromCharCode(byte);
  const lines = btoa(binary).match(/.{1,64}/g)!.join("\n");
  return {
    privateKey: pair.privateKey,
    pem: `-----BEGIN PUBLIC KEY-----\n${lines}\n-----END PUBLIC KEY-----\n`,
    jwk: await crypto.subtle.exportKey("jwk", pair.publicKey),
  };
}

/** Seconds since the epoch, as JWT times are written. */
export function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}
