/**
 * Indirect descriptor tables for multi-segment transmit buffers (VIRTIO_F_INDIRECT_DESC; virtio
 * 1.2, 2.7.5.3 for split rings, 2.8.7 and 2.8.19 for packed rings). A frame of header + several
 * segments takes one ring descriptor, which points at a table holding the header + first segment
 * and then one entry per further segment; the ring then holds as many frames as it has
 * descriptors, whatever their segment counts.
 *
 * Each TX queue has one table per ring slot (split: per head descriptor; packed: per Buffer ID),
 * carved once from the port's ring memory: a table is written only while its slot is free, the
 * device reads it while the slot is in flight, and nothing is allocated per packet. A table is
 * `INDIRECT_TABLE_BYTES` long and aligned to that size, so that none crosses a page and each is
 * contiguous in iova space even on physical memory; its iova is looked up once, here.
 *
 * Layouts: split entries are `struct virtq_desc` chained by `next` = 1, 2, 3, ... (2.7.5.3: the
 * sequential order VIRTIO_F_IN_ORDER asks for, fine without it), NEXT on all but the last; the
 * ring descriptor has INDIRECT alone (2.7.5.3.1: never with NEXT). Packed entries are
 * `struct pvirtq_desc` back to back with no flags at all (2.8.19: only WRITE is allowed inside a
 * table; the Buffer ID there is reserved), the ring descriptor has INDIRECT and the Buffer ID.
 */
import type { DmaRegion } from "../../ffi/dma.ts";
import { type MbufPool, NONE } from "../mbuf.ts";
import { Desc } from "./constants.ts";

/** Entries per table: frames of more segments go out as ordinary chains. */
export const INDIRECT_ENTRIES = 16;
/** Bytes of one table (and its alignment). */
export const INDIRECT_TABLE_BYTES = INDIRECT_ENTRIES * Desc.SIZE;

/** The indirect tables of one TX queue. */
export class IndirectTables {
  /**
   * Most segments a frame sent through a table may have: INDIRECT_ENTRIES, and never more than
   * the queue size (2.7.5.3.1, 2.8.17: no descriptor chain longer than the queue size).
   */
  readonly maxEntries: number;
  readonly #u32: Uint32Array;
  /** u32 index of table 0; table k starts `k * INDIRECT_TABLE_BYTES / 4` words later. */
  readonly #base32: number;
  /** iova of each table, as u32 halves. */
  readonly #lo: Uint32Array;
  readonly #hi: Uint32Array;

  /** `count` tables from byte `offset` of `region` (aligned to INDIRECT_TABLE_BYTES). */
  constructor(region: DmaRegion, offset: number, count: number, queueSize: number) {
    if (
      offset % INDIRECT_TABLE_BYTES !== 0 || offset + count * INDIRECT_TABLE_BYTES > region.size
    ) {
      throw new RangeError(`indirect tables at ${offset} misplaced in ${region.name}`);
    }
    this.maxEntries = Math.min(INDIRECT_ENTRIES, queueSize);
    this.#u32 = region.u32;
    this.#base32 = offset / 4;
    this.#lo = new Uint32Array(count);
    this.#hi = new Uint32Array(count);
    for (let k = 0; k < count; k++) {
      const iova = region.iova(offset + k * INDIRECT_TABLE_BYTES);
      this.#lo[k] = iova % 2 ** 32;
      this.#hi[k] = Math.floor(iova / 2 ** 32);
    }
  }

  /**
   * Split ring: fill table `k` with packet `m` (its header + first segment at iova low half
   * `firstLo`, `firstLen` bytes; then the rest of its segments, at most `maxEntries` in all) and
   * point ring descriptor `d` (u32 index into `ring`) at it.
   */
  putSplit(
    k: number,
    pool: MbufPool,
    m: number,
    firstLo: number,
    firstLen: number,
    ring: Uint32Array,
    d: number,
  ): void {
    const n = this.#fill(k, pool, m, firstLo, firstLen, true);
    ring[d] = this.#lo[k];
    ring[d + 1] = this.#hi[k];
    ring[d + 2] = n * Desc.SIZE;
    ring[d + 3] = Desc.F_INDIRECT; // next 0: unused without NEXT
  }

  /**
   * Packed ring: as `putSplit`, in the packed layout; writes the address and length of ring
   * descriptor `d`, and leaves its id and flags word (INDIRECT, the wrap bits) to the caller,
   * which decides when the device may see it.
   */
  putPacked(
    k: number,
    pool: MbufPool,
    m: number,
    firstLo: number,
    firstLen: number,
    ring: Uint32Array,
    d: number,
  ): void {
    const n = this.#fill(k, pool, m, firstLo, firstLen, false);
    ring[d] = this.#lo[k];
    ring[d + 1] = this.#hi[k];
    ring[d + 2] = n * Desc.SIZE;
  }

  /** Write table `k`; returns its entries. The caller checked the segment count. */
  #fill(
    k: number,
    pool: MbufPool,
    m: number,
    firstLo: number,
    firstLen: number,
    split: boolean,
  ): number {
    const u32 = this.#u32;
    const next = pool.next;
    let e = this.#base32 + k * (INDIRECT_TABLE_BYTES / 4);
    u32[e] = firstLo;
    u32[e + 1] = pool.iovaHi[m];
    u32[e + 2] = firstLen;
    let n = 1;
    for (let s = next[m]; s !== NONE && n < this.maxEntries; s = next[s]) {
      // The entry before continues here (split: NEXT and next = n; packed: no flags at all).
      u32[e + 3] = split ? Desc.F_NEXT | (n << 16) : 0;
      e += Desc.SIZE / 4;
      u32[e] = pool.iovaLo[s] + pool.dataOff[s];
      u32[e + 1] = pool.iovaHi[s];
      u32[e + 2] = pool.dataLen[s];
      n++;
    }
    u32[e + 3] = 0; // the last entry
    return n;
  }
}
