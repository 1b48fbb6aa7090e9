/**
 * Software IEEE 802.1Q VLAN tag strip and insert, in place in an mbuf's first segment.
 *
 * Tagged frame: dst MAC (6) | src MAC (6) | TPID 0x8100 (2) | TCI (2) | ethertype | payload.
 * Stripping moves the 12 address bytes 4 bytes forward over the tag and advances the data start;
 * inserting moves them 4 bytes back into the headroom and writes a tag after them. Only the first
 * segment is touched, and nothing is allocated.
 *
 * Behaviour with tags already present: strip removes only the outermost 0x8100 tag (an inner tag
 * stays in the frame; a 0x88a8 service tag is not 802.1Q and is left alone). Insert always pushes
 * a new outermost 0x8100 tag, so a frame that already carries one leaves with two (Q-in-Q style).
 */
import { MbufFlag, type MbufPool } from "./mbuf.ts";
import { Eth } from "./eth.ts";

const MACS = 2 * Eth.ADDR;

/**
 * Strip the outermost 802.1Q tag of packet `m`: its TCI goes to `pool.vlanTci[m]` and
 * MbufFlag.VLAN_STRIPPED is set. Returns false (frame untouched) when it carries no such tag.
 */
export function vlanStrip(pool: MbufPool, m: number): boolean {
  const b = pool.bytes;
  const start = pool.bufOff[m] + pool.dataOff[m];
  if (pool.dataLen[m] < Eth.HDR + Eth.VLAN_TAG) return false;
  if (
    b[start + Eth.TYPE] !== Eth.TYPE_VLAN >> 8 || b[start + Eth.TYPE + 1] !== (Eth.TYPE_VLAN & 0xff)
  ) {
    return false;
  }
  pool.vlanTci[m] = (b[start + Eth.TYPE + 2] << 8) | b[start + Eth.TYPE + 3];
  for (let i = MACS - 1; i >= 0; i--) b[start + Eth.VLAN_TAG + i] = b[start + i];
  pool.dataOff[m] += Eth.VLAN_TAG;
  pool.dataLen[m] -= Eth.VLAN_TAG;
  pool.pktLen[m] -= Eth.VLAN_TAG;
  pool.flags[m] |= MbufFlag.VLAN_STRIPPED;
  return true;
}

/**
 * Push an 802.1Q tag with `tci` in front of packet `m`'s ethertype. `keep` bytes of headroom must
 * remain in front of the tagged frame (the virtio-net header). Returns false (frame untouched)
 * when the headroom is too small or the first segment has no full Ethernet address pair.
 */
export function vlanInsert(pool: MbufPool, m: number, tci: number, keep: number): boolean {
  const off = pool.dataOff[m];
  if (off < keep + Eth.VLAN_TAG || pool.dataLen[m] < MACS) return false;
  const b = pool.bytes;
  const start = pool.bufOff[m] + off;
  const to = start - Eth.VLAN_TAG;
  for (let i = 0; i < MACS; i++) b[to + i] = b[start + i];
  b[to + Eth.TYPE] = Eth.TYPE_VLAN >> 8;
  b[to + Eth.TYPE + 1] = Eth.TYPE_VLAN & 0xff;
  b[to + Eth.TYPE + 2] = (tci >> 8) & 0xff;
  b[to + Eth.TYPE + 3] = tci & 0xff;
  pool.dataOff[m] = off - Eth.VLAN_TAG;
  pool.dataLen[m] += Eth.VLAN_TAG;
  pool.pktLen[m] += Eth.VLAN_TAG;
  pool.flags[m] &= ~MbufFlag.VLAN_INSERT;
  return true;
}
