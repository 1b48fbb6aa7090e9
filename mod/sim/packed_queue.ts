/**
 * One packed virtqueue as the *device* sees it (OASIS virtio 1.2, 2.8 "Packed Virtqueues"), written
 * from the spec apart from the driver's ring code (mod/virtio/packed_*.ts) so that a misreading is
 * not mirrored on both sides. It offers the methods of the split DeviceQueue (queue.ts) that the
 * simulated device uses, so that device.ts runs the same transmit, receive and control code over
 * either ring.
 *
 * The device keeps two positions with a wrap counter each, both starting at slot 0 with the
 * counter 1 (2.8.1): where it reads the next available buffer and where it writes the next used
 * descriptor. A buffer is the descriptors from its first to the first without NEXT, each
 * available for the round it lies in (AVAIL equal to that round's counter, USED not), its Buffer
 * ID in the last (2.8.6). A "head" below is the slot of a buffer's first descriptor. Used
 * descriptors are written (id, len) as buffers finish and their flags exposed by `publish()`, last
 * to first, so that the first of a multi-buffer request or a batch is marked used after the rest
 * (2.8.11, 2.8.9). The used position moves on by each buffer's descriptor count, or with in-order
 * (2.8.9) over a whole batch, for which one descriptor names the batch's last buffer.
 *
 * Notifications (2.8.10): the device writes its event suppression structure (DISABLE while it
 * polls; ENABLE, or with EVENT_IDX a descriptor-specific event for the next slot it will read,
 * when it sleeps and wants a kick) and reads the driver's to count the interrupts it would send.
 *
 * Deliberate misbehaviour for the driver's tests: `nextUsedId` replaces the id of the next used
 * descriptor, `wrongWrapNext` writes its flags with the wrong wrap counter.
 */
import type { QueueMemory } from "../virtio/transport.ts";
import { EventSuppress, PackedDesc } from "../virtio/constants.ts";

export class DevicePackedQueue {
  readonly index: number;
  readonly size: number;
  readonly u16: Uint16Array;
  readonly u32: Uint32Array;
  readonly #desc32: number;
  readonly #driverEvent16: number;
  readonly #deviceEvent16: number;
  readonly #eventIdx: boolean;
  readonly #notifyMode: boolean;
  /** Next slot to read and its round's wrap counter (0 or 1). */
  #availSlot = 0;
  #availWrap = 1;
  /** Next slot to write a used descriptor at, and its wrap counter. */
  #usedSlot = 0;
  #usedWrap = 1;
  /** Per head: descriptors in the buffer and its Buffer ID (from `take`). */
  readonly #count: Uint16Array;
  readonly #id: Uint16Array;
  /** Read positions before each `take` (slot | wrap << 16), for `untake`. */
  readonly #history: Int32Array;
  #taken = 0;
  /** Used descriptors written and not yet exposed: slot | flags << 16. */
  readonly #staged: Int32Array;
  #nStaged = 0;
  /** Phase (0 .. 2 * size) of the used position at the last interrupt decision. */
  #signalled = 0;
  asleep = false;
  kicks = 0;
  unaskedKicks = 0;
  interrupts = 0;
  batchedEntries = 0;
  /** Evil: the id written into the next used descriptor instead of the right one (-1: none). */
  nextUsedId = -1;
  /** The id written into the last used descriptor (-1 before any). */
  lastUsedId = -1;
  /** Evil: the next used descriptor's flags carry the wrong wrap counter. */
  wrongWrapNext = false;

  constructor(q: QueueMemory, eventIdx: boolean, notifyMode: boolean) {
    if (q.region.pagePhys !== null) {
      throw new Error(`queue ${q.index}: the simulated device cannot reach physical memory`);
    }
    // 2.8.10.1: descriptor ring on 16 bytes, event suppression structures on 4.
    if (q.descOffset % 16 !== 0 || q.availOffset % 4 !== 0 || q.usedOffset % 4 !== 0) {
      throw new Error(`queue ${q.index}: ring parts are not aligned as 2.8.10.1 requires`);
    }
    this.index = q.index;
    this.size = q.size;
    this.u16 = q.region.u16;
    this.u32 = q.region.u32;
    this.#desc32 = q.descOffset >> 2;
    this.#driverEvent16 = (q.availOffset + EventSuppress.OFF_WRAP) >> 1;
    this.#deviceEvent16 = (q.usedOffset + EventSuppress.OFF_WRAP) >> 1;
    this.#eventIdx = eventIdx;
    this.#notifyMode = notifyMode;
    this.#count = new Uint16Array(q.size);
    this.#id = new Uint16Array(q.size);
    this.#history = new Int32Array(q.size);
    this.#staged = new Int32Array(q.size);
    this.#stopKicks();
  }

  #stopKicks(): void {
    this.u16[this.#deviceEvent16 + 1] = EventSuppress.DISABLE;
  }

  #sleep(): void {
    this.asleep = true;
    if (this.#eventIdx) {
      this.u16[this.#deviceEvent16] = this.#availSlot |
        (this.#availWrap << EventSuppress.WRAP_SHIFT);
      this.u16[this.#deviceEvent16 + 1] = EventSuppress.DESC;
    } else {
      this.u16[this.#deviceEvent16 + 1] = EventSuppress.ENABLE;
    }
  }

  /** As DeviceQueue.sleepUnaware (notify mode only). */
  sleepUnaware(): void {
    if (!this.#notifyMode) throw new Error(`queue ${this.index}: sleepUnaware needs notify mode`);
    this.#sleep();
  }

  kick(): void {
    this.kicks++;
    if (!this.asleep) this.unaskedKicks++;
    if (this.#notifyMode && this.asleep) {
      this.asleep = false;
      this.#stopKicks();
    }
  }

  awake(): boolean {
    if (!this.#notifyMode) return true;
    if (this.asleep) return false;
    if (this.pending() === 0) {
      this.#sleep();
      return false;
    }
    return true;
  }

  /** Flags of descriptor `d` (2.8.13). */
  descFlags(d: number): number {
    return this.u16[2 * this.#desc32 + 8 * d + (PackedDesc.FLAGS >> 1)];
  }
  descAddr(d: number): number {
    const w = this.#desc32 + 4 * d;
    return this.u32[w] + this.u32[w + 1] * 2 ** 32;
  }
  descLen(d: number): number {
    return this.u32[this.#desc32 + 4 * d + (PackedDesc.LEN >> 2)];
  }
  /** The descriptor after `d` in a buffer: the next slot (2.8.6). */
  descNext(d: number): number {
    return d + 1 === this.size ? 0 : d + 1;
  }

  /** Descriptor `d` is available in the round of wrap counter `wrap` (2.8.1). */
  #isAvail(d: number, wrap: number): boolean {
    const f = this.descFlags(d);
    return ((f & PackedDesc.F_AVAIL) !== 0) === (wrap === 1) &&
      ((f & PackedDesc.F_USED) !== 0) !== (wrap === 1);
  }

  /** Whole buffers available from the read position (at most the ring's size). */
  pending(): number {
    let n = 0;
    let d = this.#availSlot;
    let wrap = this.#availWrap;
    for (let seen = 0; seen < this.size && this.#isAvail(d, wrap); seen++) {
      if ((this.descFlags(d) & PackedDesc.F_NEXT) === 0) n++;
      d++;
      if (d === this.size) {
        d = 0;
        wrap ^= 1;
      }
    }
    return n;
  }

  /**
   * Take the next available buffer (the caller checked `pending() > 0`): its head slot, or `size`
   * when it is malformed (runs past the ring, or its last descriptor names an id out of range).
   */
  take(): number {
    const head = this.#availSlot;
    this.#history[this.#taken++ % this.size] = head | (this.#availWrap << 16);
    let d = head;
    let wrap = this.#availWrap;
    let count = 0;
    for (;;) {
      if (count >= this.size || !this.#isAvail(d, wrap)) return this.size;
      count++;
      const more = (this.descFlags(d) & PackedDesc.F_NEXT) !== 0;
      const last = d;
      d++;
      if (d === this.size) {
        d = 0;
        wrap ^= 1;
      }
      if (more) continue;
      const id = this.u16[2 * this.#desc32 + 8 * last + (PackedDesc.ID >> 1)];
      if (id >= this.size) return this.size;
      this.#count[head] = count;
      this.#id[head] = id;
      this.#availSlot = d;
      this.#availWrap = wrap;
      return head;
    }
  }

  /** Put back the last `n` buffers taken (no used descriptors were written for them). */
  untake(n: number): void {
    this.#taken -= n;
    const h = this.#history[this.#taken % this.size];
    this.#availSlot = h & 0xffff;
    this.#availWrap = h >>> 16;
  }

  /**
   * Write the used descriptor of buffer `head` (taken) with `len` bytes written, standing for
   * `buffers` buffers: more than 1 only in order, from the used position up to and including
   * `head`'s (2.8.9). A `head` of `size` or more writes the id `head` (out of range: bad-id) and
   * moves on as for buffer `head - size`. Exposed by `publish()`.
   */
  putUsed(head: number, len: number, buffers = 1): void {
    const h = head < this.size ? head : head - this.size;
    let id = head < this.size ? this.#id[h] : head;
    if (this.nextUsedId >= 0) {
      id = this.nextUsedId;
      this.nextUsedId = -1;
    }
    this.lastUsedId = id;
    const slot = this.#usedSlot;
    const w = this.#desc32 + 4 * slot;
    this.u32[w + (PackedDesc.LEN >> 2)] = len >>> 0;
    this.u16[2 * w + (PackedDesc.ID >> 1)] = id & 0xffff;
    let wrap = this.#usedWrap;
    if (this.wrongWrapNext) {
      wrap ^= 1;
      this.wrongWrapNext = false;
    }
    const flags = (len > 0 ? PackedDesc.F_WRITE : 0) |
      (wrap === 1 ? PackedDesc.F_AVAIL | PackedDesc.F_USED : 0);
    this.#staged[this.#nStaged++] = slot | (flags << 16);
    const step = buffers === 1
      ? this.#count[h]
      : ((h + this.#count[h] - slot) % this.size + this.size) % this.size || this.size;
    this.#usedSlot = slot + step;
    if (this.#usedSlot >= this.size) {
      this.#usedSlot -= this.size;
      this.#usedWrap ^= 1;
    }
    if (buffers > 1) this.batchedEntries++;
  }

  /** Expose the staged used descriptors, last to first, and decide on an interrupt (2.8.10). */
  publish(): void {
    if (this.#nStaged === 0) return;
    for (let i = this.#nStaged - 1; i >= 0; i--) {
      const s = this.#staged[i];
      Atomics.store(
        this.u16,
        2 * this.#desc32 + 8 * (s & 0xffff) + (PackedDesc.FLAGS >> 1),
        s >>> 16,
      );
    }
    this.#nStaged = 0;
    const old = this.#signalled;
    const now = this.#usedSlot + (this.#usedWrap === 1 ? 0 : this.size);
    this.#signalled = now;
    const flags = this.u16[this.#driverEvent16 + 1] & EventSuppress.FLAGS_MASK;
    let want = flags === EventSuppress.ENABLE;
    if (flags === EventSuppress.DESC && this.#eventIdx) {
      const ow = this.u16[this.#driverEvent16];
      const e = (ow & EventSuppress.OFF_MASK) +
        ((ow >> EventSuppress.WRAP_SHIFT) === 1 ? 0 : this.size);
      const span = 2 * this.size;
      want = (e - old + span) % span < (now - old + span) % span;
    }
    if (want) this.interrupts++;
  }
}
