/** How the upstream client delimits a response body (src/http1_client.ts). */
import assert from "node:assert/strict";
import { bodyFraming, UpstreamProtocolError } from "../src/http1_client.ts";

const frame = (headers: [string, string][], http10 = false) => bodyFraming(headers, http10);

Deno.test("bodyFraming: Content-Length, repeated with one value, is one length", () => {
  assert.deepEqual(frame([["content-length", "5"]]), {
    length: 5,
    chunked: false,
    untilClose: false,
    close: false,
  });
  assert.equal(frame([["content-length", "5, 5"]]).length, 5);
  assert.equal(frame([["content-length", "5"], ["content-length", "5"]]).length, 5);
  assert.equal(frame([]).length, undefined);
});

Deno.test("bodyFraming: a Content-Length that is not one decimal number is a protocol error", () => {
  for (const value of ["abc", "-1", "0x5", "5.0", "", "2, 5", "1e3"]) {
    assert.throws(
      () => frame([["content-length", value]]),
      UpstreamProtocolError,
      `Content-Length: ${value}`,
    );
  }
  assert.throws(
    () => frame([["content-length", "2"], ["content-length", "5"]]),
    UpstreamProtocolError,
  );
});

Deno.test("bodyFraming: Transfer-Encoding wins over Content-Length; a body not chunked last runs to the close", () => {
  assert.deepEqual(frame([["transfer-encoding", "chunked"], ["content-length", "3"]]), {
    length: undefined,
    chunked: true,
    untilClose: false,
    close: false,
  });
  assert.deepEqual(frame([["transfer-encoding", "gzip, chunked"]]).chunked, true);
  assert.deepEqual(frame([["transfer-encoding", "gzip"], ["content-length", "3"]]), {
    length: undefined,
    chunked: false,
    untilClose: true,
    close: true,
  });
});

Deno.test("bodyFraming: Connection close in any Connection field ends the connection; HTTP/1.0 needs keep-alive to stay", () => {
  assert.equal(frame([["connection", "close"], ["connection", "x-foo"]]).close, true);
  assert.equal(frame([["connection", "x-foo, Close"]]).close, true);
  assert.equal(frame([["connection", "keep-alive"]]).close, false);
  assert.equal(frame([], true).close, true);
  assert.equal(frame([["connection", "Keep-Alive"]], true).close, false);
  assert.equal(frame([["connection", "keep-alive, close"]], true).close, true);
});
