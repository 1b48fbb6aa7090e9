/**
 * Guest announce (virtio 1.2, 5.1.6.5.4 "Gratuitous Packet Sending"): when the device sets
 * VIRTIO_NET_S_ANNOUNCE in the config `status` (after a migration, or QEMU's `announce_self`),
 * the driver sends a gratuitous packet for its MAC address so that switches relearn where the
 * address lives, then acknowledges with VIRTIO_NET_CTRL_ANNOUNCE_ACK (the port does the ack).
 *
 * The packet is a RARP "request reverse" (RFC 903): it needs only the MAC address, which is all a
 * poll-mode port knows (it has no IP address for a gratuitous ARP). Broadcast destination,
 * padded to the 60-byte Ethernet minimum.
 */
import type { MbufPool } from "./mbuf.ts";
import { NONE } from "./mbuf.ts";
import { Eth } from "./eth.ts";

/** RFC 903 / RFC 826 packet layout after the Ethernet header (offsets from the frame start). */
const Rarp = {
  HTYPE: 14, // hardware type: 1 = Ethernet
  PTYPE: 16, // protocol type: 0x0800 (IPv4)
  HLEN: 18, // 6
  PLEN: 19, // 4
  OP: 20, // 3 = request reverse
  SHA: 22, // sender hardware address
  SPA: 28, // sender protocol address (0.0.0.0)
  THA: 32, // target hardware address (the same MAC)
  TPA: 38, // target protocol address (0.0.0.0)
  HTYPE_ETHERNET: 1,
  OP_REQUEST_REVERSE: 3,
} as const;

/** Bytes of an announce frame (the Ethernet minimum without FCS). */
export const ANNOUNCE_FRAME_BYTES = Eth.MIN_FRAME;

/** Write the RARP announce for `mac` at `out[off..off+60)`; returns its length. */
export function writeAnnounce(out: Uint8Array, off: number, mac: Uint8Array): number {
  if (mac.length !== Eth.ADDR) throw new Error(`a MAC address has 6 bytes (${mac.length} given)`);
  const f = out.subarray(off, off + ANNOUNCE_FRAME_BYTES);
  f.fill(0);
  f.fill(0xff, Eth.DST, Eth.DST + Eth.ADDR);
  f.set(mac, Eth.SRC);
  f[Eth.TYPE] = Eth.TYPE_RARP >> 8;
  f[Eth.TYPE + 1] = Eth.TYPE_RARP & 0xff;
  f[Rarp.HTYPE + 1] = Rarp.HTYPE_ETHERNET;
  f[Rarp.PTYPE] = Eth.TYPE_IPV4 >> 8;
  f[Rarp.PTYPE + 1] = Eth.TYPE_IPV4 & 0xff;
  f[Rarp.HLEN] = Eth.ADDR;
  f[Rarp.PLEN] = 4;
  f[Rarp.OP + 1] = Rarp.OP_REQUEST_REVERSE;
  f.set(mac, Rarp.SHA);
  f.set(mac, Rarp.THA);
  return ANNOUNCE_FRAME_BYTES;
}

/** What sending an announce needs from a port (mod/port.ts implements it). */
export interface AnnouncePort {
  readonly mac: Uint8Array;
  txBurst(queue: number, pkts: Uint32Array, n: number): number;
  txIdle(queue: number): void;
}

/**
 * Send one announce frame for `port.mac` on TX queue 0 (cold path, on a device request). Returns
 * an error message, or null when the frame was queued.
 */
export function sendAnnounce(port: AnnouncePort, pool: MbufPool): string | null {
  const m = pool.alloc();
  if (m === NONE) return "no free buffer for the announce frame";
  const len = writeAnnounce(pool.bytes, pool.dataStart(m), port.mac);
  pool.dataLen[m] = len;
  pool.pktLen[m] = len;
  const pkts = Uint32Array.of(m);
  if (port.txBurst(0, pkts, 1) === 1) {
    port.txIdle(0); // nothing follows it: the notification check in full (Port.txIdle)
    return null;
  }
  pool.free(m);
  return "the TX ring is full or the port is stopped";
}
