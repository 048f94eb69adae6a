/** The RESP client's encoder, reply parser and URL reading, without a server. */
import assert from "node:assert/strict";
import {
  encodeCommand,
  parseRedisUrl,
  RedisReplyError,
  ReplyParser,
  type RespReply,
} from "../src/store/resp_client.ts";

const bytes = (text: string) => new TextEncoder().encode(text);

const STREAM = "+OK\r\n" +
  ":-42\r\n" +
  "$4\r\nhé!\r\n" + // 4 bytes: é is two
  "$-1\r\n" +
  "$0\r\n\r\n" +
  "*3\r\n:1\r\n*2\r\n$1\r\na\r\n:0\r\n-ERR inner\r\n" +
  "*-1\r\n" +
  "-NOSCRIPT No matching script\r\n" +
  ":1234567890123\r\n";

const EXPECTED: RespReply[] = [
  "OK",
  -42,
  "hé!",
  null,
  "",
  [1, ["a", 0], new RedisReplyError("ERR inner")],
  null,
  new RedisReplyError("NOSCRIPT No matching script"),
  1234567890123,
];

function comparable(replies: RespReply[]): unknown {
  return JSON.parse(
    JSON.stringify(
      replies,
      (_, value) => value instanceof RedisReplyError ? { error: value.message } : value,
    ),
  );
}

Deno.test("the parser reads every reply type, wherever the stream is cut in two", () => {
  const all = bytes(STREAM);
  for (let cut = 0; cut <= all.length; cut++) {
    const parser = new ReplyParser();
    const replies = [
      ...parser.feed(all.slice(0, cut)),
      ...parser.feed(all.slice(cut)),
    ];
    assert.deepEqual(comparable(replies), comparable(EXPECTED), `cut at byte ${cut}`);
  }
});

Deno.test("the parser reads a stream that arrives one byte at a time, into a reused buffer", () => {
  const all = bytes(STREAM);
  const parser = new ReplyParser();
  const buffer = new Uint8Array(1);
  const replies: RespReply[] = [];
  for (const byte of all) {
    buffer[0] = byte;
    replies.push(...parser.feed(buffer));
  }
  assert.deepEqual(comparable(replies), comparable(EXPECTED));
});

Deno.test("the parser reads a 16 MiB bulk string that comes in 64 KiB reads, and the reply after it", () => {
  const size = 16 * 1024 * 1024;
  const all = new Uint8Array(size + 64);
  const head = bytes(`$${size}\r\n`);
  all.set(head);
  all.fill(120, head.length, head.length + size); // "x"
  const tail = bytes("\r\n:7\r\n*2\r\n$1\r\na\r\n$");
  all.set(tail, head.length + size);
  const end = head.length + size + tail.length;
  const parser = new ReplyParser();
  const replies: RespReply[] = [];
  const read = new Uint8Array(64 * 1024); // reused, as the client reuses its read buffer
  for (let at = 0; at < end; at += read.length) {
    const piece = all.subarray(at, Math.min(end, at + read.length));
    read.set(piece);
    replies.push(...parser.feed(read.subarray(0, piece.length)));
  }
  replies.push(...parser.feed(bytes("1\r\nb\r\n")));
  assert.equal(replies.length, 3);
  assert.equal((replies[0] as string).length, size);
  assert.ok(/^x+$/.test(replies[0] as string));
  assert.deepEqual(replies.slice(1), [7, ["a", "b"]]);
});

Deno.test("the parser rejects bytes that are not RESP", () => {
  assert.throws(() => new ReplyParser().feed(bytes("HTTP/1.1 200 OK\r\n")), /unexpected type/);
});

Deno.test("a command is encoded as bulk strings whose lengths count bytes, not characters", () => {
  assert.equal(
    encodeCommand(["EVALSHA", "abc", 1, "{sluice:r:key:é}", 2.5]),
    "*5\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n1\r\n$17\r\n{sluice:r:key:é}\r\n$3\r\n2.5\r\n",
  );
});

Deno.test("a Redis URL gives host, port, TLS, credentials and database", () => {
  assert.deepEqual(parseRedisUrl("redis://127.0.0.1:6380/2"), {
    hostname: "127.0.0.1",
    port: 6380,
    tls: false,
    username: undefined,
    password: undefined,
    db: 2,
  });
  assert.deepEqual(parseRedisUrl("rediss://gw:p%40ss@redis.internal"), {
    hostname: "redis.internal",
    port: 6379,
    tls: true,
    username: "gw",
    password: "p@ss",
    db: 0,
  });
  assert.equal(parseRedisUrl("redis://:secret@[::1]:7000").hostname, "::1");
  assert.equal(parseRedisUrl("redis://:secret@[::1]:7000").password, "secret");
  assert.throws(() => parseRedisUrl("redis://h:1/db"), /database "db" is not a number/);
  assert.throws(() => parseRedisUrl("http://h:1"), /scheme must be redis:\/\/ or rediss:\/\//);
  assert.throws(() => parseRedisUrl("not a url"), /Invalid Redis URL "not a url"/);
});

Deno.test("a Redis URL that cannot be read is named in errors without its user and password", () => {
  for (
    const url of [
      "redis://default:hunter2SECRET@127.0.0.1:6379/cache",
      "http://:hunter2SECRET@127.0.0.1:6379",
      "redis://:hunter2SECRET@[::1:6379",
      "redis://default:Sup3r#hunter2SECRET@redis.internal:6379",
      "redis://default:ab/hunter2SECRET@redis.example:6379",
      "redis://default:a?hunter2SECRET@redis.example:6379",
      "redis://default:12/hunter2SECRET@redis.example:6379",
    ]
  ) {
    assert.throws(
      () => parseRedisUrl(url),
      (error: Error) => !error.message.includes("hunter2SECRET") && error.message.includes("***@"),
      url,
    );
  }
});
