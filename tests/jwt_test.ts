/** Verifying JWTs (src/jwt.ts): keys, algorithms, signatures and time limits. */
import assert from "node:assert/strict";
import { claimValue, type JwtOptions, type JwtOutcome, JwtVerifier } from "../src/jwt.ts";
import { base64Url, keyPair, nowSeconds, signJwt } from "./_jwt.ts";

/** 64 bytes: long enough for HS512. */
const SECRET = "a-shared-secret-of-64-bytes-long-enough-for-every-hmac-algorithm";
const NOW = Date.now();

function verifier(options: Partial<JwtOptions>): Promise<JwtVerifier> {
  return JwtVerifier.create({ clockSkewMs: 0, ...options });
}

function reason(outcome: JwtOutcome): string {
  return outcome.ok ? "ok" : outcome.reason;
}

Deno.test("jwt: a token signed with the shared secret passes, with its claims; HS256/384/512", async () => {
  const jwt = await verifier({ secret: SECRET });
  for (const alg of ["HS256", "HS384", "HS512"]) {
    const outcome = await jwt.verify(await signJwt(alg, SECRET, { sub: "user-1" }), NOW);
    assert.ok(outcome.ok, `${alg}: ${reason(outcome)}`);
    assert.equal(outcome.claims.sub, "user-1");
  }
});

Deno.test("jwt: every public-key algorithm verifies from a PEM key and from a JWKS", async () => {
  for (const alg of ["RS256", "PS256", "ES256", "ES384", "EdDSA"]) {
    const { privateKey, pem, jwk } = await keyPair(alg);
    const token = await signJwt(alg, privateKey, { sub: `by-${alg}` });
    const fromPem = await (await verifier({ publicKey: pem })).verify(token, NOW);
    assert.ok(fromPem.ok, `${alg} from PEM: ${reason(fromPem)}`);
    const fromJwks = await (await verifier({ jwks: { keys: [jwk as Record<string, unknown>] } }))
      .verify(token, NOW);
    assert.ok(fromJwks.ok, `${alg} from JWKS: ${reason(fromJwks)}`);
  }
});

Deno.test("jwt: a changed claim, another key's signature or a cut signature does not verify", async () => {
  const jwt = await verifier({ secret: SECRET });
  const token = await signJwt("HS256", SECRET, { sub: "user-1" });
  const [head, , signature] = token.split(".");
  const forged = `${head}.${base64Url(JSON.stringify({ sub: "admin" }))}.${signature}`;
  assert.equal(reason(await jwt.verify(forged, NOW)), "the token's signature does not verify");
  const otherKey = await signJwt("HS256", "another-secret-that-is-32-bytes-long", {
    sub: "user-1",
  });
  assert.equal(reason(await jwt.verify(otherKey, NOW)), "the token's signature does not verify");
  assert.equal(
    reason(await jwt.verify(token.slice(0, -4), NOW)),
    "the token's signature does not verify",
  );
});

Deno.test("jwt: alg none, an algorithm the key does not allow, and a public key used as HMAC secret are refused", async () => {
  const { privateKey, pem } = await keyPair("RS256");
  const jwt = await verifier({ publicKey: pem });
  const unsigned = `${base64Url(JSON.stringify({ alg: "none" }))}.${
    base64Url(JSON.stringify({ sub: "x" }))
  }.`;
  assert.match(reason(await jwt.verify(unsigned, NOW)), /algorithm "none" is not accepted/);
  // The classic confusion: an HS256 token whose "secret" is the public key's PEM.
  const confused = await signJwt("HS256", pem, { sub: "x" });
  assert.match(reason(await jwt.verify(confused, NOW)), /algorithm "HS256" is not accepted/);
  // `algorithms` narrows what the key allows.
  const onlyPs = await verifier({ publicKey: pem, algorithms: ["PS256"] });
  const rs = await signJwt("RS256", privateKey, { sub: "x" });
  assert.match(reason(await onlyPs.verify(rs, NOW)), /algorithm "RS256" is not accepted/);
  assert.ok((await jwt.verify(rs, NOW)).ok);
});

Deno.test("jwt: exp and nbf hold with the clock skew; iss and aud must match when configured", async () => {
  const now = nowSeconds();
  const jwt = await verifier({ secret: SECRET, clockSkewMs: 30_000 });
  const at = now * 1000;
  const sign = (claims: Record<string, unknown>) => signJwt("HS256", SECRET, claims);
  assert.equal(
    reason(await jwt.verify(await sign({ exp: now - 31 }), at)),
    "the token has expired",
  );
  assert.ok((await jwt.verify(await sign({ exp: now - 29 }), at)).ok, "within the skew");
  assert.equal(
    reason(await jwt.verify(await sign({ nbf: now + 31 }), at)),
    "the token is not valid yet (nbf)",
  );
  assert.ok((await jwt.verify(await sign({ nbf: now + 29 }), at)).ok);
  assert.equal(
    reason(await jwt.verify(await sign({ exp: "tomorrow" }), at)),
    "the token's exp is not a number",
  );
  // 1e400 is beyond a double: read as Infinity, it would never expire.
  for (const claim of ["exp", "nbf"]) {
    assert.equal(
      reason(await jwt.verify(await signJwt("HS256", SECRET, `{"${claim}":1e400}`), at)),
      `the token's ${claim} is not a number`,
    );
  }
  const expiring = await jwt.verify(await sign({ exp: now + 100 }), at);
  assert.ok(expiring.ok);
  assert.equal(expiring.expiresAtMs, (now + 100) * 1000 + 30_000);

  const strict = await verifier({
    secret: SECRET,
    issuers: ["https://auth.example"],
    audiences: ["api", "admin"],
  });
  const good = { iss: "https://auth.example", aud: ["web", "api"] };
  assert.ok((await strict.verify(await sign(good), at)).ok);
  assert.ok((await strict.verify(await sign({ ...good, aud: "admin" }), at)).ok);
  assert.match(
    reason(await strict.verify(await sign({ ...good, iss: "https://evil.example" }), at)),
    /issuer/,
  );
  assert.match(reason(await strict.verify(await sign({ ...good, aud: "web" }), at)), /audience/);
  assert.match(reason(await strict.verify(await sign({ aud: "api" }), at)), /issuer/);
});

Deno.test("jwt: a JWKS picks the key by kid; a kid it does not hold is refused", async () => {
  const first = await keyPair("ES256");
  const second = await keyPair("ES256");
  const jwt = await verifier({
    jwks: {
      keys: [{ ...first.jwk, kid: "one" }, { ...second.jwk, kid: "two", use: "sig" }] as Record<
        string,
        unknown
      >[],
    },
  });
  assert.ok(
    (await jwt.verify(await signJwt("ES256", second.privateKey, {}, { kid: "two" }), NOW)).ok,
  );
  assert.ok(
    (await jwt.verify(await signJwt("ES256", first.privateKey, {}, { kid: "one" }), NOW)).ok,
  );
  // Signed by key one but naming key two: only key two is tried.
  assert.equal(
    reason(await jwt.verify(await signJwt("ES256", first.privateKey, {}, { kid: "two" }), NOW)),
    "the token's signature does not verify",
  );
  assert.match(
    reason(await jwt.verify(await signJwt("ES256", first.privateKey, {}, { kid: "three" }), NOW)),
    /no key with kid "three"/,
  );
  // A token names its key: one without a kid would cost a check per key of the set.
  assert.equal(
    reason(await jwt.verify(await signJwt("ES256", second.privateKey, {}), NOW)),
    "the token names no kid, and 2 keys of the set verify ES256",
  );
  // A kid that is not a string is not read as "no kid".
  assert.equal(
    reason(await jwt.verify(await signJwt("ES256", second.privateKey, {}, { kid: 2 }), NOW)),
    "the token's kid is not a string",
  );
  // With one key of the set for the algorithm, a token without a kid is checked against it.
  const single = await verifier({ jwks: { keys: [{ ...first.jwk, kid: "one" }] } });
  assert.ok((await single.verify(await signJwt("ES256", first.privateKey, {}), NOW)).ok);
});

Deno.test("jwt: a JWKS key marked for other uses is skipped, and a kid must be a string", async () => {
  const signing = await keyPair("ES256");
  const other = await keyPair("ES256");
  const jwt = await verifier({
    jwks: {
      keys: [
        { ...other.jwk, kid: "enc", key_ops: ["encrypt"] },
        { ...signing.jwk, kid: "sig", key_ops: ["verify"] },
      ] as Record<string, unknown>[],
    },
  });
  assert.match(
    reason(await jwt.verify(await signJwt("ES256", other.privateKey, {}, { kid: "enc" }), NOW)),
    /no key with kid "enc"/,
  );
  assert.ok(
    (await jwt.verify(await signJwt("ES256", signing.privateKey, {}, { kid: "sig" }), NOW)).ok,
  );
  await assert.rejects(
    verifier({
      jwks: { keys: [{ ...other.jwk, key_ops: ["encrypt"] }] as Record<string, unknown>[] },
    }),
    /jwks holds no signing key/,
  );
  // A numeric kid would have matched every token's kid.
  await assert.rejects(
    verifier({ jwks: { keys: [{ ...other.jwk, kid: 7 }] as Record<string, unknown>[] } }),
    /jwks.keys\[0\]: kid must be a string/,
  );
});

Deno.test("jwt: a token for a named audience is refused when no audience is configured (RFC 7519 4.1.3)", async () => {
  const jwt = await verifier({ secret: SECRET });
  assert.match(
    reason(await jwt.verify(await signJwt("HS256", SECRET, { sub: "x", aud: "billing" }), NOW)),
    /meant for a named audience/,
  );
  assert.ok((await jwt.verify(await signJwt("HS256", SECRET, { sub: "x" }), NOW)).ok);
});

Deno.test("jwt: one signature has one spelling: set padding bits in its last character are refused", async () => {
  const jwt = await verifier({ secret: SECRET });
  // HS256 signs 32 bytes: 43 characters, the last carrying 2 unused bits.
  const token = await signJwt("HS256", SECRET, { sub: "x" });
  assert.ok((await jwt.verify(token, NOW)).ok);
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  const last = alphabet.indexOf(token.at(-1)!);
  const respelled = token.slice(0, -1) + alphabet[last ^ 1];
  assert.equal(
    reason(await jwt.verify(respelled, NOW)),
    "the token's signature is not canonical base64url",
  );
});

Deno.test("jwt: malformed tokens are refused with a reason, and a non-JWT is told apart", async () => {
  const jwt = await verifier({ secret: SECRET });
  const notJwt = await jwt.verify("an-opaque-api-token", NOW);
  assert.ok(!notJwt.ok && notJwt.notJwt);
  assert.match(reason(await jwt.verify("a.b.c", NOW)), /header is not base64url JSON/);
  const head = base64Url(JSON.stringify({ alg: "HS256", crit: ["exp"] }));
  assert.match(reason(await jwt.verify(`${head}.e30.sig`, NOW)), /critical extensions/);
  assert.match(reason(await jwt.verify("x".repeat(20_000), NOW)), /longer than/);
  // An algorithm name is quoted short in the reason.
  const longAlg = `${base64Url(JSON.stringify({ alg: "A".repeat(5_000) }))}.e30.sig`;
  assert.ok(reason(await jwt.verify(longAlg, NOW)).length < 200);
  const list = await signJwt("HS256", SECRET, [1, 2] as unknown as Record<string, unknown>);
  assert.match(reason(await jwt.verify(list, NOW)), /claims are not a base64url JSON object/);
});

Deno.test("jwt: keys that cannot be used are refused when the config is read", async () => {
  await assert.rejects(verifier({ secret: "short" }), /at least 32 bytes/);
  // RFC 7518 3.2: a secret as long as the hash. 40 bytes allow HS256 only.
  const forty = "x".repeat(40);
  assert.deepEqual([...(await verifier({ secret: forty })).algorithms], ["HS256"]);
  assert.deepEqual([...(await verifier({ secret: SECRET })).algorithms], [
    "HS256",
    "HS384",
    "HS512",
  ]);
  await assert.rejects(
    verifier({ secret: forty, algorithms: ["HS512"] }),
    /HS512 cannot be verified with this key \(it allows HS256\); an HMAC secret must be as long as the hash/,
  );
  await assert.rejects(
    verifier({ jwks: { keys: [{ kty: "oct", k: base64Url(forty), alg: "HS384" }] } }),
    /an HS384 key must be at least 48 bytes; k holds 40/,
  );
  // An EC key whose coordinates are not the curve's size verifies nothing: refused now.
  await assert.rejects(
    verifier({ jwks: { keys: [{ kty: "EC", crv: "P-256", x: "AAAA", y: "BBBB" }] } }),
    /jwks.keys\[0\]: x must be 32 bytes of base64url for P-256/,
  );
  await assert.rejects(verifier({}), /exactly one of secret, public_key or jwks/);
  await assert.rejects(
    verifier({ publicKey: "-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----" }),
    /"RSA PUBLIC KEY" block/,
  );
  await assert.rejects(verifier({ publicKey: "not a key" }), /must be a PEM block/);
  // openssl genpkey -algorithm RSA-PSS writes an id-RSASSA-PSS key: told how to rewrite it.
  await assert.rejects(
    verifier({
      publicKey: await Deno.readTextFile(new URL("fixtures/rsa_pss_only.pem", import.meta.url)),
    }),
    /RSA-PSS key \(id-RSASSA-PSS\), which Web Crypto cannot import; .*openssl rsa -pubin/,
  );
  const small = await crypto.subtle.generateKey(
    {
      name: "RSASSA-PKCS1-v1_5",
      modulusLength: 1024,
      publicExponent: new Uint8Array([1, 0, 1]),
      hash: "SHA-256",
    },
    true,
    ["sign", "verify"],
  ) as CryptoKeyPair;
  const smallJwk = await crypto.subtle.exportKey("jwk", small.publicKey);
  await assert.rejects(
    verifier({ jwks: { keys: [{ ...smallJwk, kid: "old" } as Record<string, unknown>] } }),
    /jwks.keys\[0\] \(kid "old"\): the RSA key has 1024 bits/,
  );
  const { pem } = await keyPair("ES256");
  await assert.rejects(
    verifier({ publicKey: pem, algorithms: ["RS256"] }),
    /RS256 cannot be verified with this key \(it allows ES256\)/,
  );
});

Deno.test("jwt: a claim names a caller when it is a non-empty string or a number", () => {
  const claims = { sub: "user-1", org: 42, empty: "", list: ["a"], nested: { id: 1 }, no: null };
  assert.equal(claimValue(claims, "sub"), "user-1");
  assert.equal(claimValue(claims, "org"), "42");
  for (const claim of ["empty", "list", "nested", "no", "missing", "toString"]) {
    assert.equal(claimValue(claims, claim), undefined, claim);
  }
});
