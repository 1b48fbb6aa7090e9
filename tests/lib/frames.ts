/**
 * Test frames built here, with checksums computed by a reference written here (a plain one's
 * complement sum over the bytes, folded at the end), independent of mod/packet/.
 */

/** The Internet checksum of `bytes` (RFC 1071), the reference. */
export function refChecksum(bytes: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i += 2) {
    sum += bytes[i] * 256 + (i + 1 < bytes.length ? bytes[i + 1] : 0);
  }
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 65536);
  return 0xffff - sum;
}

export interface FrameSpec {
  dst?: number[];
  src?: number[];
  /** VLAN tags, outermost first: [tpid, tci]. */
  tags?: [number, number][];
  srcIp?: number[];
  dstIp?: number[];
  sport?: number;
  dport?: number;
  /** Payload bytes (default 18 of a pattern). */
  payload?: Uint8Array;
  /** UDP: leave the checksum 0 ("none"). */
  noUdpChecksum?: boolean;
  ttl?: number;
}

const DST = [0x02, 0, 0, 0, 0, 0x0b];
const SRC = [0x02, 0, 0, 0, 0, 0x0a];

function be16(n: number): number[] {
  return [(n >> 8) & 0xff, n & 0xff];
}

function pattern(n: number, seed = 7): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);
}

function ether(s: FrameSpec, type: number): number[] {
  const out = [...(s.dst ?? DST), ...(s.src ?? SRC)];
  for (const [tpid, tci] of s.tags ?? []) out.push(...be16(tpid), ...be16(tci));
  out.push(...be16(type));
  return out;
}

/** IPv4 header (no options) for a payload of `len` bytes, with its reference checksum. */
function ipv4(s: FrameSpec, proto: number, len: number): number[] {
  const h = [
    0x45,
    0,
    ...be16(20 + len),
    0x12,
    0x34,
    0x40,
    0,
    s.ttl ?? 64,
    proto,
    0,
    0,
    ...(s.srcIp ?? [10, 0, 0, 1]),
    ...(s.dstIp ?? [10, 0, 0, 2]),
  ];
  const c = refChecksum(Uint8Array.from(h));
  h[10] = c >> 8;
  h[11] = c & 0xff;
  return h;
}

function pseudo4(s: FrameSpec, proto: number, len: number): number[] {
  return [...(s.srcIp ?? [10, 0, 0, 1]), ...(s.dstIp ?? [10, 0, 0, 2]), 0, proto, ...be16(len)];
}

/** The transport checksum of `seg` (its checksum field zero) under pseudo-header `ph`. */
function l4Sum(ph: number[], seg: number[]): number {
  return refChecksum(Uint8Array.from([...ph, ...seg]));
}

/** Ethernet / [tags] / IPv4 / UDP with a valid UDP checksum (unless noUdpChecksum). */
export function udp4(s: FrameSpec = {}): Uint8Array {
  const payload = s.payload ?? pattern(18);
  const len = 8 + payload.length;
  const udp = [...be16(s.sport ?? 1000), ...be16(s.dport ?? 2000), ...be16(len), 0, 0, ...payload];
  if (!s.noUdpChecksum) {
    const c = l4Sum(pseudo4(s, 17, len), udp) || 0xffff;
    udp[6] = c >> 8;
    udp[7] = c & 0xff;
  }
  return Uint8Array.from([...ether(s, 0x0800), ...ipv4(s, 17, len), ...udp]);
}

/** Ethernet / [tags] / IPv4 / TCP (20-byte header, ACK) with a valid checksum. */
export function tcp4(s: FrameSpec = {}): Uint8Array {
  const payload = s.payload ?? pattern(26, 3);
  const tcp = [
    ...be16(s.sport ?? 40000),
    ...be16(s.dport ?? 80),
    0,
    0,
    0,
    1,
    0,
    0,
    0,
    2,
    0x50,
    0x10,
    ...be16(1024),
    0,
    0,
    0,
    0,
    ...payload,
  ];
  const c = l4Sum(pseudo4(s, 6, tcp.length), tcp);
  tcp[16] = c >> 8;
  tcp[17] = c & 0xff;
  return Uint8Array.from([...ether(s, 0x0800), ...ipv4(s, 6, tcp.length), ...tcp]);
}

/** Ethernet / [tags] / IPv4 / ICMP echo request (id 7, sequence `seq`). */
export function icmp4Echo(s: FrameSpec = {}, seq = 1): Uint8Array {
  const payload = s.payload ?? pattern(32, 5);
  const icmp = [8, 0, 0, 0, 0, 7, ...be16(seq), ...payload];
  const c = refChecksum(Uint8Array.from(icmp));
  icmp[2] = c >> 8;
  icmp[3] = c & 0xff;
  return Uint8Array.from([...ether(s, 0x0800), ...ipv4(s, 1, icmp.length), ...icmp]);
}

/** Ethernet / IPv6 / UDP with a valid checksum (addresses fe80::1 -> fe80::2). */
export function udp6(s: FrameSpec = {}): Uint8Array {
  const payload = s.payload ?? pattern(18, 9);
  const len = 8 + payload.length;
  const src = [0xfe, 0x80, ...new Array(13).fill(0), 1];
  const dst = [0xfe, 0x80, ...new Array(13).fill(0), 2];
  const udp = [...be16(s.sport ?? 1000), ...be16(s.dport ?? 2000), ...be16(len), 0, 0, ...payload];
  const ph = [...src, ...dst, 0, 0, ...be16(len), 0, 0, 0, 17];
  const c = l4Sum(ph, udp) || 0xffff;
  udp[6] = c >> 8;
  udp[7] = c & 0xff;
  const ip = [0x60, 0, 0, 0, ...be16(len), 17, 64, ...src, ...dst];
  return Uint8Array.from([...ether(s, 0x86dd), ...ip, ...udp]);
}

/**
 * Check an Ethernet/[tags]/IPv4 frame's header and transport checksums with the reference;
 * returns a list of what is wrong (empty when all is right).
 */
export function checkIpv4Checksums(f: Uint8Array): string[] {
  let at = 12;
  while ((f[at] << 8 | f[at + 1]) === 0x8100 || (f[at] << 8 | f[at + 1]) === 0x88a8) at += 4;
  const l3 = at + 2;
  const bad: string[] = [];
  const hl = (f[l3] & 0xf) * 4;
  if (refChecksum(f.subarray(l3, l3 + hl)) !== 0) bad.push("IPv4 header checksum");
  const total = f[l3 + 2] << 8 | f[l3 + 3];
  const proto = f[l3 + 9];
  const seg = f.subarray(l3 + hl, l3 + total);
  const ph = [...f.subarray(l3 + 12, l3 + 20), 0, proto, ...be16(seg.length)];
  if (proto === 17) {
    const field = seg[6] << 8 | seg[7];
    if (field !== 0 && refChecksum(Uint8Array.from([...ph, ...seg])) !== 0) {
      bad.push("UDP checksum");
    }
  } else if (proto === 6) {
    if (refChecksum(Uint8Array.from([...ph, ...seg])) !== 0) bad.push("TCP checksum");
  } else if (proto === 1) {
    if (refChecksum(seg) !== 0) bad.push("ICMP checksum");
  }
  return bad;
}
