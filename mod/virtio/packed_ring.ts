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
 */
import type { DmaRegion } from "../../ffi/dma.ts";
import type { QueueMemory } from "./transport.ts";
import { EventSuppress, MAX_PACKED_QUEUE_SIZE, PackedDesc } from "./constants.ts";

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

  /** We poll: ask the device for no used buffer notifications at all (2.8.10, DISABLE). */
  disableInterrupts(): void {
    this.u16[this.driverEvent16 + 1] = EventSuppress.DISABLE;
  }

  /**
   * After making descriptors available from phase `oldPhase` up to `newPhase` (and a full barrier
   * since: the Atomics store of the first one's flags): does the device want a notification?
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
