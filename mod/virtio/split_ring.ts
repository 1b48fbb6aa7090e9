/**
 * One split virtqueue in DMA memory (OASIS virtio 1.2, 2.7 "Split Virtqueues"): the descriptor
 * table (2.7.5), the available ring with `used_event` (2.7.6, 2.7.10) and the used ring with
 * `avail_event` (2.7.8, 2.7.10). This module only knows where things are; the RX, TX and control
 * queues decide what goes in them.
 *
 * Every field is reached through the region's cached `u16`/`u32` views at an element index
 * computed once here, so the burst loops do plain typed-array accesses. The ordered accesses are
 * `loadUsedIdx` (Atomics.load), `publishAvail` and `settle` (Atomics.store: a full barrier, an
 * `xchg` on x86-64); an empty poll stops at `peekUsedIdx`, a plain load.
 *
 * A burst publishes with `publishBurst`, which on x86-64 is a plain store: x86-64 makes stores
 * visible in program order, so the ring entries written before avail.idx are visible before it
 * (the release order 2.7.13.3 asks for), and V8 keeps typed-array stores in program order. What a
 * plain store leaves out is the full barrier between it and the load of used.flags that decides
 * whether to notify (2.7.7.2): without it, a device that turns notifications on at that moment
 * and then reads avail.idx may see the old index and wait for a kick, while the driver reads the
 * old flags and sends none. So a publish that found notifications off leaves the ring
 * `unsettled`, and the next burst on the queue that publishes nothing (an empty poll, a transmit
 * of 0 packets) takes the fenced look (`settle`) and notifies if the device asks by then. In a
 * steady stream no burst waits for the barrier: it waits for every store still in flight, here
 * descriptor lines the device's core holds (6-8 % of the rate against DPDK's vhost in slow
 * phases, docs/performance.md). Elsewhere than x86-64 the publish stays an ordered store.
 */
import type { DmaRegion } from "../../ffi/dma.ts";
import type { QueueMemory, RingLayout } from "./transport.ts";
import { Avail, Desc, MAX_QUEUE_SIZE, needEvent, RingAlign, Used } from "./constants.ts";

/** Byte offsets of the three parts of a ring relative to its start, and its total size. */
export interface RingParts {
  desc: number;
  avail: number;
  used: number;
  bytes: number;
}

/** x86-64 (TSO) makes stores visible in program order: a plain store is a release store there. */
const STORES_IN_ORDER = Deno.build.arch === "x86_64";

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/**
 * Where the parts of a ring of `size` entries go. `contiguous` (legacy, 2.7.2 legacy interface):
 * descriptor table, avail ring right after it, used ring at the next `usedAlign` boundary.
 * `separate`: the same order, each part on a 64-byte boundary (more than table 2.7's 16/2/4, so
 * that the driver-written and device-written parts never share a cache line).
 */
export function ringParts(size: number, layout: RingLayout): RingParts {
  const desc = 0;
  const descEnd = Desc.SIZE * size;
  if (layout.placement === "contiguous") {
    const avail = descEnd;
    const used = alignUp(avail + Avail.size(size), Math.max(layout.usedAlign, RingAlign.USED));
    return { desc, avail, used, bytes: used + Used.size(size) };
  }
  const avail = alignUp(descEnd, 64);
  const used = alignUp(avail + Avail.size(size), Math.max(64, layout.usedAlign));
  return { desc, avail, used, bytes: used + Used.size(size) };
}

/** Alignment of a whole ring's start: legacy devices take a page frame number (4.1.5.1 legacy). */
export function ringStartAlign(layout: RingLayout): number {
  return layout.placement === "contiguous" ? RingAlign.LEGACY_USED : 64;
}

/** True for a valid split-ring size: a power of two from 1 to 32768 (2.7). */
export function isValidQueueSize(n: number): boolean {
  return Number.isInteger(n) && n >= 1 && n <= MAX_QUEUE_SIZE && (n & (n - 1)) === 0;
}

export class SplitRing {
  readonly index: number;
  readonly size: number;
  /** `size - 1`: ring positions are `idx & mask` (sizes are powers of two). */
  readonly mask: number;
  readonly region: DmaRegion;
  readonly u16: Uint16Array<ArrayBuffer>;
  readonly u32: Uint32Array<ArrayBuffer>;
  /** What the transport is told (`setupQueue`). */
  readonly memory: QueueMemory;

  /** u32 index of descriptor 0's `addr` low half; descriptor i starts at `desc32 + 4 * i`. */
  readonly desc32: number;
  /** u16 index of avail.flags, avail.idx, avail.ring[0] and used_event. */
  readonly availFlags16: number;
  readonly availIdx16: number;
  readonly availRing16: number;
  readonly usedEvent16: number;
  /** u16 index of used.flags, used.idx and avail_event; u32 index of used.ring[0].id. */
  readonly usedFlags16: number;
  readonly usedIdx16: number;
  readonly usedRing32: number;
  readonly availEvent16: number;
  /**
   * `publishBurst` found notifications off without a barrier before looking: `settle` looks
   * again behind one.
   */
  unsettled = false;

  /**
   * A ring of `size` entries for queue `index` at byte `offset` of `region` (reserved by the
   * caller with `ringParts(size, layout).bytes` bytes, aligned to `ringStartAlign`). The memory is
   * zeroed: both indexes start at 0 (2.7.6, 2.7.8 after reset). With `clear` false it is left as
   * it is: a ring set up already, taken over by the thread that serves it (mod/fwd/workers.ts),
   * whose device may have written its flags there since.
   */
  constructor(
    index: number,
    size: number,
    region: DmaRegion,
    offset: number,
    layout: RingLayout,
    clear = true,
  ) {
    if (!isValidQueueSize(size)) {
      throw new RangeError(`queue ${index}: size ${size} is not a power of two in 1..32768`);
    }
    const parts = ringParts(size, layout);
    if (offset % ringStartAlign(layout) !== 0 || offset + parts.bytes > region.size) {
      throw new RangeError(`queue ${index}: ring memory at ${offset} misplaced in ${region.name}`);
    }
    this.index = index;
    this.size = size;
    this.mask = size - 1;
    this.region = region;
    this.u16 = region.u16;
    this.u32 = region.u32;
    if (clear) region.u8.fill(0, offset, offset + parts.bytes);
    const desc = offset + parts.desc;
    const avail = offset + parts.avail;
    const used = offset + parts.used;
    this.desc32 = desc / 4;
    this.availFlags16 = (avail + Avail.FLAGS) / 2;
    this.availIdx16 = (avail + Avail.IDX) / 2;
    this.availRing16 = (avail + Avail.RING) / 2;
    this.usedEvent16 = (avail + Avail.usedEvent(size)) / 2;
    this.usedFlags16 = (used + Used.FLAGS) / 2;
    this.usedIdx16 = (used + Used.IDX) / 2;
    this.usedRing32 = (used + Used.RING) / 4;
    this.availEvent16 = (used + Used.availEvent(size)) / 2;
    this.memory = {
      index,
      size,
      region,
      descOffset: desc,
      availOffset: avail,
      usedOffset: used,
      descIova: region.iova(desc),
      availIova: region.iova(avail),
      usedIova: region.iova(used),
    };
  }

  /** Write descriptor `i` (2.7.5). The address is given as two u32 halves. */
  setDesc(
    i: number,
    addrLo: number,
    addrHi: number,
    len: number,
    flags: number,
    next: number,
  ): void {
    const d = this.desc32 + 4 * i;
    const u32 = this.u32;
    u32[d] = addrLo;
    u32[d + 1] = addrHi;
    u32[d + 2] = len;
    // flags (le16) and next (le16) share the last u32 of the descriptor (2.7.5: offsets 12, 14).
    u32[d + 3] = (flags & 0xffff) | (next << 16);
  }

  /** Make descriptor `i` continue with descriptor `next` (VIRTQ_DESC_F_NEXT, 2.7.5). */
  chain(i: number, next: number): void {
    const w = this.desc32 + 4 * i + 3;
    this.u32[w] = (this.u32[w] & 0xffff) | Desc.F_NEXT | (next << 16);
  }

  /**
   * used.idx with a plain load, which may lag behind: only for seeing that nothing new arrived
   * (an empty poll then costs ~2 ns instead of ~7 for the Atomics builtin call). Anything read
   * from the used ring needs `loadUsedIdx`.
   */
  peekUsedIdx(): number {
    return this.u16[this.usedIdx16];
  }

  /** used.idx with an ordered load: entries before it are complete (2.7.8). */
  loadUsedIdx(): number {
    return Atomics.load(this.u16, this.usedIdx16);
  }

  /** Make avail.ring entries before `idx` visible to the device (2.7.13.3, ordered store). */
  publishAvail(idx: number): void {
    Atomics.store(this.u16, this.availIdx16, idx & 0xffff);
  }

  /**
   * Publish avail.idx at the end of a burst (from `oldIdx` to `newIdx`) and tell whether the
   * device wants a notification (2.7.7.2). Without EVENT_IDX and on x86-64 this is a plain store
   * and an unfenced look at used.flags (see the module comment; `settle` finishes it); with
   * EVENT_IDX, whose check depends on the entries published, the fenced `publishAvail`.
   */
  publishBurst(oldIdx: number, newIdx: number, eventIdx: boolean): boolean {
    const u16 = this.u16;
    if (eventIdx || !STORES_IN_ORDER) {
      Atomics.store(u16, this.availIdx16, newIdx & 0xffff);
      return this.needsKick(oldIdx, newIdx, eventIdx);
    }
    u16[this.availIdx16] = newIdx & 0xffff;
    if ((u16[this.usedFlags16] & Used.F_NO_NOTIFY) === 0) {
      this.unsettled = false;
      return true;
    }
    this.unsettled = true;
    return false;
  }

  /**
   * The fenced look at used.flags that `publishBurst` left out: true when the device wants a
   * notification now (one that is not needed is harmless: the device finds nothing new). For a
   * burst that publishes nothing while the ring is `unsettled`.
   */
  settle(): boolean {
    this.unsettled = false;
    const u16 = this.u16;
    Atomics.store(u16, this.availIdx16, u16[this.availIdx16]); // the barrier; the index stays
    return (Atomics.load(u16, this.usedFlags16) & Used.F_NO_NOTIFY) === 0;
  }

  /**
   * After publishing avail.idx from `oldIdx` to `newIdx`: does the device want a notification?
   * With EVENT_IDX, when the new entries cross avail_event (2.7.10); otherwise unless the device
   * set VRING_USED_F_NO_NOTIFY (2.7.7.2).
   */
  needsKick(oldIdx: number, newIdx: number, eventIdx: boolean): boolean {
    if (eventIdx) return needEvent(this.u16[this.availEvent16], newIdx & 0xffff, oldIdx & 0xffff);
    return (this.u16[this.usedFlags16] & Used.F_NO_NOTIFY) === 0;
  }

  /** Set avail.flags (VRING_AVAIL_F_NO_INTERRUPT: we poll, 2.7.7). */
  setAvailFlags(flags: number): void {
    this.u16[this.availFlags16] = flags;
  }

  /** Set used_event (2.7.10; only meaningful with EVENT_IDX). */
  setUsedEvent(idx: number): void {
    this.u16[this.usedEvent16] = idx & 0xffff;
  }
}
