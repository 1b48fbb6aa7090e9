/**
 * Ethernet framing, as data: the MAC frame of IEEE 802.3 (clause 3: destination, source,
 * length/type; 4.4.2: minFrameSize of 64 octets with the 4-octet FCS) and the 802.1Q tag (clause
 * 9: TPID 0x8100 and a 16-bit TCI). virtio-net frames carry no FCS, so sizes here have none.
 * EtherTypes are from the IEEE registry (IPv4 RFC 894, ARP RFC 826, RARP RFC 903).
 */

/** Ethernet framing used by the driver and forwarder (IEEE 802.3 / 802.1Q). */
export const Eth = {
  HDR: 14,
  ADDR: 6,
  DST: 0,
  SRC: 6,
  TYPE: 12,
  TYPE_VLAN: 0x8100,
  TYPE_IPV4: 0x0800,
  TYPE_ARP: 0x0806,
  TYPE_RARP: 0x8035,
  VLAN_TAG: 4,
  MIN_FRAME: 60,
  /** Largest frame for MTU 1500: 14-byte header + one 802.1Q tag + 1500 (virtio carries no FCS). */
  MAX_FRAME: 1518,
  MTU: 1500,
  /**
   * Largest frame vpmd handles at all: the MTU in the device config is a le16 (virtio 1.2 5.1.4),
   * and vpmd keeps header, tag and MTU within it.
   */
  LARGEST_FRAME: 65535,
} as const;
