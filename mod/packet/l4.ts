/**
 * UDP (RFC 768), TCP (RFC 9293 3.1) and ICMP (RFC 792) / ICMPv6 (RFC 4443) header fields over
 * `(bytes, offset)`, the offset being the transport header's first byte, and where a frame's
 * transport header starts. Nothing here allocates.
 */
import { get16 } from "./bytes.ts";
import { Ether, EtherType, isVlanTpid } from "./ether.ts";
import { IpProto, Ipv4, Ipv6 } from "./ip.ts";

/** UDP header fields. */
export const Udp = { SPORT: 0, DPORT: 2, LEN: 4, CSUM: 6, HDR_LEN: 8 } as const;

/** TCP header fields; FLAGS holds the flag bits below. */
export const Tcp = {
  SPORT: 0,
  DPORT: 2,
  SEQ: 4,
  ACK: 8,
  /** Data offset (header length in 32-bit words) in the high nibble. */
  DATA_OFF: 12,
  FLAGS: 13,
  WINDOW: 14,
  CSUM: 16,
  URGENT: 18,
  MIN_LEN: 20,
  FIN: 0x01,
  SYN: 0x02,
  RST: 0x04,
  PSH: 0x08,
  ACK_FLAG: 0x10,
} as const;

/** ICMP and ICMPv6 header fields and the echo types. */
export const Icmp = {
  TYPE: 0,
  CODE: 1,
  CSUM: 2,
  ID: 4,
  SEQ: 6,
  HDR_LEN: 8,
  ECHO_REPLY: 0,
  ECHO_REQUEST: 8,
  V6_ECHO_REQUEST: 128,
  V6_ECHO_REPLY: 129,
} as const;

/** Source port (UDP or TCP). */
export function srcPort(b: Uint8Array, l4: number): number {
  return get16(b, l4);
}

/** Destination port (UDP or TCP). */
export function dstPort(b: Uint8Array, l4: number): number {
  return get16(b, l4 + 2);
}

/**
 * Where a frame's IP header and transport header start (offsets from the frame's start) and which
 * protocol the transport header is, as found by `parseL4`. -1 offsets mean "not there".
 */
export interface L4Info {
  /** Offset of the IP header. */
  l3: number;
  /** Offset of the transport header. */
  l4: number;
  /** IP protocol number (IpProto), -1 when the frame is not IP. */
  proto: number;
  /** Bytes of transport header and payload the IP header announces (within the frame). */
  l4Len: number;
}

/**
 * Find the IP and transport headers of the frame of `len` bytes at `off`, behind up to two VLAN
 * tags, into `out` (a reused object: nothing is allocated). IPv4 fragments other than the first
 * have no transport header (l4 = -1). IPv6 extension headers are not walked: `proto` is the Next
 * Header field. Returns true when a transport header was found whole within the frame.
 */
export function parseL4(b: Uint8Array, off: number, len: number, out: L4Info): boolean {
  out.l3 = -1;
  out.l4 = -1;
  out.proto = -1;
  out.l4Len = 0;
  let at = Ether.TYPE;
  let type = get16(b, off + at);
  for (let t = 0; t < 2 && isVlanTpid(type) && at + 6 <= len; t++) {
    at += Ether.TAG_LEN;
    type = get16(b, off + at);
  }
  const l3 = at + 2;
  if (type === EtherType.IPV4) {
    if (l3 + Ipv4.MIN_LEN > len || b[off + l3] >>> 4 !== 4) return false;
    const hl = (b[off + l3] & 0x0f) << 2;
    const total = get16(b, off + l3 + Ipv4.TOTAL_LEN);
    if (hl < Ipv4.MIN_LEN || total < hl || l3 + total > len) return false;
    out.l3 = l3;
    out.proto = b[off + l3 + Ipv4.PROTO];
    if ((get16(b, off + l3 + Ipv4.FRAG) & Ipv4.OFFSET_MASK) !== 0) return false;
    out.l4 = l3 + hl;
    out.l4Len = total - hl;
  } else if (type === EtherType.IPV6) {
    if (l3 + Ipv6.HDR_LEN > len || b[off + l3] >>> 4 !== 6) return false;
    const payload = get16(b, off + l3 + Ipv6.PAYLOAD_LEN);
    if (l3 + Ipv6.HDR_LEN + payload > len) return false;
    out.l3 = l3;
    out.proto = b[off + l3 + Ipv6.NEXT];
    out.l4 = l3 + Ipv6.HDR_LEN;
    out.l4Len = payload;
  } else {
    return false;
  }
  return out.l4Len >= minHeaderLen(out.proto);
}

/** Shortest transport header of `proto` (0 for protocols the helpers do not know). */
function minHeaderLen(proto: number): number {
  switch (proto) {
    case IpProto.TCP:
      return Tcp.MIN_LEN;
    case IpProto.UDP:
      return Udp.HDR_LEN;
    case IpProto.ICMP:
    case IpProto.ICMPV6:
      return Icmp.HDR_LEN;
    default:
      return 0;
  }
}

/** A fresh L4Info for `parseL4` (make one at init and reuse it for every frame). */
export function newL4Info(): L4Info {
  return { l3: -1, l4: -1, proto: -1, l4Len: 0 };
}
