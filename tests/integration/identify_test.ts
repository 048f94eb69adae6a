/**
 * The identify plugin through real sockets: who the gateway thinks is calling
 * (shown by tests/fixtures/client_id_plugin.ts as `x-client-id` and
 * `x-client-ip`), when it answers 401, whose X-Forwarded-For it believes, and
 * that no API key is ever written to the log.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { freePort, repoPath, startGateway, startUpstream } from "../_helpers.ts";

const CLIENT_ID_PLUGIN = repoPath("tests/fixtures/client_id_plugin.ts");

/** The id a key should get, computed here independently of the gateway. */
function keyId(key: string): string {
  return `key:${createHash("sha256").update(key).digest("hex").slice(0, 16)}`;
}

/** A config with one route: the client-id plugin, `identify` with these options, then the proxy. */
function config(upstream: string, identify: string, top = ""): string {
  return `${top}routes:
  - name: api
    upstream: { url: ${upstream} }
    pipeline:
      - plugin: ${CLIENT_ID_PLUGIN}
      - identify: ${identify}
      - proxy: {}
`;
}

/** Sends a request and returns who the gateway said was calling. */
async function whoAmI(
  url: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; id: string | null; ip: string | null }> {
  const response = await fetch(url, { headers });
  await response.body?.cancel();
  return {
    status: response.status,
    id: response.headers.get("x-client-id"),
    ip: response.headers.get("x-client-ip"),
  };
}

Deno.test("identify: an API key from a header names the client by its hash; no key, by its IP", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(
    config(upstream.url, "{ from: [header:x-api-key, ip] }"),
  );
  const alpha = await whoAmI(`${gw.url}/x`, { "x-api-key": "alpha-key" });
  assert.equal(alpha.status, 200);
  assert.equal(alpha.id, keyId("alpha-key"));
  assert.equal(alpha.ip, "127.0.0.1");
  assert.equal((await whoAmI(`${gw.url}/x`, { "x-api-key": "alpha-key" })).id, alpha.id);
  assert.equal((await whoAmI(`${gw.url}/x`, { "x-api-key": "beta-key" })).id, keyId("beta-key"));
  assert.notEqual(keyId("alpha-key"), keyId("beta-key"));
  assert.equal((await whoAmI(`${gw.url}/x`)).id, "ip:127.0.0.1");
  // A blank key is no key; another header is not the key header.
  assert.equal((await whoAmI(`${gw.url}/x`, { "x-api-key": "   " })).id, "ip:127.0.0.1");
  assert.equal((await whoAmI(`${gw.url}/x`, { "x-other-key": "alpha-key" })).id, "ip:127.0.0.1");
});

Deno.test("identify: a key from Authorization: Bearer; other schemes are not keys", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(config(upstream.url, "{ from: [bearer, ip] }"));
  const url = `${gw.url}/x`;
  assert.equal((await whoAmI(url, { authorization: "Bearer tok-1" })).id, keyId("tok-1"));
  assert.equal((await whoAmI(url, { authorization: "bearer   tok-1 " })).id, keyId("tok-1"));
  assert.equal((await whoAmI(url, { authorization: "Basic dXNlcjpwYXNz" })).id, "ip:127.0.0.1");
  assert.equal((await whoAmI(url, { authorization: "Bearer" })).id, "ip:127.0.0.1");
  assert.equal((await whoAmI(url, { authorization: "Bearertok-1" })).id, "ip:127.0.0.1");
  assert.equal((await whoAmI(url)).id, "ip:127.0.0.1");
});

Deno.test("identify: the first source in `from` that gives a key wins", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(
    config(upstream.url, "{ from: [header:x-api-key, bearer] }"),
  );
  const url = `${gw.url}/x`;
  const both = { "x-api-key": "from-header", authorization: "Bearer from-bearer" };
  assert.equal((await whoAmI(url, both)).id, keyId("from-header"));
  assert.equal(
    (await whoAmI(url, { authorization: "Bearer from-bearer" })).id,
    keyId("from-bearer"),
  );
});

Deno.test("identify: required: true answers 401 problem+json without a key, and the upstream is not called", async () => {
  let calls = 0;
  await using upstream = startUpstream(() => {
    calls++;
    return new Response("ok");
  });
  await using gw = await startGateway(
    config(upstream.url, "{ from: [header:x-api-key, bearer], required: true }"),
  );
  const keyless: Record<string, string>[] = [{}, { "x-api-key": "" }, {
    authorization: "Basic eDp5",
  }];
  for (const headers of keyless) {
    const response = await fetch(`${gw.url}/x`, { headers });
    assert.equal(response.status, 401);
    assert.equal(response.headers.get("content-type"), "application/problem+json");
    assert.match(response.headers.get("www-authenticate") ?? "", /^Bearer /);
    const body = await response.json();
    assert.equal(body.status, 401);
    for (const member of ["type", "title", "detail"]) {
      assert.equal(typeof body[member], "string");
      assert.notEqual(body[member], "");
    }
    assert.match(body.detail, /x-api-key/);
  }
  assert.equal(calls, 0);
  const allowed = await whoAmI(`${gw.url}/x`, { authorization: "Bearer k" });
  assert.equal(allowed.status, 200);
  assert.equal(allowed.id, keyId("k"));
  assert.equal(calls, 1);
});

Deno.test("identify: required: true with only header keys answers 401 with an ApiKey challenge", async () => {
  await using gw = await startGateway(
    config(`http://127.0.0.1:${freePort()}`, "{ from: [header:x-api-key], required: true }"),
  );
  const response = await fetch(`${gw.url}/x`);
  await response.body?.cancel();
  assert.equal(response.status, 401);
  assert.equal(response.headers.get("www-authenticate"), 'ApiKey realm="sluice"');
});

Deno.test("identify: required: true without a key source is a config error", async () => {
  await assert.rejects(
    startGateway(config(`http://127.0.0.1:${freePort()}`, "{ from: [ip], required: true }")),
    (error: Error) => {
      assert.match(error.message, /identify\.required/);
      assert.match(error.message, /key source/);
      return true;
    },
  );
});

Deno.test("identify: X-Forwarded-For from a peer that is not a trusted proxy is ignored", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  for (const top of ["", "trusted_proxies: [10.0.0.0/8, ::1/128]\n"]) {
    await using gw = await startGateway(config(upstream.url, "{ from: [ip] }", top));
    for (const spoof of ["203.0.113.9", "203.0.113.9, 10.0.0.1", "10.0.0.1"]) {
      const who = await whoAmI(`${gw.url}/x`, { "x-forwarded-for": spoof });
      assert.equal(who.id, "ip:127.0.0.1", `${top.trim() || "no trusted proxies"}: ${spoof}`);
    }
  }
});

Deno.test("identify: spoofing X-Forwarded-For from an untrusted peer does not buy a fresh quota", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(`routes:
  - name: api
    upstream: { url: ${upstream.url} }
    pipeline:
      - identify: { from: [ip] }
      - sliding-window: { limit: 2, window: 1h }
      - proxy: {}
`);
  const statuses = [];
  for (let i = 1; i <= 4; i++) {
    const response = await fetch(`${gw.url}/x`, {
      headers: { "x-forwarded-for": `198.51.100.${i}` },
    });
    await response.body?.cancel();
    statuses.push(response.status);
  }
  assert.deepEqual(statuses, [200, 200, 429, 429]);
});

Deno.test("identify: behind a trusted proxy the client is the right-most untrusted X-Forwarded-For hop", async () => {
  await using upstream = startUpstream(() => new Response("ok"));
  await using gw = await startGateway(
    config(
      upstream.url,
      "{ from: [header:x-api-key, ip] }",
      "trusted_proxies: [127.0.0.1/32, 10.0.0.0/8, fd00::/8]\n",
    ),
  );
  const cases: [string | undefined, string][] = [
    [undefined, "127.0.0.1"],
    ["203.0.113.9", "203.0.113.9"],
    // Hops left of the right-most untrusted one are the caller's own claims.
    ["198.51.100.1, 203.0.113.9", "203.0.113.9"],
    ["198.51.100.1, 203.0.113.9, 10.1.2.3, 10.0.0.7", "203.0.113.9"],
    ["203.0.113.9,10.1.2.3", "203.0.113.9"],
    // One address, one id: IPv6 in any spelling, IPv4-mapped IPv6 as IPv4.
    ["2001:DB8:0:0:0:0:0:7, fd00::1", "2001:db8::7"],
    ["::ffff:203.0.113.9", "203.0.113.9"],
    // Ports some proxies add are not part of the address.
    ["203.0.113.9:4711", "203.0.113.9"],
    ["[2001:db8::7]:4711, 10.0.0.1", "2001:db8::7"],
    // Every hop trusted: the left-most is the closest thing to a client.
    ["10.9.9.9, 10.0.0.1", "10.9.9.9"],
    // A hop that is not an address ends the walk at the last trusted hop.
    ["203.0.113.9, unknown, 10.0.0.7", "10.0.0.7"],
    ["not-an-ip", "127.0.0.1"],
  ];
  for (const [forwarded, client] of cases) {
    const who = await whoAmI(
      `${gw.url}/x`,
      forwarded === undefined ? {} : { "x-forwarded-for": forwarded },
    );
    assert.equal(who.id, `ip:${client}`, `X-Forwarded-For: ${forwarded}`);
    assert.equal(who.ip, client);
  }
  // With a key, the id is the key's and the IP is still resolved the same way.
  const keyed = await whoAmI(`${gw.url}/x`, {
    "x-api-key": "k-behind-proxy",
    "x-forwarded-for": "198.51.100.1, 203.0.113.9, 10.1.2.3",
  });
  assert.equal(keyed.id, keyId("k-behind-proxy"));
  assert.equal(keyed.ip, "203.0.113.9");
});

Deno.test("identify: the raw API key never appears in any log line", async () => {
  const known = "sk_live_KNOWN_c0ffee_7f3a9";
  const unknown = "sk_live_UNKNOWN_bad_key_42";
  const bearer = "sk_live_BEARER_token_9e1";
  await using upstream = startUpstream(() => new Response("ok"));
  const down = `http://127.0.0.1:${freePort()}`;
  await using gw = await startGateway(`tiers:
  free: { limit: 2, window: 1m }
keys:
  - { key: ${known}, tier: free, name: acme }
  - { key: ${bearer}, tier: free }
routes:
  - name: api
    match: { path_prefix: /api }
    upstream: { url: ${upstream.url} }
    pipeline:
      - identify: { from: [header:x-api-key, bearer], required: true }
      - tier: { default: free, unknown_key: reject }
      - sliding-window: { limit: tier }
      - proxy: {}
  - name: down
    match: { path_prefix: /down }
    upstream: { url: ${down} }
    pipeline:
      - identify: { from: [header:x-api-key] }
      - proxy: {}
`);
  const statuses: number[] = [];
  const send = async (path: string, headers: Record<string, string>) => {
    const response = await fetch(`${gw.url}${path}`, { headers });
    await response.body?.cancel();
    statuses.push(response.status);
  };
  for (let i = 0; i < 3; i++) await send("/api/x", { "x-api-key": known });
  await send("/api/x", { "x-api-key": unknown });
  await send("/api/x", { authorization: `Bearer ${bearer}` });
  await send("/api/x", {});
  await send("/down/x", { "x-api-key": known });
  // Allowed, limited, unknown key, bearer, missing key, upstream down: every path was taken.
  assert.deepEqual(statuses.slice(0, 3), [200, 200, 429]);
  assert.ok([401, 403].includes(statuses[3]!), `unknown key: ${statuses[3]}`);
  assert.deepEqual(statuses.slice(4), [200, 401, 502]);

  for (const key of [known, unknown, bearer]) {
    const leaks = gw.logs.raw.filter((line) => line.includes(key));
    assert.deepEqual(leaks, [], `the key ${key} was logged`);
  }
  // The log did record these requests, by client id.
  const log = gw.logs.raw.join("\n");
  assert.ok(log.includes(keyId(known)), "the request lines name the client by its id");
  assert.ok(log.includes(keyId(bearer)), "the request lines name the client by its id");
});

Deno.test("identify: header keys counted by a sliding window with no tier step to check them draw a warning", async () => {
  const upstream = `http://127.0.0.1:${freePort()}`;
  const route = (steps: string) =>
    `routes:
  - name: api
    upstream: { url: ${upstream} }
    pipeline:
      - identify: { from: [header:x-api-key, ip] }
${steps}      - sliding-window: { limit: 5, window: 1m }
      - proxy: {}
`;
  const warned = (lines: { msg?: unknown }[]) =>
    lines.some((line) => String(line.msg).includes("no tier step checks them"));
  await using unchecked = await startGateway(route(""));
  assert.ok(warned(unchecked.logs.lines));
  await using checked = await startGateway(
    `tiers: { free: { limit: 5, window: 1m } }\n` + route("      - tier: { unknown_key: free }\n"),
  );
  assert.ok(!warned(checked.logs.lines));
});
