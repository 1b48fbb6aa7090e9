/**
 * One packed virtqueue in DMA memory (OASIS virtio 1.2, 2.8 "Packed Virtqueues"): the descriptor
 * ring (2.8.13, written by both sides), the driver event suppression structure (driver area,
 * written by the driver, 2.8.10) and the device event suppression structure (device area, written
 * by the device). This module knows where things are and how to decide on a notification; the
 * packed RX, TX and control queues decide what goes in the ring.
 *
 * Positions: a queue keeps its next slot and the flag bits its wrap counter stands for. The
 * driver ring wrap counter starts at 1 (2.8.1): a descriptor made available while it is 1 has
 * AVAIL set and USED clear, while it is 0 the other way round; a used descriptor has both bits
 * equal to the counter of its round. So "available" bits are `F_AVAIL` or `F_USED` and toggle
 * with `WRAP_TOGGLE`, and "used" bits are both or neither and toggle the same way. A position in
 * two rounds of the ring (its phase, 0 .. 2 * size) is what descriptor-specific event suppression
 * compares (2.8.10: offset and wrap counter).
 *
 * Each part sits on its own 64-byte line (more than 2.8.10.1's 16 and 4), so the device's writes
 * of its event structure and the driver's of its own never share a line with descriptors.
 *
 * A burst makes its descriptors available with `publish`: the first one's flags written last. On
 * x86-64 that is a plain store, since stores become visible in program order there (the order
 * 2.8.21.1 asks for) and V8 keeps typed-array stores in program order. What it leaves out is the
 * full barrier between that store and the load of the device's event flags that decides whether
 * to notify: a device that enables notifications at that moment and then looks at the ring could
 * miss the new descriptors while the driver reads the old flags. So a publish that found
 * notifications off leaves the ring `unsettled`, and the next burst on the queue that publishes
 * nothing takes the fenced look (`settle`), as the split ring does (split_ring.ts). With
 * EVENT_IDX, whose check depends on the descriptors published, and off x86-64, the store is
 * ordered (Atomics, a full barrier).
 */
import type { DmaRegion } from "../../ffi/dma.ts";
import type { QueueMemory } from "./transport.ts";
import { EventSuppress, MAX_PACKED_QUEUE_SIZE, PackedDesc } from "./constants.ts";

/** x86-64 (TSO) makes stores visible in program order: a plain store is a release store there. */
const STORES_IN_ORDER = Deno.build.arch === "x86_64";

/** AVAIL and USED both: XOR with it toggles the bits a wrap counter stands for. */
export const WRAP_TOGGLE = PackedDesc.F_AVAIL | PackedDesc.F_USED;
/** Bits of a descriptor made available while the driver's wrap counter is 1 (2.8.1). */
export const AVAIL_BITS_WRAP1 = PackedDesc.F_AVAIL;
/** Bits of a descriptor marked used while the device's wrap counter is 1 (2.8.1). */
export const USED_BITS_WRAP1 = WRAP_TOGGLE;

/** Byte offsets of the three parts relative to the ring's start, and its total size. */
export interface PackedParts {
  desc: number;
  driver: number;
  device: number;
  bytes: number;
}

/** Where the parts of a packed ring of `size` entries go. */
export function packedParts(size: number): PackedParts {
  const driver = Math.ceil((PackedDesc.SIZE * size) / 64) * 64;
  return { desc: 0, driver, device: driver + 64, bytes: driver + 128 };
}

/** A packed ring's start alignment (2.8.10.1 asks 16; a whole line keeps parts apart). */
export const PACKED_START_ALIGN = 64;

export class PackedRing {
  readonly index: number;
  readonly size: number;
  readonly region: DmaRegion;
  readonly u16: Uint16Array<ArrayBuffer>;
  readonly u32: Uint32Array<ArrayBuffer>;
  readonly memory: QueueMemory;
  /** u32 index of descriptor 0; descriptor i's words are `desc32 + 4 * i + 0..3`, word 3 = id | flags << 16. */
  readonly desc32: number;
  /** u16 index of the driver event suppression's off_wrap (flags at + 1). */
  readonly driverEvent16: number;
  /** u16 index of the device event suppression's off_wrap (flags at + 1). */
  readonly deviceEvent16: number;

  /**
   * A ring of `size` entries for queue `index` at byte `offset` of `region` (`packedParts(size)
   * .bytes` bytes, aligned to PACKED_START_ALIGN). The memory is zeroed (2.8.13: "The descriptor
   * ring is zero-initialized"): no descriptor is available or used for a wrap counter of 1. With
   * `clear` false it is left as it is: a ring set up (zeroed) already, taken over by the thread
   * that serves it (mod/fwd/workers.ts), whose device may have written its event suppression
   * area since (2.8.10).
   */
  constructor(index: number, size: number, region: DmaRegion, offset: number, clear = true) {
    if (!Number.isInteger(size) || size < 1 || size > MAX_PACKED_QUEUE_SIZE) {
      throw new RangeError(`queue ${index}: packed ring size ${size} is not in 1..32768`);
    }
    const parts = packedParts(size);
    if (offset % PACKED_START_ALIGN !== 0 || offset + parts.bytes > region.size) {
      throw new RangeError(`queue ${index}: ring memory at ${offset} misplaced in ${region.name}`);
    }
    this.index = index;
    this.size = size;
    this.region = region;
    this.u16 = region.u16;
    this.u32 = region.u32;
    if (clear) region.u8.fill(0, offset, offset + parts.bytes);
    const desc = offset + parts.desc;
    const driver = offset + parts.driver;
    const device = offset + parts.device;
    this.desc32 = desc / 4;
    this.driverEvent16 = (driver + EventSuppress.OFF_WRAP) / 2;
    this.deviceEvent16 = (device + EventSuppress.OFF_WRAP) / 2;
    this.memory = {
      index,
      size,
      region,
      descOffset: desc,
      availOffset: driver,
      usedOffset: device,
      descIova: region.iova(desc),
      availIova: region.iova(driver),
      usedIova: region.iova(device),
    };
  }

  /** A publish checked the device's event flags without a barrier; `settle` finishes it. */
  unsettled = false;

  /** We poll: ask the device for no used buffer notifications at all (2.8.10, DISABLE). */
  disableInterrupts(): void {
    this.u16[this.driverEvent16 + 1] = EventSuppress.DISABLE;
  }

  /**
   * Make the descriptors from phase `oldPhase` up to `newPhase` available by storing the first
   * one's id | flags `word` at u32 index `at` (the others are written), and tell whether the device
   * wants a notification (see the module comment for the plain store and `settle`).
   */
  publish(
    at: number,
    word: number,
    oldPhase: number,
    newPhase: number,
    eventIdx: boolean,
  ): boolean {
    if (eventIdx || !STORES_IN_ORDER) {
      Atomics.store(this.u32, at, word);
      return this.needsKick(oldPhase, newPhase, eventIdx);
    }
    this.u32[at] = word;
    const flags = this.u16[this.deviceEvent16 + 1] & EventSuppress.FLAGS_MASK;
    if (flags !== EventSuppress.DISABLE) {
      this.unsettled = false;
      return true; // ENABLE, or DESC without EVENT_IDX: a kick is harmless
    }
    this.unsettled = true;
    return false;
  }

  /**
   * The fenced look at the device's event flags that `publish` left out: true when the device
   * wants a notification now. For a burst that publishes nothing while the ring is `unsettled`.
   */
  settle(): boolean {
    this.unsettled = false;
    const u16 = this.u16;
    const own = this.driverEvent16 + 1;
    Atomics.store(u16, own, u16[own]); // the barrier; the driver's flags stay as they are
    return (Atomics.load(u16, this.deviceEvent16 + 1) & EventSuppress.FLAGS_MASK) !==
      EventSuppress.DISABLE;
  }

  /**
   * After making descriptors available from phase `oldPhase` up to `newPhase` (and a full barrier
   * since: an Atomics store of the first one's flags): does the device want a notification?
   * DISABLE: no; ENABLE: yes; DESC (only with EVENT_IDX): when the descriptor it names (offset
   * and wrap counter, 2.8.10) is among those just made available. Anything else, or DESC without
   * EVENT_IDX, is answered with a notification, which is harmless to a device that did not want
   * it.
   */
  needsKick(oldPhase: number, newPhase: number, eventIdx: boolean): boolean {
    const flags = Atomics.load(this.u16, this.deviceEvent16 + 1) & EventSuppress.FLAGS_MASK;
    if (flags === EventSuppress.DISABLE) return false;
    if (flags !== EventSuppress.DESC || !eventIdx) return true;
    return this.#descEvent(this.u16[this.deviceEvent16], oldPhase, newPhase);
  }

  /** The descriptor-specific event of `offWrap` lies in [oldPhase, newPhase) (two rounds). */
  #descEvent(offWrap: number, oldPhase: number, newPhase: number): boolean {
    const n = this.size;
    const off = offWrap & EventSuppress.OFF_MASK;
    if (off >= n) return true; // names no descriptor: the device is wrong, a kick is harmless
    const e = off + ((offWrap >> EventSuppress.WRAP_SHIFT) === 1 ? 0 : n);
    const span = 2 * n;
    return (e - oldPhase + span) % span < (newPhase - oldPhase + span) % span;
  }
}

/** The phase (0 .. 2 * size) of `slot` made available with `availBits` (2.8.1). */
export function availPhase(slot: number, availBits: number, size: number): number {
  return availBits === AVAIL_BITS_WRAP1 ? slot : slot + size;
}
