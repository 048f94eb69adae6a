/** Route matching helpers (src/router.ts). */
import assert from "node:assert/strict";
import { compileMatch, decodeUnreserved } from "../src/router.ts";

Deno.test("decodeUnreserved decodes escaped letters, digits and -._~ only", () => {
  assert.equal(decodeUnreserved("/%70ayments/charge"), "/payments/charge");
  assert.equal(decodeUnreserved("/%41%5a%61%7A%30%39%2D%5F%7E%2e"), "/AZaz09-_~.");
  // Reserved characters, space, controls and UTF-8 stay escaped.
  for (const path of ["/a%2Fb", "/%3F%23%40%5B%60%7B%7F%20", "/%E2%82%AC", "/100%25"]) {
    assert.equal(decodeUnreserved(path), path);
  }
  assert.equal(decodeUnreserved("/plain/path"), "/plain/path");
  // A lone % would let a decoded digit make a new escape (%%32e -> %2e -> ..): left alone.
  for (const path of ["/files/%%32e%%32e/admin", "/a%%32Fb", "/100%/%70"]) {
    assert.equal(decodeUnreserved(path), path);
  }
});

Deno.test("a path prefix matches on segment boundaries", () => {
  const pay = compileMatch({ path_prefix: "/pay" });
  assert.equal(pay("GET", null, "/pay"), true);
  assert.equal(pay("GET", null, "/pay/x"), true);
  assert.equal(pay("GET", null, "/payments"), false);
});
