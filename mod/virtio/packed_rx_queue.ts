/**
 * A receive queue (virtio 1.2, 5.1.6.3, 5.1.6.4) over one packed ring (2.8), with the public API
 * of the split ring's RxQueue (rx_queue.ts).
 *
 * Every buffer is one device-writable descriptor whose Buffer ID (2.8.13) is its number:
 * `#buf[id]` is the mbuf it holds. A burst reads used descriptors at the driver's used position
 * (2.8.2: one location to poll), takes each buffer the entry names, posts a fresh buffer under the
 * same id at the next available position, and makes the burst's descriptors available together:
 * each written whole, the first one's flags last with an ordered store (2.8.21.1: a batch exposes
 * its first descriptor last), then at most one notification (2.8.21.3, 2.8.10). Buffers go back
 * in the order they came, so with in-order use (2.8.9) the id at a slot is the buffer made
 * available there, and a device that returns the same buffers in the same slots ring after ring
 * sees the same ids there.
 *
 * With MRG_RXBUF (5.1.6.4.2) a frame is `num_buffers` used descriptors in ring order; the device
 * marks the first used after the others (2.8.11), so when it is used the others are.
 *
 * With VIRTIO_F_IN_ORDER (2.8.9) the device may write one used descriptor for a batch: at the
 * batch's first slot, the id of its last buffer, the ones before used whole. The slots of a used
 * batch are the driver's again, so `#spellOut` (cold) rewrites them as one used descriptor per
 * buffer, and the loops below see one entry per buffer either way.
 *
 * The device is not trusted. Only `#outstanding` slots (made available, not yet used) are ever
 * read; a descriptor there is either still available (the bits the driver wrote) or used with the
 * device's wrap counter for that round: any other AVAIL/USED pair (a used flag written with the
 * wrong wrap counter) is a bad entry. An id out of range, or naming a buffer the device does not
 * hold (given back already, or posted in this burst and not yet exposed: `#gen`), or out of ring
 * order when in order, a length shorter than the header or longer than what was posted, a bad
 * num_buffers: the frame is counted once in `rxErrors` (and `rxDropped`) and dropped, and the
 * buffer made available at that slot is posted again so the ring keeps its buffers. Nothing is
 * read outside a buffer, and no loop runs further than the ring's outstanding slots.
 */
import { MbufFlag, type MbufPool, NONE } from "../mbuf.ts";
import type { VirtioTransport } from "./transport.ts";
import { NetHdr, PackedDesc } from "./constants.ts";
import {
  AVAIL_BITS_WRAP1,
  availPhase,
  type PackedRing,
  USED_BITS_WRAP1,
  WRAP_TOGGLE,
} from "./packed_ring.ts";
import type { PortStats } from "./stats.ts";
import { vlanStrip } from "../vlan.ts";

/** x86-64 keeps loads in program order: a plain load of a flags word is an acquire there. */
const LOADS_IN_ORDER = Deno.build.arch === "x86_64";
/** The available bits XOR this are the used bits of the same round. */
const AVAIL_TO_USED = PackedDesc.F_USED;
/** Generations of `#gen` wrap here (a buffer posted that long ago and never used is rare enough). */
const GEN_MASK = 0x3fffffff;

export interface PackedRxQueueOptions {
  ring: PackedRing;
  pool: MbufPool;
  transport: Pick<VirtioTransport, "notify">;
  hdrSize: number;
  mrgRxbuf: boolean;
  eventIdx: boolean;
  portId: number;
  vlanStrip: boolean;
  stats: PortStats;
  totals: PortStats;
  inOrder?: boolean;
}

export class PackedRxQueue {
  readonly ring: PackedRing;
  readonly pool: MbufPool;
  readonly stats: PortStats;
  readonly #totals: PortStats;
  readonly #transport: Pick<VirtioTransport, "notify">;
  readonly #hdr: number;
  readonly #mrg: boolean;
  readonly #eventIdx: boolean;
  readonly #portId: number;
  readonly #strip: boolean;
  readonly #inOrder: boolean;
  /** The mbuf of each buffer id, NONE when none. */
  readonly #buf: Int32Array;
  /** The id made available at each slot (what the driver wrote there last). */
  readonly #slotId: Uint16Array;
  /**
   * Per id: the burst generation it was posted in, -1 once the device gave it back. The device
   * holds it when it is posted in an earlier generation than the current one (exposed).
   */
  readonly #gen: Int32Array;
  #curGen = 0;
  /** Mergeable: ids and used lengths of the frame being taken. */
  readonly #segId: Uint16Array;
  readonly #segLen: Uint32Array;
  readonly #postLen: number;
  readonly #postOff: number;
  #usedSlot = 0;
  #usedBits: number = USED_BITS_WRAP1;
  #availSlot = 0;
  #availBits: number = AVAIL_BITS_WRAP1;
  /** Slots made available and not yet seen used (from `#usedSlot` on). */
  #outstanding = 0;

  constructor(o: PackedRxQueueOptions) {
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
    this.#inOrder = o.inOrder ?? false;
    const n = o.ring.size;
    this.#buf = new Int32Array(n).fill(NONE);
    this.#slotId = new Uint16Array(n);
    this.#gen = new Int32Array(n).fill(-1);
    this.#segId = new Uint16Array(n);
    this.#segLen = new Uint32Array(n);
    this.#postLen = o.hdrSize + o.pool.dataRoom;
    this.#postOff = o.pool.headroom - o.hdrSize;
  }

  /** Post a buffer on every slot (before DRIVER_OK). Throws when the pool cannot fill the ring. */
  fill(): void {
    const ring = this.ring;
    const n = ring.size;
    if (this.pool.available < n) {
      throw new Error(
        `RX queue ${ring.index}: the mbuf pool has ${this.pool.available} free buffers, ` +
          `${n} are needed to fill the ring; use a bigger pool or a smaller --rxd`,
      );
    }
    ring.disableInterrupts(); // we poll (2.8.10)
    for (let i = 0; i < n; i++) {
      const m = this.pool.alloc();
      this.#buf[i] = m;
      this.#write(i, i, m);
      this.#slotId[i] = i;
      this.#gen[i] = this.#curGen;
    }
    const first = this.#headWord(0);
    this.#availSlot = 0;
    this.#availBits ^= WRAP_TOGGLE; // every slot was made available: the counter wrapped
    this.#outstanding = n;
    this.#curGen = 1;
    Atomics.store(ring.u32, ring.desc32 + 3, first);
  }

  /** Descriptor `slot`: buffer `id` (mbuf m), exposed at once unless it is the head (slot 0). */
  #write(slot: number, id: number, m: number): void {
    const u32 = this.ring.u32;
    const d = this.ring.desc32 + 4 * slot;
    u32[d] = this.pool.iovaLo[m] + this.#postOff;
    u32[d + 1] = this.pool.iovaHi[m];
    u32[d + 2] = this.#postLen;
    if (slot !== 0) u32[d + 3] = id | ((PackedDesc.F_WRITE | this.#availBits) << 16);
  }

  /** The id | flags word making slot 0 available with the current bits. */
  #headWord(id: number): number {
    return (id | ((PackedDesc.F_WRITE | this.#availBits) << 16)) >>> 0;
  }

  /** Receive up to `max` frames into `pkts[0..n)`; returns n. */
  burst(pkts: Uint32Array, max: number): number {
    const ring = this.ring;
    if (this.#outstanding === 0) return 0;
    // Nothing new: one plain load of the next used slot's flags, which still show it available
    // (and the fenced notification check a publish left out).
    const fl = ring.u16[2 * ring.desc32 + 8 * this.#usedSlot + 7] & WRAP_TOGGLE;
    if (fl === (this.#usedBits ^ AVAIL_TO_USED)) {
      if (ring.unsettled && ring.settle()) this.#transport.notify(ring.index);
      return 0;
    }
    return this.#mrg ? this.#burstMrg(pkts, max) : this.#burstOne(pkts, max);
  }

  /** One buffer per frame. */
  #burstOne(pkts: Uint32Array, max: number): number {
    const ring = this.ring;
    const pool = this.pool;
    const u32 = ring.u32;
    const desc32 = ring.desc32;
    const size = ring.size;
    const buf = this.#buf;
    const slotId = this.#slotId;
    const gen = this.#gen;
    const curGen = this.#curGen;
    const inOrder = this.#inOrder;
    const hdr = this.#hdr;
    const postLen = this.#postLen;
    const postOff = this.#postOff;
    const headroom = pool.headroom;
    const dataLen = pool.dataLen;
    const pktLen = pool.pktLen;
    const dataOff = pool.dataOff;
    const nbSegs = pool.nbSegs;
    const flagsArr = pool.flags;
    const portArr = pool.port;
    const portId = this.#portId;
    const iovaLo = pool.iovaLo;
    const iovaHi = pool.iovaHi;
    const writeFlags = PackedDesc.F_WRITE << 16;
    let slot = this.#usedSlot;
    let bits = this.#usedBits;
    let left = this.#outstanding;
    const oldAvail = this.#availSlot;
    const oldBits = this.#availBits;
    let aSlot = oldAvail;
    let aBits = oldBits;
    let headWord = -1;
    let n = 0;
    let bytes = 0;
    let errors = 0;
    let noMbuf = 0;
    let spelled = 0;
    while (n < max && left > 0) {
      const d = desc32 + 4 * slot;
      const word = LOADS_IN_ORDER ? u32[d + 3] : Atomics.load(u32, d + 3);
      const fl = (word >>> 16) & WRAP_TOGGLE;
      let id = word & 0xffff;
      let len = u32[d + 2];
      if (fl !== bits) {
        if (fl === (bits ^ AVAIL_TO_USED)) break; // still available: nothing more used
        id = size; // a used flag with the wrong wrap counter: a bad entry
      }
      if (
        inOrder ? id !== slotId[slot] : id >= size || gen[id] < 0 || gen[id] === curGen
      ) {
        if (
          inOrder && id < size && fl === bits && spelled++ < size &&
          this.#spellOut(slot, bits, id, len, left)
        ) {
          continue; // the batch is one entry per buffer now: read the slot again
        }
        // Not a buffer the device holds: post again the one made available at this slot.
        errors++;
        id = slotId[slot];
        len = 0; // dropped below
        if (gen[id] < 0 || gen[id] === curGen) {
          slot++;
          if (slot === size) {
            slot = 0;
            bits ^= WRAP_TOGGLE;
          }
          left--;
          continue;
        }
        errors--; // counted once, as a bad length below
      }
      slot++;
      if (slot === size) {
        slot = 0;
        bits ^= WRAP_TOGGLE;
      }
      left--;
      const m = buf[id];
      let fresh = NONE;
      if (len < hdr || len > postLen) errors++;
      else {
        fresh = pool.allocRaw();
        if (fresh === NONE) noMbuf++;
      }
      gen[id] = curGen;
      const a = desc32 + 4 * aSlot;
      if (fresh !== NONE) {
        buf[id] = fresh;
        u32[a] = iovaLo[fresh] + postOff;
        u32[a + 1] = iovaHi[fresh];
      } else {
        u32[a] = iovaLo[m] + postOff;
        u32[a + 1] = iovaHi[m];
      }
      u32[a + 2] = postLen;
      const w = id | writeFlags | (aBits << 16);
      if (headWord < 0) headWord = w >>> 0;
      else u32[a + 3] = w;
      slotId[aSlot] = id;
      aSlot++;
      if (aSlot === size) {
        aSlot = 0;
        aBits ^= WRAP_TOGGLE;
      }
      if (fresh === NONE) continue;
      const l = len - hdr;
      dataOff[m] = headroom;
      dataLen[m] = l;
      pktLen[m] = l;
      nbSegs[m] = 1;
      flagsArr[m] = 0;
      portArr[m] = portId;
      pkts[n++] = m;
      bytes += l;
    }
    this.#usedSlot = slot;
    this.#usedBits = bits;
    this.#outstanding = left;
    this.#finish(pkts, n, bytes, errors, noMbuf, oldAvail, oldBits, aSlot, aBits, headWord);
    return n;
  }

  /** Mergeable buffers: a frame is `num_buffers` used descriptors in ring order (5.1.6.4.2). */
  #burstMrg(pkts: Uint32Array, max: number): number {
    const ring = this.ring;
    const pool = this.pool;
    const u32 = ring.u32;
    const desc32 = ring.desc32;
    const size = ring.size;
    const buf = this.#buf;
    const slotId = this.#slotId;
    const gen = this.#gen;
    const curGen = this.#curGen;
    const inOrder = this.#inOrder;
    const hdr = this.#hdr;
    const postLen = this.#postLen;
    const postOff = this.#postOff;
    const headroom = pool.headroom;
    const words16 = pool.region.u16;
    const bytesArr = pool.bytes;
    const bufOff = pool.bufOff;
    const numBuffersOff = postOff + NetHdr.NUM_BUFFERS;
    const evenNb = (numBuffersOff & 1) === 0;
    const segId = this.#segId;
    const segLen = this.#segLen;
    const dataLen = pool.dataLen;
    const pktLen = pool.pktLen;
    const dataOff = pool.dataOff;
    const next = pool.next;
    const nbSegs = pool.nbSegs;
    const flagsArr = pool.flags;
    const portArr = pool.port;
    const portId = this.#portId;
    const iovaLo = pool.iovaLo;
    const iovaHi = pool.iovaHi;
    const writeFlags = PackedDesc.F_WRITE << 16;
    const DEVICE_HEADER = MbufFlag.DEVICE_HEADER;
    let slot = this.#usedSlot;
    let bits = this.#usedBits;
    let left = this.#outstanding;
    const oldAvail = this.#availSlot;
    const oldBits = this.#availBits;
    let aSlot = oldAvail;
    let aBits = oldBits;
    let headWord = -1;
    let n = 0;
    let bytes = 0;
    let errors = 0;
    let noMbuf = 0;
    let spelled = 0;
    while (n < max && left > 0) {
      // Take the frame's used descriptors: the first says how many (num_buffers). A first entry
      // that gives no trusted count starts a broken frame, dropped up to and including the first
      // entry shorter than a whole buffer (a frame fills every buffer but its last, 5.1.6.4.1):
      // a piece of a frame is never read as a frame. Its end is found from lengths alone.
      let taken = 0;
      let bad = false;
      let dropping = false;
      let nb = 1;
      let stop = false;
      for (let k = 0; k < nb; k++) {
        if (left === 0) {
          bad = true; // more buffers than the device holds
          break;
        }
        const d = desc32 + 4 * slot;
        const word = LOADS_IN_ORDER ? u32[d + 3] : Atomics.load(u32, d + 3);
        const fl = (word >>> 16) & WRAP_TOGGLE;
        let id = word & 0xffff;
        const len = u32[d + 2];
        if (fl !== bits) {
          if (fl === (bits ^ AVAIL_TO_USED)) {
            if (k === 0) stop = true; // nothing more used
            else bad = true; // 2.8.11: the rest of a frame is used before its first
            break;
          }
          id = size;
        }
        let entryBad = false;
        if (
          inOrder ? id !== slotId[slot] : id >= size || gen[id] < 0 || gen[id] === curGen
        ) {
          if (
            inOrder && id < size && fl === bits && spelled++ < size &&
            this.#spellOut(slot, bits, id, len, left)
          ) {
            k--;
            continue;
          }
          entryBad = true;
          id = slotId[slot];
          if (gen[id] < 0 || gen[id] === curGen) id = -1; // nothing of ours stood here
        } else if (k === 0) {
          // num_buffers, read only from a full buffer: one with room left is a whole frame
          // (5.1.6.4.1), and its header line stays in the device's cache. A first entry longer
          // than its buffer still gives a count: the frame is dropped whole.
          if (len < hdr) entryBad = true;
          else if (len >= postLen) {
            const at = bufOff[buf[id]] + numBuffersOff;
            nb = evenNb ? words16[at >>> 1] : bytesArr[at] | (bytesArr[at + 1] << 8);
            if (nb === 0 || nb > left) entryBad = true;
            else if (len > postLen) bad = true;
          }
        } else if (len > postLen || len === 0) {
          bad = true; // a count was given: the frame's entries are known, dropped together
        }
        slot++;
        if (slot === size) {
          slot = 0;
          bits ^= WRAP_TOGGLE;
        }
        left--;
        if (id >= 0) {
          gen[id] = curGen; // taken back (posted again below)
          segId[taken] = id;
          segLen[taken] = len;
          taken++;
        }
        if (entryBad) {
          bad = true;
          if (k === 0) {
            dropping = true;
            nb = size + 1; // up to a short entry, or what is used (left bounds it)
          }
        }
        if (dropping && len < postLen) break;
      }
      if (stop) break;
      const ok = !bad && pool.available >= taken;
      if (!bad && !ok) noMbuf++;
      if (bad) errors++;
      // Post every buffer of the frame again: a fresh one when the frame is taken.
      let head = NONE;
      let prev = NONE;
      let total = 0;
      for (let k = 0; k < taken; k++) {
        const id = segId[k];
        let m = buf[id];
        if (ok) {
          const l = k === 0 ? segLen[0] - hdr : segLen[k];
          dataOff[m] = k === 0 ? headroom : postOff;
          dataLen[m] = l;
          next[m] = NONE;
          if (prev !== NONE) next[prev] = m;
          else head = m;
          prev = m;
          total += l;
          m = pool.alloc();
          buf[id] = m;
        }
        const a = desc32 + 4 * aSlot;
        u32[a] = iovaLo[m] + postOff;
        u32[a + 1] = iovaHi[m];
        u32[a + 2] = postLen;
        const w = id | writeFlags | (aBits << 16);
        if (headWord < 0) headWord = w >>> 0;
        else u32[a + 3] = w;
        slotId[aSlot] = id;
        aSlot++;
        if (aSlot === size) {
          aSlot = 0;
          aBits ^= WRAP_TOGGLE;
        }
      }
      if (!ok) continue;
      pktLen[head] = total;
      nbSegs[head] = taken;
      flagsArr[head] = DEVICE_HEADER;
      portArr[head] = portId;
      pkts[n++] = head;
      bytes += total;
    }
    this.#usedSlot = slot;
    this.#usedBits = bits;
    this.#outstanding = left;
    this.#finish(pkts, n, bytes, errors, noMbuf, oldAvail, oldBits, aSlot, aBits, headWord);
    return n;
  }

  /**
   * In order (2.8.9): the used descriptor at `slot` names buffer `id` further on, the last of a
   * batch. When `id` was made available within the `left` outstanding slots, rewrite the batch's
   * slots (the driver's again) as one used descriptor per buffer, all but the last used whole,
   * and return true; otherwise false (a bad entry).
   */
  #spellOut(slot: number, bits: number, id: number, len: number, left: number): boolean {
    const size = this.ring.size;
    const slotId = this.#slotId;
    let k = 1;
    let s = slot + 1 === size ? 0 : slot + 1;
    while (k < left && slotId[s] !== id) {
      k++;
      s = s + 1 === size ? 0 : s + 1;
    }
    if (k >= left) return false;
    const u32 = this.ring.u32;
    let b = bits;
    s = slot;
    for (let j = 0; j <= k; j++) {
      const d = this.ring.desc32 + 4 * s;
      u32[d + 2] = j === k ? len : this.#postLen;
      u32[d + 3] = slotId[s] | (b << 16);
      s++;
      if (s === size) {
        s = 0;
        b ^= WRAP_TOGGLE;
      }
    }
    return true;
  }

  /** Software VLAN strip, expose the reposted descriptors, notify, count: once per burst. */
  #finish(
    pkts: Uint32Array,
    n: number,
    bytes: number,
    errors: number,
    noMbuf: number,
    oldAvail: number,
    oldBits: number,
    aSlot: number,
    aBits: number,
    headWord: number,
  ): void {
    if (this.#strip) {
      for (let i = 0; i < n; i++) vlanStrip(this.pool, pkts[i]);
    }
    if (headWord >= 0) {
      const ring = this.ring;
      const size = ring.size;
      const posted = (availPhase(aSlot, aBits, size) - availPhase(oldAvail, oldBits, size) +
            2 * size) % (2 * size) || 2 * size;
      this.#availSlot = aSlot;
      this.#availBits = aBits;
      this.#outstanding += posted;
      this.#curGen = (this.#curGen + 1) & GEN_MASK;
      // The first descriptor last: the others are visible before it (2.8.21.1).
      if (
        ring.publish(
          ring.desc32 + 4 * oldAvail + 3,
          headWord,
          availPhase(oldAvail, oldBits, size),
          availPhase(aSlot, aBits, size),
          this.#eventIdx,
        )
      ) this.#transport.notify(ring.index);
    }
    const s = this.stats;
    const t = this.#totals;
    s.rxPackets += n;
    t.rxPackets += n;
    s.rxBytes += bytes;
    t.rxBytes += bytes;
    if (errors !== 0) {
      s.rxErrors += errors;
      t.rxErrors += errors;
      s.rxDropped += errors;
      t.rxDropped += errors;
    }
    if (noMbuf !== 0) {
      s.rxNoMbuf += noMbuf;
      t.rxNoMbuf += noMbuf;
      s.rxDropped += noMbuf;
      t.rxDropped += noMbuf;
    }
  }

  /**
   * After the device was reset: the frames it delivered that no burst took are received and
   * dropped, counted in rxDropped (as RxQueue.discardDelivered), at most a ring of them.
   */
  discardDelivered(): void {
    const pkts = new Uint32Array(32);
    for (let k = 0; k <= this.ring.size; k++) {
      const from = this.#usedSlot;
      const bytes = this.stats.rxBytes;
      const n = this.burst(pkts, pkts.length);
      if (n === 0 && this.#usedSlot === from) return;
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
    const buf = this.#buf;
    for (let i = 0; i < buf.length; i++) {
      if (buf[i] !== NONE) this.pool.free(buf[i]);
      buf[i] = NONE;
      this.#gen[i] = -1;
    }
    this.#outstanding = 0;
  }
}
