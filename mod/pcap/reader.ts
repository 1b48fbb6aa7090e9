/**
 * Reading a capture file whole: classic pcap (either byte order, microsecond or nanosecond
 * timestamps) or pcapng (Enhanced and Simple Packet Blocks, several sections and interfaces),
 * Ethernet frames only. Every length is checked against the file before it is used; a malformed
 * file is one PcapFormatError with a one-line message. A last record cut short (a file still
 * being written) ends the frames and sets `truncated`.
 */
import { LINKTYPE_ETHERNET, MAX_SNAPLEN, PcapHeader, Pcapng, PcapRecord } from "./format.ts";

/** A file that is not a capture vpmd can read; the message is one line. */
export class PcapFormatError extends Error {}

/** The frames of a capture: frame `i` is `data[off[i] .. off[i] + caplen[i])`. */
export interface PcapFrames {
  /** The whole file. */
  data: Uint8Array;
  /** Frames in it. */
  count: number;
  /** Where each frame's bytes start in `data`. */
  off: Uint32Array;
  /** Bytes captured of each frame. */
  caplen: Uint32Array;
  /** Length of the frame on the wire (more than `caplen` when the snap length cut it). */
  origLen: Uint32Array;
  /** Capture time of each frame in nanoseconds since 1970 (as a double: to ~0.25 µs today). */
  timeNs: Float64Array;
  /** The file's format. */
  format: "pcap" | "pcapng";
  /** The last record was cut short (not included). */
  truncated: boolean;
}

/** Read the capture file at `path`. */
export function readPcap(path: string): PcapFrames {
  let data: Uint8Array;
  try {
    data = Deno.readFileSync(path);
  } catch (e) {
    throw new PcapFormatError(`${path}: ${(e as Error).message.split("\n")[0]}`);
  }
  try {
    return parsePcap(data);
  } catch (e) {
    if (e instanceof PcapFormatError) throw new PcapFormatError(`${path}: ${e.message}`);
    throw e;
  }
}

/** Parse a whole capture file held in `data`. */
export function parsePcap(data: Uint8Array): PcapFrames {
  if (data.length < 4) throw new PcapFormatError("not a pcap or pcapng file (too short)");
  const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
  if (v.getUint32(0, true) === Pcapng.SHB) return parsePcapng(data, v);
  return parseClassic(data, v);
}

interface Collected {
  off: number[];
  caplen: number[];
  origLen: number[];
  timeNs: number[];
}

function frames(
  data: Uint8Array,
  c: Collected,
  format: "pcap" | "pcapng",
  truncated: boolean,
): PcapFrames {
  return {
    data,
    count: c.off.length,
    off: Uint32Array.from(c.off),
    caplen: Uint32Array.from(c.caplen),
    origLen: Uint32Array.from(c.origLen),
    timeNs: Float64Array.from(c.timeNs),
    format,
    truncated,
  };
}

function parseClassic(data: Uint8Array, v: DataView): PcapFrames {
  if (data.length < PcapHeader.LEN) throw new PcapFormatError("not a pcap file (too short)");
  let le: boolean;
  let nsec: boolean;
  const magicLe = v.getUint32(PcapHeader.MAGIC, true);
  const magicBe = v.getUint32(PcapHeader.MAGIC, false);
  if (magicLe === PcapHeader.MAGIC_NSEC || magicLe === PcapHeader.MAGIC_USEC) {
    le = true;
    nsec = magicLe === PcapHeader.MAGIC_NSEC;
  } else if (magicBe === PcapHeader.MAGIC_NSEC || magicBe === PcapHeader.MAGIC_USEC) {
    le = false;
    nsec = magicBe === PcapHeader.MAGIC_NSEC;
  } else {
    throw new PcapFormatError("not a pcap or pcapng file (unknown magic number)");
  }
  // The link type is the low 16 bits; the upper ones may carry FCS information (ignored).
  const linktype = v.getUint32(PcapHeader.LINKTYPE, le) & 0xffff;
  if (linktype !== LINKTYPE_ETHERNET) {
    throw new PcapFormatError(`link type ${linktype} is not Ethernet (1)`);
  }
  const c: Collected = { off: [], caplen: [], origLen: [], timeNs: [] };
  let at = PcapHeader.LEN;
  let truncated = false;
  while (at < data.length) {
    if (at + PcapRecord.LEN > data.length) {
      truncated = true;
      break;
    }
    const caplen = v.getUint32(at + PcapRecord.CAPLEN, le);
    const origLen = v.getUint32(at + PcapRecord.ORIGLEN, le);
    if (caplen > MAX_SNAPLEN) {
      throw new PcapFormatError(
        `frame ${c.off.length + 1}: captured length ${caplen} is above ${MAX_SNAPLEN}`,
      );
    }
    if (at + PcapRecord.LEN + caplen > data.length) {
      truncated = true;
      break;
    }
    const frac = v.getUint32(at + PcapRecord.TS_FRAC, le);
    c.off.push(at + PcapRecord.LEN);
    c.caplen.push(caplen);
    c.origLen.push(Math.max(origLen, caplen));
    c.timeNs.push(v.getUint32(at + PcapRecord.TS_SEC, le) * 1e9 + (nsec ? frac : frac * 1000));
    at += PcapRecord.LEN + caplen;
  }
  return frames(data, c, "pcap", truncated);
}

/** if_tsresol (IDB option 9): a power of 10 or (high bit set) of 2; default 10^-6 s. */
const OPT_TSRESOL = 9;
const OPT_END = 0;

function parsePcapng(data: Uint8Array, v: DataView): PcapFrames {
  const c: Collected = { off: [], caplen: [], origLen: [], timeNs: [] };
  let le = true;
  /** Per interface of the current section: link type and nanoseconds per timestamp unit. */
  let ifLink: number[] = [];
  let ifUnitNs: number[] = [];
  let at = 0;
  let truncated = false;
  while (at < data.length) {
    if (at + Pcapng.BLOCK_HDR + 4 > data.length) {
      truncated = true;
      break;
    }
    let type = v.getUint32(at, le);
    if (type === Pcapng.SHB) {
      // A new section may change byte order: read it from the byte-order magic.
      const magic = v.getUint32(at + Pcapng.BLOCK_HDR, true);
      if (magic === Pcapng.BYTE_ORDER_MAGIC) le = true;
      else if (v.getUint32(at + Pcapng.BLOCK_HDR, false) === Pcapng.BYTE_ORDER_MAGIC) le = false;
      else throw new PcapFormatError("pcapng: bad byte-order magic");
      type = Pcapng.SHB;
      ifLink = [];
      ifUnitNs = [];
    }
    const total = v.getUint32(at + 4, le);
    if (total < Pcapng.BLOCK_HDR + 4 || total % 4 !== 0) {
      throw new PcapFormatError(`pcapng: block at byte ${at} has a bad length ${total}`);
    }
    if (at + total > data.length) {
      truncated = true;
      break;
    }
    const body = at + Pcapng.BLOCK_HDR;
    const bodyLen = total - Pcapng.BLOCK_HDR - 4;
    if (type === Pcapng.IDB) {
      if (bodyLen < 8) throw new PcapFormatError(`pcapng: interface block at byte ${at} too short`);
      ifLink.push(v.getUint16(body + Pcapng.IDB_LINKTYPE, le));
      ifUnitNs.push(tsUnitNs(v, body + 8, body + bodyLen, le));
    } else if (type === Pcapng.EPB || type === Pcapng.SPB) {
      const epb = type === Pcapng.EPB;
      const head = epb ? Pcapng.EPB_DATA : Pcapng.SPB_DATA;
      if (bodyLen < head) throw new PcapFormatError(`pcapng: packet block at byte ${at} too short`);
      const iface = epb ? v.getUint32(body + Pcapng.EPB_IF, le) : 0;
      if (iface >= ifLink.length) {
        throw new PcapFormatError(`pcapng: packet block at byte ${at} names no known interface`);
      }
      if (ifLink[iface] !== LINKTYPE_ETHERNET) {
        throw new PcapFormatError(
          `pcapng: interface ${iface} has link type ${ifLink[iface]}, not Ethernet (1)`,
        );
      }
      const origLen = v.getUint32(body + (epb ? Pcapng.EPB_ORIGLEN : Pcapng.SPB_ORIGLEN), le);
      const caplen = epb
        ? v.getUint32(body + Pcapng.EPB_CAPLEN, le)
        : Math.min(origLen, bodyLen - head);
      if (caplen > bodyLen - head || caplen > MAX_SNAPLEN) {
        throw new PcapFormatError(`pcapng: packet block at byte ${at} has a bad captured length`);
      }
      const ts = epb
        ? (v.getUint32(body + Pcapng.EPB_TS_HIGH, le) * 2 ** 32 +
          v.getUint32(body + Pcapng.EPB_TS_LOW, le)) * ifUnitNs[iface]
        : 0;
      c.off.push(body + head);
      c.caplen.push(caplen);
      c.origLen.push(Math.max(origLen, caplen));
      c.timeNs.push(ts);
    }
    at += total;
  }
  return frames(data, c, "pcapng", truncated);
}

/** Nanoseconds per timestamp unit from an IDB's options in [from, end). */
function tsUnitNs(v: DataView, from: number, end: number, le: boolean): number {
  for (let o = from; o + 4 <= end;) {
    const code = v.getUint16(o, le);
    const len = v.getUint16(o + 2, le);
    if (code === OPT_END) break;
    if (code === OPT_TSRESOL && len >= 1 && o + 5 <= end) {
      const r = v.getUint8(o + 4);
      const secs = (r & 0x80) !== 0 ? 2 ** -(r & 0x7f) : 10 ** -(r & 0x7f);
      return secs * 1e9;
    }
    o += 4 + Math.ceil(len / 4) * 4;
  }
  return 1000;
}
