/**
 * The proxy through real sockets: what the upstream receives and what the
 * client gets back (DESIGN.md section 3, "Proxy fidelity"). Where exact bytes
 * matter (dot segments, hop-by-hop headers, a Host of our choosing, bodiless
 * answers, compressed bodies) the client or the upstream speaks HTTP/1.1 by
 * hand over a TCP socket.
 */
import assert from "node:assert/strict";
import {
  delay,
  freePort,
  startEchoUpstream,
  startGateway,
  startUpstream,
  waitFor,
} from "../_helpers.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// ---------------------------------------------------------------------------
// HTTP/1.1 on the wire

/** A request or response head and body as read off a socket. */
interface WireMessage {
  /** The request line or the status line. */
  start: string;
  /** Every header line in order, names lower-cased. */
  headers: [string, string][];
  body: Uint8Array;
}

/** All values of one header, in order. */
function values(message: WireMessage, name: string): string[] {
  return message.headers.filter(([key]) => key === name).map(([, value]) => value);
}

/** The one value of a header (fails when it appears more than once). */
function single(message: WireMessage, name: string): string | undefined {
  const found = values(message, name);
  assert.ok(found.length <= 1, `"${name}" appears ${found.length} times`);
  return found[0];
}

function statusOf(message: WireMessage): number {
  return Number(message.start.split(" ")[1]);
}

function indexOfCrlfCrlf(bytes: Uint8Array): number {
  for (let i = 0; i + 3 < bytes.length; i++) {
    if (bytes[i] === 13 && bytes[i + 1] === 10 && bytes[i + 2] === 13 && bytes[i + 3] === 10) {
      return i;
    }
  }
  return -1;
}

/** Buffered reads of HTTP/1.1 messages from one connection. */
class WireReader {
  #conn: Deno.Conn;
  #buffer = new Uint8Array(0);

  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  async #fill(): Promise<boolean> {
    const chunk = new Uint8Array(64 * 1024);
    const n = await this.#conn.read(chunk);
    if (n === null) return false;
    const joined = new Uint8Array(this.#buffer.length + n);
    joined.set(this.#buffer);
    joined.set(chunk.subarray(0, n), this.#buffer.length);
    this.#buffer = joined;
    return true;
  }

  #take(n: number): Uint8Array {
    const taken = this.#buffer.slice(0, n);
    this.#buffer = this.#buffer.slice(n);
    return taken;
  }

  async #exactly(n: number): Promise<Uint8Array> {
    while (this.#buffer.length < n) {
      if (!await this.#fill()) {
        throw new Error(`Connection closed ${n - this.#buffer.length} bytes short`);
      }
    }
    return this.#take(n);
  }

  async #line(): Promise<string> {
    for (;;) {
      const end = this.#buffer.findIndex((byte, i) => byte === 13 && this.#buffer[i + 1] === 10);
      if (end >= 0) {
        const line = decoder.decode(this.#take(end));
        this.#take(2);
        return line;
      }
      if (!await this.#fill()) throw new Error("Connection closed in the middle of a line");
    }
  }

  /** The next head, or undefined when the peer closed before sending one. */
  async head(): Promise<Omit<WireMessage, "body"> | undefined> {
    let end: number;
    while ((end = indexOfCrlfCrlf(this.#buffer)) < 0) {
      if (!await this.#fill()) {
        if (this.#buffer.length === 0) return undefined;
        throw new Error("Connection closed in the middle of a head");
      }
    }
    const lines = decoder.decode(this.#take(end)).split("\r\n");
    this.#take(4);
    const headers = lines.slice(1).map((line): [string, string] => {
      const colon = line.indexOf(":");
      return [line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim()];
    });
    return { start: lines[0]!, headers };
  }

  /** The body that follows a head: chunked, by Content-Length, or (responses) to the end. */
  async body(head: Omit<WireMessage, "body">, untilClose: boolean): Promise<Uint8Array> {
    const message = { ...head, body: new Uint8Array(0) };
    if (values(message, "transfer-encoding").join(",").toLowerCase().includes("chunked")) {
      const parts: Uint8Array[] = [];
      for (;;) {
        const size = parseInt((await this.#line()).split(";")[0]!, 16);
        if (size === 0) {
          while ((await this.#line()) !== "") {
            // trailer fields
          }
          break;
        }
        parts.push(await this.#exactly(size));
        await this.#exactly(2);
      }
      return concat(parts);
    }
    const length = single(message, "content-length");
    if (length !== undefined) return await this.#exactly(Number(length));
    if (!untilClose) return new Uint8Array(0);
    while (await this.#fill()) {
      // to the end of the connection
    }
    return this.#take(this.#buffer.length);
  }
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** A client connection that writes requests byte for byte and reads the responses. */
class RawClient {
  #conn: Deno.Conn;
  #reader: WireReader;

  private constructor(conn: Deno.Conn) {
    this.#conn = conn;
    this.#reader = new WireReader(conn);
  }

  static async open(port: number): Promise<RawClient> {
    return new RawClient(await Deno.connect({ hostname: "127.0.0.1", port }));
  }

  async send(text: string | Uint8Array): Promise<void> {
    const bytes = typeof text === "string" ? encoder.encode(text) : text;
    for (let written = 0; written < bytes.length;) {
      written += await this.#conn.write(bytes.subarray(written));
    }
  }

  /** Reads one response; `method` says whether a body may follow. */
  async response(method = "GET"): Promise<WireMessage> {
    const head = await this.#reader.head();
    if (!head) throw new Error("The gateway closed the connection without an answer");
    const status = statusOf({ ...head, body: new Uint8Array(0) });
    const bodiless = method === "HEAD" || status === 204 || status === 304 || status < 200;
    const body = bodiless ? new Uint8Array(0) : await this.#reader.body(head, true);
    return { ...head, body };
  }

  close(): void {
    try {
      this.#conn.close();
    } catch {
      // already closed
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Sends one request on a new connection and reads its answer. */
async function rawRequest(port: number, text: string, method = "GET"): Promise<WireMessage> {
  using client = await RawClient.open(port);
  await client.send(text);
  return await client.response(method);
}

/** An upstream that speaks HTTP/1.1 by hand: it records each request and writes `respond`'s bytes, then closes. */
interface RawUpstream {
  url: string;
  requests: WireMessage[];
  [Symbol.asyncDispose](): Promise<void>;
}

function startRawUpstream(respond: (request: WireMessage) => string): RawUpstream {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const requests: WireMessage[] = [];
  const conns = new Set<Deno.Conn>();
  const handlers = new Set<Promise<void>>();
  const serve = async (conn: Deno.Conn) => {
    try {
      const reader = new WireReader(conn);
      const head = await reader.head();
      if (!head) return;
      const request = { ...head, body: await reader.body(head, false) };
      requests.push(request);
      const bytes = encoder.encode(respond(request));
      for (let written = 0; written < bytes.length;) {
        written += await conn.write(bytes.subarray(written));
      }
    } catch {
      // the gateway went away
    } finally {
      conns.delete(conn);
      conn.close();
    }
  };
  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        conns.add(conn);
        const handler = serve(conn);
        handlers.add(handler);
        handler.finally(() => handlers.delete(handler));
      }
    } catch {
      // closed
    }
  })();
  return {
    url: `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    requests,
    async [Symbol.asyncDispose]() {
      listener.close();
      await accepting;
      for (const conn of conns) conn.close();
      await Promise.allSettled([...handlers]);
    },
  };
}

// ---------------------------------------------------------------------------
// Small helpers

/** A one-route config that forwards everything to `upstream`. */
function proxyOnly(upstream: string, timeout?: string): string {
  return `routes:
  - name: api
    upstream: { url: ${upstream}${timeout ? `, timeout: ${timeout}` : ""} }
    pipeline:
      - proxy: {}
`;
}

/** The echo upstream's headers as a map (last value wins). */
function echoedHeaders(echoed: { headers: [string, string][] }): Map<string, string> {
  return new Map(echoed.headers);
}

/** Asserts an RFC 9457 answer made by the gateway and returns its body. */
async function assertProblem(response: Response, status: number): Promise<Record<string, unknown>> {
  assert.equal(response.status, status);
  assert.equal(response.headers.get("content-type"), "application/problem+json");
  const body = await response.json();
  assert.equal(body.status, status);
  for (const member of ["type", "title", "detail"]) {
    assert.equal(typeof body[member], "string", `problem member "${member}"`);
    assert.notEqual(body[member], "", `problem member "${member}"`);
  }
  return body;
}

/** Resolves when the signal aborts. */
function aborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener("abort", () => resolve(), { once: true });
  });
}

/** Waits for `promise` at most `ms`; false when the time ran out. */
async function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise.then(() => true),
      new Promise<boolean>((resolve) => timer = setTimeout(() => resolve(false), ms)),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

// ---------------------------------------------------------------------------
// Method, body, path and query

Deno.test("proxy: method and body reach the upstream", async () => {
  await using upstream = startEchoUpstream();
  await using gw = await startGateway(proxyOnly(upstream.url));
  for (const method of ["POST", "PUT", "PATCH", "DELETE"]) {
    const payload = `{"method":"${method}","n":${method.length}}`;
    const response = await fetch(`${gw.url}/things/7`, {
      method,
      body: payload,
      headers: { "content-type": "application/json", "x-custom": `for-${method}` },
    });
    assert.equal(response.status, 200);
    const echoed = await response.json();
    assert.equal(echoed.method, method);
    assert.equal(echoed.body, payload);
    assert.equal(echoedHeaders(echoed).get("x-custom"), `for-${method}`);
    assert.equal(echoedHeaders(echoed).get("content-type"), "application/json");
  }
  const get = await (await fetch(`${gw.url}/things/7`)).json();
  assert.equal(get.method, "GET");
  assert.equal(get.body, "");
});

Deno.test("proxy: the query goes on byte for byte, as the client wrote it (a signature over it still holds)", async () => {
  await using upstream = startRawUpstream(() =>
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
  );
  await using gw = await startGateway(proxyOnly(upstream.url));
  const port = gw.gateway.addr.port;
  const targets: [string, string][] = [
    ["/q?a='b'&c=<d>", "/q?a='b'&c=<d>"],
    ['/x?q=%41%27"{x}&sig=abc%2Fdef', '/x?q=%41%27"{x}&sig=abc%2Fdef'],
    ["/x?", "/x?"],
    ["/x?a=1&a=2&b", "/x?a=1&a=2&b"],
    // Bytes a request line cannot carry as text are percent-encoded (UTF-8), as before.
    ["/x?q=é", "/x?q=%C3%A9"],
    // The path is routed as resolved, and forwarded so.
    ["/a/../x?k=v", "/x?k=v"],
  ];
  for (const [sent] of targets) {
    const answer = await rawRequest(
      port,
      `GET ${sent} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n`,
    );
    assert.equal(statusOf(answer), 200, sent);
  }
  assert.deepEqual(
    upstream.requests.map((request) => request.start),
    targets.map(([, forwarded]) => `GET ${forwarded} HTTP/1.1`),
  );
});

Deno.test("proxy: a body sent with Content-Length is forwarded with that Content-Length", async () => {
  // Some upstreams (object stores among them) refuse chunked uploads.
  await using upstream = startRawUpstream(() =>
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
  );
  await using gw = await startGateway(proxyOnly(upstream.url));
  const payload = "x".repeat(100_000);
  const response = await fetch(`${gw.url}/objects/1`, { method: "PUT", body: payload });
  assert.equal(await response.text(), "ok");
  const received = upstream.requests[0]!;
  assert.equal(received.start, "PUT /objects/1 HTTP/1.1");
  assert.equal(single(received, "content-length"), String(payload.length));
  assert.equal(single(received, "transfer-encoding"), undefined);
  assert.equal(decoder.decode(received.body), payload);
});

Deno.test("proxy: the upstream's status, headers and body come back as sent, redirects included", async () => {
  await using upstream = startUpstream((request) => {
    const status = Number(new URL(request.url).searchParams.get("status"));
    const headers = { "x-upstream": "yes", "content-type": "text/plain" };
    if (status === 302) {
      return new Response(null, { status, headers: { ...headers, location: "/elsewhere" } });
    }
    return new Response(`upstream said ${status}`, { status, headers });
  });
  await using gw = await startGateway(proxyOnly(upstream.url));
  for (const status of [200, 201, 302, 404, 418, 500, 503]) {
    const response = await fetch(`${gw.url}/s?status=${status}`, { redirect: "manual" });
    assert.equal(response.status, status);
    assert.equal(response.headers.get("x-upstream"), "yes");
    assert.equal(response.headers.get("content-type"), "text/plain");
    const body = await response.text();
    if (status === 302) {
      assert.equal(response.headers.get("location"), "/elsewhere");
    } else {
      assert.equal(body, `upstream said ${status}`);
    }
  }
});

Deno.test("proxy: path and query reach the upstream as received (encodings, repeated keys, order); only escaped unreserved characters are decoded", async () => {
  const seen: string[] = [];
  await using upstream = startUpstream((request) => {
    // Deno.serve gives the request target as it came off the wire.
    seen.push(request.url.slice(request.url.indexOf("/", "http://".length)));
    return new Response("ok");
  });
  await using gw = await startGateway(proxyOnly(upstream.url));
  const targets = [
    "/files/a%2Fb/c%20d/%7Euser/x+y",
    "/search?q=1&tag=a%20b&q=2&empty=&q=3&enc=a%2Bb%26c%3Dd&plus=a+b&z=last",
    "/files/a%2Fb?b=2&a=1&b=1&a=2",
    "/unicode/%E2%82%AC?name=%C3%A9t%C3%A9",
  ];
  for (const target of targets) {
    const answer = await rawRequest(
      gw.gateway.addr.port,
      `GET ${target} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n`,
    );
    assert.equal(statusOf(answer), 200);
  }
  // %7E is ~ (RFC 3986, 6.2.2.2): routes match, and the upstream reads, the decoded path.
  assert.deepEqual(seen, targets.map((target) => target.replace("%7Euser", "~user")));
  // And through an ordinary client.
  const echoed = await (await fetch(`${gw.url}/p%2Fq/r%20s?k=v%26w&k=2&k=1`)).text();
  assert.equal(echoed, "ok");
  assert.equal(seen.at(-1), "/p%2Fq/r%20s?k=v%26w&k=2&k=1");
});

Deno.test("proxy: dot segments and escaped letters are resolved before routing and before forwarding", async () => {
  const publicSeen: string[] = [];
  const privateSeen: string[] = [];
  await using publicUpstream = startUpstream((request) => {
    publicSeen.push(new URL(request.url).pathname);
    return new Response("public");
  });
  await using privateUpstream = startUpstream((request) => {
    privateSeen.push(new URL(request.url).pathname);
    return new Response("private");
  });
  await using gw = await startGateway(`routes:
  - name: public
    match: { path_prefix: /public }
    upstream: { url: ${publicUpstream.url} }
    pipeline:
      - proxy: {}
  - name: private
    match: { path_prefix: /private }
    upstream: { url: ${privateUpstream.url} }
    pipeline:
      - identify: { from: [header:x-api-key], required: true }
      - proxy: {}
  - name: rest
    upstream: { url: ${publicUpstream.url} }
    pipeline:
      - proxy: {}
`);
  const port = gw.gateway.addr.port;
  const get = (target: string, extra = "") =>
    rawRequest(port, `GET ${target} HTTP/1.1\r\nHost: a\r\n${extra}Connection: close\r\n\r\n`);

  // /public/../private is /private: its route (and its identify step) answers.
  for (
    const target of [
      "/public/../private/secret",
      "/public/%2e%2e/private/secret",
      "/%70rivate/secret",
      "/priv%61te/secret",
    ]
  ) {
    const denied = await get(target);
    assert.equal(statusOf(denied), 401, target);
    assert.equal(single(denied, "content-type"), "application/problem+json");
  }
  assert.deepEqual(publicSeen, []);
  assert.deepEqual(privateSeen, []);

  // A % that starts no escape would leave the path undecoded (and dodge /private): a 400.
  for (const target of ["/%70rivate/secret%", "/private/100%/x", "/%%32e%%32e/private"]) {
    const bad = await get(target, "X-Request-Id: bad-path\r\n");
    assert.equal(statusOf(bad), 400, target);
    assert.equal(single(bad, "content-type"), "application/problem+json");
    assert.equal(single(bad, "x-request-id"), "bad-path");
  }
  assert.deepEqual(publicSeen, []);
  // The debug line of such a 400 shows the path, never the query (a token may ride in it).
  await get("/private/100%/x?access_token=secret-token");
  const logged = gw.logs.lines.filter((line) => line.msg === "request" && line.status === 400);
  assert.ok(logged.length > 0);
  assert.doesNotMatch(JSON.stringify(logged), /secret-token/);
  assert.equal(logged.at(-1)!.path, "/private/100%/x");

  const allowed = await get("/public/../private/secret", "X-Api-Key: k1\r\n");
  assert.equal(statusOf(allowed), 200);
  assert.equal(decoder.decode(allowed.body), "private");
  const escaped = await get("/%70rivate/%73ecret%2Fx", "X-Api-Key: k1\r\n");
  assert.equal(statusOf(escaped), 200);
  assert.deepEqual(privateSeen, ["/private/secret", "/private/secret%2Fx"]);

  // /a/../b reaches the upstream as /b.
  for (const target of ["/a/../b", "/a/./c/../d", "/x/y/../../z"]) {
    const answer = await get(target);
    assert.equal(statusOf(answer), 200, target);
  }
  assert.deepEqual(publicSeen, ["/b", "/a/d", "/z"]);
});

Deno.test("proxy: CONNECT answers 501 problem+json and reaches no upstream", async () => {
  let calls = 0;
  await using upstream = startUpstream(() => {
    calls++;
    return new Response("ok");
  });
  await using gw = await startGateway(proxyOnly(upstream.url));
  const answer = await rawRequest(
    gw.gateway.addr.port,
    "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
  );
  assert.equal(statusOf(answer), 501);
  assert.equal(single(answer, "content-type"), "application/problem+json");
  assert.match(single(answer, "x-request-id")!, /^[0-9a-f-]{36}$/);
  assert.equal(calls, 0);
});

Deno.test("proxy: strip_prefix removes the route's prefix; by default it is kept", async () => {
  await using upstream = startEchoUpstream();
  await using gw = await startGateway(`routes:
  - name: stripped
    match: { path_prefix: /api }
    strip_prefix: true
    upstream: { url: ${upstream.url} }
    pipeline:
      - proxy: {}
  - name: kept
    match: { path_prefix: /keep }
    upstream: { url: ${upstream.url} }
    pipeline:
      - proxy: {}
`);
  const cases: [string, string, string][] = [
    ["/api/users/1?full=1", "/users/1", "?full=1"],
    ["/api", "/", ""],
    ["/api/", "/", ""],
    ["/api/api/x", "/api/x", ""],
    ["/keep/users/1?full=1", "/keep/users/1", "?full=1"],
    ["/keep", "/keep", ""],
  ];
  for (const [sent, path, search] of cases) {
    const echoed = await (await fetch(`${gw.url}${sent}`)).json();
    assert.equal(echoed.path, path, sent);
    assert.equal(echoed.search, search, sent);
  }
  // The prefix matches whole segments only.
  const other = await fetch(`${gw.url}/apis/x`);
  await assertProblem(other, 404);
});

// ---------------------------------------------------------------------------
// Headers

const HOP_BY_HOP = [
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "upgrade",
  "x-hop-named",
  "x-hop-other",
];

Deno.test("proxy: hop-by-hop request headers (and those named in Connection) do not reach the upstream", async () => {
  await using upstream = startRawUpstream(() =>
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
  );
  await using gw = await startGateway(proxyOnly(upstream.url));
  const payload = "hello upstream";
  const answer = await rawRequest(
    gw.gateway.addr.port,
    [
      "POST /hop HTTP/1.1",
      "Host: gateway.test",
      "Connection: keep-alive, X-Hop-Named, x-hop-other",
      "Keep-Alive: timeout=5, max=100",
      "Proxy-Connection: keep-alive",
      "Proxy-Authenticate: Basic realm=x",
      "Proxy-Authorization: Basic dXNlcjpwYXNz",
      "TE: trailers",
      "Trailer: X-Checksum",
      "Upgrade: example/1",
      "X-Hop-Named: secret-1",
      "X-Hop-Other: secret-2",
      "X-End-To-End: kept",
      "Authorization: Bearer end-to-end",
      "Transfer-Encoding: chunked",
      "",
      `${payload.length.toString(16)}\r\n${payload}\r\n0\r\n\r\n`,
    ].join("\r\n"),
  );
  assert.equal(statusOf(answer), 200);
  assert.equal(upstream.requests.length, 1);
  const received = upstream.requests[0]!;
  for (const name of HOP_BY_HOP) {
    assert.deepEqual(values(received, name), [], `the upstream got "${name}"`);
  }
  // The gateway frames the body itself: one Transfer-Encoding or Content-Length, never the client's.
  const framing = values(received, "transfer-encoding");
  assert.ok(framing.length <= 1 && (framing[0] ?? "chunked") === "chunked", String(framing));
  assert.equal(single(received, "x-end-to-end"), "kept");
  assert.equal(single(received, "authorization"), "Bearer end-to-end");
  assert.equal(decoder.decode(received.body), payload);
});

Deno.test("proxy: hop-by-hop response headers (and those named in Connection) do not reach the client", async () => {
  await using upstream = startRawUpstream(() =>
    [
      "HTTP/1.1 200 OK",
      "Connection: close, X-Hop-Named, x-hop-other",
      "Keep-Alive: timeout=5",
      "Proxy-Connection: keep-alive",
      "Proxy-Authenticate: Basic realm=upstream",
      "Proxy-Authorization: Basic eDp5",
      "TE: trailers",
      "Trailer: X-Checksum",
      "Upgrade: example/1",
      "X-Hop-Named: secret-1",
      "X-Hop-Other: secret-2",
      "X-End-To-End: kept",
      "Content-Type: text/plain",
      "Transfer-Encoding: chunked",
      "",
      "5\r\nhello\r\n7\r\n, world\r\n0\r\nX-Checksum: 1\r\n\r\n",
    ].join("\r\n")
  );
  await using gw = await startGateway(proxyOnly(upstream.url));
  // A keep-alive request, so the gateway's own server has no reason to send Connection.
  using client = await RawClient.open(gw.gateway.addr.port);
  await client.send("GET /hop HTTP/1.1\r\nHost: gateway.test\r\n\r\n");
  const answer = await client.response();
  assert.equal(statusOf(answer), 200);
  for (const name of HOP_BY_HOP) {
    assert.deepEqual(values(answer, name), [], `the client got "${name}"`);
  }
  const framing = values(answer, "transfer-encoding");
  assert.ok(framing.length <= 1 && (framing[0] ?? "chunked") === "chunked", String(framing));
  assert.equal(single(answer, "x-end-to-end"), "kept");
  assert.equal(decoder.decode(answer.body), "hello, world");
});

Deno.test("proxy: every Set-Cookie header of the upstream reaches the client", async () => {
  const cookies = [
    "session=abc; Path=/; HttpOnly",
    "theme=dark; Max-Age=3600",
    "lang=en, fr; Path=/docs",
    "expires=x; Expires=Wed, 21 Oct 2026 07:28:00 GMT",
  ];
  await using upstream = startUpstream(() => {
    const headers = new Headers();
    for (const cookie of cookies) headers.append("set-cookie", cookie);
    return new Response("ok", { headers });
  });
  await using gw = await startGateway(proxyOnly(upstream.url));
  const response = await fetch(`${gw.url}/login`);
  await response.body?.cancel();
  assert.deepEqual(response.headers.getSetCookie(), cookies);
  const wire = await rawRequest(
    gw.gateway.addr.port,
    "GET /login HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
  );
  assert.deepEqual(values(wire, "set-cookie"), cookies);
});

Deno.test("proxy: X-Forwarded-For is appended to; X-Forwarded-Proto and X-Forwarded-Host are set", async () => {
  await using upstream = startEchoUpstream();
  await using gw = await startGateway(proxyOnly(upstream.url));
  const headersSeen = async (headers: Record<string, string>) =>
    echoedHeaders(await (await fetch(`${gw.url}/xf`, { headers })).json());

  const plain = await headersSeen({});
  assert.equal(plain.get("x-forwarded-for"), "127.0.0.1");
  assert.equal(plain.get("x-forwarded-proto"), "http");
  assert.equal(plain.get("x-forwarded-host"), `127.0.0.1:${gw.gateway.addr.port}`);

  // The peer is not a trusted proxy: its X-Forwarded-For is still appended to
  // (trust only decides identity), its X-Forwarded-Proto/Host are replaced.
  const spoofed = await headersSeen({
    "x-forwarded-for": "203.0.113.7, 198.51.100.2",
    "x-forwarded-proto": "https",
    "x-forwarded-host": "evil.example",
  });
  assert.equal(spoofed.get("x-forwarded-for"), "203.0.113.7, 198.51.100.2, 127.0.0.1");
  assert.equal(spoofed.get("x-forwarded-proto"), "http");
  assert.equal(spoofed.get("x-forwarded-host"), `127.0.0.1:${gw.gateway.addr.port}`);
});

Deno.test("proxy: a trusted proxy's X-Forwarded-Proto and X-Forwarded-Host are kept", async () => {
  await using upstream = startEchoUpstream();
  await using gw = await startGateway(
    `trusted_proxies: [127.0.0.1/32]\n${proxyOnly(upstream.url)}`,
  );
  const echoed = await (await fetch(`${gw.url}/xf`, {
    headers: {
      "x-forwarded-for": "203.0.113.7",
      "x-forwarded-proto": "https",
      "x-forwarded-host": "shop.example",
    },
  })).json();
  const seen = echoedHeaders(echoed);
  assert.equal(seen.get("x-forwarded-for"), "203.0.113.7, 127.0.0.1");
  assert.equal(seen.get("x-forwarded-proto"), "https");
  assert.equal(seen.get("x-forwarded-host"), "shop.example");
});

Deno.test("proxy: an untrusted peer's proxy claims go no further: a scheme in its target, Forwarded, X-Real-IP", async () => {
  await using upstream = startEchoUpstream();
  await using gw = await startGateway(proxyOnly(upstream.url));
  const answer = await rawRequest(
    gw.gateway.addr.port,
    "GET https://public.example/xf HTTP/1.1\r\nHost: public.example\r\n" +
      "Forwarded: for=6.6.6.6;proto=https\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Port: 443\r\n" +
      "Connection: close\r\n\r\n",
  );
  assert.equal(statusOf(answer), 200);
  const seen = echoedHeaders(JSON.parse(decoder.decode(answer.body)));
  assert.equal(seen.get("x-forwarded-proto"), "http", "the listener speaks plain HTTP");
  assert.equal(seen.get("forwarded"), undefined);
  assert.equal(seen.get("x-real-ip"), undefined);
  assert.equal(seen.get("x-forwarded-port"), undefined);

  // From a trusted proxy they are what that proxy says, and go on.
  await using trusting = await startGateway(
    `trusted_proxies: [127.0.0.1/32]\n${proxyOnly(upstream.url)}`,
  );
  const echoed = await (await fetch(`${trusting.url}/xf`, {
    headers: { forwarded: "for=203.0.113.7", "x-real-ip": "203.0.113.7" },
  })).json();
  const kept = echoedHeaders(echoed);
  assert.equal(kept.get("forwarded"), "for=203.0.113.7");
  assert.equal(kept.get("x-real-ip"), "203.0.113.7");
});

Deno.test("proxy: Host is the upstream's host:port, or the client's with preserve_host: true", async () => {
  await using upstream = startEchoUpstream();
  await using gw = await startGateway(`routes:
  - name: preserved
    match: { path_prefix: /preserve }
    preserve_host: true
    upstream: { url: ${upstream.url} }
    pipeline:
      - proxy: {}
  - name: rewritten
    upstream: { url: ${upstream.url} }
    pipeline:
      - proxy: {}
`);
  const seen = async (path: string) => {
    const answer = await rawRequest(
      gw.gateway.addr.port,
      `GET ${path} HTTP/1.1\r\nHost: api.example.com:8443\r\nConnection: close\r\n\r\n`,
    );
    assert.equal(statusOf(answer), 200);
    return echoedHeaders(JSON.parse(decoder.decode(answer.body)));
  };
  const rewritten = await seen("/rewrite");
  assert.equal(rewritten.get("host"), `127.0.0.1:${upstream.port}`);
  assert.equal(rewritten.get("x-forwarded-host"), "api.example.com:8443");
  const preserved = await seen("/preserve/x");
  assert.equal(preserved.get("host"), "api.example.com:8443");
  assert.equal(preserved.get("x-forwarded-host"), "api.example.com:8443");

  // The same through fetch with a Host of our choosing.
  using client = Deno.createHttpClient({ allowHost: true });
  const response = await fetch(`${gw.url}/preserve/y`, {
    client,
    headers: { host: "other.example" },
  });
  assert.equal(echoedHeaders(await response.json()).get("host"), "other.example");
});

Deno.test("proxy: X-Request-Id is passed through when sent, made when not, and shown on the response", async () => {
  await using upstream = startEchoUpstream();
  await using gw = await startGateway(proxyOnly(upstream.url));

  const sent = await fetch(`${gw.url}/r`, { headers: { "x-request-id": "trace-abc-123" } });
  assert.equal(echoedHeaders(await sent.json()).get("x-request-id"), "trace-abc-123");
  assert.equal(sent.headers.get("x-request-id"), "trace-abc-123");

  const ids = new Set<string>();
  for (let i = 0; i < 3; i++) {
    const made = await fetch(`${gw.url}/r`);
    const upstreamId = echoedHeaders(await made.json()).get("x-request-id");
    assert.match(upstreamId ?? "", UUID_RE);
    assert.equal(made.headers.get("x-request-id"), upstreamId);
    ids.add(upstreamId!);
  }
  assert.equal(ids.size, 3);

  // An id that is not a short printable token is replaced, not passed on.
  for (const bad of ["x".repeat(500), "has space"]) {
    const replaced = await fetch(`${gw.url}/r`, { headers: { "x-request-id": bad } });
    const upstreamId = echoedHeaders(await replaced.json()).get("x-request-id");
    assert.match(upstreamId ?? "", UUID_RE);
    assert.equal(replaced.headers.get("x-request-id"), upstreamId);
  }
});

Deno.test("proxy: HEAD, 204 and 304 answers carry no body", async () => {
  await using upstream = startUpstream((request) => {
    const path = new URL(request.url).pathname;
    if (path === "/204") return new Response(null, { status: 204, headers: { "x-kind": "204" } });
    if (path === "/304") {
      return new Response(null, { status: 304, headers: { etag: '"v1"', "x-kind": "304" } });
    }
    return new Response("hello world", { headers: { etag: '"v1"', "x-kind": "page" } });
  });
  await using gw = await startGateway(proxyOnly(upstream.url));
  // One keep-alive connection: a stray body byte would corrupt the next answer.
  using client = await RawClient.open(gw.gateway.addr.port);
  const exchange = async (method: string, path: string, extra = "") => {
    await client.send(`${method} ${path} HTTP/1.1\r\nHost: a\r\n${extra}\r\n`);
    return await client.response(method);
  };
  const head = await exchange("HEAD", "/page");
  assert.equal(statusOf(head), 200);
  assert.equal(single(head, "x-kind"), "page");
  assert.equal(single(head, "content-length"), "11");
  const noContent = await exchange("GET", "/204");
  assert.equal(statusOf(noContent), 204);
  assert.equal(single(noContent, "x-kind"), "204");
  assert.equal(single(noContent, "content-length") ?? "0", "0");
  assert.equal(single(noContent, "transfer-encoding"), undefined);
  const notModified = await exchange("GET", "/304", 'If-None-Match: "v1"\r\n');
  assert.equal(statusOf(notModified), 304);
  assert.equal(single(notModified, "etag"), '"v1"');
  assert.equal(single(notModified, "transfer-encoding"), undefined);
  const page = await exchange("GET", "/page");
  assert.equal(statusOf(page), 200);
  assert.equal(decoder.decode(page.body), "hello world");

  const viaFetch = await fetch(`${gw.url}/page`, { method: "HEAD" });
  assert.equal(viaFetch.status, 200);
  assert.equal(await viaFetch.text(), "");
});

// ---------------------------------------------------------------------------
// Upstream failures and timeouts

Deno.test("proxy: an upstream that refuses the connection answers 502 problem+json", async () => {
  await using gw = await startGateway(proxyOnly(`http://127.0.0.1:${freePort()}`));
  const response = await fetch(`${gw.url}/down`, { method: "POST", body: "lost" });
  const body = await assertProblem(response, 502);
  assert.match(response.headers.get("x-request-id") ?? "", UUID_RE);
  assert.notEqual(body.type, "about:blank");
});

Deno.test("proxy: an upstream slower than upstream.timeout to send headers answers 504 and is aborted", async () => {
  let started = 0;
  let abandoned = 0;
  await using upstream = startUpstream(async (request) => {
    started++;
    // The upstream answers after 5 s (25 times the timeout) unless the gateway gives up first.
    if (await within(aborted(request.signal), 5_000)) abandoned++;
    return new Response("too late");
  });
  await using gw = await startGateway(proxyOnly(upstream.url, "200ms"));
  const response = await fetch(`${gw.url}/slow`);
  const body = await assertProblem(response, 504);
  assert.match(String(body.detail), /200 ms/);
  assert.equal(started, 1);
  // The gateway gave up on the upstream request rather than leaving it running.
  assert.ok(await waitFor(() => abandoned === 1), "the upstream request was not aborted");
});

Deno.test("proxy: a slow body after fast headers is not cut by upstream.timeout", async () => {
  const parts = ["one ", "two ", "three ", "four"];
  await using upstream = startUpstream(() => {
    let index = 0;
    return new Response(
      new ReadableStream<Uint8Array>({
        async pull(controller) {
          // Each pause is most of the 200 ms timeout; together they are well past it.
          if (index > 0) await delay(150);
          if (index === parts.length) return controller.close();
          controller.enqueue(encoder.encode(parts[index++]));
        },
      }),
      { headers: { "content-type": "text/plain" } },
    );
  });
  await using gw = await startGateway(
    proxyOnly(upstream.url, "200ms"),
  );
  const response = await fetch(`${gw.url}/trickle`);
  assert.equal(response.status, 200);
  assert.equal(await response.text(), parts.join(""));
});

// ---------------------------------------------------------------------------
// Clients that hang up

Deno.test("proxy: a client that hangs up before the answer aborts the upstream request", async () => {
  const release = Promise.withResolvers<void>();
  let started = 0;
  let abandoned = 0;
  await using upstream = startUpstream(async (request) => {
    started++;
    await Promise.race([release.promise, aborted(request.signal)]);
    if (request.signal.aborted) abandoned++;
    return new Response("nobody is listening");
  });
  try {
    await using gw = await startGateway(proxyOnly(upstream.url));
    using client = await RawClient.open(gw.gateway.addr.port);
    await client.send("GET /wait HTTP/1.1\r\nHost: a\r\n\r\n");
    assert.ok(await waitFor(() => started === 1), "the request never reached the upstream");
    client.close();
    assert.ok(await waitFor(() => abandoned === 1), "the upstream request was not aborted");
  } finally {
    release.resolve();
  }
});

Deno.test("proxy: a client that hangs up during the download cancels the upstream's body", async () => {
  let cancelled = false;
  await using upstream = startUpstream(() =>
    new Response(
      new ReadableStream<Uint8Array>({
        pull(controller) {
          controller.enqueue(new Uint8Array(16 * 1024).fill(120));
        },
        cancel() {
          cancelled = true;
        },
      }),
    )
  );
  await using gw = await startGateway(proxyOnly(upstream.url));
  const controller = new AbortController();
  const response = await fetch(`${gw.url}/endless`, { signal: controller.signal });
  const reader = response.body!.getReader();
  const first = await reader.read();
  assert.ok(first.value && first.value.length > 0);
  controller.abort();
  await reader.closed.catch(() => {});
  assert.ok(await waitFor(() => cancelled), "the upstream's body stream was not cancelled");
});

Deno.test("proxy: a client that hangs up during the upload ends the upstream's body in an error, not a short body", async () => {
  let received = 0;
  let outcome: "error" | "complete" | undefined;
  await using upstream = startUpstream(async (request) => {
    try {
      for await (const chunk of request.body!) received += chunk.length;
      outcome = "complete";
    } catch {
      outcome = "error";
    }
    return new Response("done");
  });
  await using gw = await startGateway(proxyOnly(upstream.url));
  for (const framing of ["Content-Length: 10000000", "Transfer-Encoding: chunked"]) {
    received = 0;
    outcome = undefined;
    using client = await RawClient.open(gw.gateway.addr.port);
    await client.send(`POST /upload HTTP/1.1\r\nHost: a\r\n${framing}\r\n\r\n`);
    const part = new Uint8Array(64 * 1024).fill(97);
    if (framing.startsWith("Transfer")) {
      await client.send(concat([encoder.encode("10000\r\n"), part, encoder.encode("\r\n")]));
    } else {
      await client.send(part);
    }
    assert.ok(await waitFor(() => received > 0), `${framing}: nothing reached the upstream`);
    client.close();
    assert.ok(await waitFor(() => outcome !== undefined), `${framing}: the upload never ended`);
    assert.equal(outcome, "error", `${framing}: the upstream took a cut-off upload as complete`);
  }
});

Deno.test("proxy: a client that stalls its upload gets 408, and stalled uploads do not open the upstream's circuit breaker", async () => {
  await using upstream = startEchoUpstream();
  await using gw = await startGateway(`routes:
  - name: api
    upstream: { url: ${upstream.url}, timeout: 300ms }
    pipeline:
      - circuit-breaker: { failure_ratio: 0.5, min_requests: 2, window: 10s, open_for: 30s }
      - proxy: {}
`);
  const stall = async () => {
    using client = await RawClient.open(gw.gateway.addr.port);
    // Ten bytes of the thousand announced, then nothing.
    await client.send("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n0123456789");
    return await client.response("POST");
  };
  const stalled = await Promise.all([stall(), stall(), stall(), stall()]);
  for (const answer of stalled) {
    assert.equal(statusOf(answer), 408);
    assert.equal(single(answer, "content-type"), "application/problem+json");
    const body = JSON.parse(decoder.decode(answer.body));
    assert.equal(body.type, "urn:sluice:problem:request-timeout");
    assert.match(body.detail, /300 ms/);
  }
  // The upstream did nothing wrong: the breaker is still closed for everyone else.
  const response = await fetch(`${gw.url}/after`, { method: "POST", body: "whole" });
  assert.equal(response.status, 200);
  assert.equal((await response.json()).body, "whole");
});

Deno.test("proxy: an upload the upstream stops reading is the upstream's delay: 504", async () => {
  // Accepts, never reads: the gateway is left writing the body into full buffers.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of listener) held.push(conn);
  })();
  try {
    const { port } = listener.addr as Deno.NetAddr;
    await using gw = await startGateway(proxyOnly(`http://127.0.0.1:${port}`, "300ms"));
    using client = await RawClient.open(gw.gateway.addr.port);
    // More than the socket buffers on the way hold.
    const size = 64 * MIB;
    await client.send(`POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: ${size}\r\n\r\n`);
    // Written in the background: it blocks once every buffer on the way is full.
    const sending = client.send(new Uint8Array(size)).catch(() => {});
    const answer = await client.response("POST");
    assert.equal(statusOf(answer), 504);
    client.close();
    await sending;
  } finally {
    listener.close();
    for (const conn of held) conn.close();
    await accepting.catch(() => {});
  }
});

// ---------------------------------------------------------------------------
// Streaming, connection reuse, encodings

const MIB = 1024 * 1024;
const TOTAL = 64 * MIB;
const CHUNK = 64 * 1024;
const PERIOD = 251; // prime, so chunk boundaries never line up with the pattern

/** `length` bytes of the pattern starting at stream offset `offset`. */
function patternChunk(offset: number, length: number): Uint8Array {
  const chunk = new Uint8Array(length);
  let value = offset % PERIOD;
  for (let i = 0; i < length; i++) {
    chunk[i] = value;
    if (++value === PERIOD) value = 0;
  }
  return chunk;
}

/** Counts bytes and checks each is the pattern's byte at its offset. */
class PatternCheck {
  bytes = 0;
  firstBad = -1;
  #next = 0;
  push(chunk: Uint8Array): void {
    let next = this.#next;
    for (let i = 0; i < chunk.length; i++) {
      if (chunk[i] !== next && this.firstBad < 0) this.firstBad = this.bytes + i;
      if (++next === PERIOD) next = 0;
    }
    this.#next = next;
    this.bytes += chunk.length;
  }
}

/** A 64 MiB pattern stream that pauses after its first chunk until `resume` resolves. */
function patternStream(resume: Promise<unknown>, onStall: () => void): ReadableStream<Uint8Array> {
  let offset = 0;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (offset === CHUNK && !await within(resume, 10_000)) {
        onStall();
        controller.error(new Error("The other side saw nothing of the first chunk"));
        return;
      }
      if (offset >= TOTAL) return controller.close();
      controller.enqueue(patternChunk(offset, CHUNK));
      offset += CHUNK;
    },
  });
}

Deno.test("proxy: a 64 MiB upload is streamed to the upstream, not buffered, every byte intact", async () => {
  const firstBytes = Promise.withResolvers<void>();
  await using upstream = startUpstream(async (request) => {
    const check = new PatternCheck();
    for await (const chunk of request.body!) {
      check.push(chunk);
      firstBytes.resolve();
    }
    return Response.json({ bytes: check.bytes, firstBad: check.firstBad });
  });
  await using gw = await startGateway(proxyOnly(upstream.url));
  let stalled = false;
  // The client holds back all but the first chunk until the upstream has seen
  // bytes: a gateway that buffers the whole upload would never let it.
  const response = await fetch(`${gw.url}/upload`, {
    method: "POST",
    body: patternStream(firstBytes.promise, () => stalled = true),
  }).catch((error) => error as Error);
  assert.equal(stalled, false, "the upstream saw no bytes before the client finished: buffered");
  assert.ok(response instanceof Response, String(response));
  assert.deepEqual(await response.json(), { bytes: TOTAL, firstBad: -1 });
});

Deno.test("proxy: an upload through a pool of targets is streamed too, not kept for a retry", async () => {
  const received: number[] = [];
  const serve = () =>
    startUpstream(async (request) => {
      let bytes = 0;
      for await (const chunk of request.body!) bytes += chunk.length;
      received.push(bytes);
      return new Response(String(bytes));
    });
  await using a = serve();
  await using b = serve();
  await using gw = await startGateway(`routes:
  - name: pool
    upstream: { targets: [${a.url}, ${b.url}] }
    pipeline:
      - proxy: {}
`);
  const chunk = new Uint8Array(1 << 20).fill(7);
  const total = 160;
  let sent = 0;
  const base = Deno.memoryUsage().rss;
  let peak = base;
  const upload = new ReadableStream<Uint8Array>({
    pull(controller) {
      peak = Math.max(peak, Deno.memoryUsage().rss);
      if (sent++ === total) controller.close();
      else controller.enqueue(chunk.slice());
    },
  });
  const response = await fetch(`${gw.url}/put`, { method: "PUT", body: upload });
  assert.equal(await response.text(), String(total << 20));
  const grew = (peak - base) / (1 << 20);
  // A copy kept for a second try would hold all 160 MiB by the end.
  assert.ok(grew < 80, `the gateway's memory grew by ${grew.toFixed(0)} MiB for a 160 MiB upload`);
});

Deno.test("proxy: a 64 MiB download is streamed to the client, not buffered, every byte intact", async () => {
  const clientGotBytes = Promise.withResolvers<void>();
  let stalled = false;
  await using upstream = startUpstream(() =>
    new Response(patternStream(clientGotBytes.promise, () => stalled = true), {
      headers: { "content-type": "application/octet-stream" },
    })
  );
  await using gw = await startGateway(proxyOnly(upstream.url));
  const response = await fetch(`${gw.url}/download`);
  assert.equal(response.status, 200);
  const check = new PatternCheck();
  let failure: unknown;
  try {
    for await (const chunk of response.body!) {
      check.push(chunk);
      clientGotBytes.resolve();
    }
  } catch (error) {
    failure = error;
  }
  assert.equal(stalled, false, "the client saw no bytes before the upstream finished: buffered");
  assert.equal(failure, undefined);
  assert.equal(check.bytes, TOTAL);
  assert.equal(check.firstBad, -1);
});

Deno.test("proxy: upstream connections are kept alive and reused", async () => {
  const ports = new Set<number>();
  await using upstream = startUpstream((_request, info) => {
    ports.add(info.remoteAddr.port);
    return new Response("ok");
  });
  await using gw = await startGateway(proxyOnly(upstream.url));
  for (let i = 0; i < 20; i++) {
    const response = await fetch(`${gw.url}/n/${i}`, i % 2 ? { method: "POST", body: "x" } : {});
    assert.equal(await response.text(), "ok");
  }
  assert.ok(ports.size <= 3, `20 sequential requests used ${ports.size} upstream connections`);
});

Deno.test("proxy: after the upstream restarts, the next requests reach it (a POST first), not 502", async () => {
  const port = freePort();
  const serve = (generation: string, wait: number) =>
    Deno.serve({ port, hostname: "127.0.0.1", onListen() {} }, async (request) => {
      await request.body?.cancel();
      await delay(wait);
      return new Response(generation);
    });
  const first = serve("first", 30);
  await using gw = await startGateway(proxyOnly(`http://127.0.0.1:${port}`));
  // Concurrent requests leave several kept-alive connections in the gateway's pool.
  const answers = await Promise.all(
    Array.from({ length: 20 }, () => fetch(`${gw.url}/warm`).then((r) => r.text())),
  );
  assert.deepEqual(new Set(answers), new Set(["first"]));
  await first.shutdown();
  const second = serve("second", 0);
  try {
    await delay(100);
    const post = await fetch(`${gw.url}/after`, { method: "POST", body: "payload" });
    assert.equal(post.status, 200);
    assert.equal(await post.text(), "second");
    for (let i = 0; i < 25; i++) {
      const response = await fetch(`${gw.url}/after/${i}`);
      assert.equal(response.status, 200, `request ${i} after the restart`);
      assert.equal(await response.text(), "second");
    }
  } finally {
    await second.shutdown();
  }
});

Deno.test("proxy: an HTTP/1.0 answer without keep-alive ends its connection: the next request takes a new one", async () => {
  // An HTTP/1.0 upstream answers one request per connection; this one then
  // leaves the socket open and reads nothing more.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of listener) {
      conns.push(conn);
      const buffer = new Uint8Array(4096);
      let seen = "";
      while (!seen.includes("\r\n\r\n")) {
        const n = await conn.read(buffer).catch(() => null);
        if (n === null) break;
        seen += decoder.decode(buffer.subarray(0, n));
      }
      await conn.write(encoder.encode("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        .catch(() => {});
    }
  })();
  try {
    const { port } = listener.addr as Deno.NetAddr;
    await using gw = await startGateway(proxyOnly(`http://127.0.0.1:${port}`, "2s"));
    for (let i = 0; i < 3; i++) {
      const response = await fetch(`${gw.url}/one/${i}`);
      assert.equal(response.status, 200, `request ${i}`);
      assert.equal(await response.text(), "ok");
    }
    assert.equal(conns.length, 3, "one connection per HTTP/1.0 answer");
  } finally {
    listener.close();
    for (const conn of conns) conn.close();
    await accepting.catch(() => {});
  }
});

Deno.test("proxy: a connection whose upload is still going is not reused, even after an early answer", async () => {
  // Like nginx answering 401 before reading an upload: the upstream answers
  // the POST at its head, keeps the connection, and answers GET /other too.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const received: string[] = [];
  const conns: Deno.Conn[] = [];
  let postAnswered = false;
  const serve = async (conn: Deno.Conn, index: number) => {
    const buffer = new Uint8Array(65536);
    let answeredPost = false;
    let answeredGet = false;
    for (;;) {
      const n = await conn.read(buffer).catch(() => null);
      if (n === null) return;
      received[index] += decoder.decode(buffer.subarray(0, n));
      const text = received[index]!;
      if (!answeredPost && /^POST \/upload [^]*?\r\n\r\n/.test(text)) {
        answeredPost = true;
        await conn.write(
          encoder.encode("HTTP/1.1 401 Unauthorized\r\ncontent-length: 4\r\n\r\nnope"),
        );
        postAnswered = true;
      }
      if (!answeredGet && /GET \/other [^]*?\r\n\r\n/.test(text)) {
        answeredGet = true;
        await conn.write(encoder.encode("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nother"));
      }
    }
  };
  const accepting = (async () => {
    for await (const conn of listener) {
      conns.push(conn);
      received.push("");
      serve(conn, received.length - 1);
    }
  })();
  try {
    const { port } = listener.addr as Deno.NetAddr;
    await using gw = await startGateway(proxyOnly(`http://127.0.0.1:${port}`, "2s"));
    // A slow upload: its first part, then the rest once the other request went.
    let finish!: () => void;
    const upload = new ReadableStream<Uint8Array>({
      async start(controller) {
        controller.enqueue(encoder.encode("first part;"));
        await new Promise<void>((resolve) => finish = resolve);
        controller.enqueue(encoder.encode("GET /smuggled HTTP/1.1\r\n\r\n"));
        controller.close();
      },
    });
    const post = fetch(`${gw.url}/upload`, { method: "POST", body: upload });
    assert.ok(await waitFor(() => postAnswered, 2_000), "the upstream answered the POST early");
    await delay(50);
    const other = await fetch(`${gw.url}/other`);
    assert.equal(other.status, 200);
    assert.equal(await other.text(), "other");
    finish();
    const answer = await post;
    assert.equal(answer.status, 401);
    await answer.body?.cancel();
    for (const text of received) {
      assert.ok(
        !(text.includes("POST /upload") && text.includes("GET /other")),
        `one connection carried both requests, the second inside the first's body:\n${text}`,
      );
    }
  } finally {
    listener.close();
    for (const conn of conns) conn.close();
    await accepting.catch(() => {});
  }
});

Deno.test("proxy: the upstream's body framing is read as RFC 9112 says (lengths, codings, folded lines)", async () => {
  const cases: {
    name: string;
    response: string;
    status: number;
    body?: string;
    header?: [string, string];
  }[] = [
    {
      name: "one length, repeated",
      response: "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello",
      status: 200,
      body: "hello",
    },
    {
      name: "two length fields with one value",
      response: "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
      status: 200,
      body: "hello",
    },
    {
      name: "two different lengths",
      response: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 5\r\n\r\nhello",
      status: 502,
    },
    {
      name: "a length that is not a number",
      response: "HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\nhello",
      status: 502,
    },
    {
      name: "chunked, with a Content-Length beside it",
      response:
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\na\r\n0123456789\r\n0\r\n\r\n",
      status: 200,
      body: "0123456789",
    },
    {
      name: "a 101 nobody asked for (the gateway never forwards Upgrade)",
      response:
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
      status: 502,
    },
    {
      name: "a folded header line",
      response: "HTTP/1.1 200 OK\r\nx-long: first\r\n  second\r\ncontent-length: 2\r\n\r\nok",
      status: 200,
      body: "ok",
      header: ["x-long", "first second"],
    },
  ];
  await using upstream = startRawUpstream((request) =>
    cases[Number(request.start.split(" ")[1]!.slice(1))]!.response
  );
  await using gw = await startGateway(proxyOnly(upstream.url));
  for (const [index, c] of cases.entries()) {
    const answer = await rawRequest(
      gw.gateway.addr.port,
      `GET /${index} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n`,
    );
    assert.equal(statusOf(answer), c.status, c.name);
    if (c.body === undefined) continue;
    assert.equal(decoder.decode(answer.body), c.body, c.name);
    const length = single(answer, "content-length");
    assert.ok(length === undefined || Number(length) === c.body.length, `${c.name}: ${length}`);
    if (c.header) assert.equal(single(answer, c.header[0]), c.header[1], c.name);
  }
});

Deno.test("proxy: an upstream answer that is not valid HTTP/1.1 is a 502 of its own type, not an unreachable upstream", async () => {
  const cases: { name: string; response: string }[] = [
    {
      name: "two different lengths",
      response: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 5\r\n\r\nhello",
    },
    { name: "a status of two digits", response: "HTTP/1.1 20 OK\r\ncontent-length: 2\r\n\r\nok" },
    { name: "a status above 599", response: "HTTP/1.1 999 Odd\r\ncontent-length: 2\r\n\r\nok" },
    { name: "a status below 100", response: "HTTP/1.1 099 Odd\r\ncontent-length: 2\r\n\r\nok" },
    {
      name: "a field name with a space",
      response: "HTTP/1.1 200 OK\r\nx bad: v\r\ncontent-length: 2\r\n\r\nok",
    },
    {
      name: "a 101 nobody asked for",
      response:
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
    },
    {
      // The gateway drops Transfer-Encoding: the client would get gzip bytes as the content.
      name: "a body in gzip, chunked",
      response: "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    },
    {
      name: "a body in gzip to the close",
      response: "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nabc",
    },
  ];
  await using upstream = startRawUpstream((request) =>
    cases[Number(request.start.split(" ")[1]!.slice(1))]!.response
  );
  await using gw = await startGateway(proxyOnly(upstream.url));
  for (const [index, c] of cases.entries()) {
    const response = await fetch(`${gw.url}/${index}`);
    const body = await assertProblem(response, 502);
    assert.equal(body.type, "urn:sluice:problem:upstream-invalid-response", c.name);
    assert.equal(body.title, "Bad Gateway", c.name);
    assert.equal(body.detail, "The upstream's answer was not valid HTTP/1.1", c.name);
  }
});

Deno.test("proxy: a request in a transfer coding other than chunked answers 501 and reaches no upstream", async () => {
  await using upstream = startRawUpstream(() => "HTTP/1.1 204 No Content\r\n\r\n");
  await using gw = await startGateway(proxyOnly(upstream.url));
  // Deno's server undoes the chunked coding only: the body it hands on is still gzip.
  const answer = await rawRequest(
    gw.gateway.addr.port,
    "POST /coded HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "POST",
  );
  assert.equal(statusOf(answer), 501);
  assert.equal(single(answer, "content-type"), "application/problem+json");
  assert.match(JSON.parse(decoder.decode(answer.body)).detail, /gzip, chunked/);
  assert.equal(upstream.requests.length, 0);
  // Chunked alone goes on.
  const plain = await rawRequest(
    gw.gateway.addr.port,
    "POST /plain HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "POST",
  );
  assert.equal(statusOf(plain), 204);
  assert.equal(decoder.decode(upstream.requests[0]!.body), "abc");
});

Deno.test("proxy: header values keep their bytes both ways (UTF-8 and obs-text are not re-encoded)", async () => {
  const filename = 'attachment; filename="日本 café.pdf"';
  await using upstream = startRawUpstream(() =>
    `HTTP/1.1 200 OK\r\ncontent-disposition: ${filename}\r\ncontent-length: 2\r\n\r\nok`
  );
  await using gw = await startGateway(proxyOnly(upstream.url));
  const answer = await rawRequest(
    gw.gateway.addr.port,
    `GET / HTTP/1.1\r\nHost: a\r\nx-name: café 日本\r\nConnection: close\r\n\r\n`,
  );
  assert.equal(statusOf(answer), 200);
  assert.equal(single(answer, "content-disposition"), filename);
  assert.equal(single(upstream.requests[0]!, "x-name"), "café 日本");
});

Deno.test("proxy: a POST without a body reaches the upstream with Content-Length: 0, not chunked", async () => {
  await using upstream = startRawUpstream(() => "HTTP/1.1 204 No Content\r\n\r\n");
  await using gw = await startGateway(proxyOnly(upstream.url));
  const answer = await rawRequest(
    gw.gateway.addr.port,
    "POST /empty HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
  );
  assert.equal(statusOf(answer), 204);
  const request = upstream.requests[0]!;
  assert.equal(single(request, "transfer-encoding"), undefined);
  assert.equal(single(request, "content-length"), "0");
  assert.equal(request.body.length, 0);
});

Deno.test("proxy: a POST is not sent twice when its kept-alive connection fails", async () => {
  // Answers the first request and keeps the connection; reads the second and hangs up.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const starts: string[] = [];
  const conns: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of listener) {
      conns.push(conn);
      (async () => {
        const reader = new WireReader(conn);
        for (let n = 0;; n++) {
          const head = await reader.head().catch(() => undefined);
          if (!head) return;
          starts.push(head.start);
          if (n > 0) return conns.splice(conns.indexOf(conn), 1)[0]!.close();
          await conn.write(encoder.encode("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
        }
      })();
    }
  })();
  try {
    const { port } = listener.addr as Deno.NetAddr;
    await using gw = await startGateway(proxyOnly(`http://127.0.0.1:${port}`));
    const first = await fetch(`${gw.url}/first`);
    assert.equal(await first.text(), "ok");
    // Without Content-Length: a request with no body at all.
    const charge = await rawRequest(
      gw.gateway.addr.port,
      "POST /charge HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert.equal(statusOf(charge), 502);
    assert.deepEqual(starts, ["GET /first HTTP/1.1", "POST /charge HTTP/1.1"]);
  } finally {
    listener.close();
    for (const conn of conns) conn.close();
    await accepting.catch(() => {});
  }
});

Deno.test({
  name: "proxy: upstream.timeout also bounds the connect (an upstream whose accept queue is full)",
  // python3 makes a listener with a full accept queue, where a connect hangs; Deno cannot.
  ignore: !hasPython(),
  async fn() {
    await using full = await startFullListener();
    await using gw = await startGateway(proxyOnly(`http://127.0.0.1:${full.port}`, "300ms"));
    const started = Date.now();
    const response = await fetch(`${gw.url}/slow-connect`);
    await response.body?.cancel();
    assert.equal(response.status, 504);
    assert.ok(Date.now() - started < 2_000, `answered after ${Date.now() - started} ms`);
  },
});

/** A listener whose accept queue is full (python3), where a connect hangs in SYN-SENT. */
async function startFullListener(): Promise<{ port: number } & AsyncDisposable> {
  const script = `import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(0)
fill = []
for _ in range(3):
    c = socket.socket(); c.setblocking(False)
    try: c.connect(s.getsockname())
    except BlockingIOError: pass
    fill.append(c)
print(s.getsockname()[1], flush=True)
time.sleep(60)`;
  const python = new Deno.Command("python3", { args: ["-c", script], stdout: "piped" }).spawn();
  const line = await python.stdout.pipeThrough(new TextDecoderStream()).getReader().read();
  return {
    port: Number(line.value?.trim()),
    async [Symbol.asyncDispose]() {
      python.kill();
      await python.status;
    },
  };
}

/**
 * Sockets on this machine still connecting (SYN-SENT) to 127.0.0.1:`port`, from
 * /proc/net/tcp (read by `cat`: Deno lets only --allow-all read it directly).
 */
function connectingTo(port: number): number {
  const remote = `0100007F:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  const table = new Deno.Command("cat", { args: ["/proc/net/tcp"], stdout: "piped" }).outputSync();
  let count = 0;
  for (const line of new TextDecoder().decode(table.stdout).split("\n").slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (fields[2] === remote && fields[3] === "02") count++;
  }
  return count;
}

Deno.test({
  name:
    "proxy: a connect given up at upstream.timeout frees its socket at once, so an upstream that drops SYNs cannot exhaust the gateway's file descriptors",
  ignore: !hasPython() || Deno.build.os !== "linux",
  async fn() {
    await using full = await startFullListener();
    await using gw = await startGateway(proxyOnly(`http://127.0.0.1:${full.port}`, "200ms"));
    const ask = async () => {
      const response = await fetch(`${gw.url}/slow-connect`);
      await response.body?.cancel();
      return response.status;
    };
    assert.equal(await ask(), 504);
    // The listener's own fillers are still connecting too.
    const before = connectingTo(full.port);
    for (let i = 0; i < 8; i++) assert.equal(await ask(), 504);
    // Each connect left hanging would hold a socket (a descriptor) in SYN-SENT for about two minutes.
    assert.ok(
      await waitFor(() => connectingTo(full.port) <= before, 2_000),
      `${
        connectingTo(full.port) - before
      } more sockets still connecting after eight timed-out connects`,
    );
  },
});

function hasPython(): boolean {
  try {
    return new Deno.Command("python3", { args: ["-c", ""] }).outputSync().success;
  } catch {
    return false;
  }
}

Deno.test("proxy: a 205 carries the gateway's headers, and an upstream path outside ASCII goes percent-encoded", async () => {
  const seen: string[] = [];
  await using upstream = startUpstream((request) => {
    seen.push(request.url.slice(request.url.indexOf("/", "http://".length)));
    return new Response(null, { status: 205 });
  });
  await using gw = await startGateway(proxyOnly(`${upstream.url}/v1/日本`));
  const response = await fetch(`${gw.url}/x`, { headers: { "x-request-id": "req-205" } });
  await response.body?.cancel();
  assert.equal(response.status, 205);
  assert.equal(response.headers.get("x-request-id"), "req-205");
  assert.deepEqual(seen, ["/v1/%E6%97%A5%E6%9C%AC/x"]);
});

Deno.test("proxy: a gzip response reaches the client byte for byte with its Content-Encoding", async () => {
  const text = "sluice keeps the upstream's bytes. ".repeat(2_000);
  const gzipped = new Uint8Array(
    await new Response(
      new Blob([text]).stream().pipeThrough(new CompressionStream("gzip")),
    ).arrayBuffer(),
  );
  await using upstream = startUpstream(() =>
    new Response(gzipped, {
      headers: {
        "content-encoding": "gzip",
        "content-type": "text/plain",
        vary: "accept-encoding",
      },
    })
  );
  await using gw = await startGateway(proxyOnly(upstream.url));
  for (const acceptEncoding of ["gzip, deflate, br", "gzip", undefined]) {
    const answer = await rawRequest(
      gw.gateway.addr.port,
      `GET /compressed HTTP/1.1\r\nHost: a\r\n${
        acceptEncoding ? `Accept-Encoding: ${acceptEncoding}\r\n` : ""
      }Connection: close\r\n\r\n`,
    );
    assert.equal(statusOf(answer), 200);
    assert.equal(single(answer, "content-encoding"), "gzip", String(acceptEncoding));
    assert.deepEqual(answer.body, gzipped, `bytes differ with Accept-Encoding ${acceptEncoding}`);
  }
  // An ordinary client (which asks for gzip and decodes it) reads the text.
  const response = await fetch(`${gw.url}/compressed`);
  assert.equal(response.headers.get("content-encoding"), "gzip");
  assert.equal(await response.text(), text);
});

Deno.test("proxy: the client's Accept-Encoding reaches the upstream as sent, and no header is added", async () => {
  await using upstream = startEchoUpstream();
  await using gw = await startGateway(`routes:
  - name: api
    upstream: { url: ${upstream.url} }
    pipeline:
      - proxy: {}
`);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: gw.gateway.addr.port });
  await conn.write(
    new TextEncoder().encode(
      "GET /x HTTP/1.1\r\nHost: gw.test\r\nAccept-Encoding: br, gzip\r\nConnection: close\r\n\r\n",
    ),
  );
  let text = "";
  const buffer = new Uint8Array(65536);
  for (;;) {
    const n = await conn.read(buffer);
    if (n === null) break;
    text += new TextDecoder().decode(buffer.subarray(0, n));
  }
  conn.close();
  const echoed = JSON.parse(text.slice(text.indexOf("\r\n\r\n") + 4));
  const names = (echoed.headers as [string, string][]).map(([name]) => name).sort();
  const headers = new Map(echoed.headers as [string, string][]);
  assert.equal(headers.get("accept-encoding"), "br, gzip");
  assert.deepEqual(names, [
    "accept-encoding",
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-request-id",
  ]);
});

Deno.test("proxy: a GET or HEAD sent with a Content-Length goes on without it: the pooled upstream connection stays in step", async () => {
  const seen: string[] = [];
  await using upstream = startUpstream((request) => {
    const path = new URL(request.url).pathname;
    seen.push(`${request.method} ${path} cl=${request.headers.get("content-length")}`);
    return new Response(`${request.method} ${path}`);
  });
  await using gw = await startGateway(proxyOnly(upstream.url));
  const port = gw.gateway.addr.port;
  for (const method of ["GET", "HEAD"]) {
    seen.length = 0;
    // The body the client sends is read by the gateway's server and goes no further; a
    // Content-Length forwarded without it would leave the upstream waiting for bytes, and
    // the next request on that connection would be read as this one's body.
    const first = await rawRequest(
      port,
      `${method} /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello`,
      method,
    );
    assert.equal(statusOf(first), 200, method);
    const second = await fetch(`${gw.url}/b`, { headers: { "x-pad": "GET /smuggled HTTP/1.1" } });
    assert.equal(await second.text(), "GET /b", method);
    assert.deepEqual(seen, [`${method} /a cl=null`, "GET /b cl=null"], method);
  }
});

Deno.test("proxy: control characters in an upstream's header values reach the client as spaces, and the gateway lives on", async () => {
  await using upstream = startRawUpstream(() =>
    "HTTP/1.1 200 OK\r\nX-Odd: a\x01b\x7fc\x1fd\r\nX-Tab: a\tb\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
  );
  await using gw = await startGateway(proxyOnly(upstream.url));
  const answer = await rawRequest(
    gw.gateway.addr.port,
    "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
  );
  assert.equal(statusOf(answer), 200);
  assert.equal(single(answer, "x-odd"), "a b c d");
  assert.equal(single(answer, "x-tab"), "a\tb");
  assert.equal(decoder.decode(answer.body), "ok");
  const health = await fetch(`${gw.adminUrl}/health`);
  assert.equal(health.status, 200);
  await health.body?.cancel();
});

Deno.test("proxy: a Host header that holds a path, query or fragment is a 400: it cannot change the path routed and forwarded", async () => {
  const seen: string[] = [];
  await using upstream = startUpstream((request) => {
    seen.push(new URL(request.url).pathname);
    return new Response("ok");
  });
  await using gw = await startGateway(proxyOnly(upstream.url));
  const port = gw.gateway.addr.port;
  const send = (host: string) =>
    rawRequest(port, `GET /public HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
  for (const host of ["g/admin?", "g\\admin?", "g/admin#", "api.example.com:1/admin?", "a@b"]) {
    const answer = await send(host);
    assert.equal(statusOf(answer), 400, host);
    assert.equal(single(answer, "content-type"), "application/problem+json", host);
  }
  assert.deepEqual(seen, []);
  // An empty Host is allowed (RFC 9112, 3.2).
  const good = ["example.com", "localhost:8080", "[::1]:80", "127.0.0.1", "a-b.example.", ""];
  for (const host of good) assert.equal(statusOf(await send(host)), 200, host);
  assert.deepEqual(seen, good.map(() => "/public"));
});

Deno.test("proxy: a Content-Length the client repeated goes upstream once", async () => {
  await using upstream = startUpstream(async (request) =>
    new Response(`${request.headers.get("content-length")} ${await request.text()}`)
  );
  await using gw = await startGateway(proxyOnly(upstream.url));
  const answer = await rawRequest(
    gw.gateway.addr.port,
    "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
  );
  assert.equal(statusOf(answer), 200);
  assert.equal(decoder.decode(answer.body), "5 hello");
});

Deno.test("proxy: after a 204 that announces a body, the upstream connection is not reused, so late bytes reach no other client", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  let connections = 0;
  const serving = (async () => {
    for await (const conn of listener) {
      conns.push(conn);
      connections++;
      (async () => {
        const buffer = new Uint8Array(4096);
        let count = 0;
        try {
          while (await conn.read(buffer) !== null) {
            count++;
            if (count === 1 && connections === 1) {
              // A 204 that says it has 5 bytes, and a forged answer sent a little later.
              await conn.write(
                encoder.encode("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
              );
              await delay(150);
              await conn.write(
                encoder.encode("HTTP/1.1 200 OK\r\nX-Poison: 1\r\nContent-Length: 6\r\n\r\nforged"),
              );
            } else {
              await conn.write(encoder.encode("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal"));
            }
          }
        } catch {
          // the gateway went away
        }
      })();
    }
  })();
  try {
    await using gw = await startGateway(
      proxyOnly(`http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`),
    );
    const first = await fetch(`${gw.url}/first`);
    assert.equal(first.status, 204);
    await first.body?.cancel();
    // Sent before the forged bytes arrive: on a reused connection they would be its answer.
    const second = await fetch(`${gw.url}/second`);
    assert.equal(second.headers.get("x-poison"), null);
    assert.equal(await second.text(), "real");
    assert.equal(connections, 2);
  } finally {
    listener.close();
    for (const conn of conns) {
      try {
        conn.close();
      } catch {
        // closed
      }
    }
    await serving.catch(() => {});
  }
});

Deno.test("proxy: a response body that stalls longer than upstream.read_timeout is cut, its connection closed and the breaker told; one that trickles passes", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const closed: string[] = [];
  const serving = (async () => {
    for await (const conn of listener) {
      (async () => {
        const buffer = new Uint8Array(4096);
        const n = await conn.read(buffer);
        const path = new TextDecoder().decode(buffer.subarray(0, n ?? 0)).split(" ")[1]!;
        const piece = new Uint8Array(10).fill(120);
        try {
          await conn.write(new TextEncoder().encode(
            "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
          ));
          if (path === "/stall") {
            // One piece, then silence: the gateway gives up and closes, which a read sees.
            await conn.write(piece);
            await conn.read(buffer);
          } else {
            // Pauses within the read timeout between pieces.
            for (let sent = 0; sent < 100; sent += 10) {
              await conn.write(piece);
              await delay(150);
            }
          }
          closed.push(path);
        } catch {
          closed.push(path);
        } finally {
          try {
            conn.close();
          } catch {
            // Already closed.
          }
        }
      })();
    }
  })();
  const port = (listener.addr as Deno.NetAddr).port;
  try {
    await using gw = await startGateway(`routes:
  - name: api
    upstream: { url: http://127.0.0.1:${port}, read_timeout: 400ms }
    pipeline:
      # A window shorter than the read timeout: the stalled answer's head has left it by the cut.
      - circuit-breaker: { failure_ratio: 0.5, min_requests: 1, window: 200ms, open_for: 30s }
      - proxy: {}
`);
    const trickle = await fetch(`${gw.url}/trickle`);
    assert.equal((await trickle.bytes()).length, 100, "150 ms pauses are within 400 ms");
    const stall = await fetch(`${gw.url}/stall`);
    assert.equal(stall.status, 200);
    // Cut within the read timeout (not left waiting for the upstream for ever).
    let timer: ReturnType<typeof setTimeout> | undefined;
    const outcome = await Promise.race([
      stall.bytes().then(() => "complete", () => "cut"),
      new Promise((resolve) => timer = setTimeout(() => resolve("still waiting"), 5_000)),
    ]);
    clearTimeout(timer);
    assert.equal(outcome, "cut");
    assert.ok(
      await waitFor(() => closed.includes("/stall"), 2_000),
      "the upstream connection was closed",
    );
    const cut = gw.logs.find("upstream cut the answer short");
    assert.match(JSON.stringify(cut?.error), /no more of the response body within 400 ms/);
    // The stall is the upstream failing now: the breaker counts it, and opens.
    const after = await fetch(`${gw.url}/trickle`);
    await after.body?.cancel();
    assert.equal(after.status, 503);
  } finally {
    listener.close();
    await serving.catch(() => {});
  }
});
