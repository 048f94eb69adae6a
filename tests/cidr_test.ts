/** CIDR parsing and matching (`trusted_proxies`), address parsing and canonical forms. */
import assert from "node:assert/strict";
import { CidrError, CidrSet, normalizeIp, parseCidr, parseIp } from "../src/net/cidr.ts";

/** 16 bytes from eight 16-bit groups. */
function groups(...values: number[]): Uint8Array {
  const bytes = new Uint8Array(16);
  values.forEach((value, i) => {
    bytes[i * 2] = value >> 8;
    bytes[i * 2 + 1] = value & 0xff;
  });
  return bytes;
}

/** An IPv4 address as IPv4-mapped IPv6 bytes. */
function mapped(a: number, b: number, c: number, d: number): Uint8Array {
  return new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d]);
}

Deno.test("parseIp: IPv4 becomes IPv4-mapped IPv6 bytes", () => {
  assert.deepEqual(parseIp("192.168.1.20"), mapped(192, 168, 1, 20));
  assert.deepEqual(parseIp("0.0.0.0"), mapped(0, 0, 0, 0));
  assert.deepEqual(parseIp("255.255.255.255"), mapped(255, 255, 255, 255));
  assert.deepEqual(parseIp(" 10.0.0.1 "), mapped(10, 0, 0, 1));
  // Written as IPv4-mapped IPv6, it is the same address.
  assert.deepEqual(parseIp("::ffff:192.168.1.20"), parseIp("192.168.1.20"));
  assert.deepEqual(parseIp("::FFFF:c0a8:114"), parseIp("192.168.1.20"));
});

Deno.test("parseIp: IPv6 in its full, compressed, bracketed and zoned forms", () => {
  const doc = groups(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
  assert.deepEqual(parseIp("2001:db8::1"), doc);
  assert.deepEqual(parseIp("2001:0db8:0000:0000:0000:0000:0000:0001"), doc);
  assert.deepEqual(parseIp("2001:DB8:0:0:0:0:0:1"), doc);
  assert.deepEqual(parseIp("[2001:db8::1]"), doc);
  assert.deepEqual(parseIp("::"), groups());
  assert.deepEqual(parseIp("::1"), groups(0, 0, 0, 0, 0, 0, 0, 1));
  assert.deepEqual(parseIp("1::"), groups(1));
  assert.deepEqual(parseIp("1:2:3:4:5:6:7::"), groups(1, 2, 3, 4, 5, 6, 7, 0));
  assert.deepEqual(parseIp("fe80::1%eth0"), groups(0xfe80, 0, 0, 0, 0, 0, 0, 1));
  assert.deepEqual(parseIp("1:2:3:4:5:6:1.2.3.4"), groups(1, 2, 3, 4, 5, 6, 0x102, 0x304));
  assert.deepEqual(parseIp("64:ff9b::192.0.2.33"), groups(0x64, 0xff9b, 0, 0, 0, 0, 0xc000, 0x221));
});

Deno.test("parseIp: what is not an address gives undefined", () => {
  for (
    const text of [
      "",
      " ",
      "unknown",
      "1.2.3",
      "1.2.3.4.5",
      "1.2.3.4.",
      "256.1.1.1",
      "1.2.3.-4",
      "1.2.3.4a",
      "0x7f.0.0.1",
      "01.2.3.4", // leading zeros read as octal by some parsers, decimal by others
      "127.000.000.001",
      "1.2.3.4:80",
      ":",
      ":::",
      "1:2:3:4:5:6:7:8:9",
      "1:2:3:4:5:6:7:8::",
      "1::2::3",
      ":1:2:3:4:5:6:7",
      "1:2:3:4:5:6:7:",
      "12345::1",
      "g::1",
      "1.2.3.4::", // an embedded IPv4 address only ends an address
      "1.2.3.4::5",
      "::1.2.3",
      "::256.1.1.1",
      "[::1",
      "[2001:db8::1]:443",
    ]
  ) {
    assert.equal(parseIp(text), undefined, JSON.stringify(text));
  }
});

Deno.test("normalizeIp: one address, one spelling", () => {
  assert.equal(normalizeIp("10.0.0.1"), "10.0.0.1");
  assert.equal(normalizeIp("::ffff:10.0.0.1"), "10.0.0.1");
  assert.equal(normalizeIp("::ffff:a00:1"), "10.0.0.1");
  assert.equal(normalizeIp("2001:DB8::1"), "2001:db8::1");
  assert.equal(normalizeIp("2001:0db8:0000:0000:0000:0000:0000:0001"), "2001:db8::1");
  assert.equal(normalizeIp("[2001:db8::1]"), "2001:db8::1");
  assert.equal(normalizeIp("fe80::1%eth0"), "fe80::1");
  assert.equal(normalizeIp("::1"), "::1");
  assert.equal(normalizeIp("0:0:0:0:0:0:0:0"), "::");
  // RFC 5952: the longest run of zeros is compressed, the first of equal runs, never a single group.
  assert.equal(normalizeIp("2001:db8:0:0:1:0:0:1"), "2001:db8::1:0:0:1");
  assert.equal(normalizeIp("2001:0:0:1:0:0:0:1"), "2001:0:0:1::1");
  assert.equal(normalizeIp("2001:db8:0:1:1:1:1:1"), "2001:db8:0:1:1:1:1:1");
  assert.equal(normalizeIp("1:0:0:0:0:0:0:0"), "1::");
  // Not an address: given back as it came.
  assert.equal(normalizeIp("unknown"), "unknown");
});

Deno.test("normalizeIp: an address seen before, and one seen after 10,000 others, keep one spelling", () => {
  assert.equal(normalizeIp("::FFFF:192.0.2.9"), "192.0.2.9");
  assert.equal(normalizeIp("::FFFF:192.0.2.9"), "192.0.2.9");
  for (let i = 0; i < 10_001; i++) normalizeIp(`2001:DB8::${i.toString(16)}`);
  assert.equal(normalizeIp("2001:DB8::0a"), "2001:db8::a");
  assert.equal(normalizeIp("::FFFF:192.0.2.9"), "192.0.2.9");
  assert.equal(normalizeIp("unknown"), "unknown");
});

Deno.test("CidrSet: IPv4 blocks", () => {
  const set = new CidrSet(["10.0.0.0/8", "192.168.1.0/24", "203.0.113.7/32", "172.16.0.0/12"]);
  assert.equal(set.size, 4);
  for (const inside of ["10.0.0.0", "10.255.255.255", "192.168.1.1", "203.0.113.7", "172.31.9.9"]) {
    assert.equal(set.has(inside), true, inside);
  }
  for (
    const outside of ["11.0.0.0", "9.255.255.255", "192.168.2.1", "203.0.113.8", "172.32.0.1"]
  ) {
    assert.equal(set.has(outside), false, outside);
  }
  // Asked twice (the answer is cached), the answer is the same.
  assert.equal(set.has("10.1.2.3"), true);
  assert.equal(set.has("10.1.2.3"), true);
  assert.equal(set.has("11.1.2.3"), false);
  assert.equal(set.has("11.1.2.3"), false);
});

Deno.test("CidrSet: prefixes that do not fall on a byte boundary", () => {
  const set = new CidrSet(["100.64.0.0/10", "2001:db8:8000::/33"]);
  assert.equal(set.has("100.64.0.1"), true);
  assert.equal(set.has("100.127.255.255"), true);
  assert.equal(set.has("100.128.0.0"), false);
  assert.equal(set.has("100.63.255.255"), false);
  assert.equal(set.has("2001:db8:8000::1"), true);
  assert.equal(set.has("2001:db8:ffff:ffff::1"), true);
  assert.equal(set.has("2001:db8:7fff::1"), false);
});

Deno.test("CidrSet: IPv6 blocks, and IPv4-mapped addresses match IPv4 blocks", () => {
  const set = new CidrSet(["::1/128", "fd00::/8", "2001:db8:abcd::/48", "10.0.0.0/8"]);
  assert.equal(set.has("::1"), true);
  assert.equal(set.has("::2"), false);
  assert.equal(set.has("fd12:3456::1"), true);
  assert.equal(set.has("fe00::1"), false);
  assert.equal(set.has("2001:db8:abcd:1::1"), true);
  assert.equal(set.has("2001:DB8:ABCD:0:0:0:0:9"), true);
  assert.equal(set.has("2001:db8:abce::1"), false);
  assert.equal(set.has("[2001:db8:abcd::1]"), true);
  // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
  assert.equal(set.has("::ffff:10.1.2.3"), true);
  assert.equal(set.has("::ffff:11.1.2.3"), false);
  // IPv4 blocks do not swallow IPv6 addresses that merely share bytes.
  assert.equal(set.has("::10.1.2.3"), false);
  assert.equal(set.has("a01:203::"), false);
});

Deno.test("CidrSet: an IPv4-mapped IPv6 block matches IPv4 addresses", () => {
  const set = new CidrSet(["::ffff:10.0.0.0/104"]);
  assert.equal(set.has("10.9.8.7"), true);
  assert.equal(set.has("::ffff:10.9.8.7"), true);
  assert.equal(set.has("11.9.8.7"), false);
});

Deno.test("CidrSet: bare addresses, /0 blocks, host bits set, and no blocks", () => {
  const bare = new CidrSet(["127.0.0.1", "::1"]);
  assert.equal(bare.has("127.0.0.1"), true);
  assert.equal(bare.has("127.0.0.2"), false);
  assert.equal(bare.has("::1"), true);

  const everyV4 = new CidrSet(["0.0.0.0/0"]);
  assert.equal(everyV4.has("8.8.8.8"), true);
  assert.equal(everyV4.has("::ffff:8.8.8.8"), true);
  assert.equal(everyV4.has("2001:db8::1"), false);

  const everything = new CidrSet(["::/0"]);
  assert.equal(everything.has("2001:db8::1"), true);
  assert.equal(everything.has("8.8.8.8"), true);

  // Host bits in the block address do not matter.
  const sloppy = new CidrSet(["10.1.2.3/8"]);
  assert.equal(sloppy.has("10.200.0.1"), true);
  assert.equal(sloppy.has("11.0.0.1"), false);

  const none = new CidrSet([]);
  assert.equal(none.size, 0);
  assert.equal(none.has("127.0.0.1"), false);
});

Deno.test("CidrSet: text that is not an address is never inside", () => {
  const set = new CidrSet(["0.0.0.0/0", "::/0"]);
  for (const text of ["", "unknown", "10.0.0.1:80", "localhost", "01.2.3.4"]) {
    assert.equal(set.has(text), false, JSON.stringify(text));
  }
});

Deno.test("parseCidr: a bad CIDR throws CidrError naming it and the reason", () => {
  const cases: [string, RegExp][] = [
    ["banana", /"banana" is not an IP address/],
    ["/8", /is not an IP address/],
    ["10.0.0/8", /"10.0.0" is not an IP address/],
    ["256.0.0.0/8", /is not an IP address/],
    ["10.0.0.0/33", /prefix length must be 0 to 32/],
    ["10.0.0.0/-1", /prefix length must be 0 to 32/],
    ["10.0.0.0/", /prefix length must be 0 to 32/],
    ["10.0.0.0/8a", /prefix length must be 0 to 32/],
    ["10.0.0.0/255.0.0.0", /prefix length must be 0 to 32/],
    ["::/129", /prefix length must be 0 to 128/],
    ["fd00::/1000", /prefix length must be 0 to 128/],
    ["10.0.0.0/8/16", /one address and one prefix length/],
    ["1.2.3.4::/64", /is not an IP address/],
  ];
  for (const [text, reason] of cases) {
    assert.throws(() => parseCidr(text), (error: unknown) => {
      assert.ok(error instanceof CidrError, `${text}: ${error}`);
      assert.equal(error.name, "CidrError");
      assert.ok(error.message.startsWith(`Invalid CIDR "${text}": `), error.message);
      assert.match(error.message, reason);
      return true;
    });
  }
  assert.throws(() => new CidrSet(["10.0.0.0/8", "10.0.0.0/40"]), CidrError);
});

Deno.test("parseCidr: a good CIDR gives the block in IPv6 terms", () => {
  assert.deepEqual(parseCidr("10.0.0.0/8"), { bytes: mapped(10, 0, 0, 0), prefix: 104 });
  assert.deepEqual(parseCidr("10.0.0.7"), { bytes: mapped(10, 0, 0, 7), prefix: 128 });
  assert.deepEqual(parseCidr("0.0.0.0/0"), { bytes: mapped(0, 0, 0, 0), prefix: 96 });
  assert.deepEqual(parseCidr("fd00::/8"), { bytes: groups(0xfd00), prefix: 8 });
  assert.deepEqual(parseCidr("::1"), { bytes: groups(0, 0, 0, 0, 0, 0, 0, 1), prefix: 128 });
});
