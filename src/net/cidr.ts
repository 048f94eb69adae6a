/** IPv4 and IPv6 CIDR matching, for `trusted_proxies`. */

import { rememberBounded } from "../bounded_map.ts";

interface Block {
  bytes: Uint8Array;
  prefix: number;
}

/**
 * Parses an IPv4 or IPv6 address into 16 bytes (IPv4 as IPv4-mapped IPv6), or
 * `undefined` when the text is not an address. Zone ids (`%eth0`) are ignored.
 */
export function parseIp(text: string): Uint8Array | undefined {
  let address = text.trim();
  if (address.startsWith("[") && address.endsWith("]")) {
    address = address.slice(1, -1);
  }
  const zone = address.indexOf("%");
  if (zone >= 0) address = address.slice(0, zone);
  if (address.includes(":")) return parseIpv6(address);
  const v4 = parseIpv4(address);
  if (!v4) return undefined;
  const bytes = new Uint8Array(16);
  bytes[10] = 0xff;
  bytes[11] = 0xff;
  bytes.set(v4, 12);
  return bytes;
}

function parseIpv4(text: string): Uint8Array | undefined {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  const bytes = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const part = parts[i]!;
    // No leading zeros: `010` is 8 to some parsers and 10 to others.
    if (!/^(0|[1-9]\d{0,2})$/.test(part)) return undefined;
    const value = Number(part);
    if (value > 255) return undefined;
    bytes[i] = value;
  }
  return bytes;
}

function parseIpv6(text: string): Uint8Array | undefined {
  const halves = text.split("::");
  if (halves.length > 2) return undefined;
  // An embedded IPv4 address may only end the whole address.
  const groups = (half: string, last: boolean): number[] | undefined => {
    if (half === "") return [];
    const out: number[] = [];
    const pieces = half.split(":");
    for (let i = 0; i < pieces.length; i++) {
      const piece = pieces[i]!;
      if (last && i === pieces.length - 1 && piece.includes(".")) {
        const v4 = parseIpv4(piece);
        if (!v4) return undefined;
        out.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(piece)) return undefined;
        out.push(parseInt(piece, 16));
      }
    }
    return out;
  };
  const head = groups(halves[0]!, halves.length === 1);
  const tail = halves.length === 2 ? groups(halves[1]!, true) : [];
  if (!head || !tail) return undefined;
  const missing = 8 - head.length - tail.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return undefined;
  const all = [...head, ...new Array<number>(halves.length === 2 ? missing : 0).fill(0), ...tail];
  const bytes = new Uint8Array(16);
  all.forEach((group, i) => {
    bytes[i * 2] = group >> 8;
    bytes[i * 2 + 1] = group & 0xff;
  });
  return bytes;
}

/**
 * Renders an address in one canonical form, so that one address is always one
 * client id: dotted IPv4 for IPv4 and IPv4-mapped IPv6, RFC 5952 text for other
 * IPv6 (lower case, no leading zeros, the longest run of zero groups as `::`,
 * no brackets or zone). Text that is not an address is returned as given.
 */
export function normalizeIp(text: string): string {
  // Every request asks for its peer's address, and peers repeat: parsing
  // showed as a sixth of a refused request's time before this cache.
  const cached = normalized.get(text);
  if (cached !== undefined) return cached;
  const bytes = parseIp(text);
  const canonical = !bytes
    ? text
    : isMappedIpv4(bytes)
    ? Array.from(bytes.subarray(12)).join(".")
    : formatIpv6(bytes);
  return rememberBounded(normalized, text, canonical, ADDRESS_CACHE_MAX);
}

/** How many addresses each address cache holds. */
const ADDRESS_CACHE_MAX = 10_000;
/** Canonical forms of recent addresses. */
const normalized = new Map<string, string>();

function formatIpv6(bytes: Uint8Array): string {
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((bytes[i]! << 8) | bytes[i + 1]!);
  // The longest run of two or more zero groups (the first of equals) becomes `::`.
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let end = i;
    while (end < 8 && groups[end] === 0) end++;
    if (end - i > bestLength) {
      bestStart = i;
      bestLength = end - i;
    }
    i = end;
  }
  const hex = (from: number, to: number) =>
    groups.slice(from, to).map((group) => group.toString(16)).join(":");
  if (bestStart < 0) return hex(0, 8);
  return `${hex(0, bestStart)}::${hex(bestStart + bestLength, 8)}`;
}

function isMappedIpv4(bytes: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  return bytes[10] === 0xff && bytes[11] === 0xff;
}

/** Raised for a CIDR that does not parse. */
export class CidrError extends Error {
  override name = "CidrError";
}

/** A set of CIDR blocks that answers whether an address is inside any of them. */
export class CidrSet {
  #blocks: Block[];
  #cache = new Map<string, boolean>();

  /** Parses each CIDR (`10.0.0.0/8`, `::1/128`, or a bare address); throws {@linkcode CidrError} on a bad one. */
  constructor(cidrs: readonly string[]) {
    this.#blocks = cidrs.map(parseCidr);
  }

  /** The number of blocks. */
  get size(): number {
    return this.#blocks.length;
  }

  /** True when the address lies inside one of the blocks. */
  has(address: string): boolean {
    if (this.#blocks.length === 0) return false;
    const cached = this.#cache.get(address);
    if (cached !== undefined) return cached;
    const bytes = parseIp(address);
    const inside = bytes !== undefined &&
      this.#blocks.some((block) => blockHas(block, bytes));
    return rememberBounded(this.#cache, address, inside, ADDRESS_CACHE_MAX);
  }
}

/** Parses one CIDR; throws {@linkcode CidrError} with the reason. */
export function parseCidr(text: string): Block {
  const parts = text.split("/");
  if (parts.length > 2) {
    throw new CidrError(`Invalid CIDR "${text}": write one address and one prefix length`);
  }
  const [address = "", prefixText] = parts;
  const bytes = parseIp(address);
  if (!bytes) throw new CidrError(`Invalid CIDR "${text}": "${address}" is not an IP address`);
  const isV4 = !address.includes(":");
  const max = isV4 ? 32 : 128;
  let prefix = max;
  if (prefixText !== undefined) {
    if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > max) {
      throw new CidrError(`Invalid CIDR "${text}": the prefix length must be 0 to ${max}`);
    }
    prefix = Number(prefixText);
  }
  return { bytes, prefix: isV4 ? prefix + 96 : prefix };
}

function blockHas(block: Block, bytes: Uint8Array): boolean {
  let bits = block.prefix;
  for (let i = 0; i < 16 && bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if ((block.bytes[i]! & mask) !== (bytes[i]! & mask)) return false;
  }
  return true;
}
