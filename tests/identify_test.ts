/** Unit tests of identify's building blocks: `clientIp` and `keyClientId`. */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { CidrSet } from "../src/net/cidr.ts";
import { clientIp, keyClientId } from "../src/plugins/identify.ts";

const TRUSTED = new CidrSet(["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"]);
const isTrusted = (address: string) => TRUSTED.has(address);

function ipOf(remoteAddr: string, forwardedFor?: string | string[]): string {
  const headers = new Headers();
  for (const value of [forwardedFor ?? []].flat()) headers.append("x-forwarded-for", value);
  return clientIp(new Request("http://gateway.test/", { headers }), remoteAddr, isTrusted);
}

Deno.test("clientIp: an untrusted peer is the client, whatever X-Forwarded-For says", () => {
  assert.equal(ipOf("198.51.100.4"), "198.51.100.4");
  assert.equal(ipOf("198.51.100.4", "203.0.113.9"), "198.51.100.4");
  assert.equal(ipOf("198.51.100.4", "10.0.0.1"), "198.51.100.4");
  assert.equal(ipOf("2001:db8::4", "203.0.113.9"), "2001:db8::4");
});

Deno.test("clientIp: a trusted peer without X-Forwarded-For is the client", () => {
  assert.equal(ipOf("127.0.0.1"), "127.0.0.1");
  assert.equal(ipOf("10.2.3.4", ""), "10.2.3.4");
  assert.equal(ipOf("10.2.3.4", " , ,"), "10.2.3.4");
});

Deno.test("clientIp: behind trusted proxies, the right-most untrusted hop is the client", () => {
  assert.equal(ipOf("127.0.0.1", "203.0.113.9"), "203.0.113.9");
  assert.equal(ipOf("127.0.0.1", "198.51.100.1, 203.0.113.9"), "203.0.113.9");
  assert.equal(ipOf("127.0.0.1", "198.51.100.1, 203.0.113.9, 10.0.0.2, 10.9.9.9"), "203.0.113.9");
  assert.equal(ipOf("10.0.0.1", " 203.0.113.9 ,10.0.0.2 "), "203.0.113.9");
  assert.equal(ipOf("127.0.0.1", "203.0.113.9, , 10.0.0.2"), "203.0.113.9");
  // Several header lines are one list, in order.
  assert.equal(ipOf("127.0.0.1", ["198.51.100.1, 203.0.113.9", "10.0.0.2"]), "203.0.113.9");
  assert.equal(ipOf("127.0.0.1", ["203.0.113.9", "198.51.100.1"]), "198.51.100.1");
});

Deno.test("clientIp: when every hop is trusted, the left-most is the client", () => {
  assert.equal(ipOf("127.0.0.1", "10.0.0.3, 10.0.0.2"), "10.0.0.3");
  assert.equal(ipOf("127.0.0.1", "fd00::3"), "fd00::3");
});

Deno.test("clientIp: addresses come out in one canonical form", () => {
  assert.equal(ipOf("::ffff:127.0.0.1", "203.0.113.9"), "203.0.113.9");
  assert.equal(ipOf("::ffff:198.51.100.4"), "198.51.100.4");
  assert.equal(ipOf("2001:DB8:0:0:0:0:0:4"), "2001:db8::4");
  assert.equal(ipOf("127.0.0.1", "2001:0DB8::0009"), "2001:db8::9");
  assert.equal(ipOf("127.0.0.1", "::ffff:203.0.113.9"), "203.0.113.9");
  assert.equal(ipOf("127.0.0.1", "[2001:db8::9]"), "2001:db8::9");
});

Deno.test("clientIp: a port on a hop is dropped", () => {
  assert.equal(ipOf("127.0.0.1", "203.0.113.9:4711"), "203.0.113.9");
  assert.equal(ipOf("127.0.0.1", "[2001:db8::9]:4711"), "2001:db8::9");
  // A trusted hop with a port is still trusted.
  assert.equal(ipOf("127.0.0.1", "203.0.113.9, 10.0.0.2:8080"), "203.0.113.9");
});

Deno.test("clientIp: a hop that is not an address stops the walk at the last trusted hop", () => {
  assert.equal(ipOf("127.0.0.1", "unknown"), "127.0.0.1");
  assert.equal(ipOf("127.0.0.1", "203.0.113.9, unknown"), "127.0.0.1");
  assert.equal(ipOf("127.0.0.1", "203.0.113.9, garbage, 10.0.0.2"), "10.0.0.2");
  assert.equal(ipOf("127.0.0.1", "203.0.113.9, 010.0.0.2"), "127.0.0.1");
  assert.equal(ipOf("127.0.0.1", `${"x".repeat(5000)}`), "127.0.0.1");
});

Deno.test("keyClientId: key: and the first 16 hex digits of the key's SHA-256", async () => {
  for (const key of ["alpha", "sk_live_0123456789", "ключ", " spaced key ", "a".repeat(1000)]) {
    const expected = createHash("sha256").update(key, "utf8").digest("hex").slice(0, 16);
    assert.equal(await keyClientId(key), `key:${expected}`, key);
    // Stable across calls (the second comes from the cache).
    assert.equal(await keyClientId(key), `key:${expected}`, key);
  }
  assert.notEqual(await keyClientId("alpha"), await keyClientId("Alpha"));
});

Deno.test("keyClientId: ids stay right after the cache has turned over", async () => {
  const first = await keyClientId("turnover-0");
  for (let i = 1; i <= 10_050; i++) await keyClientId(`turnover-${i}`);
  assert.equal(await keyClientId("turnover-0"), first);
  const expected = createHash("sha256").update("turnover-10050").digest("hex").slice(0, 16);
  assert.equal(await keyClientId("turnover-10050"), `key:${expected}`);
});
