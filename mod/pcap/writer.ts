/**
 * A classic pcap writer (nanosecond timestamps, Ethernet link type; ./format.ts) that stages
 * records in one buffer made at the start and writes the file in large batches: when the buffer
 * is full, at least every `flushMs` while frames come in, and at close. Frames are copied as
 * ./copy.ts does (no allocation for short frames).
 *
 * Limits: a snap length (frames are cut, their original length kept in the record), a number of
 * frames and a file size; frames beyond a limit are counted in `skipped`, not written.
 */
import { MbufFlag, type MbufPool, NONE } from "../mbuf.ts";
import { Ether, EtherType } from "../packet/ether.ts";
import { type ByteArea, byteArea, copyBytes } from "./copy.ts";
import { LINKTYPE_ETHERNET, MAX_SNAPLEN, PcapHeader, PcapRecord } from "./format.ts";

/** Options of PcapWriter. */
export interface PcapWriterOptions {
  /** Bytes kept of each frame (default and most: 65535). */
  snaplen?: number;
  /** Frames written at most (default: no limit). */
  maxFrames?: number;
  /** File size in bytes at most (default: no limit). */
  maxBytes?: number;
  /** Staging buffer size (default 1 MiB). */
  bufferBytes?: number;
  /** Write staged records at least this often while frames arrive (default 1000 ms). */
  flushMs?: number;
}

/** Where the writer puts its bytes: a Deno.FsFile, or anything with these two calls. */
export interface ByteSink {
  /** Write some of `p`; returns how many bytes were written. */
  writeSync(p: Uint8Array): number;
  /** Close it. */
  close(): void;
}

const BUFFER_BYTES = 1 << 20;
const NS_PER_S = 1e9;

/** A pcap file being written (see the module's description). */
export class PcapWriter {
  /** Bytes kept of each frame. */
  readonly snaplen: number;
  /** Frames written at most. */
  readonly maxFrames: number;
  /** File size at most. */
  readonly maxBytes: number;
  /** Frames written (staged or in the file). */
  frames = 0;
  /** The file's size in bytes once flushed. */
  bytes = 0;
  /** Frames not written because a limit was reached. */
  skipped = 0;
  readonly #sink: ByteSink;
  readonly #buf: Uint8Array;
  readonly #view: DataView;
  readonly #flushMs: number;
  #used = 0;
  #lastFlushMs = performance.now();
  /** The staging buffer, and the bytes of the last source seen (a DataView made once each). */
  readonly #area: ByteArea;
  #src: ByteArea = byteArea(new Uint8Array(0));
  #closed = false;

  /** A writer to `sink` (its file header is staged at once). */
  constructor(sink: ByteSink, opts: PcapWriterOptions = {}) {
    this.#sink = sink;
    this.snaplen = opts.snaplen ?? MAX_SNAPLEN;
    if (!(this.snaplen >= 1 && this.snaplen <= MAX_SNAPLEN)) {
      throw new RangeError(`pcap: snap length ${this.snaplen} is not from 1 to ${MAX_SNAPLEN}`);
    }
    this.maxFrames = opts.maxFrames ?? Infinity;
    this.maxBytes = opts.maxBytes ?? Infinity;
    this.#flushMs = opts.flushMs ?? 1000;
    const size = Math.max(opts.bufferBytes ?? BUFFER_BYTES, PcapRecord.LEN + this.snaplen);
    this.#buf = new Uint8Array(size);
    this.#area = byteArea(this.#buf);
    this.#view = this.#area.view;
    const v = this.#view;
    // Written in this machine's byte order, as the format allows (the magic tells readers).
    v.setUint32(PcapHeader.MAGIC, PcapHeader.MAGIC_NSEC, true);
    v.setUint16(PcapHeader.VERSION_MAJOR, PcapHeader.VERSION[0], true);
    v.setUint16(PcapHeader.VERSION_MINOR, PcapHeader.VERSION[1], true);
    v.setUint32(PcapHeader.THISZONE, 0, true);
    v.setUint32(PcapHeader.SIGFIGS, 0, true);
    v.setUint32(PcapHeader.SNAPLEN, this.snaplen, true);
    v.setUint32(PcapHeader.LINKTYPE, LINKTYPE_ETHERNET, true);
    this.#used = PcapHeader.LEN;
    this.bytes = PcapHeader.LEN;
  }

  /** A writer to a new file at `path` (an existing file is replaced). */
  static create(path: string, opts: PcapWriterOptions = {}): PcapWriter {
    const f = Deno.openSync(path, { write: true, create: true, truncate: true });
    try {
      return new PcapWriter(f, opts);
    } catch (e) {
      f.close();
      throw e;
    }
  }

  /**
   * Start a record for a frame of `origLen` bytes at time `sec`.`nsec`; returns where its
   * `caplen` bytes go in the staging buffer, or -1 when a limit stops it (counted in `skipped`).
   */
  #record(origLen: number, caplen: number, sec: number, nsec: number, nowMs: number): number {
    const size = PcapRecord.LEN + caplen;
    if (this.frames >= this.maxFrames || this.bytes + size > this.maxBytes || this.#closed) {
      this.skipped++;
      return -1;
    }
    if (this.#used + size > this.#buf.length || nowMs - this.#lastFlushMs >= this.#flushMs) {
      this.flush(nowMs);
    }
    const r = this.#used;
    const v = this.#view;
    v.setUint32(r + PcapRecord.TS_SEC, sec, true);
    v.setUint32(r + PcapRecord.TS_FRAC, nsec, true);
    v.setUint32(r + PcapRecord.CAPLEN, caplen, true);
    v.setUint32(r + PcapRecord.ORIGLEN, origLen, true);
    this.#used = r + size;
    this.bytes += size;
    this.frames++;
    return r + PcapRecord.LEN;
  }

  /** Copy `n` bytes from `src` at `s` to the staging buffer at `d`. */
  #copy(src: Uint8Array, s: number, d: number, n: number): void {
    if (src !== this.#src.u8) this.#src = byteArea(src);
    copyBytes(this.#area, d, this.#src, s, n);
  }

  /** Add a frame: the `len` bytes of `src` at `off`, captured at `sec`.`nsec`. */
  writeFrame(
    src: Uint8Array,
    off: number,
    len: number,
    sec: number,
    nsec: number,
    nowMs: number,
  ): void {
    const caplen = len < this.snaplen ? len : this.snaplen;
    const d = this.#record(len, caplen, sec, nsec, nowMs);
    if (d >= 0) this.#copy(src, off, d, caplen);
  }

  /**
   * Add packet `m` of `pool` (all its segments). With `withTag` and a VLAN TCI stripped on
   * receive (MbufFlag.VLAN_STRIPPED), the 802.1Q tag is put back into the record after the MAC
   * addresses, as it was on the wire.
   */
  writePacket(
    pool: MbufPool,
    m: number,
    withTag: boolean,
    sec: number,
    nsec: number,
    nowMs: number,
  ): void {
    const tag = withTag && (pool.flags[m] & MbufFlag.VLAN_STRIPPED) !== 0 &&
        pool.dataLen[m] >= 2 * Ether.ADDR_LEN
      ? Ether.TAG_LEN
      : 0;
    const len = pool.pktLen[m] + tag;
    const caplen = len < this.snaplen ? len : this.snaplen;
    let d = this.#record(len, caplen, sec, nsec, nowMs);
    if (d < 0) return;
    const bytes = pool.bytes;
    let left = caplen;
    let s = m;
    if (tag !== 0) {
      // Addresses, the tag, then the rest of the first segment below.
      const start = pool.bufOff[m] + pool.dataOff[m];
      const macs = Math.min(2 * Ether.ADDR_LEN, left);
      this.#copy(bytes, start, d, macs);
      d += macs;
      left -= macs;
      const t = pool.vlanTci[m];
      const tpid = EtherType.VLAN;
      for (let k = 0; k < Ether.TAG_LEN && left > 0; k++, left--) {
        this.#buf[d++] = k === 0
          ? tpid >>> 8
          : k === 1
          ? tpid & 0xff
          : k === 2
          ? t >>> 8
          : t & 0xff;
      }
      const rest = Math.min(pool.dataLen[m] - macs, left);
      this.#copy(bytes, start + macs, d, rest);
      d += rest;
      left -= rest;
      s = pool.next[m];
    }
    // Segments: at most as many as the pool has buffers, and never past their lengths.
    for (let k = pool.count; left > 0 && s !== NONE && s >= 0 && s < pool.count && k > 0; k--) {
      const n = Math.min(pool.dataLen[s], left);
      this.#copy(bytes, pool.bufOff[s] + pool.dataOff[s], d, n);
      d += n;
      left -= n;
      s = pool.next[s];
    }
    // A chain shorter than its pktLen (never from the driver's queues): zeros, not stale bytes.
    for (; left > 0; left--) this.#buf[d++] = 0;
  }

  /** Write the staged records to the file. */
  flush(nowMs: number = performance.now()): void {
    this.#lastFlushMs = nowMs;
    let done = 0;
    while (done < this.#used) {
      done += this.#sink.writeSync(this.#buf.subarray(done, this.#used));
    }
    this.#used = 0;
  }

  /** Flush and close the file. */
  close(): void {
    if (this.#closed) return;
    try {
      this.flush();
    } finally {
      this.#closed = true;
      this.#sink.close();
    }
  }
}

/**
 * Timestamps for records: `performance.timeOrigin` split once into seconds and nanoseconds, plus
 * `performance.now()` (sub-microsecond here) at each burst, without losing precision to one large
 * floating-point number of nanoseconds since 1970.
 */
export class CaptureClock {
  /** The last reading: seconds since 1970. */
  sec = 0;
  /** Its nanoseconds. */
  nsec = 0;
  /** It as `performance.now()`. */
  nowMs = 0;
  readonly #baseSec: number;
  readonly #baseNs: number;

  constructor() {
    const origin = performance.timeOrigin;
    this.#baseSec = Math.floor(origin / 1000);
    this.#baseNs = Math.round((origin - this.#baseSec * 1000) * 1e6);
  }

  /** Read the clock into `sec`, `nsec` and `nowMs`. */
  read(): void {
    const now = performance.now();
    this.nowMs = now;
    const ns = this.#baseNs + Math.round(now * 1e6);
    const carry = Math.floor(ns / NS_PER_S);
    this.sec = this.#baseSec + carry;
    this.nsec = ns - carry * NS_PER_S;
  }
}
