/**
 * The control virtqueue (virtio 1.2, 5.1.6.5) over a packed ring (2.8), with the public API of the
 * split ring's CtrlQueue (ctrl_queue.ts) and its command buffer layout.
 *
 * A command is one buffer of consecutive descriptors (2.8.6): class/command, one descriptor per
 * data part (device-readable), the ack byte (device-writable), all under Buffer ID 0 (one command
 * at a time), the first descriptor's flags written last (2.8.21.1). The driver waits for the used
 * descriptor at its used position, calling `transport.poll()` meanwhile, then moves the position
 * on by the command's descriptor count. A used descriptor there with another id or the wrong wrap
 * counter fails the command; a command that times out leaves the queue unusable until the port is
 * restarted, since the device may still own the descriptors.
 */
import type { DmaRegion } from "../../ffi/dma.ts";
import type { VirtioTransport } from "./transport.ts";
import { Ctrl, PackedDesc } from "./constants.ts";
import {
  ACK_OFF,
  ACK_UNSET,
  checkCtrlRingSize,
  CTRL_BUFFER_BYTES,
  CtrlCommandError,
  DATA_OFF,
  HDR_OFF,
} from "./ctrl_queue.ts";
import {
  AVAIL_BITS_WRAP1,
  availPhase,
  type PackedRing,
  USED_BITS_WRAP1,
  WRAP_TOGGLE,
} from "./packed_ring.ts";

/** The one Buffer ID commands use. */
const CMD_ID = 0;

export class PackedCtrlQueue {
  readonly ring: PackedRing;
  readonly #transport: VirtioTransport;
  readonly #region: DmaRegion;
  readonly #buf: number;
  readonly #label: string;
  readonly #timeoutMs: number;
  readonly #eventIdx: boolean;
  #availSlot = 0;
  #availBits: number = AVAIL_BITS_WRAP1;
  #usedSlot = 0;
  #usedBits: number = USED_BITS_WRAP1;
  #stuck = false;

  constructor(
    ring: PackedRing,
    transport: VirtioTransport,
    region: DmaRegion,
    buffer: number,
    label: string,
    eventIdx: boolean,
    timeoutMs = 2000,
  ) {
    checkCtrlRingSize(ring.size, label);
    this.ring = ring;
    this.#transport = transport;
    this.#region = region;
    this.#buf = buffer;
    this.#label = label;
    this.#eventIdx = eventIdx;
    this.#timeoutMs = timeoutMs;
    ring.disableInterrupts();
  }

  /** As CtrlQueue.command: send, wait for the ack; throws on ERR, no ack, or a timeout. */
  command(cls: number, cmd: number, parts: Uint8Array[], what: string): void {
    if (this.#stuck) {
      throw new Error(`${this.#label}: the control queue timed out earlier; restart the port`);
    }
    const ring = this.ring;
    const region = this.#region;
    const u8 = region.u8;
    const base = this.#buf;
    let total = 0;
    for (const p of parts) total += p.length;
    if (DATA_OFF + total > CTRL_BUFFER_BYTES || parts.length + 2 > ring.size) {
      throw new Error(
        `${this.#label}: ${what}: ${total} bytes of data is too much for one command`,
      );
    }
    u8[base + HDR_OFF] = cls;
    u8[base + HDR_OFF + 1] = cmd;
    u8[base + ACK_OFF] = ACK_UNSET;
    const elems: [number, number, number][] = [[base + HDR_OFF, 2, 0]];
    let off = base + DATA_OFF;
    for (const p of parts) {
      u8.set(p, off);
      if (p.length > 0) elems.push([off, p.length, 0]);
      off += p.length;
    }
    elems.push([base + ACK_OFF, 1, PackedDesc.F_WRITE]);
    const u32 = ring.u32;
    const oldSlot = this.#availSlot;
    const oldBits = this.#availBits;
    let slot = oldSlot;
    let bits = oldBits;
    let headWord = 0;
    elems.forEach(([at, len, flags], i) => {
      const iova = region.iova(at);
      const d = ring.desc32 + 4 * slot;
      u32[d] = iova % 2 ** 32;
      u32[d + 1] = Math.floor(iova / 2 ** 32);
      u32[d + 2] = len;
      const more = i < elems.length - 1 ? PackedDesc.F_NEXT : 0;
      const word = (CMD_ID | ((flags | more | bits) << 16)) >>> 0;
      if (i === 0) headWord = word;
      else u32[d + 3] = word;
      slot++;
      if (slot === ring.size) {
        slot = 0;
        bits ^= WRAP_TOGGLE;
      }
    });
    this.#availSlot = slot;
    this.#availBits = bits;
    Atomics.store(u32, ring.desc32 + 4 * oldSlot + 3, headWord);
    const size = ring.size;
    if (
      ring.needsKick(
        availPhase(oldSlot, oldBits, size),
        availPhase(slot, bits, size),
        this.#eventIdx,
      )
    ) this.#transport.notify(ring.index);

    const d = ring.desc32 + 4 * this.#usedSlot;
    const deadline = performance.now() + this.#timeoutMs;
    const pending = this.#usedBits ^ PackedDesc.F_USED; // the bits of a descriptor still available
    let word = Atomics.load(u32, d + 3);
    while (((word >>> 16) & WRAP_TOGGLE) === pending) {
      this.#transport.poll();
      if (performance.now() > deadline) {
        this.#stuck = true;
        throw new CtrlCommandError(
          `${this.#label}: ${what}: the device did not answer on the control queue within ` +
            `${this.#timeoutMs} ms`,
        );
      }
      word = Atomics.load(u32, d + 3);
    }
    // The device's position moves on by the whole command (2.8.6), like ours.
    this.#usedSlot = slot;
    this.#usedBits = bits ^ PackedDesc.F_USED;
    const usedOk = ((word >>> 16) & WRAP_TOGGLE) === (pending ^ PackedDesc.F_USED) &&
      (word & 0xffff) === CMD_ID;
    if (!usedOk) {
      this.#stuck = true;
      throw new CtrlCommandError(
        `${this.#label}: ${what}: the device returned a bad used descriptor on the control queue`,
      );
    }
    const ack = u8[base + ACK_OFF];
    if (ack === Ctrl.OK) return;
    throw new CtrlCommandError(
      ack === ACK_UNSET
        ? `${this.#label}: ${what}: the device returned the command without writing its ack`
        : `${this.#label}: ${what}: the device refused the command (ack ${ack})`,
    );
  }
}
