/**
 * An indirect descriptor table as the *device* reads it (OASIS virtio 1.2, 2.7.5.3 "Indirect
 * Descriptors" for split rings, 2.8.7 "Indirect Flag: Scatter-Gather Support" and 2.8.19 for
 * packed rings), written from the spec apart from the driver's tables (mod/virtio/indirect.ts).
 * It has the descriptor accessors of the device's ring queues (`descFlags`, `descAddr`,
 * `descLen`, `descNext`, `size`), so that the device walks a table's entries as it walks a chain
 * in the ring. The table is read in place, byte by byte (the spec asks no alignment of it).
 *
 * `open` checks the descriptor that refers to the table and the table itself; any failure is a
 * bad descriptor for the device (it then needs a reset):
 * - VIRTIO_F_INDIRECT_DESC was negotiated (2.7.5.3.1: the driver MUST NOT set INDIRECT without);
 * - split: INDIRECT and NEXT are never set together (2.7.5.3.1); zero or more ordinary chained
 *   descriptors may come before it (2.7.5.3.2). Packed: the indirect descriptor is alone in its
 *   buffer, not in a list linked by NEXT (2.8.19);
 * - its length is a non-zero multiple of 16 (`struct virtq_desc` / `struct pvirtq_desc` each),
 *   of at most the queue size in entries (2.7.5.3.1, 2.8.17: no chain longer than the queue);
 * - the whole table lies in the driver's memory (checked by the caller's address translation).
 * While it is walked, through the flags this class reports:
 * - split: an entry with INDIRECT is a nested table (2.7.5.3.1: one table per descriptor), NEXT
 *   must name an entry inside the table (`descNext` beyond `size` is caught by the walker), and a
 *   walk of more than `size` entries is a loop;
 * - packed: entries follow one another and the last one ends the buffer (2.8.7); only WRITE is
 *   valid inside a table (2.8.19). Other flags are reserved there and a device may ignore them;
 *   this one reports any as INDIRECT, so that the walker refuses the table: the driver under test
 *   must not set them.
 */
import { Desc, PackedDesc } from "../virtio/constants.ts";

export class DeviceIndirectTable {
  /** Entries in the open table. */
  size = 0;
  #u8: Uint8Array = new Uint8Array(0);
  #off = 0;
  #packed = false;

  /**
   * Open the table at byte `off` of `u8` (translated by the caller from the referring
   * descriptor's address, `len` bytes) for a queue of `queueSize` entries. False when its length
   * is not a non-zero multiple of 16 or more than the queue size in entries.
   */
  open(u8: Uint8Array, off: number, len: number, queueSize: number, packed: boolean): boolean {
    if (len === 0 || len % Desc.SIZE !== 0 || len / Desc.SIZE > queueSize) return false;
    this.#u8 = u8;
    this.#off = off;
    this.size = len / Desc.SIZE;
    this.#packed = packed;
    return true;
  }

  #le16(at: number): number {
    return this.#u8[at] | (this.#u8[at + 1] << 8);
  }

  #le32(at: number): number {
    return (this.#le16(at) | (this.#le16(at + 2) << 16)) >>> 0;
  }

  /** Entry `i`'s address (le64, joined exactly below 2^53). */
  descAddr(i: number): number {
    const at = this.#off + i * Desc.SIZE + Desc.ADDR;
    return this.#le32(at) + this.#le32(at + 4) * 2 ** 32;
  }

  descLen(i: number): number {
    return this.#le32(this.#off + i * Desc.SIZE + Desc.LEN);
  }

  /**
   * Entry `i`'s flags as the walker reads them. Split: as written. Packed: WRITE as written, NEXT
   * on every entry but the last (entries follow one another), and INDIRECT when any flag but
   * WRITE is set (refused, see the module comment).
   */
  descFlags(i: number): number {
    if (!this.#packed) return this.#le16(this.#off + i * Desc.SIZE + Desc.FLAGS);
    const raw = this.#le16(this.#off + i * PackedDesc.SIZE + PackedDesc.FLAGS);
    return (raw & PackedDesc.F_WRITE) |
      ((raw & ~PackedDesc.F_WRITE) !== 0 ? PackedDesc.F_INDIRECT : 0) |
      (i + 1 < this.size ? PackedDesc.F_NEXT : 0);
  }

  /** The entry after `i`: split, its `next` field; packed, the next one in the table. */
  descNext(i: number): number {
    return this.#packed ? i + 1 : this.#le16(this.#off + i * Desc.SIZE + Desc.NEXT);
  }
}
