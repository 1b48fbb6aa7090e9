/**
 * The Internet checksum (RFC 1071: the one's complement of the one's complement sum of 16-bit
 * big-endian words) over `(bytes, offset, length)`, the IPv4/IPv6 pseudo-header sums of UDP, TCP
 * and ICMPv6 (RFC 768, RFC 9293 3.1, RFC 8200 8.1), and the incremental update of RFC 1624
 * (equation 3: HC' = ~(~HC + ~m + m')), which rewrites an address or a port without summing the
 * packet again. Sums are plain numbers (no folding until the end); nothing allocates.
 */
import { get16 } from "./bytes.ts";

/**
 * The one's complement sum of the `len` bytes at `off`, as 16-bit big-endian words (an odd last
 * byte is padded with a zero), added to `sum`; not folded (fold with `foldSum`).
 */
export function onesSum(b: Uint8Array, off: number, len: number, sum = 0): number {
  const end = off + (len & ~1);
  let i = off;
  for (; i + 8 <= end; i += 8) {
    sum += ((b[i] << 8) | b[i + 1]) + ((b[i + 2] << 8) | b[i + 3]) +
      ((b[i + 4] << 8) | b[i + 5]) + ((b[i + 6] << 8) | b[i + 7]);
  }
  for (; i < end; i += 2) sum += (b[i] << 8) | b[i + 1];
  if ((len & 1) !== 0) sum += b[end] << 8;
  return sum;
}

/** Fold a sum of 16-bit words (any non-negative number below 2^53) to 16 bits, end-around carry. */
export function foldSum(sum: number): number {
  while (sum > 0xffff) sum = (sum % 0x10000) + Math.floor(sum / 0x10000);
  return sum;
}

/** The Internet checksum of the `len` bytes at `off` (the checksum field in them must be zero). */
export function checksum(b: Uint8Array, off: number, len: number): number {
  return ~foldSum(onesSum(b, off, len)) & 0xffff;
}

/**
 * RFC 1624 equation 3: checksum `hc` after a 16-bit word of the data it covers changes from `old`
 * to `now`.
 */
export function csumUpdate16(hc: number, old: number, now: number): number {
  return ~foldSum((~hc & 0xffff) + (~old & 0xffff) + (now & 0xffff)) & 0xffff;
}

/** RFC 1624 equation 3 for a 32-bit field (an IPv4 address): both halves at once. */
export function csumUpdate32(hc: number, old: number, now: number): number {
  return ~foldSum(
    (~hc & 0xffff) + (~(old >>> 16) & 0xffff) + (~old & 0xffff) + (now >>> 16) + (now & 0xffff),
  ) & 0xffff;
}

/**
 * Update the checksum field at `csumOff` in place after a 16-bit word it covers changed from `old`
 * to `now` (IPv4 header, TCP, ICMP). For UDP use `udpCsumReplace16`, which keeps "no checksum".
 */
export function csumReplace16(b: Uint8Array, csumOff: number, old: number, now: number): void {
  const c = csumUpdate16(get16(b, csumOff), old, now);
  b[csumOff] = c >>> 8;
  b[csumOff + 1] = c;
}

/** As csumReplace16, for a 32-bit field (an IPv4 address in a header or a pseudo-header). */
export function csumReplace32(b: Uint8Array, csumOff: number, old: number, now: number): void {
  const c = csumUpdate32(get16(b, csumOff), old, now);
  b[csumOff] = c >>> 8;
  b[csumOff + 1] = c;
}

/**
 * UDP over IPv4: a checksum field of 0 means "no checksum" and stays 0; a computed 0 is sent as
 * 0xffff (RFC 768).
 */
export function udpCsumReplace16(b: Uint8Array, csumOff: number, old: number, now: number): void {
  const hc = get16(b, csumOff);
  if (hc === 0) return;
  const c = csumUpdate16(hc, old, now) || 0xffff;
  b[csumOff] = c >>> 8;
  b[csumOff + 1] = c;
}

/** As udpCsumReplace16, for a 32-bit field (an IPv4 address in the pseudo-header). */
export function udpCsumReplace32(b: Uint8Array, csumOff: number, old: number, now: number): void {
  const hc = get16(b, csumOff);
  if (hc === 0) return;
  const c = csumUpdate32(hc, old, now) || 0xffff;
  b[csumOff] = c >>> 8;
  b[csumOff + 1] = c;
}
