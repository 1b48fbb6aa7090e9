/**
 * A transmit queue (virtio 1.2, 5.1.6.2) over one packed ring (2.8), with the public API of the
 * split ring's TxQueue (tx_queue.ts).
 *
 * A packet is a buffer of one or more descriptors at consecutive slots (2.8.6: NEXT on all but the
 * last, the Buffer ID in the last): the zeroed virtio-net header just before the first segment's
 * data plus that data, then one descriptor per further segment. A single-segment frame whose header
 * area holds something (received with MRG_RXBUF, marked DEVICE_HEADER, or any non-zero header) goes
 * behind the queue's own zero header instead, two descriptors, so that its header line is neither
 * written nor read (as on the split ring, tx_queue.ts). A burst writes every descriptor whole, the
 * first one's flags last with an ordered store (2.8.21.1), and notifies at most once (2.8.21.3).
 *
 * Buffer IDs come from a FIFO of free ids (2.8.21.1 "the next free buffer id"). With
 * VIRTIO_F_IN_ORDER a buffer's id is the slot it starts at: unique while it is in flight (a slot
 * is written again only after its buffer came back), and it lets a used descriptor that stands
 * for a batch be resolved without walking from buffer to buffer. Per id the queue
 * keeps the packet and its descriptor count (`#mbuf`, `#count`), and per slot the id of the buffer
 * that starts there (`#slotId`): the ring is written, never read back, except for used
 * descriptors.
 *
 * With VIRTIO_F_INDIRECT_DESC (`indirect`, indirect.ts) a frame of several segments takes one
 * descriptor with INDIRECT set, pointing at the indirect table of its Buffer ID (2.8.7); frames of
 * one segment never go that way.
 *
 * Completions are taken back lazily, as on the split ring: when fewer than half the descriptors
 * are free, when a packet does not fit, or on a burst of 0 packets. A used descriptor at the used
 * position names a buffer in flight; the position then moves on by that buffer's descriptor count
 * (2.8.6). With VIRTIO_F_IN_ORDER (2.8.9) it may stand for a batch: the buffers from the one
 * starting at the used position up to the one it names, all finished.
 *
 * The device is not trusted: only slots holding descriptors in flight are read; a used
 * descriptor with the wrong wrap counter, an id out of range or not in flight (used twice), or
 * out of order when in order, is counted in txErrors, and the buffer that was made available at
 * that slot is taken back (devices complete transmissions in ring order), so no descriptor is
 * lost and no packet freed twice.
 */
import { MbufFlag, type MbufPool, NONE } from "../mbuf.ts";
import type { VirtioTransport } from "./transport.ts";
import { PackedDesc } from "./constants.ts";
import {
  AVAIL_BITS_WRAP1,
  availPhase,
  type PackedRing,
  USED_BITS_WRAP1,
  WRAP_TOGGLE,
} from "./packed_ring.ts";
import type { PortStats } from "./stats.ts";
import type { IndirectTables } from "./indirect.ts";
import { vlanInsert } from "../vlan.ts";

const LOADS_IN_ORDER = Deno.build.arch === "x86_64";
const AVAIL_TO_USED = PackedDesc.F_USED;
const DEVICE_HEADER = MbufFlag.DEVICE_HEADER;

export interface PackedTxQueueOptions {
  ring: PackedRing;
  pool: MbufPool;
  transport: Pick<VirtioTransport, "notify">;
  hdrSize: number;
  eventIdx: boolean;
  /** TCI inserted on every frame, or -1 for none. */
  vlanInsert: number;
  /** iova of at least `hdrSize` zero bytes nobody writes (see the module comment). */
  zeroHeader?: number;
  inOrder?: boolean;
  /** VIRTIO_F_INDIRECT_DESC was negotiated: one table per Buffer ID (indirect.ts). */
  indirect?: IndirectTables;
  stats: PortStats;
  totals: PortStats;
}

export class PackedTxQueue {
  readonly ring: PackedRing;
  readonly pool: MbufPool;
  readonly stats: PortStats;
  readonly #totals: PortStats;
  readonly #transport: Pick<VirtioTransport, "notify">;
  readonly #hdr: number;
  readonly #eventIdx: boolean;
  readonly #insertTci: number;
  readonly #inOrder: boolean;
  readonly #zeroLo: number;
  readonly #zeroHi: number;
  /** Free buffer ids, a FIFO ring (`#idCount` from `#idHead`). */
  readonly #ids: Uint16Array;
  #idHead = 0;
  #idCount: number;
  /** Per id: the packet in flight (NONE when the id is free) and its descriptor count. */
  readonly #mbuf: Int32Array;
  readonly #count: Uint16Array;
  /** Per slot: the id of the buffer whose first descriptor is there. */
  readonly #slotId: Uint16Array;
  /** Packets finished in one reclaim, freed together. */
  readonly #done: Int32Array;
  readonly #reclaimBelow: number;
  /** Descriptors not in flight. */
  #free: number;
  /**
   * Descriptors in flight that earlier bursts exposed: the only ones `reclaim` reads (a burst
   * that reclaims part-way has written descriptors whose first is not exposed yet).
   */
  #exposed = 0;
  #usedSlot = 0;
  #usedBits: number = USED_BITS_WRAP1;
  #availSlot = 0;
  #availBits: number = AVAIL_BITS_WRAP1;
  /** A used position where a bad entry named nothing to take back (counted once). */
  #stuckAt = -1;
  /** Indirect tables, and the most segments a frame sent through one may have (0: none). */
  readonly #tables: IndirectTables | null;
  readonly #indirectMax: number;

  constructor(o: PackedTxQueueOptions) {
    this.ring = o.ring;
    this.pool = o.pool;
    this.stats = o.stats;
    this.#totals = o.totals;
    this.#transport = o.transport;
    this.#hdr = o.hdrSize;
    this.#eventIdx = o.eventIdx;
    this.#insertTci = o.vlanInsert;
    this.#inOrder = o.inOrder ?? false;
    this.#zeroLo = o.zeroHeader === undefined ? -1 : o.zeroHeader % 2 ** 32;
    this.#zeroHi = o.zeroHeader === undefined ? 0 : Math.floor(o.zeroHeader / 2 ** 32);
    const n = o.ring.size;
    this.#ids = new Uint16Array(n);
    for (let i = 0; i < n; i++) this.#ids[i] = i;
    this.#idCount = n;
    this.#mbuf = new Int32Array(n).fill(NONE);
    this.#count = new Uint16Array(n);
    this.#slotId = new Uint16Array(n);
    this.#done = new Int32Array(n);
    this.#free = n;
    this.#reclaimBelow = Math.max(Math.min(n, 32), n >> 1);
    this.#tables = o.indirect ?? null;
    this.#indirectMax = o.indirect?.maxEntries ?? 0;
    o.ring.disableInterrupts();
  }

  /** Descriptors free right now. */
  get freeDescriptors(): number {
    return this.#free;
  }

  /** Take finished buffers back from the ring and free their packets. */
  reclaim(): void {
    if (this.#exposed === 0) return; // nothing in flight
    if (this.#inOrder) this.#reclaimInOrder();
    else this.#reclaimAny();
  }

  /**
   * In order (2.8.9): a used descriptor at the used position stands for every buffer from there up
   * to the one whose Buffer ID it carries, and a Buffer ID is the slot where its buffer starts. So
   * the batch is the descriptors from the used position to that buffer's end, and the packets to
   * free are those starting at them: a scan of slots, no walk from buffer to buffer. An id that
   * names no buffer in flight is a bad entry (`#takeBackOne`).
   */
  #reclaimInOrder(): void {
    const ring = this.ring;
    const u32 = ring.u32;
    const desc32 = ring.desc32;
    const size = ring.size;
    const mbuf = this.#mbuf;
    const count = this.#count;
    const done = this.#done;
    let slot = this.#usedSlot;
    let bits = this.#usedBits;
    let inFlight = this.#exposed;
    let nDone = 0;
    while (inFlight > 0) {
      const word = LOADS_IN_ORDER
        ? u32[desc32 + 4 * slot + 3]
        : Atomics.load(u32, desc32 + 4 * slot + 3);
      const fl = (word >>> 16) & WRAP_TOGGLE;
      if (fl === (bits ^ AVAIL_TO_USED)) break; // not used yet
      const id = word & 0xffff;
      let ahead = id - slot;
      if (ahead < 0) ahead += size;
      if (fl !== bits || id >= size || ahead >= inFlight || mbuf[id] === NONE) {
        this.#free += this.#exposed - inFlight;
        this.#exposed = inFlight;
        this.#usedSlot = slot;
        this.#usedBits = bits;
        this.pool.freeBulk(done, nDone);
        nDone = 0;
        if (!this.#takeBackOne()) return;
        slot = this.#usedSlot;
        bits = this.#usedBits;
        inFlight = this.#exposed;
        continue;
      }
      const descs = ahead + count[id];
      for (let k = 0; k < descs; k++) {
        const m = mbuf[slot];
        if (m !== NONE) {
          done[nDone++] = m;
          mbuf[slot] = NONE;
        }
        if (++slot === size) {
          slot = 0;
          bits ^= WRAP_TOGGLE;
        }
      }
      inFlight -= descs;
    }
    this.pool.freeBulk(done, nDone);
    this.#usedSlot = slot;
    this.#usedBits = bits;
    this.#free += this.#exposed - inFlight;
    this.#exposed = inFlight;
  }

  /**
   * In order, a bad used descriptor at the used position: take back the buffer made available
   * there (devices complete transmissions in ring order), counted in txErrors. False when no
   * buffer starts there (counted once; the queue waits).
   */
  #takeBackOne(): boolean {
    const slot = this.#usedSlot;
    const bits = this.#usedBits;
    const m = this.#mbuf[slot];
    if (m === NONE) {
      if (this.#stuckAt !== (slot | (bits << 16))) this.#txError();
      this.#stuckAt = slot | (bits << 16);
      return false;
    }
    this.#txError();
    const c = this.#count[slot];
    this.#mbuf[slot] = NONE;
    this.pool.free(m);
    this.#exposed -= c;
    this.#free += c;
    const next = slot + c;
    this.#usedSlot = next >= this.ring.size ? next - this.ring.size : next;
    if (next >= this.ring.size) this.#usedBits = bits ^ WRAP_TOGGLE;
    return true;
  }

  #txError(): void {
    this.stats.txErrors++;
    this.#totals.txErrors++;
  }

  /** Any order: each used descriptor names one buffer by its id (from the FIFO of free ids). */
  #reclaimAny(): void {
    const ring = this.ring;
    const u32 = ring.u32;
    const desc32 = ring.desc32;
    const size = ring.size;
    const mbuf = this.#mbuf;
    const count = this.#count;
    const slotId = this.#slotId;
    const ids = this.#ids;
    const done = this.#done;
    let slot = this.#usedSlot;
    let bits = this.#usedBits;
    let inFlight = this.#exposed;
    let idCount = this.#idCount;
    const idHead = this.#idHead;
    let nDone = 0;
    let errors = 0;
    while (inFlight > 0) {
      const d = desc32 + 4 * slot;
      const word = LOADS_IN_ORDER ? u32[d + 3] : Atomics.load(u32, d + 3);
      const fl = (word >>> 16) & WRAP_TOGGLE;
      if (fl === (bits ^ AVAIL_TO_USED)) break; // not used yet
      let id = fl === bits ? word & 0xffff : size;
      if (id >= size || mbuf[id] === NONE) {
        // Take back the buffer made available here (devices complete transmissions in ring order).
        id = slotId[slot];
        if (mbuf[id] === NONE) {
          // Nothing of ours starts here (out of order, the position can be inside a buffer):
          // how far to move on is unknown. Counted once; the queue waits here.
          if (this.#stuckAt !== (slot | (bits << 16))) errors++;
          this.#stuckAt = slot | (bits << 16);
          break;
        }
        errors++;
      }
      const c = count[id];
      done[nDone++] = mbuf[id];
      mbuf[id] = NONE;
      ids[(idHead + idCount++) % size] = id;
      inFlight -= c;
      slot += c;
      if (slot >= size) {
        slot -= size;
        bits ^= WRAP_TOGGLE;
      }
    }
    this.pool.freeBulk(done, nDone);
    this.#usedSlot = slot;
    this.#usedBits = bits;
    this.#free += this.#exposed - inFlight;
    this.#exposed = inFlight;
    this.#idCount = idCount;
    if (errors !== 0) {
      this.stats.txErrors += errors;
      this.#totals.txErrors += errors;
    }
  }

  /**
   * Send `pkts[0..n)`; returns how many were taken. A malformed packet is taken, freed and counted
   * in txErrors. A burst of 0 packets reclaims.
   */
  burst(pkts: Uint32Array, n: number): number {
    let reclaimed = n === 0 || this.#free < this.#reclaimBelow;
    if (reclaimed) this.reclaim();
    const ring = this.ring;
    const pool = this.pool;
    const u32 = ring.u32;
    const desc32 = ring.desc32;
    const size = ring.size;
    const next = pool.next;
    const dataOff = pool.dataOff;
    const dataLen = pool.dataLen;
    const bufOff = pool.bufOff;
    const iovaLo = pool.iovaLo;
    const iovaHi = pool.iovaHi;
    const flags = pool.flags;
    const bytesArr = pool.bytes;
    const words = pool.region.u32;
    const bufSize = pool.headroom + pool.dataRoom;
    const hdr = this.#hdr;
    const insertTci = this.#insertTci;
    const zeroLo = this.#zeroLo;
    const zeroHi = this.#zeroHi;
    const mbufOf = this.#mbuf;
    const count = this.#count;
    const slotId = this.#slotId;
    const ids = this.#ids;
    const inOrder = this.#inOrder;
    const VLAN_INSERT = MbufFlag.VLAN_INSERT;
    const F_NEXT = PackedDesc.F_NEXT << 16;
    const oldAvail = this.#availSlot;
    const oldBits = this.#availBits;
    let aSlot = oldAvail;
    let aBits = oldBits;
    let free = this.#free;
    let idHead = this.#idHead;
    let idCount = this.#idCount;
    let headWord = -1;
    let taken = 0;
    let sent = 0;
    let bytes = 0;
    let errors = 0;
    for (; taken < n; taken++) {
      const m = pkts[taken];
      let off = dataOff[m];
      let first = dataLen[m];
      let len = first;
      let segs = 1;
      let ok = off + first <= bufSize;
      for (let s = next[m]; s !== NONE && ok; s = next[s]) {
        ok = dataOff[s] + dataLen[s] <= bufSize && ++segs <= size;
        len += dataLen[s];
      }
      if (ok && (segs + 1 > free || idCount === 0)) {
        // Full as far as we know (room for the zero-header split counted): reclaim once.
        if (!reclaimed) {
          reclaimed = true;
          this.#free = free;
          this.#idHead = idHead;
          this.#idCount = idCount;
          this.reclaim();
          free = this.#free;
          idCount = this.#idCount;
        }
        if (segs > free || idCount === 0) break;
      }
      const fl = flags[m];
      if (ok && ((fl & VLAN_INSERT) !== 0 || insertTci >= 0)) {
        const tci = (fl & VLAN_INSERT) !== 0 ? pool.vlanTci[m] : insertTci;
        ok = vlanInsert(pool, m, tci, hdr);
        len += 4;
        off = dataOff[m];
        first = dataLen[m];
      }
      if (!ok || off < hdr) {
        errors++;
        pool.free(m);
        continue;
      }
      let split = segs === 1 && zeroLo >= 0 && free >= 2 &&
        ((flags[m] & DEVICE_HEADER) !== 0);
      if (!split) {
        const h = bufOff[m] + off - hdr;
        if ((h & 3) === 0 && hdr === 12) {
          const w = h >>> 2;
          if ((words[w] | words[w + 1] | words[w + 2]) !== 0) {
            split = segs === 1 && zeroLo >= 0 && free >= 2;
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
      // In order a Buffer ID is the slot its buffer starts at (#reclaimInOrder); else the FIFO's.
      let id = aSlot;
      if (!inOrder) {
        id = ids[idHead];
        idHead = idHead + 1 === size ? 0 : idHead + 1;
        idCount--;
      }
      if (segs > 1 && segs <= this.#indirectMax) {
        // One descriptor for the whole frame, pointing at its Buffer ID's indirect table.
        const at = desc32 + 4 * aSlot;
        this.#tables!.putPacked(id, pool, m, iovaLo[m] + off - hdr, hdr + first, u32, at);
        const iw = (id | ((PackedDesc.F_INDIRECT | aBits) << 16)) >>> 0;
        if (headWord < 0) headWord = iw;
        else u32[at + 3] = iw;
        mbufOf[id] = m;
        count[id] = 1;
        slotId[aSlot] = id;
        free--;
        if (++aSlot === size) {
          aSlot = 0;
          aBits ^= WRAP_TOGGLE;
        }
        sent++;
        bytes += len;
        continue;
      }
      const descs = split ? 2 : segs;
      mbufOf[id] = m;
      count[id] = descs;
      slotId[aSlot] = id;
      free -= descs;
      // The descriptors, at consecutive slots; the id in every one (read in the last, 2.8.6).
      let d = desc32 + 4 * aSlot;
      if (split) {
        u32[d] = zeroLo;
        u32[d + 1] = zeroHi;
        u32[d + 2] = hdr;
      } else {
        u32[d] = iovaLo[m] + off - hdr;
        u32[d + 1] = iovaHi[m];
        u32[d + 2] = hdr + first;
      }
      let w = (id | F_NEXT | (aBits << 16)) >>> 0;
      let s = split ? m : next[m];
      for (let k = 1; k < descs; k++) {
        // The previous descriptor continues (NEXT); the first one's word waits for the end.
        if (headWord < 0) headWord = w;
        else u32[d + 3] = w;
        aSlot++;
        if (aSlot === size) {
          aSlot = 0;
          aBits ^= WRAP_TOGGLE;
        }
        d = desc32 + 4 * aSlot;
        u32[d] = iovaLo[s] + dataOff[s];
        u32[d + 1] = iovaHi[s];
        u32[d + 2] = split ? first : dataLen[s];
        w = (id | F_NEXT | (aBits << 16)) >>> 0;
        s = next[s];
      }
      w = (id | (aBits << 16)) >>> 0; // the last descriptor: no NEXT
      if (headWord < 0) headWord = w;
      else u32[d + 3] = w;
      aSlot++;
      if (aSlot === size) {
        aSlot = 0;
        aBits ^= WRAP_TOGGLE;
      }
      sent++;
      bytes += len;
    }
    this.#free = free;
    this.#idHead = idHead;
    this.#idCount = idCount;
    if (headWord >= 0) {
      this.#exposed = size - free;
      this.#availSlot = aSlot;
      this.#availBits = aBits;
      if (
        ring.publish(
          desc32 + 4 * oldAvail + 3,
          headWord,
          availPhase(oldAvail, oldBits, size),
          availPhase(aSlot, aBits, size),
          this.#eventIdx,
        )
      ) this.#transport.notify(ring.index);
    } else if (ring.unsettled) {
      this.idle(); // nothing published (0 packets, or the ring is full)
    }
    const st = this.stats;
    const t = this.#totals;
    st.txPackets += sent;
    t.txPackets += sent;
    st.txBytes += bytes;
    t.txBytes += bytes;
    if (errors !== 0) {
      st.txErrors += errors;
      t.txErrors += errors;
      st.txDropped += errors;
      t.txDropped += errors;
    }
    return taken;
  }

  /**
   * Nothing to send now: take the fenced notification check the last publish left out
   * (packed_ring.ts, `settle`) and notify if the device asks by now, unless it has used every
   * descriptor published (then it saw them all). A poll-mode caller calls this (or `burst` with 0
   * packets) when it has nothing to send, or the device may wait for a notification of the last
   * burst.
   */
  idle(): void {
    const ring = this.ring;
    if (ring.unsettled && ring.settle() && this.#anyAvailable()) {
      this.#transport.notify(ring.index);
    }
  }

  /** The newest descriptor made available is not used yet (the device has not seen them all). */
  #anyAvailable(): boolean {
    this.reclaim();
    return this.#exposed > 0;
  }

  /**
   * After the device was reset: take back what it finished, then free every packet still in
   * flight (moved from txPackets/txBytes to txDropped). Returns how many.
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
      this.#ids[i] = i;
    }
    for (const st of [this.stats, this.#totals]) {
      st.txPackets -= dropped;
      st.txBytes -= bytes;
      st.txDropped += dropped;
    }
    this.#idHead = 0;
    this.#idCount = n;
    this.#free = n;
    this.#exposed = 0;
    return dropped;
  }
}
