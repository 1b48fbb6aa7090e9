/**
 * Ethernet II (IEEE 802.3 clause 3) and VLAN tags (IEEE 802.1Q: C-tag, TPID 0x8100; 802.1ad:
 * S-tag, TPID 0x88a8) over `(bytes, offset)`, the offset being the frame's first byte.
 *
 *   0 destination MAC (6) | 6 source MAC (6) | 12 EtherType or TPID (2) | [TCI (2) | EtherType]...
 *
 * A TCI is PCP (3 bits) | DEI (1) | VLAN id (12). Nothing here allocates.
 */
import { get16 } from "./bytes.ts";

/** Field offsets and sizes of the Ethernet header and of a VLAN tag. */
export const Ether = {
  DST: 0,
  SRC: 6,
  TYPE: 12,
  ADDR_LEN: 6,
  HDR_LEN: 14,
  /** A VLAN tag: TPID (2) and TCI (2), inserted before the EtherType. */
  TAG_LEN: 4,
} as const;

/** EtherType values (IEEE registry) that the helpers know. */
export const EtherType = {
  IPV4: 0x0800,
  ARP: 0x0806,
  /** 802.1Q customer tag. */
  VLAN: 0x8100,
  IPV6: 0x86dd,
  /** 802.1ad service tag (the outer tag of Q-in-Q). */
  QINQ: 0x88a8,
} as const;

/** Tags `l3Offset` and `l3Type` walk past at most (a service tag and a customer tag). */
const MAX_TAGS = 2;

/** The EtherType (or outer TPID) at offset 12. */
export function etherType(b: Uint8Array, off: number): number {
  return get16(b, off + Ether.TYPE);
}

/** True for the TPIDs of a VLAN tag (0x8100, 0x88a8). */
export function isVlanTpid(type: number): boolean {
  return type === EtherType.VLAN || type === EtherType.QINQ;
}

/**
 * Offset (from the frame's start, not absolute) of the network header: 14, or 18/22 behind one or
 * two VLAN tags. -1 when the frame (`len` bytes) is too short for its header and tags.
 */
export function l3Offset(b: Uint8Array, off: number, len: number): number {
  let at = Ether.TYPE;
  for (let t = 0; t <= MAX_TAGS; t++) {
    if (at + 2 > len) return -1;
    if (!isVlanTpid(get16(b, off + at)) || t === MAX_TAGS) return at + 2 <= len ? at + 2 : -1;
    at += Ether.TAG_LEN;
  }
  return -1;
}

/** The EtherType behind up to two VLAN tags (the network protocol); -1 for a truncated frame. */
export function l3Type(b: Uint8Array, off: number, len: number): number {
  const l3 = l3Offset(b, off, len);
  return l3 < 0 ? -1 : get16(b, off + l3 - 2);
}

/** The TCI of the outermost VLAN tag, or -1 when the frame has none. */
export function vlanTci(b: Uint8Array, off: number, len: number): number {
  if (len < Ether.HDR_LEN + Ether.TAG_LEN || !isVlanTpid(etherType(b, off))) return -1;
  return get16(b, off + Ether.TYPE + 2);
}

/** The VLAN id (low 12 bits) of a TCI. */
export function vlanId(tci: number): number {
  return tci & 0xfff;
}

/** Swap destination and source MAC in place. */
export function macSwap(b: Uint8Array, off: number): void {
  for (let i = 0; i < Ether.ADDR_LEN; i++) {
    const t = b[off + i];
    b[off + i] = b[off + Ether.ADDR_LEN + i];
    b[off + Ether.ADDR_LEN + i] = t;
  }
}

/** Write the 6 bytes of `mac` at `at` (pass `off + Ether.DST` or `off + Ether.SRC`). */
export function setMac(b: Uint8Array, at: number, mac: Uint8Array): void {
  for (let i = 0; i < Ether.ADDR_LEN; i++) b[at + i] = mac[i];
}

/** True when the 6 bytes at `at` equal `mac`. */
export function macEquals(b: Uint8Array, at: number, mac: Uint8Array): boolean {
  for (let i = 0; i < Ether.ADDR_LEN; i++) if (b[at + i] !== mac[i]) return false;
  return true;
}

/** True for a group (multicast or broadcast) address: the I/G bit of its first byte. */
export function isMulticastMac(b: Uint8Array, at: number): boolean {
  return (b[at] & 1) !== 0;
}

/** ARP for IPv4 over Ethernet (RFC 826), offsets from the ARP header's start. */
export const Arp = {
  HTYPE: 0,
  PTYPE: 2,
  HLEN: 4,
  PLEN: 5,
  OPER: 6,
  SHA: 8,
  SPA: 14,
  THA: 18,
  TPA: 24,
  LEN: 28,
  HTYPE_ETHERNET: 1,
  REQUEST: 1,
  REPLY: 2,
} as const;
