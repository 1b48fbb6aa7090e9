/**
 * The control virtqueue (virtio 1.2, 5.1.6.5 "Control Virtqueue"): synchronous commands
 * `struct virtio_net_ctrl { u8 class; u8 command; u8 command-specific-data[]; u8 ack; }`.
 *
 * Each command is one descriptor chain: the class/command pair, one descriptor per data part
 * (all device-readable) and the ack byte (device-writable), each in its own descriptor as legacy
 * devices require (5.1.6.5 legacy). Commands take descriptors in ring order, each chain starting
 * where the last one ended (what VIRTIO_F_IN_ORDER requires, 2.7.5; any order is fine without
 * it). The driver waits for the chain in the used ring, calling
 * `transport.poll()` while it waits (an in-process device answers from there), and checks the
 * ack. One command at a time; a command that times out leaves the queue unusable until the port
 * is restarted, since the device may still own the descriptors.
 */
import type { DmaRegion } from "../../ffi/dma.ts";
import type { VirtioTransport } from "./transport.ts";
import { Avail, Ctrl, Desc } from "./constants.ts";
import type { SplitRing } from "./split_ring.ts";

/**
 * The device refused a command, wrote no ack or did not answer in time: a device-side failure,
 * unlike a missing feature or a bad argument (which callers report as usage errors).
 */
export class CtrlCommandError extends Error {}

/**
 * Descriptors the longest command chain takes: header, two data parts (the MAC table command's
 * unicast and multicast tables, 5.1.6.5.2), ack.
 */
export const CTRL_MIN_ENTRIES = 4;

/** Refuses a control ring too small for the longest command chain (split and packed alike). */
export function checkCtrlRingSize(size: number, label: string): void {
  if (size < CTRL_MIN_ENTRIES) {
    throw new Error(`${label}: control queue has ${size} entries, ${CTRL_MIN_ENTRIES} are needed`);
  }
}

/** Bytes of DMA memory a control queue needs for its command buffer. */
export const CTRL_BUFFER_BYTES = 4096;
/** Offsets inside the command buffer: header, ack, then the data parts one after another. */
export const HDR_OFF = 0;
export const ACK_OFF = 8;
export const DATA_OFF = 16;
/** Written into the ack byte before a command, so an ack the device never wrote is seen. */
export const ACK_UNSET = 0xff;

export class CtrlQueue {
  readonly ring: SplitRing;
  readonly #transport: VirtioTransport;
  readonly #region: DmaRegion;
  readonly #buf: number;
  readonly #label: string;
  readonly #timeoutMs: number;
  readonly #eventIdx: boolean;
  #availIdx = 0;
  #lastUsed = 0;
  /** First descriptor of the next command's chain. */
  #nextDesc = 0;
  #stuck = false;

  /**
   * `buffer` is the offset of CTRL_BUFFER_BYTES bytes in `region` (which the device can reach).
   * `label` prefixes error messages (e.g. "port 0").
   */
  constructor(
    ring: SplitRing,
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
    ring.setAvailFlags(Avail.F_NO_INTERRUPT);
  }

  /**
   * Send `class`/`command` with `parts` as its data and wait for the ack. Throws when the device
   * answers VIRTIO_NET_ERR, writes no ack, or does not answer within the timeout. `what` names the
   * command in errors.
   */
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
    const head = this.#nextDesc;
    let d = head;
    const put = (off: number, len: number, flags: number) => {
      const iova = region.iova(off);
      ring.setDesc(d, iova % 2 ** 32, Math.floor(iova / 2 ** 32), len, flags, 0);
      if (d !== head) ring.chain((d - 1) & ring.mask, d);
      d = (d + 1) & ring.mask;
    };
    put(base + HDR_OFF, 2, 0);
    let off = base + DATA_OFF;
    for (const p of parts) {
      u8.set(p, off);
      if (p.length > 0) put(off, p.length, 0);
      off += p.length;
    }
    put(base + ACK_OFF, 1, Desc.F_WRITE);
    const old = this.#availIdx;
    ring.u16[ring.availRing16 + (old & ring.mask)] = head;
    this.#nextDesc = d;
    this.#availIdx = (old + 1) & 0xffff;
    ring.publishAvail(this.#availIdx);
    if (ring.needsKick(old, this.#availIdx, this.#eventIdx)) this.#transport.notify(ring.index);

    const deadline = performance.now() + this.#timeoutMs;
    while (ring.loadUsedIdx() === this.#lastUsed) {
      this.#transport.poll();
      if (performance.now() > deadline) {
        this.#stuck = true;
        throw new CtrlCommandError(
          `${this.#label}: ${what}: the device did not answer on the control queue within ` +
            `${this.#timeoutMs} ms`,
        );
      }
    }
    this.#lastUsed = (this.#lastUsed + 1) & 0xffff;
    const ack = u8[base + ACK_OFF];
    if (ack === Ctrl.OK) return;
    throw new CtrlCommandError(
      ack === ACK_UNSET
        ? `${this.#label}: ${what}: the device returned the command without writing its ack`
        : `${this.#label}: ${what}: the device refused the command (ack ${ack})`,
    );
  }
}
