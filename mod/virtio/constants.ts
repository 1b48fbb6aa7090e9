/**
 * virtio constants, written once, as data. Section numbers are OASIS virtio 1.2 (cs01).
 * Feature bits are bit *numbers*; use `bit(n)` for a bigint mask (cold path only).
 */

/** 2.1 Device Status Field. */
export const Status = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  DEVICE_NEEDS_RESET: 64,
  FAILED: 128,
} as const;

/** 6 Reserved Feature Bits (device-independent). */
export const Feature = {
  /** 6: legacy; device notifies when the avail ring empties. */
  NOTIFY_ON_EMPTY: 24,
  /** 6 / 2.7.4: legacy; header and data may share a descriptor. */
  ANY_LAYOUT: 27,
  INDIRECT_DESC: 28,
  /** 2.7.10: used_event / avail_event suppression. */
  EVENT_IDX: 29,
  /** vhost-user: VHOST_USER_F_PROTOCOL_FEATURES (QEMU vhost-user protocol document). */
  VHOST_USER_PROTOCOL_FEATURES: 30,
  VERSION_1: 32,
  ACCESS_PLATFORM: 33,
  RING_PACKED: 34,
  IN_ORDER: 35,
  ORDER_PLATFORM: 36,
  SR_IOV: 37,
  NOTIFICATION_DATA: 38,
  RING_RESET: 40,
} as const;

/** 5.1.3 Network device feature bits. */
export const NetFeature = {
  CSUM: 0,
  GUEST_CSUM: 1,
  CTRL_GUEST_OFFLOADS: 2,
  MTU: 3,
  MAC: 5,
  /** 5.1.3.1 legacy: GSO. */
  GSO: 6,
  GUEST_TSO4: 7,
  GUEST_TSO6: 8,
  GUEST_ECN: 9,
  GUEST_UFO: 10,
  HOST_TSO4: 11,
  HOST_TSO6: 12,
  HOST_ECN: 13,
  HOST_UFO: 14,
  MRG_RXBUF: 15,
  STATUS: 16,
  CTRL_VQ: 17,
  CTRL_RX: 18,
  CTRL_VLAN: 19,
  CTRL_RX_EXTRA: 20,
  GUEST_ANNOUNCE: 21,
  MQ: 22,
  CTRL_MAC_ADDR: 23,
  /** 5.1.6.5.7: receive-side scaling, Toeplitz hash (needs CTRL_VQ). */
  RSS: 60,
  SPEED_DUPLEX: 63,
} as const;

/** A bigint mask with feature bit `n` set (cold path). */
export function bit(n: number): bigint {
  return 1n << BigInt(n);
}

/** True when `features` has bit `n`. */
export function has(features: bigint, n: number): boolean {
  return (features & bit(n)) !== 0n;
}

/** Names of every bit set in `features`, for logs and errors. */
export function featureNames(features: bigint): string[] {
  const names: string[] = [];
  for (let n = 0; n < 64; n++) {
    if (!has(features, n)) continue;
    const name = Object.entries(NetFeature).find(([, v]) => v === n)?.[0] ??
      Object.entries(Feature).find(([, v]) => v === n)?.[0] ?? `BIT${n}`;
    names.push(name);
  }
  return names;
}

/** 2.7.5 The Virtqueue Descriptor Table: struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; }. */
export const Desc = {
  SIZE: 16,
  /** Byte offsets inside one descriptor. */
  ADDR: 0,
  LEN: 8,
  FLAGS: 12,
  NEXT: 14,
  /** Flags. */
  F_NEXT: 1,
  F_WRITE: 2,
  F_INDIRECT: 4,
} as const;

/** 2.7.6 The Virtqueue Available Ring: { le16 flags; le16 idx; le16 ring[N]; le16 used_event; }. */
export const Avail = {
  FLAGS: 0,
  IDX: 2,
  RING: 4,
  F_NO_INTERRUPT: 1,
  /** Total bytes for a queue of `n` entries (with used_event). */
  size: (n: number) => 6 + 2 * n,
  /** Byte offset of used_event (2.7.10). */
  usedEvent: (n: number) => 4 + 2 * n,
} as const;

/** 2.7.8 The Virtqueue Used Ring: { le16 flags; le16 idx; struct { le32 id; le32 len; } ring[N]; le16 avail_event; }. */
export const Used = {
  FLAGS: 0,
  IDX: 2,
  RING: 4,
  ELEM_SIZE: 8,
  ELEM_ID: 0,
  ELEM_LEN: 4,
  F_NO_NOTIFY: 1,
  size: (n: number) => 6 + 8 * n,
  /** Byte offset of avail_event (2.7.10). */
  availEvent: (n: number) => 4 + 8 * n,
} as const;

/**
 * 2.7 Split Virtqueues: alignment of each part (table 2.7 "Virtqueue Part Alignment").
 * Legacy interfaces (2.7.2 / 4.1.5 legacy) put the used ring on a 4096-byte boundary of one
 * contiguous area whose page frame number is written to the device.
 */
export const RingAlign = {
  DESC: 16,
  AVAIL: 2,
  USED: 4,
  LEGACY_USED: 4096,
} as const;

/** Largest queue size of a split ring (2.7: "Queue Size ... maximum 32768"). */
export const MAX_QUEUE_SIZE = 32768;

/** 2.7.10 / 2.7.7.2: vring_need_event(event_idx, new_idx, old_idx), all u16. */
export function needEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

/**
 * 2.8.13 The Virtqueue Descriptor Format (packed): struct pvirtq_desc { le64 addr; le32 len;
 * le16 id; le16 flags; }. NEXT, WRITE and INDIRECT keep their split-ring values (2.8.6, 2.8.4,
 * 2.8.7); AVAIL and USED carry the wrap counters (2.8.1): a descriptor is available when the two
 * differ and AVAIL equals the driver's wrap counter, used when both equal the device's.
 */
export const PackedDesc = {
  SIZE: 16,
  ADDR: 0,
  LEN: 8,
  ID: 12,
  FLAGS: 14,
  F_NEXT: 1,
  F_WRITE: 2,
  F_INDIRECT: 4,
  F_AVAIL: 1 << 7,
  F_USED: 1 << 15,
} as const;

/**
 * 2.8.10 Driver and Device Event Suppression, 2.8.14 struct pvirtq_event_suppress { le16 desc
 * (desc_event_off : 15, desc_event_wrap : 1); le16 flags (desc_event_flags : 2) }. The driver
 * area holds the driver's (read by the device), the device area the device's (read by the
 * driver). DESC is only valid with VIRTIO_F_EVENT_IDX.
 */
export const EventSuppress = {
  SIZE: 4,
  OFF_WRAP: 0,
  FLAGS: 2,
  /** desc_event_wrap is bit 15 of the first le16. */
  WRAP_SHIFT: 15,
  OFF_MASK: 0x7fff,
  FLAGS_MASK: 3,
  ENABLE: 0,
  DISABLE: 1,
  DESC: 2,
} as const;

/** 2.8.10.1 Structure Size and Alignment (packed): descriptor ring 16, event structures 4. */
export const PackedAlign = {
  DESC: 16,
  EVENT: 4,
} as const;

/** 2.8: "Packed virtqueues support up to 2^15 entries each." */
export const MAX_PACKED_QUEUE_SIZE = 32768;

/**
 * 5.1.6 Device Operation: struct virtio_net_hdr. 10 bytes without num_buffers (legacy without
 * MRG_RXBUF), 12 bytes when MRG_RXBUF or VERSION_1 is negotiated (5.1.6.1).
 */
export const NetHdr = {
  FLAGS: 0,
  GSO_TYPE: 1,
  HDR_LEN: 2,
  GSO_SIZE: 4,
  CSUM_START: 6,
  CSUM_OFFSET: 8,
  NUM_BUFFERS: 10,
  SIZE_LEGACY: 10,
  SIZE: 12,
  F_NEEDS_CSUM: 1,
  F_DATA_VALID: 2,
  GSO_NONE: 0,
} as const;

/** Net header size for a negotiated feature set (5.1.6.1). */
export function netHdrSize(features: bigint): number {
  return has(features, Feature.VERSION_1) || has(features, NetFeature.MRG_RXBUF)
    ? NetHdr.SIZE
    : NetHdr.SIZE_LEGACY;
}

/** 5.1.4 Device configuration layout (struct virtio_net_config), byte offsets. */
export const NetConfig = {
  MAC: 0,
  STATUS: 6,
  MAX_VIRTQUEUE_PAIRS: 8,
  MTU: 10,
  SPEED: 12,
  DUPLEX: 16,
  /** With VIRTIO_NET_F_RSS: u8 rss_max_key_size, le16 rss_max_indirection_table_length. */
  RSS_MAX_KEY_SIZE: 17,
  RSS_MAX_INDIRECTION_TABLE_LENGTH: 18,
  /** le32 supported_hash_types (RSS or HASH_REPORT). */
  SUPPORTED_HASH_TYPES: 20,
  /** status bits */
  S_LINK_UP: 1,
  S_ANNOUNCE: 2,
} as const;

/**
 * 5.1.4: the fields of struct virtio_net_config, their sizes, and the feature bit that makes each
 * one exist (a device without the feature may end its configuration before the field).
 */
export const NET_CONFIG_FIELDS: readonly {
  name: string;
  offset: number;
  size: number;
  feature: number;
}[] = [
  { name: "mac", offset: NetConfig.MAC, size: 6, feature: NetFeature.MAC },
  { name: "status", offset: NetConfig.STATUS, size: 2, feature: NetFeature.STATUS },
  {
    name: "max_virtqueue_pairs",
    offset: NetConfig.MAX_VIRTQUEUE_PAIRS,
    size: 2,
    feature: NetFeature.MQ,
  },
  { name: "mtu", offset: NetConfig.MTU, size: 2, feature: NetFeature.MTU },
  { name: "speed", offset: NetConfig.SPEED, size: 4, feature: NetFeature.SPEED_DUPLEX },
  { name: "duplex", offset: NetConfig.DUPLEX, size: 1, feature: NetFeature.SPEED_DUPLEX },
  {
    name: "rss_max_key_size",
    offset: NetConfig.RSS_MAX_KEY_SIZE,
    size: 1,
    feature: NetFeature.RSS,
  },
  {
    name: "rss_max_indirection_table_length",
    offset: NetConfig.RSS_MAX_INDIRECTION_TABLE_LENGTH,
    size: 2,
    feature: NetFeature.RSS,
  },
  {
    name: "supported_hash_types",
    offset: NetConfig.SUPPORTED_HASH_TYPES,
    size: 4,
    feature: NetFeature.RSS,
  },
];

/**
 * 5.1.2 Virtqueues: receiveqN = 2(N-1), transmitqN = 2(N-1)+1, controlq = 2 * max pairs (max pairs
 * = max_virtqueue_pairs when MQ or RSS is negotiated, else 1).
 */
export const NetQueue = {
  rx: (pair: number) => 2 * pair,
  tx: (pair: number) => 2 * pair + 1,
  ctrl: (pairs: number) => 2 * pairs,
} as const;

/** 5.1.6.5 Control Virtqueue: struct virtio_net_ctrl { u8 class; u8 command; data; u8 ack; }. */
export const Ctrl = {
  OK: 0,
  ERR: 1,
  RX: 0,
  RX_PROMISC: 0,
  RX_ALLMULTI: 1,
  RX_ALLUNI: 2,
  RX_NOMULTI: 3,
  RX_NOUNI: 4,
  RX_NOBCAST: 5,
  MAC: 1,
  MAC_TABLE_SET: 0,
  MAC_ADDR_SET: 1,
  VLAN: 2,
  VLAN_ADD: 0,
  VLAN_DEL: 1,
  ANNOUNCE: 3,
  ANNOUNCE_ACK: 0,
  MQ: 4,
  /** 5.1.6.5.6: automatic receive steering over this many pairs (le16). */
  MQ_VQ_PAIRS_SET: 0,
  MQ_VQ_PAIRS_MIN: 1,
  MQ_VQ_PAIRS_MAX: 0x8000,
  /** 5.1.6.5.7.1: struct virtio_net_rss_config (see `RssConfig`). */
  MQ_RSS_CONFIG: 1,
  GUEST_OFFLOADS: 5,
  GUEST_OFFLOADS_SET: 0,
} as const;

/**
 * 5.1.6.4.3.1 Supported/enabled hash types (bits of `hash_types` and `supported_hash_types`): what
 * the device may hash a received packet over.
 */
export const HashType = {
  IPv4: 1 << 0,
  TCPv4: 1 << 1,
  UDPv4: 1 << 2,
  IPv6: 1 << 3,
  TCPv6: 1 << 4,
  UDPv6: 1 << 5,
  IP_EX: 1 << 6,
  TCP_EX: 1 << 7,
  UDP_EX: 1 << 8,
} as const;

/**
 * 5.1.6.5.7.1 Setting RSS parameters: struct virtio_net_rss_config { le32 hash_types; le16
 * indirection_table_mask; le16 unclassified_queue; le16 indirection_table[mask + 1]; le16
 * max_tx_vq; u8 hash_key_length; u8 hash_key_data[hash_key_length]; }. Queue numbers are receiveq
 * numbers counted from 0 (0 = receiveq1), not virtqueue indexes.
 */
export const RssConfig = {
  HASH_TYPES: 0,
  INDIRECTION_TABLE_MASK: 4,
  UNCLASSIFIED_QUEUE: 6,
  INDIRECTION_TABLE: 8,
  /** Offset of max_tx_vq after a table of `n` entries; hash_key_length follows, then the key. */
  maxTxVq: (n: number) => 8 + 2 * n,
  keyLength: (n: number) => 10 + 2 * n,
  key: (n: number) => 11 + 2 * n,
  /** Bytes of the whole structure. */
  size: (n: number, keyBytes: number) => 11 + 2 * n + keyBytes,
  /** 5.1.4.1: a device offering RSS takes keys of at least 40 bytes and tables of 128 entries. */
  MIN_KEY_SIZE: 40,
  MIN_INDIRECTION_TABLE_LENGTH: 128,
} as const;
