/**
 * The capture file formats vpmd writes and reads, as data.
 *
 * Classic pcap (draft-ietf-opsawg-pcap): a 24-byte file header, then per frame a 16-byte record
 * header and the captured bytes, all fields in the writer's byte order (the magic number says
 * which). Magic 0xa1b2c3d4 means microsecond timestamps, 0xa1b23c4d nanoseconds.
 *
 * pcapng (draft-ietf-opsawg-pcapng), read only: blocks of `type (4) | total length (4) | body |
 * total length (4)`, lengths multiples of 4; a Section Header Block (its byte-order magic
 * 0x1a2b3c4d) starts each section, Interface Description Blocks give each interface's link type,
 * and frames come in Enhanced (and Simple) Packet Blocks.
 */

/** Classic pcap file header fields. */
export const PcapHeader = {
  MAGIC: 0,
  VERSION_MAJOR: 4,
  VERSION_MINOR: 6,
  THISZONE: 8,
  SIGFIGS: 12,
  SNAPLEN: 16,
  LINKTYPE: 20,
  LEN: 24,
  MAGIC_USEC: 0xa1b2c3d4,
  MAGIC_NSEC: 0xa1b23c4d,
  VERSION: [2, 4] as const,
} as const;

/** Classic pcap record header fields. */
export const PcapRecord = {
  TS_SEC: 0,
  /** Microseconds or nanoseconds, as the magic says. */
  TS_FRAC: 4,
  CAPLEN: 8,
  ORIGLEN: 12,
  LEN: 16,
} as const;

/** LINKTYPE_ETHERNET (the tcpdump.org link-layer header type registry). */
export const LINKTYPE_ETHERNET = 1;

/** pcapng block types and fields that the reader uses. */
export const Pcapng = {
  SHB: 0x0a0d0d0a,
  IDB: 0x00000001,
  SPB: 0x00000003,
  EPB: 0x00000006,
  BYTE_ORDER_MAGIC: 0x1a2b3c4d,
  /** Block header: type, total length; the body follows. */
  BLOCK_HDR: 8,
  /** SHB body: byte-order magic at 0. IDB body: link type (u16) at 0, snap length (u32) at 4. */
  IDB_LINKTYPE: 0,
  /** EPB body: interface id, timestamp high, low, captured length, original length, data. */
  EPB_IF: 0,
  EPB_TS_HIGH: 4,
  EPB_TS_LOW: 8,
  EPB_CAPLEN: 12,
  EPB_ORIGLEN: 16,
  EPB_DATA: 20,
  /** SPB body: original length, data (captured length = what the block holds). */
  SPB_ORIGLEN: 0,
  SPB_DATA: 4,
} as const;

/** Largest snap length vpmd writes (the largest frame it handles). */
export const MAX_SNAPLEN = 65535;
