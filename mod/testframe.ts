/**
 * Self-describing test frames: Ethernet / IPv4 / UDP with a payload that says which stream and
 * sequence number it carries and whose every byte can be checked. Used by the txonly engine, the
 * simulated device's wire generator and checker, and the lab's host-side traffic tools.
 *
 * Layout (offsets after an optional 802.1Q tag):
 *   0 dst MAC, 6 src MAC, 12 ethertype 0x0800,
 *   14 IPv4 (20 bytes, checksum valid, proto UDP, 198.18.0.1 -> 198.18.0.2),
 *   34 UDP (8 bytes, ports 9 -> 9, checksum 0 = none),
 *   42 payload: "VPMD" magic (4), stream (u32 BE), sequence (u32 BE), frame length (u32 BE),
 *   58.. pattern: byte i of the frame = (i * 13 + stream * 7 + 0x5a) & 0xff.
 * Frames are 60 bytes or more (shorter requests are padded to 60).
 *
 * Writing and checking allocate nothing.
 */
import { Eth } from "./eth.ts";

/** Shortest test frame (an Ethernet minimum frame without its FCS). */
export const TEST_FRAME_MIN = 60;
const IP = 14;
const UDP = 34;
const PAYLOAD = 42;
const PATTERN = 58;
const MAGIC = 0x56504d44; // "VPMD"

/** Results of `checkTestFrame`. */
export const FrameCheck = {
  OK: 0,
  /** Not one of ours (no magic, not IPv4/UDP): someone else's traffic. */
  FOREIGN: 1,
  /** Length field disagrees with the frame's length (truncated or padded). */
  BAD_LENGTH: 2,
  BAD_IP_CHECKSUM: 3,
  /** A payload byte differs from the pattern (corruption). */
  BAD_PATTERN: 4,
} as const;

function patternByte(i: number, stream: number): number {
  return (i * 13 + stream * 7 + 0x5a) & 0xff;
}

function ipChecksum(b: Uint8Array, off: number): number {
  let sum = 0;
  for (let i = 0; i < 20; i += 2) {
    if (i === 10) continue;
    sum += (b[off + i] << 8) | b[off + i + 1];
  }
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

function put32(b: Uint8Array, off: number, v: number): void {
  b[off] = v >>> 24;
  b[off + 1] = (v >>> 16) & 0xff;
  b[off + 2] = (v >>> 8) & 0xff;
  b[off + 3] = v & 0xff;
}

function get32(b: Uint8Array, off: number): number {
  return ((b[off] << 24) | (b[off + 1] << 16) | (b[off + 2] << 8) | b[off + 3]) >>> 0;
}

/**
 * Write a test frame of `len` bytes (at least 60) at `b[off..]`. `dst` and `src` are MAC
 * addresses as 6-byte arrays. Returns the frame length written.
 */
export function writeTestFrame(
  b: Uint8Array,
  off: number,
  len: number,
  stream: number,
  seq: number,
  dst: Uint8Array,
  src: Uint8Array,
): number {
  if (len < TEST_FRAME_MIN) len = TEST_FRAME_MIN;
  b.set(dst, off);
  b.set(src, off + 6);
  b[off + 12] = Eth.TYPE_IPV4 >> 8;
  b[off + 13] = Eth.TYPE_IPV4 & 0xff;
  const ip = off + IP;
  const ipLen = len - IP;
  b[ip] = 0x45;
  b[ip + 1] = 0;
  b[ip + 2] = ipLen >> 8;
  b[ip + 3] = ipLen & 0xff;
  b[ip + 4] = (seq >>> 8) & 0xff;
  b[ip + 5] = seq & 0xff;
  b[ip + 6] = 0;
  b[ip + 7] = 0;
  b[ip + 8] = 64;
  b[ip + 9] = 17;
  b[ip + 10] = 0;
  b[ip + 11] = 0;
  b[ip + 12] = 198;
  b[ip + 13] = 18;
  b[ip + 14] = 0;
  b[ip + 15] = 1;
  b[ip + 16] = 198;
  b[ip + 17] = 18;
  b[ip + 18] = 0;
  b[ip + 19] = 2;
  const cs = ipChecksum(b, ip);
  b[ip + 10] = cs >> 8;
  b[ip + 11] = cs & 0xff;
  const udp = off + UDP;
  const udpLen = len - UDP;
  b[udp] = 0;
  b[udp + 1] = 9;
  b[udp + 2] = 0;
  b[udp + 3] = 9;
  b[udp + 4] = udpLen >> 8;
  b[udp + 5] = udpLen & 0xff;
  b[udp + 6] = 0;
  b[udp + 7] = 0;
  put32(b, off + PAYLOAD, MAGIC);
  put32(b, off + PAYLOAD + 4, stream);
  put32(b, off + PAYLOAD + 8, seq);
  put32(b, off + PAYLOAD + 12, len);
  for (let i = PATTERN; i < len; i++) b[off + i] = patternByte(i, stream);
  return len;
}

/** Flows `setTestFrameFlow` tells apart. */
export const TEST_FLOWS = 4096;

/**
 * Move the untagged test frame at `b[off..]` to flow `flow` (0 to TEST_FLOWS - 1): flow 0 is the
 * frame as written (198.18.0.1, UDP port 9), flow f > 0 comes from 198.19.(f >> 8).(f & 0xff), UDP
 * port 1024 + f, to the same destination. The IP checksum follows; the payload is untouched.
 */
export function setTestFrameFlow(b: Uint8Array, off: number, flow: number): void {
  if (flow === 0) return;
  const ip = off + IP;
  b[ip + 13] = 19;
  b[ip + 14] = (flow >> 8) & 0xff;
  b[ip + 15] = flow & 0xff;
  const port = 1024 + flow;
  b[off + UDP] = port >> 8;
  b[off + UDP + 1] = port & 0xff;
  const cs = ipChecksum(b, ip);
  b[ip + 10] = cs >> 8;
  b[ip + 11] = cs & 0xff;
}

/**
 * Check the frame at `b[off..off+len)`. On OK, `out[0]` = stream, `out[1]` = sequence and
 * `out[2]` = 1 when the frame carried an 802.1Q tag (whose TCI is `out[3]`). One outer VLAN tag
 * is skipped: the length field then counts the frame without it.
 */
export function checkTestFrame(b: Uint8Array, off: number, len: number, out: Uint32Array): number {
  let tagged = 0;
  let tci = 0;
  if (len >= Eth.HDR && ((b[off + 12] << 8) | b[off + 13]) === Eth.TYPE_VLAN) {
    tagged = 1;
    tci = (b[off + 14] << 8) | b[off + 15];
    // Re-base past the tag: MACs are not checked, everything from the ethertype on shifts by 4.
    off += Eth.VLAN_TAG;
    len -= Eth.VLAN_TAG;
  }
  return checkUntagged(b, off, len, out, tagged, tci);
}

function checkUntagged(
  b: Uint8Array,
  off: number,
  len: number,
  out: Uint32Array,
  tagged: number,
  tci: number,
): number {
  if (len < PATTERN) return FrameCheck.FOREIGN;
  if (((b[off + 12] << 8) | b[off + 13]) !== Eth.TYPE_IPV4) return FrameCheck.FOREIGN;
  if (b[off + IP + 9] !== 17 || get32(b, off + PAYLOAD) !== MAGIC) return FrameCheck.FOREIGN;
  const ip = off + IP;
  if (((b[ip + 10] << 8) | b[ip + 11]) !== ipChecksum(b, ip)) return FrameCheck.BAD_IP_CHECKSUM;
  if (get32(b, off + PAYLOAD + 12) !== len) return FrameCheck.BAD_LENGTH;
  const stream = get32(b, off + PAYLOAD + 4);
  for (let i = PATTERN; i < len; i++) {
    if (b[off + i] !== patternByte(i, stream)) return FrameCheck.BAD_PATTERN;
  }
  out[0] = stream;
  out[1] = get32(b, off + PAYLOAD + 8);
  out[2] = tagged;
  out[3] = tci;
  return FrameCheck.OK;
}
