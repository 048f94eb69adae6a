/** The upstream client (src/http1_client.ts): how it delimits a body, reads a head, retries. */
import assert from "node:assert/strict";
import { bodyFraming, Http1Client, Reader, UpstreamProtocolError } from "../src/http1_client.ts";
import { writeAll } from "../src/net/write_all.ts";
import { delay, waitFor } from "./_helpers.ts";

const frame = (headers: [string, string][], http10 = false) => bodyFraming(headers, http10);

Deno.test("bodyFraming: Content-Length, repeated with one value, is one length", () => {
  assert.deepEqual(frame([["content-length", "5"]]), {
    length: 5,
    chunked: false,
    untilClose: false,
    close: false,
    coded: false,
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
    coded: false,
  });
  assert.deepEqual(frame([["transfer-encoding", "gzip, chunked"]]).chunked, true);
  assert.deepEqual(frame([["transfer-encoding", "gzip"], ["content-length", "3"]]), {
    length: undefined,
    chunked: false,
    untilClose: true,
    close: true,
    coded: true,
  });
});

Deno.test("bodyFraming: a transfer coding other than chunked (and identity) is coded: the body is not yet its content", () => {
  for (const codings of ["gzip, chunked", "gzip", "deflate,chunked", "chunked, chunked", " , "]) {
    assert.equal(frame([["transfer-encoding", codings]]).coded, true, codings);
  }
  // identity is no coding at all (legacy servers still send it).
  for (const codings of ["chunked", "Chunked", " chunked ,", "identity", "Identity, chunked"]) {
    assert.equal(frame([["transfer-encoding", codings]]).coded, false, codings);
  }
  assert.equal(
    frame([["transfer-encoding", "gzip"], ["transfer-encoding", "chunked"]]).coded,
    true,
  );
  // identity after chunked changes nothing: the chunks are read (not passed on as content).
  assert.deepEqual(
    pick(frame([["transfer-encoding", "chunked, identity"]])),
    { chunked: true, untilClose: false, coded: false },
  );
  // identity alone frames nothing: the Content-Length does, on a connection kept open.
  assert.deepEqual(
    frame([["transfer-encoding", "identity"], ["content-length", "2"]]),
    { length: 2, chunked: false, untilClose: false, close: false, coded: false },
  );
});

const pick = ({ chunked, untilClose, coded }: ReturnType<typeof frame>) => ({
  chunked,
  untilClose,
  coded,
});

Deno.test("bodyFraming: Connection close in any Connection field ends the connection; HTTP/1.0 needs keep-alive to stay", () => {
  assert.equal(frame([["connection", "close"], ["connection", "x-foo"]]).close, true);
  assert.equal(frame([["connection", "x-foo, Close"]]).close, true);
  assert.equal(frame([["connection", "keep-alive"]]).close, false);
  assert.equal(frame([], true).close, true);
  assert.equal(frame([["connection", "Keep-Alive"]], true).close, false);
  assert.equal(frame([["connection", "keep-alive, close"]], true).close, true);
});

/** A hand-written upstream: `answer` writes the reply to each request head read on a connection. */
function scriptedUpstream(
  answer: (conn: Deno.Conn, target: string, connectionIndex: number) => Promise<void>,
) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const targets: string[] = [];
  const conns = new Set<Deno.Conn>();
  let connections = 0;
  const serve = async (conn: Deno.Conn, index: number) => {
    const buf = new Uint8Array(65536);
    let text = "";
    try {
      for (;;) {
        const n = await conn.read(buf);
        if (n === null) return;
        text += new TextDecoder().decode(buf.subarray(0, n));
        let end;
        while ((end = text.indexOf("\r\n\r\n")) >= 0) {
          const target = text.slice(0, text.indexOf("\r\n")).split(" ")[1]!;
          text = text.slice(end + 4);
          targets.push(target);
          await answer(conn, target, index);
        }
      }
    } catch {
      // The client went away.
    } finally {
      conns.delete(conn);
      try {
        conn.close();
      } catch {
        // Closed by the answer.
      }
    }
  };
  (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      serve(conn, connections++);
    }
  })().catch(() => {});
  return {
    url: `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    targets,
    /** Connections the upstream holds open. */
    get open() {
      return conns.size;
    },
    close() {
      listener.close();
      for (const conn of conns) conn.close();
    },
  };
}

const write = (conn: Deno.Conn, text: string) => writeAll(conn, new TextEncoder().encode(text));

Deno.test("Http1Client: a small body still on its way is streamed, the answer handed over at its head", async () => {
  const { promise: bodyMayGo, resolve: letBodyGo } = Promise.withResolvers<void>();
  const upstream = scriptedUpstream(async (conn) => {
    await write(conn, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc");
    await bodyMayGo;
    await write(conn, "def");
  });
  const client = new Http1Client();
  try {
    const answer = client.fetch(`${upstream.url}/slow`);
    const first = await Promise.race([answer, delay(5_000).then(() => "timed out")]);
    assert.ok(first instanceof Response, "the answer waited for the whole body");
    letBodyGo();
    assert.equal(await first.text(), "abcdef");
  } finally {
    letBodyGo();
    await client.close();
    upstream.close();
  }
});

Deno.test("Http1Client: a request the upstream answered is never sent again, even on a reused connection", async () => {
  const upstream = scriptedUpstream(async (conn, target) => {
    // A field name with a space: the answer cannot be built, after the upstream has answered.
    await write(
      conn,
      target === "/bad"
        ? "HTTP/1.1 200 OK\r\nX Bad: v\r\nContent-Length: 2\r\n\r\nok"
        : "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    );
  });
  const client = new Http1Client();
  try {
    assert.equal(await (await client.fetch(`${upstream.url}/warm`)).text(), "ok");
    await assert.rejects(client.fetch(`${upstream.url}/bad`, { method: "DELETE" }));
    assert.deepEqual(upstream.targets, ["/warm", "/bad"]);
  } finally {
    await client.close();
    upstream.close();
  }
});

Deno.test("Http1Client: a head whose lines end in a bare LF is read (RFC 9112, 2.2)", async () => {
  const upstream = scriptedUpstream(async (conn) => {
    await write(conn, "HTTP/1.1 200 OK\nContent-Length: 2\nX-Kind: lf\n\nok");
  });
  const client = new Http1Client();
  try {
    const answer = await Promise.race([
      client.fetch(`${upstream.url}/lf`),
      delay(5_000).then(() => "no answer"),
    ]);
    assert.ok(answer instanceof Response, String(answer));
    assert.equal(answer.headers.get("x-kind"), "lf");
    assert.equal(await answer.text(), "ok");
  } finally {
    await client.close();
    upstream.close();
  }
});

Deno.test("Http1Client: a chunked body whose lines end in a bare LF is read to its end", async () => {
  const upstream = scriptedUpstream(async (conn) => {
    await write(conn, "HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n5\nhello\n6\n world\n0\n\n");
  });
  const client = new Http1Client();
  try {
    const answer = await client.fetch(`${upstream.url}/lf`);
    const text = await Promise.race([answer.text(), delay(5_000).then(() => "body never ended")]);
    assert.equal(text, "hello world");
  } finally {
    await client.close();
    upstream.close();
  }
});

Deno.test("Http1Client: a connection idle longer than idleTimeoutMs is not reused, so a POST never meets an upstream closing it", async () => {
  const IDLE_MS = 200;
  // Closes a connection that has been idle past the client's limit just as a
  // request arrives on it, as an upstream whose keep-alive timer fires then.
  const lastAnswer = new Map<number, number>();
  const upstream = scriptedUpstream(async (conn, _target, index) => {
    const last = lastAnswer.get(index);
    if (last !== undefined && performance.now() - last > IDLE_MS) return conn.close();
    await write(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    lastAnswer.set(index, performance.now());
  });
  const client = new Http1Client({ idleTimeoutMs: IDLE_MS });
  try {
    const first = await client.fetch(`${upstream.url}/one`, { method: "POST" });
    assert.equal(await first.text(), "ok");
    await delay(IDLE_MS * 2);
    // A POST is never sent twice: on the stale connection it would fail.
    const second = await client.fetch(`${upstream.url}/two`, { method: "POST" });
    assert.equal(await second.text(), "ok");
    assert.equal(lastAnswer.size, 2, "the second POST went on a new connection");
  } finally {
    client.close();
    upstream.close();
  }
});

Deno.test("Http1Client: a connection idle longer than idleTimeoutMs is closed even when no request comes", async () => {
  const upstream = scriptedUpstream(async (conn) => {
    await write(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
  });
  const client = new Http1Client({ idleTimeoutMs: 200 });
  try {
    const answer = await client.fetch(`${upstream.url}/one`);
    assert.equal(await answer.text(), "ok");
    assert.equal(upstream.open, 1);
    assert.ok(await waitFor(() => upstream.open === 0, 5_000), "the idle connection was kept");
  } finally {
    client.close();
    upstream.close();
  }
});

/** A connection whose reads return these pieces, one a read, then its end. */
function piecesConn(pieces: Uint8Array[]): Pick<Deno.Conn, "read"> {
  let next = 0;
  return {
    read(into: Uint8Array): Promise<number | null> {
      const piece = pieces[next++];
      if (piece === undefined) return Promise.resolve(null);
      into.set(piece);
      return Promise.resolve(piece.length);
    },
  };
}

/** The ends of the heads in `bytes`, as the client finds them reading these pieces. */
async function headEnds(bytes: Uint8Array, cuts: number[], heads: number): Promise<number[]> {
  const bounds = [0, ...cuts, bytes.length];
  const pieces = bounds.slice(1).map((end, i) => bytes.subarray(bounds[i], end));
  const reader = new Reader(piecesConn(pieces.filter((piece) => piece.length > 0)));
  const ends: number[] = [];
  let consumed = 0;
  for (let n = 0; n < heads; n++) {
    let end = reader.headEnd();
    while (end < 0) {
      if (!await reader.fill()) return ends;
      end = reader.headEnd();
    }
    ends.push(consumed + end - reader.start);
    consumed += end - reader.start;
    reader.start = end;
  }
  return ends;
}

Deno.test("Reader.headEnd: a head is found wherever the reads split it (CRLF, bare LF, LF CR LF ends)", async () => {
  const heads = [
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\n",
    "HTTP/1.1 200 OK\nContent-Length: 2\nX-A: b\n\n",
    "HTTP/1.1 200 OK\nContent-Length: 2\r\nX-A: b\n\r\n",
  ];
  for (const head of heads) {
    // An interim answer, then the answer, then a body: two heads to find in a row.
    const interim = "HTTP/1.1 100 Continue\r\n\r\n";
    const bytes = new TextEncoder().encode(interim + head + "ok");
    const expected = [interim.length, interim.length + head.length];
    const label = JSON.stringify(head);
    for (let i = 1; i < bytes.length; i++) {
      for (let j = i; j < bytes.length; j++) {
        assert.deepEqual(await headEnds(bytes, [i, j], 2), expected, `${label} cut at ${i}, ${j}`);
      }
    }
    const bytewise = Array.from({ length: bytes.length - 1 }, (_, i) => i + 1);
    assert.deepEqual(await headEnds(bytes, bytewise, 2), expected, `${label} a byte a read`);
  }
});
