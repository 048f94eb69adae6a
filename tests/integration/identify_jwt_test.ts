/**
 * `identify` with `jwt:<claim>` through real sockets: a verified token's claim
 * names the caller (and gets its own quota and tier), a token that does not
 * verify is answered 401 before the upstream, and a bad key is a config error
 * at its line.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { delay, freePort, repoPath, startGateway, startUpstream } from "../_helpers.ts";
import { base64Url, keyPair, nowSeconds, signJwt } from "../_jwt.ts";

const CLIENT_ID_PLUGIN = repoPath("tests/fixtures/client_id_plugin.ts");
const SECRET = "integration-secret-of-32-bytes-or-more";

/** The id of an API key, computed here independently of the gateway. */
function keyId(value: string): string {
  return `key:${createHash("sha256").update(value).digest("hex").slice(0, 16)}`;
}

/** The id of a token's caller: of the claim's name and JSON value, apart from every API key. */
function jwtId(claim: string, value: string | number): string {
  const digest = createHash("sha256").update(JSON.stringify([claim, value])).digest("hex");
  return `jwt:${digest.slice(0, 16)}`;
}

function route(upstream: string, identify: string, rest = ""): string {
  return `routes:
  - name: api
    upstream: { url: ${upstream} }
    pipeline:
      - plugin: ${CLIENT_ID_PLUGIN}
      - identify: ${identify}
${rest}      - proxy: {}
`;
}

async function call(url: string, token?: string) {
  const response = await fetch(url, {
    headers: token === undefined ? {} : { authorization: `Bearer ${token}` },
  });
  const text = await response.text();
  return {
    status: response.status,
    id: response.headers.get("x-client-id"),
    type: response.headers.get("content-type"),
    authenticate: response.headers.get("www-authenticate"),
    body: text,
  };
}

Deno.test("identify jwt: the claim of a verified token names the caller; no token, the address", async () => {
  let calls = 0;
  await using upstream = startUpstream(() => {
    calls++;
    return new Response("ok");
  });
  await using gw = await startGateway(
    route(upstream.url, `{ from: [jwt:sub, ip], jwt: { secret: ${SECRET} } }`),
  );
  const url = `${gw.url}/x`;
  const now = nowSeconds();
  const alice = await call(url, await signJwt("HS256", SECRET, { sub: "alice", iat: now }));
  assert.equal(alice.status, 200);
  assert.equal(alice.id, jwtId("sub", "alice"));
  // Another token for the same subject is the same caller; another subject is not.
  const again = await call(url, await signJwt("HS256", SECRET, { sub: "alice", iat: now + 1 }));
  assert.equal(again.id, jwtId("sub", "alice"));
  assert.equal(
    (await call(url, await signJwt("HS256", SECRET, { sub: "bob" }))).id,
    jwtId("sub", "bob"),
  );
  assert.equal((await call(url)).id, "ip:127.0.0.1");
  // A valid token without the claim leaves the caller to the next source.
  assert.equal(
    (await call(url, await signJwt("HS256", SECRET, { client_id: "svc" }))).id,
    "ip:127.0.0.1",
  );
  assert.equal(calls, 5);
});

Deno.test("identify jwt: a token that does not verify is a 401 problem+json with WWW-Authenticate, and the upstream is not called", async () => {
  let calls = 0;
  await using upstream = startUpstream(() => {
    calls++;
    return new Response("ok");
  });
  const { privateKey, pem } = await keyPair("ES256");
  const other = await keyPair("ES256");
  // The PEM comes from the environment, as the README shows, line breaks and all.
  await using gw = await startGateway(
    route(
      upstream.url,
      "{ from: [jwt:sub, ip], jwt: { public_key: ${JWT_PUBLIC_KEY}, issuer: https://auth.example, clock_skew: 0s } }",
    ),
    { env: (name) => name === "JWT_PUBLIC_KEY" ? pem : undefined },
  );
  const url = `${gw.url}/x`;
  const now = nowSeconds();
  const claims = { sub: "carol", iss: "https://auth.example", exp: now + 60 };
  assert.equal((await call(url, await signJwt("ES256", privateKey, claims))).status, 200);
  const cases: [string, string, RegExp][] = [
    ["expired", await signJwt("ES256", privateKey, { ...claims, exp: now - 5 }), /expired/],
    ["another key", await signJwt("ES256", other.privateKey, claims), /signature does not verify/],
    ["another issuer", await signJwt("ES256", privateKey, { ...claims, iss: "x" }), /issuer/],
    ["HMAC", await signJwt("HS256", SECRET, claims), /algorithm "HS256" is not accepted/],
    ["not a JWT", "opaque-token", /not a JWT/],
  ];
  for (const [what, token, detail] of cases) {
    const answer = await call(url, token);
    assert.equal(answer.status, 401, what);
    assert.equal(answer.type, "application/problem+json", what);
    const body = JSON.parse(answer.body);
    assert.equal(body.type, "urn:sluice:problem:invalid-token", what);
    assert.match(body.detail, detail, what);
    assert.match(answer.authenticate ?? "", /^Bearer realm="sluice", error="invalid_token"/, what);
  }
  assert.equal(calls, 1);
});

Deno.test("identify jwt: with bearer as a later source an opaque token is an API key", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(
    route(upstream.url, `{ from: [jwt:sub, bearer], jwt: { secret: ${SECRET} } }`),
  );
  const url = `${gw.url}/x`;
  assert.equal((await call(url, "opaque-api-key")).id, keyId("opaque-api-key"));
  assert.equal(
    (await call(url, await signJwt("HS256", SECRET, { sub: "dave" }))).id,
    jwtId("sub", "dave"),
  );
  // A JWT that does not verify is still refused: it does not fall back to being a key.
  const forged = await signJwt("HS256", "a-different-secret-32-bytes-long!!", { sub: "dave" });
  assert.equal((await call(url, forged)).status, 401);
});

Deno.test("identify jwt: each subject has its own quota, and the tier its token claims", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  const { privateKey, jwk } = await keyPair("EdDSA");
  await using gw = await startGateway(`tiers:
  free: { limit: 2, window: 1m }
  pro: { limit: 4, window: 1m }
${
    route(
      upstream.url,
      `{ from: [jwt:sub, ip], required: true, jwt: { tier_claim: plan, jwks: { keys: [ ${
        JSON.stringify({ ...jwk, kid: "k1" })
      } ] } } }`,
      `      - tier: { default: free, unknown_key: reject }
      - sliding-window: { limit: tier }
`,
    )
  }`);
  const url = `${gw.url}/x`;
  const token = (sub: string, plan?: string) =>
    signJwt("EdDSA", privateKey, { sub, plan }, { kid: "k1" });
  const statuses = async (n: number, sub: string, plan?: string) => {
    const seen: number[] = [];
    for (let i = 0; i < n; i++) seen.push((await call(url, await token(sub, plan))).status);
    return seen;
  };
  // Frank's token claims no plan: the default tier (unknown_key does not apply to a verified caller).
  assert.deepEqual(await statuses(3, "frank"), [200, 200, 429]);
  // Grace has her own quota, untouched by Frank's; a plan that is no tier is the default too.
  assert.deepEqual(await statuses(3, "grace", "platinum"), [200, 200, 429]);
  // Erin's token claims pro.
  assert.deepEqual(await statuses(5, "erin", "pro"), [200, 200, 200, 200, 429]);
  const policy = await fetch(url, {
    headers: { authorization: `Bearer ${await token("erin", "pro")}` },
  });
  await policy.body?.cancel();
  assert.equal(policy.headers.get("ratelimit-policy"), '"pro";q=4;w=60');
  // required: true and no token: 401, saying a bearer token is wanted.
  const missing = await call(url);
  assert.equal(missing.status, 401);
  assert.equal(missing.authenticate, 'Bearer realm="sluice"');
});

Deno.test("identify jwt: a subject's name sent as an API key is another caller, with another quota", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(
    route(
      upstream.url,
      `{ from: [jwt:sub, bearer], jwt: { secret: ${SECRET} } }`,
      "      - sliding-window: { limit: 2, window: 1m }\n",
    ),
  );
  const url = `${gw.url}/x`;
  const alice = await signJwt("HS256", SECRET, { sub: "alice" });
  // Anyone can send "alice" as a key: it spends that key's quota, not Alice's.
  assert.deepEqual(
    [(await call(url, "alice")).status, (await call(url, "alice")).status],
    [200, 200],
  );
  assert.equal((await call(url, "alice")).status, 429);
  const real = await call(url, alice);
  assert.equal(real.status, 200);
  assert.equal(real.id, jwtId("sub", "alice"));
  assert.notEqual(real.id, keyId("alice"));
});

Deno.test("identify jwt: a token whose algorithm holds any text is a 401 with a plain WWW-Authenticate, never a 500", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(
    route(upstream.url, `{ from: [jwt:sub], jwt: { secret: ${SECRET} } }`),
  );
  for (const alg of ["H\u0100S256", "\u00e9", "x".repeat(10_000), 'a"b\\c']) {
    const header = base64Url(JSON.stringify({ alg, kid: "\u4e2d" }));
    const answer = await call(`${gw.url}/x`, `${header}.${base64Url("{}")}.c2ln`);
    assert.equal(answer.status, 401, alg.slice(0, 10));
    assert.equal(answer.authenticate, 'Bearer realm="sluice", error="invalid_token"');
    assert.match(JSON.parse(answer.body).detail, /algorithm/);
  }
});

Deno.test("identify jwt: a missing or unusable key is a config error at the identify step's line", async () => {
  const upstream = `http://127.0.0.1:${freePort()}`;
  const bad: [string, RegExp][] = [
    ["{ from: [jwt:sub] }", /identify\.jwt: A jwt:<claim> source needs the key/],
    ["{ from: [ip], jwt: { secret: " + SECRET + " } }", /no source reads a token/],
    ["{ from: [jwt:sub], jwt: { secret: short } }", /at least 32 bytes/],
    [
      "{ from: [jwt:sub], jwt: { secret: " + SECRET + ", public_key: x } }",
      /exactly one of secret, public_key or jwks/,
    ],
    ["{ from: [jwt:sub], jwt: { public_key: nonsense } }", /public_key must be a PEM block/],
    ["{ from: [jwt:sub], jwt: { secret: " + SECRET + ", algorithms: [RS256] } }", /RS256/],
    [
      "{ from: [bearer, jwt:sub], jwt: { secret: " + SECRET + " } }",
      /identify\.from: Put jwt:<claim> before bearer/,
    ],
    [
      "{ from: [header:Authorization, jwt:sub], jwt: { secret: " + SECRET + " } }",
      /Put jwt:<claim> before bearer and header:authorization/,
    ],
  ];
  for (const [identify, message] of bad) {
    await assert.rejects(startGateway(route(upstream, identify)), (error: Error) => {
      assert.match(error.message, message, identify);
      // The identify entry is on line 6 of the route's YAML.
      assert.match(error.message, /:6:/, identify);
      return true;
    });
  }
});

Deno.test("identify jwt: a token accepted before is refused once it expires", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(
    route(upstream.url, `{ from: [jwt:sub], jwt: { secret: ${SECRET}, clock_skew: 0s } }`),
  );
  const url = `${gw.url}/x`;
  const exp = nowSeconds() + 1;
  const token = await signJwt("HS256", SECRET, { sub: "heidi", exp });
  assert.equal((await call(url, token)).status, 200);
  assert.equal((await call(url, token)).status, 200);
  await delay(exp * 1000 - Date.now() + 20);
  const late = await call(url, token);
  assert.equal(late.status, 401);
  assert.match(JSON.parse(late.body).detail, /expired/);
});

Deno.test("identify jwt: bearer and header:authorization stay valid sources without a jwt source", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  for (const from of ["[bearer, ip]", "[header:authorization]", "[ip, bearer]"]) {
    await using gw = await startGateway(route(upstream.url, `{ from: ${from} }`));
    assert.equal((await call(`${gw.url}/x`, "k")).status, 200, from);
  }
});
