/**
 * Receive-side scaling, the driver's half (virtio 1.2, 5.1.6.5.7 "Receive-side scaling (RSS)"):
 * the VIRTIO_NET_CTRL_MQ_RSS_CONFIG command that tells a device offering VIRTIO_NET_F_RSS which
 * hash types to use, with which key, and how its indirection table spreads hashes over the
 * receive queues.
 */
import { RssConfig } from "./constants.ts";

/**
 * The key used when none is given: the 40-byte example key of Microsoft's RSS documentation (its
 * hash verification examples use it), which many drivers take as their default.
 */
export const DEFAULT_RSS_KEY: Uint8Array = Uint8Array.of(
  0x6d,
  0x5a,
  0x56,
  0xda,
  0x25,
  0x5b,
  0x0e,
  0xc2,
  0x41,
  0x67,
  0x25,
  0x3d,
  0x43,
  0xa3,
  0x8f,
  0xb0,
  0xd0,
  0xca,
  0x2b,
  0xcb,
  0xae,
  0x7b,
  0x30,
  0xb4,
  0x77,
  0xcb,
  0x2d,
  0xa3,
  0x80,
  0x30,
  0xf2,
  0x0c,
  0x6a,
  0x42,
  0xb7,
  0x3b,
  0xbe,
  0xac,
  0x01,
  0xfa,
);

/** What the driver asks of RSS. */
export interface RssSettings {
  /** Enabled hash types (HashType bits; the device must support each one). */
  hashTypes: number;
  /** Queue pairs used: the table spreads over receiveq1..receiveqN, transmitq1..N are used. */
  queues: number;
  /** Entries in the indirection table (a power of two, at most the device's maximum). */
  tableLength: number;
  /** The hash key (at most the device's rss_max_key_size bytes). */
  key: Uint8Array;
}

/**
 * struct virtio_net_rss_config for `s` (5.1.6.5.7.1): entry i of the indirection table names
 * receive queue i mod queues, so equal shares of the hash space go to every queue; unclassified
 * packets go to the first queue.
 */
export function rssConfigData(s: RssSettings): Uint8Array {
  const n = s.tableLength;
  const out = new Uint8Array(RssConfig.size(n, s.key.length));
  const v = new DataView(out.buffer);
  v.setUint32(RssConfig.HASH_TYPES, s.hashTypes, true);
  v.setUint16(RssConfig.INDIRECTION_TABLE_MASK, n - 1, true);
  v.setUint16(RssConfig.UNCLASSIFIED_QUEUE, 0, true);
  for (let i = 0; i < n; i++) v.setUint16(RssConfig.INDIRECTION_TABLE + 2 * i, i % s.queues, true);
  v.setUint16(RssConfig.maxTxVq(n), s.queues, true);
  out[RssConfig.keyLength(n)] = s.key.length;
  out.set(s.key, RssConfig.key(n));
  return out;
}
