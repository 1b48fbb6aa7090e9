/**
 * A receive queue (virtio 1.2, 5.1.6.3 "Setting Up Receive Buffers", 5.1.6.4 "Processing of
 * Incoming Packets") over one split ring.
 *
 * Descriptor i always describes the buffer `buf[i]`: one device-writable descriptor per buffer,
 * starting `hdrSize` bytes before the buffer's data so that the virtio-net header lands in the
 * headroom and the frame at `headroom`. A burst consumes used entries in [lastUsed, used.idx)
 * (one ordered load), hands each filled buffer to the caller, posts a fresh buffer from the pool
 * on the same descriptor, publishes avail.idx once (one ordered store) and notifies at most once.
 *
 * With MRG_RXBUF (5.1.6.4.2) a frame may span `num_buffers` used entries; the buffers become a
 * segment chain (`#assemble`, a cold path: the bursts keep the one-buffer frame inline). Later
 * buffers carry no header, so their data starts at the descriptor address.
 *
 * On the paths that hand out frames, an avail.ring entry is written only when it changes: a
 * device that uses buffers in order gets the same descriptor in the same slot ring after ring,
 * and a line left unwritten stays in the device's cache instead of moving to ours and back.
 *
 * A burst that finds more used entries than it takes (the driver is behind the device) writes the
 * refilled descriptors' addresses after its loop, all together: the descriptor lines the device
 * has read are then fetched back at once, where writing each as it goes waits for one line at a
 * time and holds up every store behind it (the stores drain in order). A burst that keeps up
 * writes them as it goes: written together they cost the device more per packet when the device
 * sets the pace (docs/performance.md).
 *
 * The device is not trusted: every used entry is checked (id in range and held by the device,
 * length within what was posted, num_buffers within the entries that are there). A frame with a
 * bad entry is dropped and counted once in `rxErrors` (and `rxDropped`), however many buffers it
 * spans; a buffer is never lost or handed out twice. A used.idx more than a ring ahead (or behind)
 * is no frame: it is counted in `rxIdxErrors`, once per bad value, and the queue waits for a sane
 * one. Which descriptors the device holds is kept as the avail position each was last offered at
 * (`#postedAt`): a descriptor is the device's when that position was published and it has not
 * come back since (`held`). Taking one back and offering it again is then one write, with no
 * second pass over the burst's avail entries to mark them once they are published.
 *
 * What a frame is when the device's framing breaks (mergeable, 5.1.6.4): a frame is a first used
 * entry and the num_buffers - 1 after it (one error when any of them is bad). When the first entry
 * does not give num_buffers (its id names no buffer the device holds, it is shorter than the
 * header, or its count is 0 or runs past the entries published), the frame is that entry and those
 * after it up to the first of: an entry shorter than a whole buffer (a frame spread over buffers
 * fills each but its last: that one ends it), or the used index published (devices publish whole
 * frames; a frame that runs past it is an error in itself). That is one error, one drop
 * (`#dropBroken`). The end is found from used lengths alone, never from buffer contents: the
 * buffers after a bad entry may be the rest of its frame, whose bytes a sender chose, and no piece
 * of a frame may pass for a frame. A broken frame whose last buffer is exactly full shows no end:
 * the drop then runs on to the next short entry or the published index, one error for what the
 * device meant as more than one frame.
 *
 * With VIRTIO_F_IN_ORDER (2.7.9) buffers are offered in ring order (descriptor i at every avail
 * position p with p mod size = i: `fill()` starts so, and every buffer goes back at the next
 * position in the order it came), and the device may write one used entry for a batch: the id of
 * the batch's last buffer, the buffers before it used whole. An entry that names the buffer of its
 * own position is then that buffer, which the device holds; at the first that does not, the burst
 * stops, the entries from there on are copied out with each batch spelled out (`#expand`, a cold
 * path: DPDK's vhost writes every entry) and the next bursts read that copy, so the loops below
 * see one entry per buffer either way.
 */
import { MbufFlag, type MbufPool, NONE } from "../mbuf.ts";
import type { VirtioTransport } from "./transport.ts";
import { Avail, Desc, NetHdr } from "./constants.ts";
import type { SplitRing } from "./split_ring.ts";
import type { PortStats } from "./stats.ts";
import { vlanStrip } from "../vlan.ts";

/** Avail positions are counted modulo 2^31 (`#availIdx`, `#postedAt`); avail.idx is the low 16 bits. */
const POS_MASK = 0x7fffffff;
/**
 * A descriptor offered at position p is held by the device when p lies less than this far behind
 * the last published position: a position not yet published (or a descriptor just taken back,
 * marked with the burst's first unpublished position) lies ahead of it instead, 2^31 away.
 */
const HELD_SPAN = 0x40000000;

/**
 * Descriptor `id` is held by the device: in range, and offered at a position up to `lastPublished`
 * and not taken back since (`postedAt`, see the module comment).
 */
function held(postedAt: Int32Array, id: number, lastPublished: number): boolean {
  return id < postedAt.length && ((lastPublished - postedAt[id]) & POS_MASK) < HELD_SPAN;
}

export interface RxQueueOptions {
  ring: SplitRing;
  pool: MbufPool;
  /** Where notifications go (only `notify` is used: a worker thread passes just that). */
  transport: Pick<VirtioTransport, "notify">;
  /** Negotiated net header size (10 or 12). */
  hdrSize: number;
  mrgRxbuf: boolean;
  eventIdx: boolean;
  portId: number;
  vlanStrip: boolean;
  /** This queue's counters and the port's totals, both updated once per burst. */
  stats: PortStats;
  totals: PortStats;
  /** VIRTIO_F_IN_ORDER was negotiated (2.7.9). */
  inOrder?: boolean;
  /**
   * Where the count of avail positions starts: a multiple of 65536 below 2^31, so that avail.idx
   * still starts at 0 (default 0; tests start just below 2^31 to cross the wrap of the count).
   */
  firstPosition?: number;
}

export class RxQueue {
  readonly ring: SplitRing;
  readonly pool: MbufPool;
  readonly stats: PortStats;
  readonly #totals: PortStats;
  readonly #transport: Pick<VirtioTransport, "notify">;
  readonly #hdr: number;
  readonly #mrg: boolean;
  readonly #eventIdx: boolean;
  readonly #portId: number;
  readonly #strip: boolean;
  /** Buffer posted on each descriptor, NONE when the descriptor holds none. */
  readonly #buf: Int32Array;
  /**
   * Avail position (modulo 2^31) descriptor i was last offered at; the burst's first unpublished
   * position once the device returned it.
   */
  readonly #postedAt: Int32Array;
  /** Descriptors taken in the current frame (mergeable), and their used lengths. */
  readonly #segId: Uint16Array;
  readonly #segLen: Uint32Array;
  /** Length the device may write into each descriptor: header + data room. */
  readonly #postLen: number;
  /** Offset from a buffer's start to where the device writes (header before the data). */
  readonly #postOff: number;
  #lastUsed = 0;
  /** Next avail position (modulo 2^31): positions before it are published. */
  #availIdx = 0;
  /** A used.idx already reported as jumping too far, so one bad value counts once. */
  #badUsedIdx = -1;
  readonly #inOrder: boolean;
  /** In order: used entries with batches spelled out, indexed like the used ring. */
  readonly #expanded: Uint32Array;
  /** In order: the used position `#expanded` runs to, or -1 when the ring is read directly. */
  #expandedEnd = -1;
  /** In order: a burst stopped at an entry not in its place; expand from `#lastUsed`. */
  #mustExpand = false;
  /**
   * Mergeable, in order: a broken frame's drop stopped at an entry to spell out (`#expand`); the
   * next burst goes on dropping (`#dropBroken`) before it looks for a frame.
   */
  #dropping = false;
  /** The avail position after the offers of a cold path (`#dropBroken`, `#assemble`). */
  #coldAvailIdx = 0;
  /** Frames the current burst dropped, as errors and for want of an mbuf (counted by `#finish`). */
  #burstErrors = 0;
  #burstNoMbuf = 0;
  /** Descriptors whose new buffer's address the burst writes after its loop (`#writeDeferred`). */
  readonly #deferred: Uint16Array;

  constructor(o: RxQueueOptions) {
    this.ring = o.ring;
    this.pool = o.pool;
    this.stats = o.stats;
    this.#totals = o.totals;
    this.#transport = o.transport;
    this.#hdr = o.hdrSize;
    this.#mrg = o.mrgRxbuf;
    this.#eventIdx = o.eventIdx;
    this.#portId = o.portId;
    this.#strip = o.vlanStrip;
    const first = o.firstPosition ?? 0;
    if (!(first >= 0 && first <= POS_MASK && first % 65536 === 0)) {
      throw new RangeError(
        `RX queue: firstPosition ${first} is not a multiple of 65536 below 2^31`,
      );
    }
    this.#availIdx = first;
    const n = o.ring.size;
    this.#buf = new Int32Array(n).fill(NONE);
    this.#postedAt = new Int32Array(n);
    this.#segId = new Uint16Array(n);
    this.#segLen = new Uint32Array(n);
    this.#deferred = new Uint16Array(n);
    this.#postLen = o.hdrSize + o.pool.dataRoom;
    this.#inOrder = o.inOrder ?? false;
    this.#expanded = new Uint32Array(this.#inOrder ? 2 * n : 0);
    this.#postOff = o.pool.headroom - o.hdrSize;
  }

  /**
   * Post a buffer on every descriptor (before DRIVER_OK). Throws when the pool cannot fill the
   * ring; nothing is taken then.
   */
  fill(): void {
    const ring = this.ring;
    const n = ring.size;
    if (this.pool.available < n) {
      throw new Error(
        `RX queue ${ring.index}: the mbuf pool has ${this.pool.available} free buffers, ` +
          `${n} are needed to fill the ring; use a bigger pool or a smaller --rxd`,
      );
    }
    const first = this.#availIdx;
    for (let i = 0; i < n; i++) {
      const m = this.pool.alloc();
      this.#post(i, m);
      ring.u16[ring.availRing16 + i] = i;
      this.#postedAt[i] = first + i;
    }
    // We poll: ask the device not to interrupt (2.7.7.1); with EVENT_IDX, used_event does that
    // job (2.7.10) and is left where the device will reach it only after 65536 entries.
    ring.setAvailFlags(Avail.F_NO_INTERRUPT);
    ring.setUsedEvent(0xffff);
    this.#availIdx = first + n;
    ring.publishAvail(first + n);
  }

  /** Descriptor i now describes buffer m (device-writable, header just before the data). */
  #post(i: number, m: number): void {
    this.#buf[i] = m;
    const pool = this.pool;
    // No buffer crosses a 4 GiB line of iova space (a pool spans at most 4 GiB from a 4 GiB
    // line, or lies in 2 MiB pages), so adding the offset cannot carry into the high half.
    this.ring.setDesc(
      i,
      pool.iovaLo[m] + this.#postOff,
      pool.iovaHi[m],
      this.#postLen,
      Desc.F_WRITE,
      0,
    );
  }

  /** Receive up to `max` frames into `pkts[0..n)` (mbuf numbers); returns n. */
  burst(pkts: Uint32Array, max: number): number {
    const ring = this.ring;
    if (this.#expandedEnd >= 0) {
      const n = this.#mrg
        ? this.#burstMrg(pkts, max, this.#expandedEnd, this.#expanded, 0, false)
        : this.#burstOne(pkts, max, this.#expandedEnd, this.#expanded, 0, false);
      if (this.#lastUsed === this.#expandedEnd) this.#expandedEnd = -1;
      return n;
    }
    if (ring.peekUsedIdx() === this.#lastUsed) {
      // Nothing new: no ordered load (and the fenced notification check a publish left out).
      if (ring.unsettled) this.#settle();
      return 0;
    }
    const usedIdx = ring.loadUsedIdx();
    const pending = (usedIdx - this.#lastUsed) & 0xffff;
    if (pending === 0) return 0;
    if (pending > ring.size) {
      // The device claims more completions than descriptors exist, or moved used.idx back
      // (2.7.8): nothing in the range can be trusted. No frame is lost by it (the entries are
      // read once a sane used.idx is published), so it is not an rxError: counted apart, once
      // per bad value.
      if (usedIdx !== this.#badUsedIdx) {
        this.#badUsedIdx = usedIdx;
        this.stats.rxIdxErrors++;
        this.#totals.rxIdxErrors++;
      }
      return 0;
    }
    const u32 = ring.u32;
    const base = ring.usedRing32;
    const n = this.#mrg
      ? this.#burstMrg(pkts, max, usedIdx, u32, base, true)
      : this.#burstOne(pkts, max, usedIdx, u32, base, true);
    if (this.#mustExpand) {
      this.#mustExpand = false;
      this.#expand(usedIdx);
    }
    return n;
  }

  /**
   * In order (2.7.9): copy the entries in [lastUsed, usedIdx) to `#expanded`, one per buffer. An
   * entry naming the buffer k - 1 positions ahead stands for k buffers, all but the last used
   * whole (the length posted). An entry that is neither (it names a position outside the range)
   * is copied with an id no buffer has, so the burst counts it as an error and offers the buffer
   * of that position again, keeping the ring order.
   */
  #expand(usedIdx: number): void {
    const ring = this.ring;
    const u32 = ring.u32;
    const base = ring.usedRing32;
    const mask = ring.mask;
    const out = this.#expanded;
    let u = this.#lastUsed;
    while (u !== usedIdx) {
      const id = u32[base + 2 * (u & mask)];
      const len = u32[base + 2 * (u & mask) + 1];
      const k = ((id - u) & mask) + 1;
      if (id >= ring.size || k > ((usedIdx - u) & 0xffff)) {
        out[2 * (u & mask)] = ring.size;
        out[2 * (u & mask) + 1] = len;
        u = (u + 1) & 0xffff;
        continue;
      }
      for (let j = 0; j < k - 1; j++) {
        out[2 * (u & mask)] = u & mask;
        out[2 * (u & mask) + 1] = this.#postLen;
        u = (u + 1) & 0xffff;
      }
      out[2 * (u & mask)] = id;
      out[2 * (u & mask) + 1] = len;
      u = (u + 1) & 0xffff;
    }
    this.#expandedEnd = usedIdx;
  }

  /** One buffer per frame. */
  #burstOne(
    pkts: Uint32Array,
    max: number,
    usedIdx: number,
    entries: Uint32Array,
    usedRing: number,
    fromRing: boolean,
  ): number {
    const ring = this.ring;
    const pool = this.pool;
    const u32 = ring.u32;
    const u16 = ring.u16;
    const mask = ring.mask;
    const availRing = ring.availRing16;
    const desc32 = ring.desc32;
    const inOrder = this.#inOrder;
    const buf = this.#buf;
    const postedAt = this.#postedAt;
    const hdr = this.#hdr;
    const postLen = this.#postLen;
    const postOff = this.#postOff;
    const headroom = pool.headroom;
    const dataLen = pool.dataLen;
    const pktLen = pool.pktLen;
    const dataOff = pool.dataOff;
    const nbSegs = pool.nbSegs;
    const flags = pool.flags;
    const portArr = pool.port;
    const portId = this.#portId;
    const iovaLo = pool.iovaLo;
    const iovaHi = pool.iovaHi;
    const oldAvail = this.#availIdx;
    const lastPublished = oldAvail - 1;
    let availIdx = oldAvail;
    let used = this.#lastUsed;
    let n = 0;
    let bytes = 0;
    // Behind the device (more entries than this burst takes): descriptor addresses after the loop.
    const defer = ((usedIdx - used) & 0xffff) > max;
    const deferred = this.#deferred;
    let nDeferred = 0;
    while (n < max && used !== usedIdx) {
      const e = usedRing + 2 * (used & mask);
      const id = entries[e];
      const len = entries[e + 1];
      if (inOrder ? id !== (used & mask) : !held(postedAt, id, lastPublished)) {
        if (inOrder && fromRing) {
          this.#mustExpand = true; // a batch, or a stray entry: spell them out first
          break;
        }
        this.#burstErrors++;
        const lost = this.#lostAt(used);
        if (lost >= 0) availIdx = this.#repost(lost, availIdx);
        used = (used + 1) & 0xffff;
        continue;
      }
      used = (used + 1) & 0xffff;
      if (len < hdr || len > postLen) {
        this.#burstErrors++;
        availIdx = this.#repost(id, availIdx); // the same buffer goes back
        continue;
      }
      const fresh = pool.allocRaw();
      if (fresh === NONE) {
        this.#burstNoMbuf++;
        availIdx = this.#repost(id, availIdx);
        continue;
      }
      const m = buf[id];
      buf[id] = fresh;
      // Only the address changes: length and flags of descriptor id stay as fill() wrote them.
      if (defer) deferred[nDeferred++] = id;
      else {
        const d = desc32 + 4 * id;
        u32[d] = iovaLo[fresh] + postOff;
        u32[d + 1] = iovaHi[fresh];
      }
      if (u16[availRing + (availIdx & mask)] !== id) u16[availRing + (availIdx & mask)] = id;
      postedAt[id] = availIdx++;
      // next is NONE already (allocRaw).
      const l = len - hdr;
      dataOff[m] = headroom;
      dataLen[m] = l;
      pktLen[m] = l;
      nbSegs[m] = 1;
      flags[m] = 0;
      portArr[m] = portId;
      pkts[n++] = m;
      bytes += l;
    }
    this.#lastUsed = used;
    if (nDeferred !== 0) this.#writeDeferred(nDeferred);
    this.#finish(pkts, n, bytes, oldAvail, availIdx);
    return n;
  }

  /**
   * The descriptor offered at the avail position of used position `pos` when the device holds it,
   * else -1. A used entry that names no buffer the device holds stood for that one (devices use RX
   * buffers in avail order): it goes back rather than let the ring shrink.
   */
  #lostAt(pos: number): number {
    const ring = this.ring;
    const id = ring.u16[ring.availRing16 + (pos & ring.mask)];
    return held(this.#postedAt, id, this.#availIdx - 1) ? id : -1;
  }

  /** Offer descriptor `id` again, with its buffer, at avail position `at`; returns `at + 1`. */
  #repost(id: number, at: number): number {
    const ring = this.ring;
    ring.u16[ring.availRing16 + (at & ring.mask)] = id;
    this.#postedAt[id] = at;
    return at + 1;
  }

  /** Mergeable buffers: a frame is `num_buffers` used entries (5.1.6.4.2). */
  #burstMrg(
    pkts: Uint32Array,
    max: number,
    usedIdx: number,
    entries: Uint32Array,
    usedRing: number,
    fromRing: boolean,
  ): number {
    const ring = this.ring;
    const pool = this.pool;
    const u32 = ring.u32;
    const u16 = ring.u16;
    const mask = ring.mask;
    const availRing = ring.availRing16;
    const desc32 = ring.desc32;
    const inOrder = this.#inOrder;
    const words16 = pool.region.u16;
    const bytesArr = pool.bytes;
    const bufOff = pool.bufOff;
    const numBuffersOff = this.#postOff + NetHdr.NUM_BUFFERS;
    const evenNb = (numBuffersOff & 1) === 0;
    const buf = this.#buf;
    const postedAt = this.#postedAt;
    const hdr = this.#hdr;
    const postLen = this.#postLen;
    const postOff = this.#postOff;
    const headroom = pool.headroom;
    const iovaLo = pool.iovaLo;
    const iovaHi = pool.iovaHi;
    const dataOff = pool.dataOff;
    const dataLen = pool.dataLen;
    const pktLen = pool.pktLen;
    const nbSegs = pool.nbSegs;
    const flags = pool.flags;
    const portArr = pool.port;
    const portId = this.#portId;
    const DEVICE_HEADER = MbufFlag.DEVICE_HEADER;
    const oldAvail = this.#availIdx;
    const lastPublished = oldAvail - 1;
    let availIdx = oldAvail;
    let used = this.#lastUsed;
    let n = 0;
    let bytes = 0;
    // Behind the device (more entries than this burst takes): descriptor addresses after the loop.
    const defer = ((usedIdx - used) & 0xffff) > max;
    const deferred = this.#deferred;
    let nDeferred = 0;
    if (this.#dropping) {
      // The rest of a broken frame, spelled out since (counted when it was seen).
      used = this.#dropBroken(used, usedIdx, entries, usedRing, fromRing, availIdx);
      availIdx = this.#coldAvailIdx;
    }
    while (n < max && used !== usedIdx) {
      // First buffer of a frame: num_buffers (le16) in its header says how many used entries the
      // frame has. It is read only from a full buffer: a frame spread over buffers fills all
      // but its last (5.1.6.4.1), so a first buffer with room left is the whole frame. The
      // header's line is then left in the device's cache; the TX queue does not read it either
      // (DEVICE_HEADER). One u16 load when it sits at an even offset (buffers are 64-byte
      // aligned, so whenever the headroom is even).
      const e = usedRing + 2 * (used & mask);
      const id = entries[e];
      const len = entries[e + 1];
      if (inOrder ? id !== (used & mask) : !held(postedAt, id, lastPublished)) {
        if (inOrder && fromRing) {
          this.#mustExpand = true; // a batch, or a stray entry: spell them out first
          break;
        }
        // Names no buffer of ours: how many entries the frame has is unknown.
        this.#burstErrors++;
        used = this.#dropBroken(used, usedIdx, entries, usedRing, fromRing, availIdx);
        availIdx = this.#coldAvailIdx;
        if (this.#mustExpand) break;
        continue;
      }
      used = (used + 1) & 0xffff;
      let nb = 1;
      if (len < hdr) nb = 0;
      else if (len >= postLen) {
        const nbAt = bufOff[buf[id]] + numBuffersOff;
        nb = evenNb ? words16[nbAt >>> 1] : bytesArr[nbAt] | (bytesArr[nbAt + 1] << 8);
      }
      if (nb === 0 || nb - 1 > ((usedIdx - used) & 0xffff)) {
        // Too short for a header, no count, or more buffers than the device has returned.
        const first = (used - 1) & 0xffff;
        this.#burstErrors++;
        used = this.#dropBroken(first, usedIdx, entries, usedRing, fromRing, availIdx);
        availIdx = this.#coldAvailIdx;
        if (this.#mustExpand) break;
        continue;
      }
      if (nb !== 1 || len > postLen) {
        // More than one buffer (or more than the buffer holds): the frame is a segment chain.
        const first = (used - 1) & 0xffff;
        const head = this.#assemble(first, nb, entries, usedRing, fromRing, availIdx);
        if (this.#mustExpand) {
          used = first;
          break;
        }
        used = (first + nb) & 0xffff;
        availIdx = this.#coldAvailIdx;
        if (head !== NONE) {
          pkts[n++] = head;
          bytes += pktLen[head];
        }
        continue;
      }
      // The common case: the frame fits one buffer.
      const fresh = pool.allocRaw();
      if (fresh === NONE) {
        this.#burstNoMbuf++;
        availIdx = this.#repost(id, availIdx);
        continue;
      }
      const m = buf[id];
      buf[id] = fresh;
      if (defer) deferred[nDeferred++] = id;
      else {
        const d = desc32 + 4 * id;
        u32[d] = iovaLo[fresh] + postOff;
        u32[d + 1] = iovaHi[fresh];
      }
      if (u16[availRing + (availIdx & mask)] !== id) u16[availRing + (availIdx & mask)] = id;
      postedAt[id] = availIdx++;
      // next is NONE already (allocRaw).
      const l = len - hdr;
      dataOff[m] = headroom;
      dataLen[m] = l;
      pktLen[m] = l;
      nbSegs[m] = 1;
      flags[m] = DEVICE_HEADER;
      portArr[m] = portId;
      pkts[n++] = m;
      bytes += l;
    }
    this.#lastUsed = used;
    if (nDeferred !== 0) this.#writeDeferred(nDeferred);
    this.#finish(pkts, n, bytes, oldAvail, availIdx);
    return n;
  }

  /**
   * Mergeable: the frame of `nb` used entries from position `first`, its count read from a header
   * we can trust, becomes one segment chain, and fresh buffers are posted on its descriptors.
   * Returns the chain's first mbuf, or NONE: the frame is dropped (a bad entry, or too few free
   * mbufs: counted, every buffer of its entries offered again, and the entry after it starts a
   * frame), or, reading the ring in order, an entry is not in its place (`#mustExpand`: nothing is
   * taken). The avail position after its offers is left in `#coldAvailIdx`.
   */
  #assemble(
    first: number,
    nb: number,
    entries: Uint32Array,
    usedRing: number,
    fromRing: boolean,
    availIdx: number,
  ): number {
    const ring = this.ring;
    const mask = ring.mask;
    const u16 = ring.u16;
    const availRing = ring.availRing16;
    const pool = this.pool;
    const inOrder = this.#inOrder;
    const postedAt = this.#postedAt;
    const segId = this.#segId;
    const segLen = this.#segLen;
    const postLen = this.#postLen;
    const lastPublished = this.#availIdx - 1; // #finish publishes
    if (inOrder && fromRing) {
      // The frame's other entries must be in place too before any is taken.
      for (let k = 1; k < nb; k++) {
        const u = (first + k) & mask;
        if (entries[usedRing + 2 * u] !== u) {
          this.#mustExpand = true;
          return NONE;
        }
      }
    }
    // Taken back: not held until offered again (the burst's first unpublished position).
    const takenAt = this.#availIdx;
    let bad = false;
    let taken = 0;
    for (let k = 0, used = first; k < nb; k++, used = (used + 1) & 0xffff) {
      const e = usedRing + 2 * (used & mask);
      const id = entries[e];
      const len = entries[e + 1];
      if (inOrder ? id !== (used & mask) : !held(postedAt, id, lastPublished)) {
        bad = true; // names no buffer of ours: drop the frame, repost what stood here
        const lost = this.#lostAt(used);
        if (lost >= 0) {
          postedAt[lost] = takenAt;
          segId[taken++] = lost;
        }
        continue;
      }
      postedAt[id] = takenAt;
      segId[taken] = id;
      segLen[taken] = len;
      taken++;
      if (len > postLen || len === 0) bad = true;
    }
    if (bad || pool.available < taken) {
      for (let k = 0; k < taken; k++) availIdx = this.#repost(segId[k], availIdx);
      if (bad) this.#burstErrors++;
      else this.#burstNoMbuf++;
      this.#coldAvailIdx = availIdx;
      return NONE;
    }
    // Take the filled buffers, post fresh ones, link the segments.
    const buf = this.#buf;
    const hdr = this.#hdr;
    const dataOff = pool.dataOff;
    const dataLen = pool.dataLen;
    const next = pool.next;
    const head = buf[segId[0]];
    let prev = NONE;
    let total = 0;
    for (let k = 0; k < taken; k++) {
      const id = segId[k];
      const m = buf[id];
      this.#post(id, pool.alloc());
      if (u16[availRing + (availIdx & mask)] !== id) u16[availRing + (availIdx & mask)] = id;
      postedAt[id] = availIdx++;
      const l = k === 0 ? segLen[0] - hdr : segLen[k];
      dataOff[m] = k === 0 ? pool.headroom : this.#postOff;
      dataLen[m] = l;
      next[m] = NONE;
      if (prev !== NONE) next[prev] = m;
      prev = m;
      total += l;
    }
    pool.pktLen[head] = total;
    pool.nbSegs[head] = taken;
    pool.flags[head] = MbufFlag.DEVICE_HEADER;
    pool.port[head] = this.#portId;
    this.#coldAvailIdx = availIdx;
    return head;
  }

  /**
   * Drop a broken frame from used position `from` (see the module comment): give back every
   * buffer of its entries, the one an entry names when the device holds it, else the one offered
   * at the entry's position (`#lostAt`), up to and including the first entry shorter than a whole
   * buffer, or to `usedIdx`. Returns the position after it; the avail position after the reposts
   * is left in `#coldAvailIdx`. In order, reading the ring, it stops at an entry not in its place
   * (`#mustExpand`, `#dropping`: the next burst goes on from the copy). At most `usedIdx - from`
   * entries, which `burst` keeps within the ring size.
   */
  #dropBroken(
    from: number,
    usedIdx: number,
    entries: Uint32Array,
    usedRing: number,
    fromRing: boolean,
    availIdx: number,
  ): number {
    const mask = this.ring.mask;
    const postedAt = this.#postedAt;
    const inOrder = this.#inOrder;
    const postLen = this.#postLen;
    const lastPublished = this.#availIdx - 1; // #finish publishes
    let used = from;
    this.#dropping = false;
    while (used !== usedIdx) {
      const e = usedRing + 2 * (used & mask);
      const id = entries[e];
      const len = entries[e + 1];
      let back = id;
      if (inOrder ? id !== (used & mask) : !held(postedAt, id, lastPublished)) {
        if (inOrder && fromRing) {
          this.#mustExpand = true;
          this.#dropping = true;
          break;
        }
        back = this.#lostAt(used);
      }
      used = (used + 1) & 0xffff;
      if (back >= 0) availIdx = this.#repost(back, availIdx);
      if (len < postLen) break;
    }
    this.#coldAvailIdx = availIdx;
    return used;
  }

  /** The new addresses of the first `count` descriptors in `#deferred`, in one pass. */
  #writeDeferred(count: number): void {
    const u32 = this.ring.u32;
    const desc32 = this.ring.desc32;
    const buf = this.#buf;
    const iovaLo = this.pool.iovaLo;
    const iovaHi = this.pool.iovaHi;
    const postOff = this.#postOff;
    const deferred = this.#deferred;
    for (let k = 0; k < count; k++) {
      const id = deferred[k];
      const m = buf[id];
      const d = desc32 + 4 * id;
      u32[d] = iovaLo[m] + postOff;
      u32[d + 1] = iovaHi[m];
    }
  }

  /** Software VLAN strip, publish, notify, count: once per burst. */
  #finish(
    pkts: Uint32Array,
    n: number,
    bytes: number,
    oldAvail: number,
    availIdx: number,
  ): void {
    if (this.#strip) {
      for (let i = 0; i < n; i++) vlanStrip(this.pool, pkts[i]);
    }
    if (availIdx !== oldAvail) {
      const ring = this.ring;
      // The burst wrote avail.ring slots beyond the published index (the device does not read
      // them yet); their descriptors become the device's when avail.idx moves.
      this.#availIdx = availIdx & POS_MASK;
      if (ring.publishBurst(oldAvail, availIdx, this.#eventIdx)) this.#transport.notify(ring.index);
    } else if (this.ring.unsettled) {
      this.#settle();
    }
    const s = this.stats;
    const t = this.#totals;
    s.rxPackets += n;
    t.rxPackets += n;
    s.rxBytes += bytes;
    t.rxBytes += bytes;
    const errors = this.#burstErrors;
    const noMbuf = this.#burstNoMbuf;
    if (errors !== 0) {
      this.#burstErrors = 0;
      s.rxErrors += errors;
      t.rxErrors += errors;
      s.rxDropped += errors;
      t.rxDropped += errors;
    }
    if (noMbuf !== 0) {
      this.#burstNoMbuf = 0;
      s.rxNoMbuf += noMbuf;
      t.rxNoMbuf += noMbuf;
      s.rxDropped += noMbuf;
      t.rxDropped += noMbuf;
    }
  }

  /** The fenced notification check an earlier publish left out (split_ring.ts). */
  #settle(): void {
    if (this.ring.settle()) this.#transport.notify(this.ring.index);
  }

  /**
   * After the device was reset (2.1: it touches the rings no more): the frames it delivered that
   * no burst took are received and dropped, counted in rxDropped like any frame the driver
   * discards on receive, so that stopping a port under traffic takes no frame out of the counts.
   * The bursts read what the device wrote before the reset, at most a ring of entries.
   */
  discardDelivered(): void {
    const pkts = new Uint32Array(32);
    for (let k = 0; k <= this.ring.size; k++) {
      const from = this.#lastUsed;
      const bytes = this.stats.rxBytes;
      const n = this.burst(pkts, pkts.length);
      if (n === 0 && this.#lastUsed === from && this.#expandedEnd < 0) return;
      this.pool.freeBulk(pkts, n);
      const got = this.stats.rxBytes - bytes;
      for (const st of [this.stats, this.#totals]) {
        st.rxPackets -= n;
        st.rxBytes -= got;
        st.rxDropped += n;
      }
    }
  }

  /** Give every posted buffer back to the pool (after the device was reset). */
  release(): void {
    this.#expandedEnd = -1;
    this.#mustExpand = false;
    this.#dropping = false;
    const buf = this.#buf;
    for (let i = 0; i < buf.length; i++) {
      if (buf[i] !== NONE) this.pool.free(buf[i]);
      buf[i] = NONE;
      this.#postedAt[i] = this.#availIdx; // not held
    }
  }
}
