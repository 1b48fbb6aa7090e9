/**
 * Receive-side scaling on the device side (virtio 1.2, 5.1.6.5.7 "Receive-side scaling (RSS)"),
 * written from the spec apart from the driver's half (mod/virtio/rss.ts): the driver's
 * VIRTIO_NET_CTRL_MQ_RSS_CONFIG command checked and kept, the per-packet hash over the fields the
 * enabled hash types name (5.1.6.4.3), and the receive queue it picks through the indirection
 * table (5.1.6.5.7, "RSS processing").
 *
 * The hash is the Toeplitz hash that 5.1.6.5.7 names, as Microsoft's RSS documentation defines it:
 * for every bit of the input that is set, counting from the most significant bit of its first
 * byte, the 32 bits of the key starting at that bit's position are XORed into the result.
 *
 * The device hashes IPv4 only (its `supported_hash_types`): the frames it generates are IPv4/UDP.
 * Anything else is unclassified and goes to `unclassified_queue`.
 */
import { Eth } from "../eth.ts";
import { HashType, RssConfig } from "../virtio/constants.ts";

/** What the device offers in its configuration (5.1.4): key and table limits, hash types. */
export const SIM_RSS = {
  maxKeySize: RssConfig.MIN_KEY_SIZE,
  maxTableLength: RssConfig.MIN_INDIRECTION_TABLE_LENGTH,
  hashTypes: HashType.IPv4 | HashType.TCPv4 | HashType.UDPv4,
} as const;

/** RSS parameters as the driver set them (5.1.6.5.7.1). */
export interface RssState {
  /** Enabled hash types (HashType bits). */
  hashTypes: number;
  /** Receive queue numbers (0 = receiveq1), indexed by hash & (length - 1). */
  table: Uint16Array;
  /** Receive queue of packets the device computes no hash for. */
  unclassified: number;
  /** Transmit queues the driver may use (transmitq1 .. transmitq max_tx_vq). */
  maxTxVq: number;
  key: Uint8Array;
}

/**
 * The Toeplitz hash of `input[0..len)` under `key`. The key needs `len + 4` bytes (40 covers an
 * IPv6 4-tuple); missing key bits count as 0.
 */
export function toeplitz(key: Uint8Array, input: Uint8Array, len = input.length): number {
  let result = 0;
  // The 32 key bits starting at the current input bit.
  let window = ((key[0] << 24) | (key[1] << 16) | (key[2] << 8) | key[3]) >>> 0;
  for (let i = 0; i < len; i++) {
    const b = input[i];
    const feed = i + 4 < key.length ? key[i + 4] : 0;
    for (let bit = 7; bit >= 0; bit--) {
      if (((b >> bit) & 1) !== 0) result ^= window;
      window = ((window << 1) | ((feed >> bit) & 1)) >>> 0;
    }
  }
  return result >>> 0;
}

const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;

/**
 * 5.1.6.4.3 (IPv4 packets): the fields an IPv4 frame at `f[off..off+len)` is hashed over under `hashTypes`
 * (source and destination address, and the ports when its TCP or UDP type is enabled and the
 * packet carries that header: not a fragment), written to `out` in that order. Returns their byte
 * count: 12, 8, or 0 when no hash is computed. One 802.1Q tag is skipped.
 */
export function hashInput(
  f: Uint8Array,
  off: number,
  len: number,
  hashTypes: number,
  out: Uint8Array,
): number {
  let l3 = off + Eth.HDR;
  let type = len >= Eth.HDR ? (f[off + Eth.TYPE] << 8) | f[off + Eth.TYPE + 1] : 0;
  if (type === Eth.TYPE_VLAN && len >= Eth.HDR + Eth.VLAN_TAG) {
    type = (f[off + Eth.TYPE + 4] << 8) | f[off + Eth.TYPE + 5];
    l3 += Eth.VLAN_TAG;
  }
  const end = off + len;
  if (type !== Eth.TYPE_IPV4 || l3 + 20 > end || f[l3] >> 4 !== 4) return 0;
  const ihl = (f[l3] & 0xf) * 4;
  if (ihl < 20 || l3 + ihl > end) return 0;
  for (let i = 0; i < 8; i++) out[i] = f[l3 + 12 + i];
  const proto = f[l3 + 9];
  // More fragments, or an offset: no transport header to hash (only the first fragment has one,
  // and hashing it alone would split the packet's fragments over queues).
  const fragment = ((f[l3 + 6] & 0x3f) | f[l3 + 7]) !== 0;
  const l4 = l3 + ihl;
  const ports = !fragment && l4 + 4 <= end &&
    ((proto === IPPROTO_TCP && (hashTypes & HashType.TCPv4) !== 0) ||
      (proto === IPPROTO_UDP && (hashTypes & HashType.UDPv4) !== 0));
  if (ports) {
    for (let i = 0; i < 4; i++) out[8 + i] = f[l4 + i];
    return 12;
  }
  return (hashTypes & HashType.IPv4) !== 0 ? 8 : 0;
}

/** The receive queue (0 = receiveq1) for the frame at `f[off..off+len)` (5.1.6.5.7, "RSS processing"). */
export function rssQueue(rss: RssState, f: Uint8Array, off: number, len: number): number {
  const input = new Uint8Array(12);
  const n = hashInput(f, off, len, rss.hashTypes, input);
  if (n === 0) return rss.unclassified;
  return rss.table[toeplitz(rss.key, input, n) & (rss.table.length - 1)];
}

/**
 * The command-specific data of VIRTIO_NET_CTRL_MQ_RSS_CONFIG, checked (5.1.6.5.7.1): a table of a
 * power-of-two length within what the device offers, naming queues it has; hash types it
 * supports; a key no longer than its maximum; nothing left over. null when anything is wrong (the
 * device answers VIRTIO_NET_ERR).
 */
export function parseRssConfig(data: Uint8Array, queuePairs: number): RssState | null {
  const u16 = (at: number) => data[at] | (data[at + 1] << 8);
  if (data.length < RssConfig.INDIRECTION_TABLE) return null;
  const hashTypes = (data[0] | (data[1] << 8) | (data[2] << 16) | (data[3] << 24)) >>> 0;
  const entries = u16(RssConfig.INDIRECTION_TABLE_MASK) + 1;
  const unclassified = u16(RssConfig.UNCLASSIFIED_QUEUE);
  if ((entries & (entries - 1)) !== 0 || entries > SIM_RSS.maxTableLength) return null;
  if ((hashTypes & ~SIM_RSS.hashTypes) !== 0 || unclassified >= queuePairs) return null;
  if (data.length < RssConfig.key(entries)) return null;
  const table = new Uint16Array(entries);
  for (let i = 0; i < entries; i++) {
    table[i] = u16(RssConfig.INDIRECTION_TABLE + 2 * i);
    if (table[i] >= queuePairs) return null;
  }
  const maxTxVq = u16(RssConfig.maxTxVq(entries));
  const keyLength = data[RssConfig.keyLength(entries)];
  if (maxTxVq < 1 || maxTxVq > queuePairs || keyLength > SIM_RSS.maxKeySize) return null;
  if (data.length !== RssConfig.size(entries, keyLength)) return null;
  const key = data.slice(RssConfig.key(entries), RssConfig.key(entries) + keyLength);
  return { hashTypes, table, unclassified, maxTxVq, key };
}
