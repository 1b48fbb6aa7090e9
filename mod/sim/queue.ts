/**
 * One split virtqueue as the *device* sees it (OASIS virtio 1.2, 2.7 "Split Virtqueues"), written
 * from the spec independently of the driver's ring code (mod/virtio/split_ring.ts) so that a
 * misreading is not mirrored on both sides.
 *
 * The device reads the descriptor table (2.7.5) and the available ring (2.7.6), writes the used
 * ring (2.7.8), and handles notification suppression both ways (2.7.7, 2.7.10):
 * - driver -> device ("kicks"): in polling mode the device sets VRING_USED_F_NO_NOTIFY (or, with
 *   EVENT_IDX, keeps avail_event one behind what it has consumed so no new index crosses it); in
 *   notify mode it sleeps when the queue is empty, asks for a kick, and works only after one.
 * - device -> driver ("interrupts"): counted, not delivered, following VRING_AVAIL_F_NO_INTERRUPT
 *   or, with EVENT_IDX, used_event.
 *
 * With VIRTIO_F_IN_ORDER the driver must use descriptors in ring order: each chain starts where
 * the one before it ended and continues at x + 1, wrapping to 0 (2.7.5). `take()` walks every
 * chain it hands out to check that, and answers an id out of range for one that breaks it, which
 * the device treats as a bad descriptor.
 */
import type { DmaRegion } from "../../ffi/dma.ts";
import type { QueueMemory } from "../virtio/transport.ts";
import { Avail, Desc, needEvent, Used } from "../virtio/constants.ts";

export class DeviceQueue {
  readonly index: number;
  readonly size: number;
  readonly u16: Uint16Array;
  readonly u32: Uint32Array;
  /** The driver's memory the ring lies in. */
  readonly region: DmaRegion;
  /** 32-bit word index of the descriptor table. */
  readonly #desc32: number;
  /** 16-bit word indexes of avail.flags, avail.idx, avail.ring[0], used_event. */
  readonly #availFlags16: number;
  readonly #availIdx16: number;
  readonly #availRing16: number;
  readonly #usedEvent16: number;
  /** used.flags, used.idx, avail_event (16-bit words) and used.ring[0] (32-bit word). */
  readonly #usedFlags16: number;
  readonly #usedIdx16: number;
  readonly #availEvent16: number;
  readonly #usedRing32: number;
  readonly #eventIdx: boolean;
  readonly #inOrder: boolean;
  /** In order: the descriptor the next chain must start at. */
  #nextHead = 0;
  /** In order: `#nextHead` as it was when each avail slot was taken (for `untake`). */
  readonly #headAt: Uint16Array;
  /** Notify mode: the device wants kicks and works only after one. */
  readonly #notifyMode: boolean;

  /** Next avail ring slot to read (free-running 16-bit). */
  lastAvail = 0;
  /** Next used ring slot to write (free-running 16-bit). */
  usedIdx = 0;
  /** used.idx at the last interrupt decision (2.7.10: "old" index). */
  #signalled = 0;
  /** Notify mode: the queue ran empty and waits for a kick. */
  asleep = false;
  /** Kicks received; kicks received while the device had not asked for one. */
  kicks = 0;
  unaskedKicks = 0;
  /** Interrupts the device would have sent. */
  interrupts = 0;
  /** Used entries written for a batch of more than one buffer (in order). */
  batchedEntries = 0;

  constructor(q: QueueMemory, eventIdx: boolean, notifyMode: boolean, inOrder = false) {
    if (q.region.pagePhys !== null) {
      throw new Error(`queue ${q.index}: the simulated device cannot reach physical memory`);
    }
    this.index = q.index;
    this.size = q.size;
    this.region = q.region;
    this.u16 = q.region.u16;
    this.u32 = q.region.u32;
    if (q.descOffset % 16 !== 0 || q.availOffset % 2 !== 0 || q.usedOffset % 4 !== 0) {
      throw new Error(`queue ${q.index}: ring parts are not aligned as 2.7 requires`);
    }
    this.#desc32 = q.descOffset >> 2;
    this.#availFlags16 = (q.availOffset + Avail.FLAGS) >> 1;
    this.#availIdx16 = (q.availOffset + Avail.IDX) >> 1;
    this.#availRing16 = (q.availOffset + Avail.RING) >> 1;
    this.#usedEvent16 = (q.availOffset + Avail.usedEvent(q.size)) >> 1;
    this.#usedFlags16 = (q.usedOffset + Used.FLAGS) >> 1;
    this.#usedIdx16 = (q.usedOffset + Used.IDX) >> 1;
    this.#availEvent16 = (q.usedOffset + Used.availEvent(q.size)) >> 1;
    this.#usedRing32 = (q.usedOffset + Used.RING) >> 2;
    this.#eventIdx = eventIdx;
    this.#inOrder = inOrder;
    this.#headAt = new Uint16Array(inOrder ? q.size : 0);
    this.#notifyMode = notifyMode;
    // 2.7.8: the device starts with used.idx 0 and its own flags.
    this.u16[this.#usedIdx16] = 0;
    // Both modes start awake: the device looks at every queue once when it goes live (buffers
    // made available before DRIVER_OK need no kick); in notify mode it sleeps when it finds one
    // empty.
    this.#stopKicks();
  }

  /** Polling mode: the driver need not kick (2.7.7.2 / 2.7.10). */
  #stopKicks(): void {
    this.u16[this.#usedFlags16] = Used.F_NO_NOTIFY;
    if (this.#eventIdx) this.u16[this.#availEvent16] = (this.lastAvail - 1) & 0xffff;
  }

  /** Ask for a kick when the driver adds the next buffer and wait for it. */
  #sleep(): void {
    this.asleep = true;
    this.u16[this.#usedFlags16] = 0;
    if (this.#eventIdx) this.u16[this.#availEvent16] = this.lastAvail;
  }

  /**
   * Go to sleep as a device does that read avail.idx just before the driver's last store of it
   * reached its core: it asks for a kick and works on the queue only after one, unaware of what
   * the driver published last (notify mode). The race the driver's notification check must
   * survive (2.7.7.2), which a single-threaded simulation does not meet by itself.
   */
  sleepUnaware(): void {
    if (!this.#notifyMode) throw new Error(`queue ${this.index}: sleepUnaware needs notify mode`);
    this.#sleep();
  }

  /** The driver notified this queue. */
  kick(): void {
    this.kicks++;
    if (!this.asleep) this.unaskedKicks++;
    if (this.#notifyMode && this.asleep) {
      this.asleep = false;
      this.#stopKicks();
    }
  }

  /**
   * Whether the device works on this queue now. In notify mode an empty queue goes to sleep (and
   * asks for a kick); in polling mode it is always awake.
   */
  awake(): boolean {
    if (!this.#notifyMode) {
      if (this.#eventIdx) this.u16[this.#availEvent16] = (this.lastAvail - 1) & 0xffff;
      return true;
    }
    if (this.asleep) return false;
    if (this.pending() === 0) {
      this.#sleep();
      return false;
    }
    return true;
  }

  /** Chains the driver made available that the device has not taken (2.7.6: idx - last). */
  pending(): number {
    return (this.u16[this.#availIdx16] - this.lastAvail) & 0xffff;
  }

  /**
   * Take the next available head (caller checked `pending() > 0`); may be out of range, and is
   * when in order was negotiated and the chain breaks ring order.
   */
  take(): number {
    const slot = this.lastAvail % this.size;
    const head = this.u16[this.#availRing16 + slot];
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    if (!this.#inOrder) return head;
    this.#headAt[slot] = this.#nextHead;
    if (head !== this.#nextHead) return this.size;
    let d = head;
    for (let hops = 0; (this.descFlags(d) & Desc.F_NEXT) !== 0; hops++) {
      const next = this.descNext(d);
      if (hops >= this.size || next !== (d + 1) % this.size) return this.size;
      d = next;
    }
    this.#nextHead = (d + 1) % this.size;
    return head;
  }

  /** Put back the last `n` heads taken (not consumed: no used entries written for them). */
  untake(n: number): void {
    this.lastAvail = (this.lastAvail - n) & 0xffff;
    if (this.#inOrder) this.#nextHead = this.#headAt[this.lastAvail % this.size];
  }

  /**
   * Write one used element {id, len} (2.7.8) standing for `buffers` buffers: more than 1 only in
   * order, where one entry with the id of the batch's last buffer stands for all (2.7.9). Visible
   * after `publish()`.
   */
  putUsed(id: number, len: number, buffers = 1): void {
    const w = this.#usedRing32 + (this.usedIdx % this.size) * (Used.ELEM_SIZE >> 2);
    this.u32[w] = id >>> 0;
    this.u32[w + 1] = len >>> 0;
    this.usedIdx = (this.usedIdx + buffers) & 0xffff;
    if (buffers > 1) this.batchedEntries++;
  }

  /** Publish used.idx (2.7.8.2) and decide whether an interrupt would be sent (2.7.7, 2.7.10). */
  publish(): void {
    this.publishIndex(this.usedIdx);
  }

  /** Write `idx` as used.idx (the evil idx-jump mode publishes a wrong one). */
  publishIndex(idx: number): void {
    const old = this.#signalled;
    this.u16[this.#usedIdx16] = idx & 0xffff;
    if (idx === old) return;
    this.#signalled = idx & 0xffff;
    const want = this.#eventIdx
      ? needEvent(this.u16[this.#usedEvent16], idx & 0xffff, old)
      : (this.u16[this.#availFlags16] & Avail.F_NO_INTERRUPT) === 0;
    if (want) this.interrupts++;
  }

  /** Descriptor fields (2.7.5). The address is split in two u32 halves, joined exactly. */
  descAddr(d: number): number {
    const w = this.#desc32 + d * (Desc.SIZE >> 2);
    return this.u32[w] + this.u32[w + 1] * 2 ** 32;
  }
  descLen(d: number): number {
    return this.u32[this.#desc32 + d * (Desc.SIZE >> 2) + (Desc.LEN >> 2)];
  }
  descFlags(d: number): number {
    return this.u16[(this.#desc32 << 1) + d * (Desc.SIZE >> 1) + (Desc.FLAGS >> 1)];
  }
  descNext(d: number): number {
    return this.u16[(this.#desc32 << 1) + d * (Desc.SIZE >> 1) + (Desc.NEXT >> 1)];
  }
}
