/**
 * IPv4 (RFC 791) and IPv6 (RFC 8200) headers over `(bytes, offset)`, the offset being the network
 * header's first byte; the pseudo-header sums that UDP, TCP and ICMPv6 checksums cover. Addresses
 * of IPv4 are unsigned 32-bit numbers (198.18.0.1 = 0xc6120001). Nothing here allocates.
 */
import { get16, get32, set16, set32 } from "./bytes.ts";
import { checksum, csumReplace16, csumReplace32, foldSum, onesSum } from "./checksum.ts";

/** IPv4 header fields (RFC 791 3.1). */
export const Ipv4 = {
  VER_IHL: 0,
  TOS: 1,
  TOTAL_LEN: 2,
  ID: 4,
  /** Flags (3 bits) and fragment offset (13 bits, in 8-byte units). */
  FRAG: 6,
  TTL: 8,
  PROTO: 9,
  CSUM: 10,
  SRC: 12,
  DST: 16,
  MIN_LEN: 20,
  /** FRAG bits: more fragments, and the offset mask. */
  MF: 0x2000,
  OFFSET_MASK: 0x1fff,
} as const;

/** IPv6 header fields (RFC 8200 3). */
export const Ipv6 = {
  VER_TC_FLOW: 0,
  PAYLOAD_LEN: 4,
  NEXT: 6,
  HOP_LIMIT: 7,
  SRC: 8,
  DST: 24,
  ADDR_LEN: 16,
  HDR_LEN: 40,
} as const;

/** IP protocol numbers (IANA) that the helpers know. */
export const IpProto = {
  ICMP: 1,
  TCP: 6,
  UDP: 17,
  ICMPV6: 58,
} as const;

/** The version nibble (4 or 6). */
export function ipVersion(b: Uint8Array, l3: number): number {
  return b[l3] >>> 4;
}

/** IPv4 header length in bytes (IHL * 4). */
export function ipv4HeaderLen(b: Uint8Array, l3: number): number {
  return (b[l3] & 0x0f) << 2;
}

/**
 * True when `len` bytes from `l3` hold a well-formed IPv4 header: version 4, IHL at least 5, the
 * header and the total length within those bytes.
 */
export function ipv4Valid(b: Uint8Array, l3: number, len: number): boolean {
  if (len < Ipv4.MIN_LEN || b[l3] >>> 4 !== 4) return false;
  const hl = (b[l3] & 0x0f) << 2;
  const total = get16(b, l3 + Ipv4.TOTAL_LEN);
  return hl >= Ipv4.MIN_LEN && hl <= total && total <= len;
}

/** The protocol field. */
export function ipv4Proto(b: Uint8Array, l3: number): number {
  return b[l3 + Ipv4.PROTO];
}

/** Source address. */
export function ipv4Src(b: Uint8Array, l3: number): number {
  return get32(b, l3 + Ipv4.SRC);
}

/** Destination address. */
export function ipv4Dst(b: Uint8Array, l3: number): number {
  return get32(b, l3 + Ipv4.DST);
}

/** True for a fragment other than the first (its transport header is in another fragment). */
export function ipv4LaterFragment(b: Uint8Array, l3: number): boolean {
  return (get16(b, l3 + Ipv4.FRAG) & Ipv4.OFFSET_MASK) !== 0;
}

/** The header checksum the header should carry (computed with its checksum field as zero). */
export function ipv4Checksum(b: Uint8Array, l3: number): number {
  const hl = ipv4HeaderLen(b, l3);
  const sum = onesSum(b, l3, hl) - get16(b, l3 + Ipv4.CSUM);
  return ~foldSum(sum) & 0xffff;
}

/** True when the header checksum is right (the sum over the header, checksum included, is ~0). */
export function ipv4ChecksumOk(b: Uint8Array, l3: number): boolean {
  return checksum(b, l3, ipv4HeaderLen(b, l3)) === 0;
}

/** Compute and write the header checksum. */
export function setIpv4Checksum(b: Uint8Array, l3: number): void {
  set16(b, l3 + Ipv4.CSUM, ipv4Checksum(b, l3));
}

/**
 * Replace the source (`field` = Ipv4.SRC) or destination (Ipv4.DST) address and update the header
 * checksum incrementally (RFC 1624). The transport checksum also covers the address (pseudo-
 * header): update it with `csumReplace32` (TCP) or `udpCsumReplace32` (UDP), old and new address.
 */
export function setIpv4Addr(b: Uint8Array, l3: number, field: number, addr: number): void {
  const old = get32(b, l3 + field);
  set32(b, l3 + field, addr);
  csumReplace32(b, l3 + Ipv4.CSUM, old, addr >>> 0);
}

/** Decrement the TTL and update the header checksum; returns the new TTL. */
export function ipv4DecTtl(b: Uint8Array, l3: number): number {
  const oldWord = get16(b, l3 + Ipv4.TTL);
  const ttl = (b[l3 + Ipv4.TTL] - 1) & 0xff;
  b[l3 + Ipv4.TTL] = ttl;
  csumReplace16(b, l3 + Ipv4.CSUM, oldWord, get16(b, l3 + Ipv4.TTL));
  return ttl;
}

/** Next-header field (the transport protocol when no extension header follows). */
export function ipv6Next(b: Uint8Array, l3: number): number {
  return b[l3 + Ipv6.NEXT];
}

/**
 * The one's complement sum (unfolded) of the pseudo-header of a transport segment `l4Len` bytes
 * long with protocol `proto`, for the IPv4 or IPv6 header at `l3` (RFC 768 / RFC 9293 3.1 for
 * IPv4: src, dst, zero, protocol, length; RFC 8200 8.1 for IPv6: src, dst, 32-bit length, 24 zero
 * bits, next header).
 */
export function pseudoHeaderSum(b: Uint8Array, l3: number, proto: number, l4Len: number): number {
  if (ipVersion(b, l3) === 6) {
    return onesSum(b, l3 + Ipv6.SRC, 2 * Ipv6.ADDR_LEN) + (l4Len >>> 16) + (l4Len & 0xffff) +
      proto;
  }
  return onesSum(b, l3 + Ipv4.SRC, 8) + proto + l4Len;
}

/**
 * The transport checksum of the segment of `l4Len` bytes at `l4` behind the IP header at `l3`,
 * computed with the segment's checksum field (at `l4 + csumField`) taken as zero.
 */
export function l4Checksum(
  b: Uint8Array,
  l3: number,
  l4: number,
  l4Len: number,
  proto: number,
  csumField: number,
): number {
  const sum = pseudoHeaderSum(b, l3, proto, l4Len) + onesSum(b, l4, l4Len) -
    get16(b, l4 + csumField);
  return ~foldSum(sum) & 0xffff;
}

/** An IPv4 address in dotted form as a number (init-time helper: it works on strings). */
export function parseIpv4(s: string): number {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s.trim());
  if (m === null || m.slice(1).some((p) => Number(p) > 255)) {
    throw new Error(`'${s}' is not an IPv4 address (like 10.0.0.1)`);
  }
  return ((Number(m[1]) << 24) | (Number(m[2]) << 16) | (Number(m[3]) << 8) | Number(m[4])) >>> 0;
}

/** An IPv4 address (a number) in dotted form. */
export function formatIpv4(a: number): string {
  return `${a >>> 24}.${(a >>> 16) & 0xff}.${(a >>> 8) & 0xff}.${a & 0xff}`;
}

/**
 * A network `A.B.C.D/N` (or a single address) as `{ net, mask }`: an address `x` is in it when
 * `((x & mask) >>> 0) === net`.
 */
export function parseCidr(s: string): { net: number; mask: number } {
  const [addr, bits, extra] = s.split("/");
  const n = bits === undefined ? 32 : Number(bits);
  if (extra !== undefined || !/^\d{1,2}$/.test(bits ?? "32") || n > 32) {
    throw new Error(`'${s}' is not an IPv4 network (like 10.0.0.0/8)`);
  }
  const mask = n === 0 ? 0 : (0xffffffff << (32 - n)) >>> 0;
  return { net: (parseIpv4(addr) & mask) >>> 0, mask };
}
