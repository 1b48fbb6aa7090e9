/**
 * A transmit queue (virtio 1.2, 5.1.6.2 "Packet Transmission") over one split ring.
 *
 * A packet is one descriptor chain (2.7.5, VIRTQ_DESC_F_NEXT): the first descriptor covers the
 * zeroed virtio-net header just before the first segment's data plus that data; every further
 * segment gets its own descriptor. A single-segment frame whose header area holds something (a
 * frame received with MRG_RXBUF carries num_buffers; without it DPDK's vhost leaves the header
 * zero, and the frame goes out as it came) is sent as two descriptors instead, a zero header of
 * the queue's own and the frame (any layout is allowed, 5.1.6.2): its header line is then never
 * written, and a device on another core reads the frame from its own cache. Such header
 * descriptors are kept as pairs (header descriptor, frame descriptor) from one frame to the next,
 * so a stream of forwarded frames writes one descriptor per frame and leaves the header
 * descriptors alone. A frame received with MRG_RXBUF (marked DEVICE_HEADER: its header holds
 * num_buffers) goes behind the zero header without its header area being read, and the RX queue
 * reads num_buffers only from full buffers, so in forwarding neither reads the header's line and
 * it stays in the device's cache. Free descriptors and free pairs are reused first in, first out:
 * the device then reads the table in order, line after line, and its prefetching hides the
 * transfers (docs/performance.md). Which descriptors are free, how chains continue and which
 * mbuf a chain carries are kept in ordinary memory (`#free`, `#pairs`, `#next`, `#mbuf`); the
 * descriptor table is only written, never read back, so a device cannot redirect us.
 *
 * With VIRTIO_F_IN_ORDER (2.7.5, 2.7.9) the device uses chains in the order they were made
 * available and may skip reading the available ring, so every chain must start where the one
 * before it ended and continue to the next descriptor (next = x + 1, wrapping to 0). Descriptors
 * are then taken in ring order alone (no header pairs kept aside): chains finish in the order
 * they were made available, so the free descriptors are always the next ones in ring order and
 * the free FIFO would hold descriptor k at index k; its index is used as the descriptor, and the
 * FIFO itself is neither read nor written. A header pair whose first descriptor already holds the
 * zero header chained to the next (`#zeroHdrAt`) is not written again. Which chains finished
 * follows from used.idx alone: the device may write one used entry for a whole batch (2.7.9), so
 * in order the entries are not read at all.
 *
 * Finished chains ([lastUsed, used.idx), one ordered load) are reclaimed lazily: when half the
 * descriptors are in flight, when a packet does not fit, or on a burst of 0 packets. Reading the
 * used ring every burst pulls its cache line away from the device each time it writes there;
 * reclaiming only when a few descriptors are left returns buffers to the pool later and colder,
 * which slows forwarding. A burst then enqueues, publishes avail.idx once and notifies at most
 * once, only when the device asks.
 *
 * With VIRTIO_F_INDIRECT_DESC (`indirect`, indirect.ts) a frame of several segments takes one
 * descriptor pointing at the indirect table of its head descriptor instead of a chain (2.7.5.3);
 * the head is then freed as a chain of one. Frames of one segment never go that way.
 */
import { MbufFlag, type MbufPool, NONE } from "../mbuf.ts";
import type { VirtioTransport } from "./transport.ts";
import { Avail, Desc } from "./constants.ts";
import type { SplitRing } from "./split_ring.ts";
import type { PortStats } from "./stats.ts";
import type { IndirectTables } from "./indirect.ts";
import { vlanInsert } from "../vlan.ts";

/** A frame received with a device-written header (mbuf.ts): sent behind the zero header, unread. */
const DEVICE_HEADER = MbufFlag.DEVICE_HEADER;

export interface TxQueueOptions {
  ring: SplitRing;
  pool: MbufPool;
  /** Where notifications go (only `notify` is used: a worker thread passes just that). */
  transport: Pick<VirtioTransport, "notify">;
  hdrSize: number;
  eventIdx: boolean;
  /** TCI inserted on every frame (software VLAN insert), or -1 for none. */
  vlanInsert: number;
  /**
   * iova of at least `hdrSize` zero bytes the device can read and nobody writes: with it, a frame
   * whose header area is not zero is sent as two descriptors (this header, then the frame).
   */
  zeroHeader?: number;
  /** VIRTIO_F_IN_ORDER was negotiated: descriptors in ring order, completions by count. */
  inOrder?: boolean;
  /** VIRTIO_F_INDIRECT_DESC was negotiated: one table per descriptor (indirect.ts). */
  indirect?: IndirectTables;
  stats: PortStats;
  totals: PortStats;
}

export class TxQueue {
  readonly ring: SplitRing;
  readonly pool: MbufPool;
  readonly stats: PortStats;
  readonly #totals: PortStats;
  readonly #transport: Pick<VirtioTransport, "notify">;
  readonly #hdr: number;
  readonly #eventIdx: boolean;
  readonly #insertTci: number;
  /**
   * Free descriptors, a FIFO ring (`#freeCount` of them from `#freeHead`): reused in the order they
   * were freed, so the device walks the table in order.
   */
  readonly #free: Uint16Array;
  #freeCount: number;
  #freeHead = 0;
  /**
   * Free header pairs, a FIFO ring like `#free`, by header descriptor: its table entry is the zero
   * header chained to descriptor `#next[h]`, and both are free. A frame sent behind the zero header
   * takes a pair as it is and writes only the frame's descriptor; the pair comes back whole when
   * the device is done, so a steady stream of such frames never writes a header descriptor again.
   */
  readonly #pairs: Uint16Array;
  #pairCount = 0;
  #pairHead = 0;
  /** Reclaim before a burst when fewer descriptors than this are free (half the ring). */
  readonly #reclaimBelow: number;
  /** Next descriptor of a chain (shadow of desc.next). */
  readonly #next: Uint16Array;
  /** Packet carried by the chain starting at each descriptor, NONE if none in flight. */
  readonly #mbuf: Int32Array;
  /** Descriptors in the chain starting at each head; 0 for a header pair kept as a pair. */
  readonly #chainLen: Uint16Array;
  readonly #inOrder: boolean;
  /** In order: first descriptor of the oldest chain in flight. */
  #oldest = 0;
  /** 1 where the descriptor holds the zero header chained to the next one (in order). */
  readonly #zeroHdrAt: Uint8Array;
  /** Packets finished in one reclaim, freed together. */
  readonly #done: Int32Array;
  /** `zeroHeader` as u32 halves; `#zeroLo` is -1 without one. */
  readonly #zeroLo: number;
  readonly #zeroHi: number;
  /** Indirect tables, and the most segments a frame sent through one may have (0: none). */
  readonly #tables: IndirectTables | null;
  readonly #indirectMax: number;
  #lastUsed = 0;
  #availIdx = 0;
  #badUsedIdx = -1;

  constructor(o: TxQueueOptions) {
    this.ring = o.ring;
    this.stats = o.stats;
    this.#totals = o.totals;
    this.#transport = o.transport;
    this.#hdr = o.hdrSize;
    this.#eventIdx = o.eventIdx;
    this.#insertTci = o.vlanInsert;
    this.pool = o.pool;
    const n = o.ring.size;
    this.#free = new Uint16Array(n);
    this.#pairs = new Uint16Array(n >> 1);
    this.#next = new Uint16Array(n);
    this.#mbuf = new Int32Array(n).fill(NONE);
    this.#chainLen = new Uint16Array(n);
    this.#inOrder = o.inOrder ?? false;
    this.#zeroHdrAt = new Uint8Array(n);
    this.#done = new Int32Array(n);
    this.#zeroLo = o.zeroHeader === undefined ? -1 : o.zeroHeader % 2 ** 32;
    this.#zeroHi = o.zeroHeader === undefined ? 0 : Math.floor(o.zeroHeader / 2 ** 32);
    this.#tables = o.indirect ?? null;
    this.#indirectMax = o.indirect?.maxEntries ?? 0;
    for (let i = 0; i < n; i++) this.#free[i] = i;
    this.#freeCount = n;
    this.#reclaimBelow = Math.max(Math.min(n, 32), n >> 1);
    o.ring.setAvailFlags(Avail.F_NO_INTERRUPT);
    o.ring.setUsedEvent(0xffff);
  }

  /** Descriptors free right now. */
  get freeDescriptors(): number {
    return this.#freeCount + 2 * this.#pairCount;
  }

  /** Take finished chains back from the used ring and free their packets. */
  reclaim(): void {
    const ring = this.ring;
    if (ring.peekUsedIdx() === this.#lastUsed) return; // nothing finished: no ordered load
    const usedIdx = ring.loadUsedIdx();
    let used = this.#lastUsed;
    const pending = (usedIdx - used) & 0xffff;
    if (pending === 0) return;
    if (pending > ((this.#availIdx - used) & 0xffff)) {
      // More completions than chains in flight (2.7.8): nothing in the range can be trusted.
      if (usedIdx !== this.#badUsedIdx) {
        this.#badUsedIdx = usedIdx;
        this.stats.txErrors++;
        this.#totals.txErrors++;
      }
      return;
    }
    const u32 = ring.u32;
    const mask = ring.mask;
    const size = ring.size;
    const usedRing = ring.usedRing32;
    const inOrder = this.#inOrder;
    let oldest = this.#oldest;
    const mbuf = this.#mbuf;
    const next = this.#next;
    const chainLen = this.#chainLen;
    const free = this.#free;
    const pairs = this.#pairs;
    const pool = this.pool;
    let nFree = this.#freeCount;
    const freeHead = this.#freeHead;
    const fmask = free.length - 1;
    let nPairs = this.#pairCount;
    const pairHead = this.#pairHead;
    const pmask = pairs.length - 1;
    const done = this.#done;
    let nDone = 0;
    let errors = 0;
    while (used !== usedIdx) {
      // In order the next chain to finish is the oldest, whatever the entry says (if it was
      // written at all).
      let id = inOrder ? oldest : u32[usedRing + 2 * (used & mask)];
      if (id >= size || mbuf[id] === NONE) {
        // Not the head of a chain in flight: only a misbehaving device gets here. Devices
        // complete transmissions in avail order, so this entry stood for the chain published at
        // the same position: take that one back rather than lose its descriptors for good.
        errors++;
        id = ring.u16[ring.availRing16 + (used & mask)];
        if (id >= size || mbuf[id] === NONE) {
          used = (used + 1) & 0xffff;
          continue;
        }
      }
      used = (used + 1) & 0xffff;
      done[nDone++] = mbuf[id];
      mbuf[id] = NONE;
      const c = chainLen[id];
      if (inOrder) {
        // Chains are consecutive and the free FIFO holds descriptor k at index k (see burst).
        oldest = (id + c) & mask;
        nFree += c;
      } else if (c === 0) {
        pairs[(pairHead + nPairs++) & pmask] = id;
      } else if (c === 1) {
        free[(freeHead + nFree++) & fmask] = id;
      } else {
        let d = id;
        for (let k = c; k > 0; k--) {
          free[(freeHead + nFree++) & fmask] = d;
          d = next[d];
        }
      }
    }
    pool.freeBulk(done, nDone);
    this.#oldest = oldest;
    this.#freeCount = nFree;
    this.#pairCount = nPairs;
    this.#lastUsed = used;
    if (errors !== 0) {
      this.stats.txErrors += errors;
      this.#totals.txErrors += errors;
    }
  }

  /**
   * Send `pkts[0..n)`; returns how many were taken (the ring may fill up). Taken packets belong to
   * the queue (freed when the device is done). A malformed packet (no room for the header or a
   * VLAN tag, a segment outside its buffer) is taken, freed and counted in txErrors. A burst of
   * 0 packets reclaims and does what `idle` does.
   */
  burst(pkts: Uint32Array, n: number): number {
    let reclaimed = n === 0 || this.#freeCount + 2 * this.#pairCount < this.#reclaimBelow;
    if (reclaimed) this.reclaim();
    const zeroLo = this.#zeroLo;
    const zeroHi = this.#zeroHi;
    const ring = this.ring;
    const pool = this.pool;
    const bytesArr = pool.bytes;
    const u16 = ring.u16;
    const mask = ring.mask;
    const availRing = ring.availRing16;
    const next = pool.next;
    const dataOff = pool.dataOff;
    const dataLen = pool.dataLen;
    const bufOff = pool.bufOff;
    const iovaLo = pool.iovaLo;
    const iovaHi = pool.iovaHi;
    const flags = pool.flags;
    const bufSize = pool.headroom + pool.dataRoom;
    const hdr = this.#hdr;
    const insertTci = this.#insertTci;
    const free = this.#free;
    const pairs = this.#pairs;
    const shadowNext = this.#next;
    const oldAvail = this.#availIdx;
    let availIdx = oldAvail;
    let nFree = this.#freeCount;
    let freeHead = this.#freeHead;
    const fmask = free.length - 1;
    let nPairs = this.#pairCount;
    let pairHead = this.#pairHead;
    const pmask = pairs.length - 1;
    let taken = 0;
    let sent = 0;
    let bytes = 0;
    let errors = 0;
    const desc32 = ring.desc32;
    const u32 = ring.u32;
    const words = pool.region.u32;
    const mbufOf = this.#mbuf;
    const chainLen = this.#chainLen;
    const inOrder = this.#inOrder;
    const zeroHdrAt = this.#zeroHdrAt;
    const VLAN_INSERT = MbufFlag.VLAN_INSERT; // a local: a property load per packet otherwise
    for (; taken < n; taken++) {
      const m = pkts[taken];
      let off = dataOff[m];
      let first = dataLen[m];
      // Count and check the segments before touching anything (0: one lies outside its buffer).
      const segs = next[m] === NONE && off + first <= bufSize ? 1 : this.#segments(m);
      if (segs > nFree + 2 * nPairs) {
        // Full as far as we know: take back what the device finished (once per burst), or stop
        // here and let the caller keep pkts[taken..n).
        if (reclaimed) break;
        reclaimed = true;
        this.#keepFifos(nFree, freeHead, nPairs, pairHead);
        this.reclaim(); // adds to the FIFOs' ends
        nFree = this.#freeCount;
        nPairs = this.#pairCount;
        if (segs > nFree + 2 * nPairs) break;
      }
      let ok = segs !== 0;
      if (ok && ((flags[m] & VLAN_INSERT) !== 0 || insertTci >= 0)) {
        ok = this.#insertTag(m);
        off = dataOff[m];
        first = dataLen[m];
      }
      if (!ok || off < hdr) {
        errors++;
        pool.free(m);
        continue;
      }
      // Received with a header the device wrote: behind our zero header, its line unread.
      // (flags[m] is loaded again: keeping it live to here slows tx-only measurably.)
      let split = (flags[m] & DEVICE_HEADER) !== 0 && segs === 1 && zeroLo >= 0 &&
        nFree + 2 * nPairs >= 2;
      if (!split) {
        // Zero header just before the data (5.1.6.2: no offloads, num_buffers 0). Only the words
        // that are not zero yet are written: a buffer sent before still has a zero header, and an
        // unwritten line stays in the device's cache.
        const h = bufOff[m] + off - hdr;
        if ((h & 3) === 0 && hdr === 12) {
          const w = h >>> 2;
          if ((words[w] | words[w + 1] | words[w + 2]) !== 0) {
            // A header someone wrote (a received frame carries num_buffers): rather than write
            // its line, send the frame behind our own zero header (a header pair) when we can.
            split = segs === 1 && zeroLo >= 0 && nFree + 2 * nPairs >= 2;
            if (!split) {
              words[w] = 0;
              words[w + 1] = 0;
              words[w + 2] = 0;
            }
          }
        } else {
          for (let i = 0; i < hdr; i++) bytesArr[h + i] = 0;
        }
      }
      // Descriptors are taken here on the locals, as `#takeOne` takes them on the fields.
      let head: number;
      if (!split) {
        // Single descriptors come from the free FIFO; when it is empty a pair is broken up.
        if (nFree > 0) {
          head = inOrder ? freeHead : free[freeHead];
          freeHead = (freeHead + 1) & fmask;
          nFree--;
        } else {
          head = pairs[pairHead];
          pairHead = (pairHead + 1) & pmask;
          nPairs--;
          free[(freeHead + nFree++) & fmask] = shadowNext[head];
        }
      } else if (nPairs > 0) {
        head = pairs[pairHead];
        pairHead = (pairHead + 1) & pmask;
        nPairs--;
      } else {
        // No pair is free (two descriptors are, checked above): make one. In order there are no
        // pairs, and the next two descriptors in ring order are the pair.
        head = inOrder ? freeHead : free[freeHead];
        const nd = inOrder ? (freeHead + 1) & fmask : free[(freeHead + 1) & fmask];
        freeHead = (freeHead + 2) & fmask;
        nFree -= 2;
        if (zeroHdrAt[head] === 0) {
          const h = desc32 + 4 * head;
          u32[h] = zeroLo;
          u32[h + 1] = zeroHi;
          u32[h + 2] = hdr;
          u32[h + 3] = Desc.F_NEXT | (nd << 16);
          shadowNext[head] = nd;
          if (inOrder) zeroHdrAt[head] = 1; // nd is always head + 1 then
        }
      }
      // The frame's descriptor (2.7.5: addr lo, addr hi, len, flags | next << 16): the second of a
      // pair, or the first of the chain with the zero header before the data.
      const fd = split ? shadowNext[head] : head;
      const before = split ? 0 : hdr;
      const d = desc32 + 4 * fd;
      u32[d] = iovaLo[m] + off - before;
      u32[d + 1] = iovaHi[m];
      u32[d + 2] = before + first;
      u32[d + 3] = 0;
      zeroHdrAt[fd] = 0; // only a pair's header descriptor, in order, holds 1
      chainLen[head] = split ? (inOrder ? 2 : 0) : segs; // in order a pair goes back to the FIFO
      let len = first;
      if (segs > 1) {
        this.#keepFifos(nFree, freeHead, nPairs, pairHead);
        len += this.#rest(m, head, iovaLo[m] + off - hdr, hdr + first, segs);
        nFree = this.#freeCount;
        freeHead = this.#freeHead;
        nPairs = this.#pairCount;
        pairHead = this.#pairHead;
      }
      mbufOf[head] = m;
      // Written only when it changes, as on the RX side (see rx_queue.ts).
      if (u16[availRing + (availIdx & mask)] !== head) u16[availRing + (availIdx & mask)] = head;
      availIdx++;
      sent++;
      bytes += len;
    }
    this.#keepFifos(nFree, freeHead, nPairs, pairHead);
    this.#finish(oldAvail, availIdx, sent, bytes, errors);
    return taken;
  }

  /** Publish, notify, count: once per burst. */
  #finish(oldAvail: number, availIdx: number, sent: number, bytes: number, errors: number): void {
    const ring = this.ring;
    if (availIdx !== oldAvail) {
      this.#availIdx = availIdx & 0xffff;
      if (ring.publishBurst(oldAvail, availIdx, this.#eventIdx)) this.#transport.notify(ring.index);
    } else {
      this.idle(); // nothing published (0 packets, or the ring is full)
    }
    const s = this.stats;
    const t = this.#totals;
    s.txPackets += sent;
    t.txPackets += sent;
    s.txBytes += bytes;
    t.txBytes += bytes;
    if (errors !== 0) {
      s.txErrors += errors;
      t.txErrors += errors;
      s.txDropped += errors;
      t.txDropped += errors;
    }
  }

  /** The free FIFOs' heads and counts, from the locals `burst` keeps them in. */
  #keepFifos(nFree: number, freeHead: number, nPairs: number, pairHead: number): void {
    this.#freeCount = nFree;
    this.#freeHead = freeHead;
    this.#pairCount = nPairs;
    this.#pairHead = pairHead;
  }

  /**
   * Segments of packet `m`, or 0 when one lies outside its buffer (or is no buffer), or when there
   * are more than the ring has descriptors (a loop of `next` ends there).
   */
  #segments(m: number): number {
    const pool = this.pool;
    const next = pool.next;
    const dataOff = pool.dataOff;
    const dataLen = pool.dataLen;
    const bufSize = pool.headroom + pool.dataRoom;
    const size = this.ring.size;
    if (!(dataOff[m] + dataLen[m] <= bufSize)) return 0;
    let segs = 1;
    for (let s = next[m]; s !== NONE; s = next[s]) {
      if (!(dataOff[s] + dataLen[s] <= bufSize) || ++segs > size) return 0;
    }
    return segs;
  }

  /** Insert packet `m`'s VLAN tag, or the queue's (software VLAN insert); false without room. */
  #insertTag(m: number): boolean {
    const pool = this.pool;
    const tci = (pool.flags[m] & MbufFlag.VLAN_INSERT) !== 0 ? pool.vlanTci[m] : this.#insertTci;
    return vlanInsert(pool, m, tci, this.#hdr);
  }

  /**
   * The segments of packet `m` after the first (`#segments` checked them), behind descriptor
   * `head`, which holds the zero header and the first segment (iova low half `firstLo`,
   * `firstLen` bytes): through `head`'s indirect table when they fit one (2.7.5.3: the descriptor
   * then points at the table, and the frame is freed as a chain of one), else as a chain of
   * descriptors taken with `#takeOne`. Returns their bytes.
   */
  #rest(m: number, head: number, firstLo: number, firstLen: number, segs: number): number {
    const pool = this.pool;
    const next = pool.next;
    const u32 = this.ring.u32;
    const desc32 = this.ring.desc32;
    let bytes = 0;
    if (segs <= this.#indirectMax) {
      this.#tables!.putSplit(head, pool, m, firstLo, firstLen, u32, desc32 + 4 * head);
      this.#chainLen[head] = 1;
      for (let s = next[m]; s !== NONE; s = next[s]) bytes += pool.dataLen[s];
      return bytes;
    }
    let prev = head;
    for (let s = next[m]; s !== NONE; s = next[s]) {
      const nd = this.#takeOne();
      u32[desc32 + 4 * prev + 3] = Desc.F_NEXT | (nd << 16);
      this.#next[prev] = nd;
      const d = desc32 + 4 * nd;
      u32[d] = pool.iovaLo[s] + pool.dataOff[s];
      u32[d + 1] = pool.iovaHi[s];
      u32[d + 2] = pool.dataLen[s];
      u32[d + 3] = 0;
      this.#zeroHdrAt[nd] = 0;
      bytes += pool.dataLen[s];
      prev = nd;
    }
    return bytes;
  }

  /**
   * A free descriptor, taken as `burst` takes a frame's first: the oldest in the free FIFO (in
   * order, the next in ring order: see the module comment), or when the FIFO is empty the header
   * descriptor of a free pair, its other going to the FIFO. This works on the fields, for the cold
   * paths; `burst` writes the same steps out on its locals, since keeping the FIFOs' heads and
   * counts in the fields per packet costs 12-25 % of txBurst on the simulated device.
   */
  #takeOne(): number {
    const free = this.#free;
    const fmask = free.length - 1;
    if (this.#freeCount > 0) {
      const d = this.#inOrder ? this.#freeHead : free[this.#freeHead];
      this.#freeHead = (this.#freeHead + 1) & fmask;
      this.#freeCount--;
      return d;
    }
    const d = this.#pairs[this.#pairHead];
    this.#pairHead = (this.#pairHead + 1) & (this.#pairs.length - 1);
    this.#pairCount--;
    free[(this.#freeHead + this.#freeCount++) & fmask] = this.#next[d];
    return d;
  }

  /**
   * Nothing to send now: take the fenced notification check the last publish left out
   * (split_ring.ts, `settle`) and notify if the device asks by now, unless it has used every
   * chain published (then it saw them all). A poll-mode caller calls this (or `burst` with 0
   * packets) when it has nothing to send, or the device may wait for a notification of the last
   * burst.
   */
  idle(): void {
    const ring = this.ring;
    if (ring.unsettled && ring.settle() && ring.loadUsedIdx() !== this.#availIdx) {
      this.#transport.notify(ring.index);
    }
  }

  /**
   * After the device was reset: take back what it finished (sent), then free every packet still
   * in flight. Those were counted as sent when the ring took them: they move from txPackets and
   * txBytes to txDropped. Returns how many.
   */
  release(): number {
    this.reclaim();
    const n = this.ring.size;
    const pool = this.pool;
    let dropped = 0;
    let bytes = 0;
    for (let i = 0; i < n; i++) {
      const m = this.#mbuf[i];
      if (m !== NONE) {
        for (let s = m, k = 0; s !== NONE && k < n; s = pool.next[s], k++) bytes += pool.dataLen[s];
        pool.free(m);
        this.#mbuf[i] = NONE;
        dropped++;
      }
      this.#free[i] = i;
      this.#zeroHdrAt[i] = 0;
    }
    this.#oldest = 0;
    for (const st of [this.stats, this.#totals]) {
      st.txPackets -= dropped;
      st.txBytes -= bytes;
      st.txDropped += dropped;
    }
    this.#freeCount = n;
    this.#freeHead = 0;
    this.#pairCount = 0;
    this.#pairHead = 0;
    return dropped;
  }
}
