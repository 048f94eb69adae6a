/** Hashing API keys (src/digest.ts). */
import assert from "node:assert/strict";
import { keyDigest, knownKeyDigest, sha256Hex } from "../src/digest.ts";

Deno.test("keyDigest remembers short keys, and never a long one a client could fill memory with", async () => {
  const short = `key-${crypto.randomUUID()}`;
  assert.equal(await keyDigest(short), await sha256Hex(short));
  assert.equal(knownKeyDigest(short), await sha256Hex(short));
  const long = `${crypto.randomUUID()}-${"k".repeat(60_000)}`;
  assert.equal(await keyDigest(long), await sha256Hex(long));
  assert.equal(knownKeyDigest(long), undefined);
});
