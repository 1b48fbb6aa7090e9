/**
 * Packet buffers ("mbufs"): a pool of fixed-size buffers in one DMA region, with their metadata
 * kept as parallel typed arrays indexed by buffer number. A packet is the number of its first
 * segment; segments are linked through `next`. Nothing here allocates per packet.
 *
 * Buffer layout: `[headroom | data room]`. Received data starts at `headroom`; the virtio-net
 * header sits in the `hdrSize` bytes just before the data (the port checks at configure time
 * that `headroom >= hdrSize`).
 */
import {
  bytesForReservations,
  type DmaKind,
  DmaRegion,
  HugepageShortage,
  iovaContiguous,
} from "../ffi/dma.ts";

/** Options of an `MbufPool`. */
export interface PoolOptions {
  /** Number of buffers. */
  count: number;
  /** Bytes per buffer for data (default 2048). */
  dataRoom?: number;
  /** Bytes before the data (default 128); must hold the virtio-net header (10 or 12 bytes). */
  headroom?: number;
  /** Memory kind; must be one the ports' transports can reach (default `memfd`). */
  kind?: DmaKind;
  /** Name of the pool's memory (errors, /proc/PID/maps). */
  name?: string;
  /**
   * Bytes left free after the buffers (default 256 KiB, none in `physical` memory): ports put
   * their rings there (see Port), so that a device sees buffers and rings as one memory region.
   */
  ringRoom?: number;
  /**
   * Buffers in memory mapped already, instead of a region of the pool's own: `count` buffers at
   * these offsets of `region` (buffers another pool lent, `MbufPool.lend`). The pool then leaves
   * the region mapped when closed.
   */
  slice?: { region: DmaRegion; bufOff: Uint32Array };
}

/** Default `ringRoom`: the rings of a few ports with 1024-entry queues. */
const RING_ROOM = 256 * 1024;

/** Mbuf flags (bits of `flags[m]`). */
export const MbufFlag = {
  /** `vlanTci[m]` holds a VLAN tag stripped on receive. */
  VLAN_STRIPPED: 1,
  /** Insert `vlanTci[m]` as an 802.1Q tag on transmit. */
  VLAN_INSERT: 2,
  /**
   * The bytes just before the data hold the header a device wrote on receive with MRG_RXBUF
   * (num_buffers is at least 1, so they are not zero): a TX queue sends the frame behind a zero
   * header of its own without reading them (tx_queue.ts).
   */
  DEVICE_HEADER: 4,
} as const;

/**
 * Something outside the pool that holds its buffers and can give back those it is done with: a TX
 * queue whose device has sent them (mod/virtio/tx_queue.ts). TX queues take finished buffers back
 * lazily (when their ring fills), so a pool too small for every ring can find itself empty while
 * its buffers sit, sent, in TX rings; an allocation that finds the pool empty asks the holders
 * first.
 */
export interface BufferHolder {
  /** Give back to the pool the buffers the holder is done with. */
  reclaim(): void;
}

/** Sentinel for "no next segment" / "no buffer". */
export const NONE: number = -1;

/**
 * `next[m]` of a buffer that is in the pool: marks it free (a second free is ignored) without an
 * array of its own, since every free and every allocation touches `next` anyway.
 */
const IN_POOL = -2;

/**
 * A pool of packet buffers (mbufs) in one DMA region; a packet is the number of its first
 * buffer.
 */
export class MbufPool {
  /** The DMA region holding every buffer (and the rings of ports that share it). */
  readonly region: DmaRegion;
  /** Number of buffers. */
  readonly count: number;
  /** Bytes of data a buffer holds. */
  readonly dataRoom: number;
  /** Bytes before the data in each buffer (the virtio-net header goes there). */
  readonly headroom: number;
  /** Bytes from one buffer's start to the next. */
  readonly stride: number;
  /** Whole region as bytes: a segment's data is `bytes[dataStart(m) .. + dataLen[m])`. */
  readonly bytes: Uint8Array<ArrayBuffer>;

  /** Offset of each buffer's first byte in `region` (fixed). */
  readonly bufOff: Uint32Array;
  /** iova of each buffer's first byte, as low and high 32-bit halves (fixed). */
  readonly iovaLo: Uint32Array;
  /** High 32 bits of each buffer's iova (see `iovaLo`). */
  readonly iovaHi: Uint32Array;

  /** Offset of the data inside the buffer (usually `headroom`). */
  readonly dataOff: Uint32Array;
  /** Bytes of data in this segment. */
  readonly dataLen: Uint32Array;
  /** Bytes of the whole packet (valid on the first segment). */
  readonly pktLen: Uint32Array;
  /** Next segment, or NONE (a private mark while the buffer is in the pool). */
  readonly next: Int32Array;
  /** Segments in the packet (valid on the first segment). */
  readonly nbSegs: Uint16Array;
  /** Port the packet was received on. */
  readonly port: Uint16Array;
  /** VLAN TCI stripped on receive or to insert on transmit (see `MbufFlag`). */
  readonly vlanTci: Uint16Array;
  /** `MbufFlag` bits of the packet (valid on the first segment). */
  readonly flags: Uint32Array;

  readonly #free: Uint32Array;
  #freeCount: number;
  /** The region is another pool's (`slice`): closing this pool leaves it mapped. */
  readonly #borrowed: boolean;
  /** An array, not a Set: asking them must not allocate an iterator. */
  readonly #holders: BufferHolder[] = [];

  /** Map the pool's memory and put every buffer in the pool; an impossible size is a RangeError. */
  constructor(opts: PoolOptions) {
    this.count = opts.count;
    this.dataRoom = opts.dataRoom ?? 2048;
    this.headroom = opts.headroom ?? 128;
    if (!(this.count > 0)) {
      throw new RangeError(`mbuf pool: count must be positive (${opts.count})`);
    }
    this.stride = MbufPool.#strideOf(this.dataRoom, this.headroom);
    const kind = opts.kind ?? "memfd";
    if (kind !== "physical" && this.count > MbufPool.maxCount(this.dataRoom, this.headroom)) {
      throw new RangeError(
        `mbuf pool: ${this.count} buffers of ${this.stride} bytes do not fit the 4 GiB of iova ` +
          `space a pool may span; at most ${MbufPool.maxCount(this.dataRoom, this.headroom)}`,
      );
    }
    const ringRoom = iovaContiguous(kind) ? opts.ringRoom ?? RING_ROOM : 0;
    if (!(ringRoom >= 0)) throw new RangeError(`mbuf pool: ringRoom must be >= 0 (${ringRoom})`);
    const slice = opts.slice;
    if (slice !== undefined && slice.bufOff.length !== this.count) {
      throw new RangeError(`mbuf pool: ${slice.bufOff.length} buffers lent, ${this.count} asked`);
    }
    this.#borrowed = slice !== undefined;
    // Buffers lie back to back where the region's iovas are contiguous (memfd, anon, hugepage
    // memfd), crossing pages: on 4 KiB pages that is half the pages of one buffer per page, and
    // fewer TLB misses.
    const bytes = bytesForReservations(kind, this.count, this.stride) + ringRoom;
    this.region = slice?.region ??
      DmaRegion.create({ size: bytes, kind, name: opts.name ?? "vpmd-mbufs" });
    this.bytes = this.region.u8;
    const n = this.count;
    this.bufOff = new Uint32Array(n);
    this.iovaLo = new Uint32Array(n);
    this.iovaHi = new Uint32Array(n);
    this.dataOff = new Uint32Array(n);
    this.dataLen = new Uint32Array(n);
    this.pktLen = new Uint32Array(n);
    this.next = new Int32Array(n);
    this.nbSegs = new Uint16Array(n);
    this.port = new Uint16Array(n);
    this.vlanTci = new Uint16Array(n);
    this.flags = new Uint32Array(n);
    this.#free = new Uint32Array(n);
    for (let m = 0; m < n; m++) {
      const off = slice?.bufOff[m] ?? this.region.alloc(this.stride, 64);
      const iova = this.region.iova(off);
      this.bufOff[m] = off;
      this.iovaLo[m] = iova % 2 ** 32;
      this.iovaHi[m] = Math.floor(iova / 2 ** 32);
      this.#free[m] = n - 1 - m;
      this.next[m] = IN_POOL;
    }
    this.#freeCount = n;
  }

  /** Bytes from one buffer's start to the next, for a data room and headroom. */
  static #strideOf(dataRoom: number, headroom: number): number {
    return Math.ceil((headroom + dataRoom) / 64) * 64;
  }

  /**
   * Most buffers a pool of contiguous iovas (every kind but physical) can hold: the queues add
   * offsets to the low 32 bits of a buffer's iova, so a pool spans at most 4 GiB.
   */
  static maxCount(dataRoom = 2048, headroom = 128): number {
    return Math.floor(2 ** 32 / MbufPool.#strideOf(dataRoom, headroom));
  }

  /** Buffers currently in the pool. */
  get available(): number {
    return this.#freeCount;
  }

  /**
   * Take `n` free buffers out of the pool for good and return their offsets in the region, for a
   * pool over them elsewhere (`slice`: a worker thread's pool, mod/fwd/workers.ts). Throws when
   * fewer than `n` are free. Cold path.
   */
  lend(n: number): Uint32Array {
    if (n > this.#freeCount) {
      throw new RangeError(`mbuf pool: ${n} buffers to lend, ${this.#freeCount} free`);
    }
    const out = new Uint32Array(n);
    for (let i = 0; i < n; i++) {
      const m = this.#free[--this.#freeCount];
      this.next[m] = NONE; // out of the pool: neither free nor ever freed here
      out[i] = this.bufOff[m];
    }
    return out;
  }

  /** Register a holder of this pool's buffers (a TX queue), asked for them when the pool is empty. */
  addHolder(h: BufferHolder): void {
    if (!this.#holders.includes(h)) this.#holders.push(h);
  }

  /** Forget a holder (a TX queue whose ring is freed). */
  removeHolder(h: BufferHolder): void {
    const i = this.#holders.indexOf(h);
    if (i >= 0) this.#holders.splice(i, 1);
  }

  /**
   * Ask every holder to give back the buffers it is done with (the allocations below do this
   * when they find the pool short; a poller that sees receive starve may call it). Returns the
   * buffers then free. A cold path: only a starving pool gets here.
   */
  reclaimHeld(): number {
    const holders = this.#holders;
    for (let i = 0; i < holders.length; i++) holders[i].reclaim();
    return this.#freeCount;
  }

  /** Take one buffer, reset to an empty single segment; NONE when the pool and its holders have none. */
  alloc(): number {
    if (this.#freeCount === 0 && this.reclaimHeld() === 0) return NONE;
    const m = this.#free[--this.#freeCount];
    this.dataOff[m] = this.headroom;
    this.dataLen[m] = 0;
    this.pktLen[m] = 0;
    this.next[m] = NONE;
    this.nbSegs[m] = 1;
    this.flags[m] = 0;
    this.vlanTci[m] = 0;
    return m;
  }

  /**
   * Take one buffer, resetting only `next` (NONE: one segment); the other fields are whatever its
   * last use left (receive refill: the queue sets them when the buffer comes back filled). NONE
   * when the pool and its holders have none.
   */
  allocRaw(): number {
    if (this.#freeCount === 0 && this.reclaimHeld() === 0) return NONE;
    const m = this.#free[--this.#freeCount];
    this.next[m] = NONE;
    return m;
  }

  /** Take `n` buffers into `out[0..n)` or none at all; returns false when fewer than `n` are free. */
  allocBulk(out: Uint32Array | Int32Array, n: number): boolean {
    if (this.#freeCount < n && this.reclaimHeld() < n) return false;
    for (let i = 0; i < n; i++) out[i] = this.alloc();
    return true;
  }

  /**
   * Return a whole packet (every segment) to the pool. The walk stops at a buffer already in the
   * pool (a double free is ignored), at a number that is no buffer and after `count` segments, so
   * a corrupted chain (out of range or looping) cannot hang the caller.
   */
  free(m: number): void {
    const next = this.next;
    for (let left = this.count; left > 0 && m >= 0 && m < this.count; left--) {
      const nx = next[m];
      if (nx === IN_POOL) return; // freed before: its link to the rest of a chain is gone
      next[m] = IN_POOL;
      this.#free[this.#freeCount++] = m;
      m = nx;
    }
  }

  /**
   * Return the packets `ms[0..n)` (free() for each, one call for a whole burst). Single-segment
   * packets take a short path; anything else goes through free().
   */
  freeBulk(ms: Uint32Array | Int32Array, n: number): void {
    const next = this.next;
    const free = this.#free;
    const count = this.count;
    let fc = this.#freeCount;
    for (let i = 0; i < n; i++) {
      const m = ms[i];
      if (m >= 0 && m < count && next[m] === NONE) {
        next[m] = IN_POOL;
        free[fc++] = m;
      } else {
        this.#freeCount = fc;
        this.free(m);
        fc = this.#freeCount;
      }
    }
    this.#freeCount = fc;
  }

  /** True when buffer `m` is in the pool (free), false while a packet holds it. */
  isFree(m: number): boolean {
    return this.next[m] === IN_POOL;
  }

  /** Absolute offset in `bytes` of segment `m`'s data. */
  dataStart(m: number): number {
    return this.bufOff[m] + this.dataOff[m];
  }

  /** Copy a packet's bytes (all segments) into `out`; returns the bytes copied (cold/test helper). */
  read(m: number, out: Uint8Array): number {
    let n = 0;
    for (let s = m; s !== NONE && n < out.length; s = this.next[s]) {
      const len = Math.min(this.dataLen[s], out.length - n);
      const start = this.dataStart(s);
      out.set(this.bytes.subarray(start, start + len), n);
      n += len;
    }
    return n;
  }

  /**
   * Build a packet from `data`, split into segments of at most `segSize` bytes (default: the whole
   * data room). Returns NONE (and takes nothing) when the pool has too few buffers.
   */
  fromBytes(data: Uint8Array, segSize = this.dataRoom): number {
    const segs = Math.max(1, Math.ceil(data.length / segSize));
    if (segSize > this.dataRoom || (this.#freeCount < segs && this.reclaimHeld() < segs)) {
      return NONE;
    }
    const head = this.alloc();
    let prev = NONE;
    for (let i = 0; i < segs; i++) {
      const m = i === 0 ? head : this.alloc();
      const part = data.subarray(i * segSize, Math.min(data.length, (i + 1) * segSize));
      this.bytes.set(part, this.dataStart(m));
      this.dataLen[m] = part.length;
      if (prev !== NONE) this.next[prev] = m;
      prev = m;
    }
    this.pktLen[head] = data.length;
    this.nbSegs[head] = segs;
    return head;
  }

  /** Unmap the pool's memory: only once no started port uses it (a `slice` stays mapped). */
  close(): void {
    if (!this.#borrowed) this.region.close();
  }
}

/**
 * A pool in the first of `kinds` (best first) that can be had now: when a hugepage kind cannot be
 * allocated (too few hugepages free), the next kind is used and `log` says so. Any other failure,
 * or one of the last kind, is thrown.
 */
export function poolOfFirstKind(
  kinds: readonly DmaKind[],
  opts: Omit<PoolOptions, "kind">,
  log: (msg: string) => void,
): MbufPool {
  for (let i = 0;; i++) {
    try {
      return new MbufPool({ ...opts, kind: kinds[i] });
    } catch (e) {
      if (i + 1 >= kinds.length || !(e instanceof HugepageShortage)) throw e;
      log(`mbuf pool: using ${kinds[i + 1]} memory, ${kinds[i]} failed: ${(e as Error).message}`);
    }
  }
}
