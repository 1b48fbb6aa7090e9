/**
 * The wire side of a simulated virtio-net device: where received frames come from (a generator
 * of self-describing test frames, mod/testframe.ts, and frames injected by tests) and where
 * transmitted frames go (a checker, and an optional `onTransmit` callback).
 *
 * The generator runs "as fast as the driver takes them" (rate 0: every posted RX buffer gets a
 * frame on each device poll, up to a batch bound) or paced at `rate` frames per second; a paced
 * frame that finds no RX buffer is counted as `missed`. Sizes cycle through `sizes`. Counters are
 * plain numbers; nothing is allocated per frame.
 */
import { checkTestFrame, FrameCheck, writeTestFrame } from "../testframe.ts";

export interface GeneratorOptions {
  /** Frames per second; 0 = as fast as the driver posts RX buffers. */
  rate?: number;
  /** Frame lengths, used in turn (default [64]). */
  sizes?: number[];
  /** Stream number written into the frames (default: chosen per device). */
  stream?: number;
}

export interface WireCounters {
  /** Frames the generator produced (delivered or missed). */
  generated: number;
  /** Frames (generated or injected) written into the driver's RX buffers. */
  delivered: number;
  /** Frames lost at the device: no RX buffer posted (paced generator, full inject queue). */
  missed: number;
  /** Frames the receive filter (promiscuous mode, MAC table, VLAN table) dropped. */
  filtered: number;
  /** Frames the driver transmitted, and their bytes (without the virtio-net header). */
  txFrames: number;
  txBytes: number;
  /** Transmitted test frames that passed the check. */
  checkedOk: number;
  /** Transmitted test frames that failed it (corrupt, wrong length, bad IP checksum). */
  badFrames: number;
  /** Transmitted frames that are not test frames. */
  foreign: number;
  /** Sequence numbers skipped within a stream (frames lost on the way), and ones seen late. */
  seqGaps: number;
  reordered: number;
}

/** Largest frame the wire handles (64 KiB). */
export const WIRE_MAX_FRAME = 65536;
const INJECT_QUEUE = 4096;

export class SimWire {
  readonly counters: WireCounters = {
    generated: 0,
    delivered: 0,
    missed: 0,
    filtered: 0,
    txFrames: 0,
    txBytes: 0,
    checkedOk: 0,
    badFrames: 0,
    foreign: 0,
    seqGaps: 0,
    reordered: 0,
  };
  /** Called with every frame the driver transmits (a view valid only during the call). */
  onTransmit: ((frame: Uint8Array) => void) | null = null;

  readonly rate: number;
  readonly sizes: number[];
  readonly stream: number;
  #generating: boolean;
  #seq = 0;
  #sizeIndex = 0;
  /** Paced generator: frames due but not yet produced (fractional), and the last clock read. */
  #credit = 0;
  #lastMs = 0;
  readonly #injected: Uint8Array[] = [];
  /** Next expected sequence number per stream (checker). */
  readonly #expect = new Map<number, number>();
  readonly #check = new Uint32Array(4);
  /** Destination/source written into generated frames (the device's MAC). */
  readonly dst = new Uint8Array(6);
  readonly src = Uint8Array.of(0x02, 0x5e, 0x57, 0x1e, 0x00, 0x01);

  constructor(gen: GeneratorOptions | false, stream: number) {
    this.rate = gen ? gen.rate ?? 0 : 0;
    this.sizes = gen && gen.sizes && gen.sizes.length > 0 ? gen.sizes : [64];
    this.stream = gen ? gen.stream ?? stream : stream;
    this.#generating = gen !== false;
  }

  get generating(): boolean {
    return this.#generating;
  }

  startGenerator(): void {
    this.#generating = true;
    this.#lastMs = 0;
  }

  stopGenerator(): void {
    this.#generating = false;
  }

  /** Queue a frame (copied) for delivery to the driver; false (and counted missed) when full. */
  inject(frame: Uint8Array): boolean {
    if (this.#injected.length >= INJECT_QUEUE || frame.length > WIRE_MAX_FRAME) {
      this.counters.missed++;
      return false;
    }
    this.#injected.push(frame.slice());
    return true;
  }

  // ---- device-facing side (mod/sim/device.ts) ----

  /**
   * How many frames may be offered to the driver now (injected first, then generated). With
   * `buffers` RX buffers posted; a paced generator's frames beyond that are counted missed.
   */
  due(buffers: number): number {
    let n = this.#injected.length;
    if (!this.#generating) return n;
    if (this.rate === 0) return n + buffers;
    const now = performance.now();
    if (this.#lastMs === 0) this.#lastMs = now;
    this.#credit = Math.min(this.#credit + (now - this.#lastMs) * this.rate / 1000, 65536);
    this.#lastMs = now;
    const gen = Math.floor(this.#credit);
    n += gen;
    const room = Math.max(0, buffers - this.#injected.length);
    if (gen > room) {
      this.counters.generated += gen - room;
      this.counters.missed += gen - room;
      this.#credit -= gen - room;
    }
    return Math.min(n, this.#injected.length + room);
  }

  /** Length of the next frame to offer (an injected one first). */
  nextLength(): number {
    if (this.#injected.length > 0) return this.#injected[0].length;
    return Math.max(60, this.sizes[this.#sizeIndex]);
  }

  /** Whether the next frame is an injected one (the filter checks its destination). */
  nextInjected(): Uint8Array | null {
    return this.#injected.length > 0 ? this.#injected[0] : null;
  }

  /** Write the next frame at `b[off..]` (room for `nextLength()` bytes is the caller's job). */
  writeNext(b: Uint8Array, off: number): number {
    const inj = this.#injected.shift();
    if (inj !== undefined) {
      b.set(inj, off);
      this.counters.delivered++;
      return inj.length;
    }
    const len = this.nextLength();
    this.#sizeIndex = (this.#sizeIndex + 1) % this.sizes.length;
    writeTestFrame(b, off, len, this.stream, this.#seq, this.dst, this.src);
    this.#seq = (this.#seq + 1) >>> 0;
    this.#credit = Math.max(0, this.#credit - 1);
    this.counters.generated++;
    this.counters.delivered++;
    return len;
  }

  /** Drop the next frame (filtered by the device's receive filter). */
  dropNext(): void {
    if (this.#injected.shift() === undefined) {
      this.#sizeIndex = (this.#sizeIndex + 1) % this.sizes.length;
      this.#seq = (this.#seq + 1) >>> 0;
      this.#credit = Math.max(0, this.#credit - 1);
      this.counters.generated++;
    }
    this.counters.filtered++;
  }

  /** A frame the driver transmitted, at `b[off..off+len)`: check it and hand it on. */
  transmitted(b: Uint8Array, off: number, len: number): void {
    const c = this.counters;
    c.txFrames++;
    c.txBytes += len;
    const r = checkTestFrame(b, off, len, this.#check);
    if (r === FrameCheck.OK) {
      c.checkedOk++;
      const stream = this.#check[0];
      const seq = this.#check[1];
      const want = this.#expect.get(stream);
      if (want !== undefined && seq !== want) {
        if (seq > want) c.seqGaps += seq - want;
        else c.reordered++;
      }
      if (want === undefined || seq >= want) this.#expect.set(stream, seq + 1);
    } else if (r === FrameCheck.FOREIGN) {
      c.foreign++;
    } else {
      c.badFrames++;
    }
    if (this.onTransmit !== null) this.onTransmit(b.subarray(off, off + len));
  }
}
