/**
 * JSON Web Tokens (RFC 7519) signed with JWS compact serialization (RFC 7515),
 * verified with Web Crypto: the `jwt:<claim>` identity source of `identify`.
 *
 * The key comes from the config, in one of three forms: a shared `secret`
 * (HS256, HS384, HS512), a PEM `public_key` (RS*, PS*, ES*, EdDSA), or a
 * `jwks` key set (RFC 7517, keys picked by `kid`). A token passes when its
 * `alg` is one the key allows (never `none`, never a public key used as an
 * HMAC secret), its signature verifies, and `exp`, `nbf`, `iss` and `aud`
 * hold.
 */

const HMAC_ALGORITHMS = ["HS256", "HS384", "HS512"] as const;
const RSA_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] as const;

/** Every JWS algorithm this verifier knows, for the config schema. */
export const JWT_ALGORITHMS = [
  ...HMAC_ALGORITHMS,
  ...RSA_ALGORITHMS,
  "ES256",
  "ES384",
  "ES512",
  "EdDSA",
] as const;

/** A JWS algorithm this verifier knows. */
export type JwtAlgorithm = typeof JWT_ALGORITHMS[number];

/** A JSON Web Key, as far as this verifier reads it. */
export interface Jwk {
  kty?: unknown;
  kid?: unknown;
  alg?: unknown;
  use?: unknown;
  crv?: unknown;
  [member: string]: unknown;
}

/** How tokens are checked (the `jwt` options of `identify`, parsed). */
export interface JwtOptions {
  /** A shared secret for HS256, HS384 and HS512. */
  secret?: string;
  /** A PEM public key (`-----BEGIN PUBLIC KEY-----`). */
  publicKey?: string;
  /** A JSON Web Key Set. */
  jwks?: { keys: Jwk[] };
  /** The algorithms accepted; by default every one the key allows. */
  algorithms?: readonly JwtAlgorithm[];
  /** `iss` must be one of these, when given. */
  issuers?: readonly string[];
  /** `aud` must name one of these, when given. */
  audiences?: readonly string[];
  /** Leeway for `exp` and `nbf`, in ms. */
  clockSkewMs: number;
}

/** What a token check found. */
export type JwtOutcome =
  | {
    ok: true;
    /** The token's claims. */
    claims: Record<string, unknown>;
    /** When it stops being accepted (`exp` plus the leeway), in ms; Infinity without `exp`. */
    expiresAtMs: number;
    /** When it starts being accepted (`nbf` minus the leeway), in ms. */
    notBeforeMs: number;
  }
  | {
    ok: false;
    /** Why, in words a caller may read (no secret in them). */
    reason: string;
    /** True when the token is not a JWS compact token at all. */
    notJwt?: boolean;
  };

/** The longest token read; longer ones are refused unread. */
export const MAX_TOKEN_LENGTH = 16 * 1024;

interface AlgorithmParams {
  /** For importing the key. */
  import: RsaHashedImportParams | EcKeyImportParams | HmacImportParams | Algorithm;
  /** For verifying with it. */
  verify: AlgorithmIdentifier | RsaPssParams | EcdsaParams;
}

function params(alg: JwtAlgorithm): AlgorithmParams {
  const bits = alg.slice(2);
  const hash = `SHA-${bits}`;
  switch (alg.slice(0, 2)) {
    case "HS":
      return { import: { name: "HMAC", hash }, verify: "HMAC" };
    case "RS":
      return { import: { name: "RSASSA-PKCS1-v1_5", hash }, verify: "RSASSA-PKCS1-v1_5" };
    case "PS":
      // RFC 7518 3.5: the salt is as long as the hash.
      return {
        import: { name: "RSA-PSS", hash },
        verify: { name: "RSA-PSS", saltLength: Number(bits) / 8 },
      };
    case "ES": {
      const namedCurve = bits === "512" ? "P-521" : `P-${bits}`;
      return { import: { name: "ECDSA", namedCurve }, verify: { name: "ECDSA", hash } };
    }
    default:
      return { import: { name: "Ed25519" }, verify: "Ed25519" };
  }
}

const EC_ALGORITHMS: Readonly<Record<string, JwtAlgorithm>> = {
  "P-256": "ES256",
  "P-384": "ES384",
  "P-521": "ES512",
};

/** The shortest HMAC secret of each algorithm: as long as its hash (RFC 7518 3.2). */
const MIN_SECRET_BYTES: Readonly<Record<string, number>> = { HS256: 32, HS384: 48, HS512: 64 };

/** The HMAC algorithms a secret of this many bytes is long enough for. */
function hmacAlgorithms(length: number): JwtAlgorithm[] {
  return HMAC_ALGORITHMS.filter((alg) => length >= MIN_SECRET_BYTES[alg]!);
}

/** The length of each coordinate of an EC public key, in bytes. */
const EC_COORDINATE_BYTES: Readonly<Record<string, number>> = {
  "P-256": 32,
  "P-384": 48,
  "P-521": 66,
};
/** The smallest RSA key (RFC 7518 3.3). */
const MIN_RSA_BITS = 2048;

const BASE64URL = /^[A-Za-z0-9_-]*$/;

/** base64url text of bytes, without padding. */
function base64UrlText(bytes: Uint8Array): string {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The bytes of base64 text (padded); throws when it is not base64. */
function base64Bytes(base64: string): Uint8Array<ArrayBuffer> {
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** Bytes of base64url text (no padding), or undefined when it is not base64url. */
export function base64UrlBytes(text: string): Uint8Array<ArrayBuffer> | undefined {
  if (!BASE64URL.test(text) || text.length % 4 === 1) return undefined;
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
  try {
    return base64Bytes(base64 + "=".repeat((4 - base64.length % 4) % 4));
  } catch {
    return undefined;
  }
}

const decoder = new TextDecoder("utf-8", { fatal: true });

/** The JSON object in a base64url segment, or undefined. */
function jsonSegment(text: string): Record<string, unknown> | undefined {
  const bytes = base64UrlBytes(text);
  if (!bytes) return undefined;
  try {
    const value = JSON.parse(decoder.decode(bytes));
    return typeof value === "object" && value !== null && !Array.isArray(value)
      ? value as Record<string, unknown>
      : undefined;
  } catch {
    return undefined;
  }
}

/** The DER bytes of a PEM `PUBLIC KEY` block. */
function pemBytes(pem: string): Uint8Array<ArrayBuffer> {
  const match = /-----BEGIN ([A-Z ]+)-----([\s\S]*?)-----END \1-----/.exec(pem);
  if (!match) {
    throw new Error(
      "public_key must be a PEM block: -----BEGIN PUBLIC KEY----- ... -----END PUBLIC KEY-----",
    );
  }
  if (match[1] !== "PUBLIC KEY") {
    throw new Error(
      `public_key is a PEM "${
        match[1]
      }" block; write the key as "PUBLIC KEY" (SubjectPublicKeyInfo), such as openssl pkey -pubout prints`,
    );
  }
  try {
    return base64Bytes(match[2]!.replace(/\s+/g, ""));
  } catch {
    throw new Error("public_key is not valid base64 between its BEGIN and END lines");
  }
}

/** One key and the algorithms it may verify, imported once per algorithm. */
class VerifyKey {
  readonly kid: string | undefined;
  readonly algorithms: ReadonlySet<JwtAlgorithm>;
  #imports = new Map<JwtAlgorithm, Promise<CryptoKey>>();
  #importer: (alg: JwtAlgorithm) => Promise<CryptoKey>;

  constructor(
    kid: string | undefined,
    algorithms: Iterable<JwtAlgorithm>,
    importer: (alg: JwtAlgorithm) => Promise<CryptoKey>,
  ) {
    this.kid = kid;
    this.algorithms = new Set(algorithms);
    this.#importer = importer;
  }

  key(alg: JwtAlgorithm): Promise<CryptoKey> {
    let key = this.#imports.get(alg);
    if (!key) {
      key = this.#importer(alg);
      this.#imports.set(alg, key);
    }
    return key;
  }
}

async function secretKey(secret: string): Promise<VerifyKey> {
  const bytes = new TextEncoder().encode(secret);
  const algorithms = hmacAlgorithms(bytes.length);
  if (algorithms.length === 0) {
    throw new Error(
      `secret is ${bytes.length} bytes; an HMAC secret must be at least 32 bytes (RFC 7518 3.2: as long as the hash, so 48 for HS384 and 64 for HS512)`,
    );
  }
  const key = new VerifyKey(
    undefined,
    algorithms,
    (alg) => crypto.subtle.importKey("raw", bytes, params(alg).import, false, ["verify"]),
  );
  await key.key("HS256");
  return key;
}

/** Tries `import` as each kind of public key; resolves with the algorithms of the first that fits. */
async function publicKeyAlgorithms(
  tryImport: (params: AlgorithmParams["import"]) => Promise<CryptoKey>,
): Promise<JwtAlgorithm[] | undefined> {
  try {
    const rsa = await tryImport({ name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" });
    const bits = (rsa.algorithm as RsaHashedKeyAlgorithm).modulusLength;
    if (bits < MIN_RSA_BITS) {
      throw new RangeError(
        `the RSA key has ${bits} bits; it must have at least ${MIN_RSA_BITS} (RFC 7518 3.3)`,
      );
    }
    return [...RSA_ALGORITHMS];
  } catch (error) {
    if (error instanceof RangeError) throw error;
  }
  for (const [namedCurve, alg] of Object.entries(EC_ALGORITHMS)) {
    try {
      await tryImport({ name: "ECDSA", namedCurve });
      return [alg];
    } catch {
      // Another curve.
    }
  }
  try {
    await tryImport({ name: "Ed25519" });
    return ["EdDSA"];
  } catch {
    return undefined;
  }
}

/** The DER of the id-RSASSA-PSS object identifier (1.2.840.113549.1.1.10, RFC 4055). */
const RSASSA_PSS_OID = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];

function containsBytes(haystack: Uint8Array, needle: readonly number[]): boolean {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return true;
  }
  return false;
}

async function pemKey(pem: string): Promise<VerifyKey> {
  const der = pemBytes(pem);
  const importer = (p: AlgorithmParams["import"]) =>
    crypto.subtle.importKey("spki", der, p, false, ["verify"]);
  let algorithms: JwtAlgorithm[] | undefined;
  try {
    algorithms = await publicKeyAlgorithms(importer);
  } catch (error) {
    throw new Error(`public_key: ${(error as Error).message}`);
  }
  if (!algorithms) {
    if (containsBytes(der, RSASSA_PSS_OID)) {
      // Web Crypto imports RSA keys only under rsaEncryption; such a key still verifies PS256.
      throw new Error(
        "public_key is an RSA-PSS key (id-RSASSA-PSS), which Web Crypto cannot import; write the same key as a plain RSA key, and PS256/384/512 still verify with it: openssl rsa -pubin -in key.pem -RSAPublicKey_out -outform DER | openssl rsa -RSAPublicKey_in -inform DER -pubout",
      );
    }
    throw new Error("public_key is not an RSA, EC (P-256, P-384, P-521) or Ed25519 public key");
  }
  return new VerifyKey(undefined, algorithms, (alg) => importer(params(alg).import));
}

/** The algorithms a JWK may verify, by its `kty` and `crv` (and `alg`, when it names one). */
function jwkAlgorithms(jwk: Jwk): JwtAlgorithm[] {
  let algorithms: JwtAlgorithm[];
  if (jwk.kty === "RSA") algorithms = [...RSA_ALGORITHMS];
  else if (
    jwk.kty === "EC" && typeof jwk.crv === "string" && Object.hasOwn(EC_ALGORITHMS, jwk.crv)
  ) {
    // Web Crypto takes coordinates of any length here, and the key then verifies nothing.
    const size = EC_COORDINATE_BYTES[jwk.crv]!;
    for (const coordinate of ["x", "y"]) {
      if (base64UrlBytes(String(jwk[coordinate] ?? ""))?.length !== size) {
        throw new Error(`${coordinate} must be ${size} bytes of base64url for ${jwk.crv}`);
      }
    }
    algorithms = [EC_ALGORITHMS[jwk.crv]!];
  } else if (jwk.kty === "OKP" && jwk.crv === "Ed25519") algorithms = ["EdDSA"];
  else if (jwk.kty === "oct") {
    const length = base64UrlBytes(String(jwk.k ?? ""))?.length ?? 0;
    const named = typeof jwk.alg === "string" && Object.hasOwn(MIN_SECRET_BYTES, jwk.alg)
      ? jwk.alg
      : "HS256";
    if (length < MIN_SECRET_BYTES[named]!) {
      throw new Error(
        `an ${named} key must be at least ${MIN_SECRET_BYTES[named]} bytes; k holds ${length}`,
      );
    }
    algorithms = hmacAlgorithms(length);
  } else {
    throw new Error(
      `kty "${String(jwk.kty)}"${
        jwk.crv === undefined ? "" : ` with crv "${String(jwk.crv)}"`
      } is not a signing key this gateway reads (RSA, EC P-256/P-384/P-521, OKP Ed25519, oct)`,
    );
  }
  if (jwk.alg !== undefined) {
    if (!algorithms.includes(jwk.alg as JwtAlgorithm)) {
      throw new Error(`alg "${String(jwk.alg)}" does not fit kty "${String(jwk.kty)}"`);
    }
    algorithms = [jwk.alg as JwtAlgorithm];
  }
  return algorithms;
}

/** The key members Web Crypto needs, without `alg`, `use` and `key_ops` (checked here instead). */
function keyMaterial(jwk: Jwk): JsonWebKey {
  const material: Record<string, unknown> = {};
  for (const name of ["kty", "crv", "n", "e", "x", "y", "k"]) {
    if (jwk[name] !== undefined) material[name] = jwk[name];
  }
  return material as JsonWebKey;
}

async function jwksKeys(jwks: { keys: Jwk[] }): Promise<VerifyKey[]> {
  const keys: VerifyKey[] = [];
  for (const [index, jwk] of jwks.keys.entries()) {
    const where = `jwks.keys[${index}]${typeof jwk.kid === "string" ? ` (kid "${jwk.kid}")` : ""}`;
    // A key for encryption is not a key for signatures (RFC 7517 4.2, 4.3).
    if (jwk.use !== undefined && jwk.use !== "sig") continue;
    if (
      jwk.key_ops !== undefined && !(Array.isArray(jwk.key_ops) && jwk.key_ops.includes("verify"))
    ) {
      continue;
    }
    // A kid that is not a string would match no token's kid, or, read as no
    // kid at all, every token's.
    if (jwk.kid !== undefined && typeof jwk.kid !== "string") {
      throw new Error(`${where}: kid must be a string (RFC 7517 4.5)`);
    }
    let algorithms: JwtAlgorithm[];
    try {
      algorithms = jwkAlgorithms(jwk);
    } catch (error) {
      throw new Error(`${where}: ${(error as Error).message}`);
    }
    const material = keyMaterial(jwk);
    const key = new VerifyKey(
      typeof jwk.kid === "string" ? jwk.kid : undefined,
      algorithms,
      (alg) => crypto.subtle.importKey("jwk", material, params(alg).import, false, ["verify"]),
    );
    try {
      const imported = await key.key(algorithms[0]!);
      const bits = (imported.algorithm as Partial<RsaHashedKeyAlgorithm>).modulusLength;
      if (bits !== undefined && bits < MIN_RSA_BITS) {
        throw new Error(`the RSA key has ${bits} bits; it must have at least ${MIN_RSA_BITS}`);
      }
    } catch (error) {
      throw new Error(`${where}: ${(error as Error).message}`);
    }
    keys.push(key);
  }
  if (keys.length === 0) throw new Error("jwks holds no signing key");
  return keys;
}

/** Checks tokens against one key configuration. */
export class JwtVerifier {
  readonly algorithms: ReadonlySet<JwtAlgorithm>;
  #keys: readonly VerifyKey[];
  #options: JwtOptions;

  private constructor(
    keys: readonly VerifyKey[],
    algorithms: Set<JwtAlgorithm>,
    options: JwtOptions,
  ) {
    this.#keys = keys;
    this.algorithms = algorithms;
    this.#options = options;
  }

  /**
   * Reads the key (exactly one of `secret`, `publicKey`, `jwks`); rejects
   * with a message for the config when it cannot be used.
   */
  static async create(options: JwtOptions): Promise<JwtVerifier> {
    const given = [options.secret, options.publicKey, options.jwks].filter((k) => k !== undefined);
    if (given.length !== 1) {
      throw new Error("jwt needs exactly one of secret, public_key or jwks");
    }
    const keys = options.secret !== undefined
      ? [await secretKey(options.secret)]
      : options.publicKey !== undefined
      ? [await pemKey(options.publicKey)]
      : await jwksKeys(options.jwks!);
    const possible = new Set(keys.flatMap((key) => [...key.algorithms]));
    let algorithms = possible;
    if (options.algorithms) {
      const impossible = options.algorithms.filter((alg) => !possible.has(alg));
      if (impossible.length > 0) {
        const hmac = impossible.some((alg) => alg.startsWith("HS")) && possible.size > 0 &&
            [...possible].every((alg) => alg.startsWith("HS"))
          ? "; an HMAC secret must be as long as the hash: 48 bytes for HS384, 64 for HS512"
          : "";
        throw new Error(
          `algorithms: ${impossible.join(", ")} cannot be verified with this key (it allows ${
            [...possible].join(", ")
          })${hmac}`,
        );
      }
      algorithms = new Set(options.algorithms);
    }
    return new JwtVerifier(keys, algorithms, options);
  }

  /** Checks a token at `nowMs`. */
  async verify(token: string, nowMs: number): Promise<JwtOutcome> {
    if (token.length > MAX_TOKEN_LENGTH) {
      return { ok: false, reason: `the token is longer than ${MAX_TOKEN_LENGTH} characters` };
    }
    const parts = token.split(".");
    if (parts.length !== 3) return { ok: false, reason: "the token is not a JWT", notJwt: true };
    const header = jsonSegment(parts[0]!);
    if (!header) return { ok: false, reason: "the token's header is not base64url JSON" };
    const alg = header.alg;
    if (typeof alg !== "string" || !this.algorithms.has(alg as JwtAlgorithm)) {
      return {
        ok: false,
        reason: `the token's algorithm ${
          typeof alg === "string" ? quoteShort(alg) : "is missing and"
        } is not accepted (accepted: ${[...this.algorithms].join(", ")})`,
      };
    }
    // RFC 7515 4.1.11: extensions the verifier does not know make the token invalid.
    if (header.crit !== undefined) {
      return {
        ok: false,
        reason: "the token names critical extensions this gateway does not know",
      };
    }
    const signature = base64UrlBytes(parts[2]!);
    // One signature, one spelling: unused bits set in the last character make
    // another text of the same token (RFC 4648 3.5).
    if (!signature || base64UrlText(signature) !== parts[2]) {
      return { ok: false, reason: "the token's signature is not canonical base64url" };
    }
    if (header.kid !== undefined && typeof header.kid !== "string") {
      return { ok: false, reason: "the token's kid is not a string" };
    }
    const kid = header.kid as string | undefined;
    const candidates = this.#keys.filter((key) =>
      key.algorithms.has(alg as JwtAlgorithm) &&
      (kid === undefined || key.kid === undefined || key.kid === kid)
    );
    if (candidates.length === 0) {
      return { ok: false, reason: `no key with kid ${quoteShort(kid ?? "")} verifies ${alg}` };
    }
    // A token picks its key: trying every key of a set for a token that names
    // none would let any made-up token cost one signature check per key.
    if (kid === undefined && candidates.length > 1) {
      return {
        ok: false,
        reason: `the token names no kid, and ${candidates.length} keys of the set verify ${alg}`,
      };
    }
    const signed = new TextEncoder().encode(`${parts[0]}.${parts[1]}`);
    const verifyParams = params(alg as JwtAlgorithm).verify;
    let verified = false;
    for (const candidate of candidates) {
      try {
        verified = await crypto.subtle.verify(
          verifyParams,
          await candidate.key(alg as JwtAlgorithm),
          signature,
          signed,
        );
      } catch {
        verified = false;
      }
      if (verified) break;
    }
    if (!verified) return { ok: false, reason: "the token's signature does not verify" };
    const claims = jsonSegment(parts[1]!);
    if (!claims) return { ok: false, reason: "the token's claims are not a base64url JSON object" };
    return this.#checkClaims(claims, nowMs);
  }

  #checkClaims(claims: Record<string, unknown>, nowMs: number): JwtOutcome {
    const skew = this.#options.clockSkewMs;
    const { exp, nbf, iss, aud } = claims;
    // A number too large for a double (1e400) reads as Infinity: never expiring.
    if (exp !== undefined && !(typeof exp === "number" && Number.isFinite(exp))) {
      return { ok: false, reason: "the token's exp is not a number" };
    }
    if (nbf !== undefined && !(typeof nbf === "number" && Number.isFinite(nbf))) {
      return { ok: false, reason: "the token's nbf is not a number" };
    }
    const expiresAtMs = exp === undefined ? Infinity : exp * 1000 + skew;
    const notBeforeMs = nbf === undefined ? -Infinity : nbf * 1000 - skew;
    if (nowMs >= expiresAtMs) return { ok: false, reason: "the token has expired" };
    if (nowMs < notBeforeMs) return { ok: false, reason: "the token is not valid yet (nbf)" };
    const issuers = this.#options.issuers;
    if (issuers && !(typeof iss === "string" && issuers.includes(iss))) {
      return { ok: false, reason: "the token's issuer (iss) is not accepted" };
    }
    const audiences = this.#options.audiences;
    if (audiences) {
      const named = typeof aud === "string" ? [aud] : Array.isArray(aud) ? aud : [];
      if (!named.some((name) => typeof name === "string" && audiences.includes(name))) {
        return { ok: false, reason: "the token is not meant for this audience (aud)" };
      }
    } else if (aud !== undefined) {
      // RFC 7519 4.1.3: a token for named audiences is refused by anyone who is
      // not one of them; this gateway names itself only through `audience`.
      return {
        ok: false,
        reason: "the token is meant for a named audience (aud), and this gateway has no audience",
      };
    }
    return { ok: true, claims, expiresAtMs, notBeforeMs };
  }
}

/** A value from a token, JSON-quoted and cut short, for an error's words. */
function quoteShort(text: string): string {
  return JSON.stringify(text.length > 40 ? `${text.slice(0, 40)}...` : text);
}

/**
 * A claim as an identity: a non-empty string, or a number, as text;
 * undefined for anything else (absent, empty, an object, a list).
 */
export function claimValue(claims: Record<string, unknown>, claim: string): string | undefined {
  const value = Object.hasOwn(claims, claim) ? claims[claim] : undefined;
  if (typeof value === "string") return value === "" ? undefined : value;
  if (typeof value === "number" && Number.isFinite(value)) return String(value);
  return undefined;
}
