/**
 * The wire side of a simulated virtio-net device: where received frames come from (a generator
 * of self-describing test frames, mod/testframe.ts, and frames injected by tests) and where
 * transmitted frames go (a checker, and an optional `onTransmit` callback).
 *
 * Generator: "as fast as the driver takes them" (rate 0: every posted RX buffer gets a frame on
 * each device poll, up to a batch bound) or paced at `rate` frames per second (a frame due that
 * finds no RX buffer is counted as `missed`). Sizes cycle through `sizes`. Each receive queue has
 * its own stream (`stream + 65536 * queue`) so sequence numbers stay in order per queue, as a
 * flow-hashing NIC keeps a flow on one queue. Once the device steers by RSS (mod/sim/rss.ts) the
 * generator sends `flows` flows (source address and port, mod/testframe.ts), each queue the flows
 * the device's hash puts there, in turn; a queue that no flow hashes to gets no generated frames.
 * Injected frames go first, to the first queue served.
 *
 * Checker: every transmitted frame is checked with checkTestFrame; per stream the sequence is
 * tracked (in order, gaps = frames skipped, late = a skipped one arriving after all, duplicates
 * within the last 1024 numbers). Counters are plain numbers; nothing is allocated per frame.
 */
import { widenCounters } from "../counters.ts";
import { checkTestFrame, FrameCheck, setTestFrameFlow, writeTestFrame } from "../testframe.ts";

export interface GeneratorOptions {
  /** Frames per second; 0 = as fast as the driver posts RX buffers. */
  rate?: number;
  /** Frame lengths, used in turn (default [64]). */
  sizes?: number[];
  /** Stream number of receive queue 0 (default: chosen per device). */
  stream?: number;
  /** Generate from the start (default true); else only after `startGenerator()`. */
  start?: boolean;
  /** Flows to send once the device steers by RSS (default 256, at most TEST_FLOWS). */
  flows?: number;
}

export interface WireCounters {
  /** Frames the generator produced (delivered, missed or filtered). */
  generated: number;
  /** Frames (generated or injected) written into the driver's RX buffers. */
  delivered: number;
  /**
   * Frames lost at the device, for any reason: no RX buffer posted (paced generator), full
   * inject queue, and the `filtered` and `tooBig` ones below. generated = delivered + missed
   * for the generator's frames.
   */
  missed: number;
  /** Frames the receive filter (promiscuous mode, MAC table, VLAN table) dropped. */
  filtered: number;
  /** Frames too big for the buffers posted (without MRG_RXBUF: for one chain), dropped. */
  tooBig: number;
  /** Frames the driver transmitted, and their bytes (without the virtio-net header). */
  txFrames: number;
  txBytes: number;
  /** Transmitted frames dropped because the link was down. */
  txLinkDown: number;
  /** Transmitted test frames that passed the check. */
  checkedOk: number;
  /** Transmitted test frames that failed it, in total and by kind. */
  badFrames: number;
  badLength: number;
  badIpChecksum: number;
  badPattern: number;
  /** Transmitted frames that are not test frames. */
  foreign: number;
  /** Sequence numbers skipped within a stream when seen (lost, unless they come late). */
  seqGaps: number;
  /** Frames older than the newest seen of their stream that filled a gap (reordered). */
  reordered: number;
  /** Frames whose sequence number was seen already (within the last 1024 of the stream). */
  duplicates: number;
}

/** Largest frame the wire handles (64 KiB). */
export const WIRE_MAX_FRAME = 65536;
const INJECT_QUEUE = 4096;
/** Sequence numbers remembered per stream for duplicate detection (a power of two). */
const SEEN_WINDOW = 1024;

/** Per-stream checker state: next expected sequence and a bitmap of the last numbers seen. */
interface StreamState {
  next: number;
  seen: Uint32Array;
}

export class SimWire {
  readonly counters: WireCounters = widenCounters({
    generated: 0,
    delivered: 0,
    missed: 0,
    filtered: 0,
    tooBig: 0,
    txFrames: 0,
    txBytes: 0,
    txLinkDown: 0,
    checkedOk: 0,
    badFrames: 0,
    badLength: 0,
    badIpChecksum: 0,
    badPattern: 0,
    foreign: 0,
    seqGaps: 0,
    reordered: 0,
    duplicates: 0,
  });
  /** Called with every frame the driver transmits (a view valid only during the call). */
  onTransmit: ((frame: Uint8Array) => void) | null = null;

  readonly rate: number;
  readonly sizes: readonly number[];
  readonly stream: number;
  /** Flows generated under RSS steering. */
  readonly flows: number;
  /** Destination written into generated frames (the device's MAC, kept in step by the device). */
  readonly dst = new Uint8Array(6);
  readonly src = Uint8Array.of(0x02, 0x5e, 0x57, 0x1e, 0x00, 0x01);
  #generating: boolean;
  /** Next sequence number per receive queue. */
  readonly #seq: Uint32Array;
  #sizeIndex = 0;
  /** Paced generator: frames due (fractional) and the last clock reading. */
  #credit = 0;
  #lastMs = 0;
  /** Frames still due in this poll (paced: whole credit; as fast as taken: unbounded). */
  #dueNow = 0;
  /** Injected frames: a fixed ring of copies. */
  readonly #injected: (Uint8Array | null)[] = new Array(INJECT_QUEUE).fill(null);
  #injHead = 0;
  #injCount = 0;
  readonly #streams = new Map<number, StreamState>();
  readonly #check = new Uint32Array(4);
  /** RSS steering: the flows of each receive queue, or null (one flow, every queue). */
  #steer: Uint16Array[] | null = null;
  /** Next entry of each queue's flow list. */
  readonly #steerAt: Uint32Array;

  constructor(gen: GeneratorOptions | false, stream: number, queues = 1) {
    this.rate = gen ? gen.rate ?? 0 : 0;
    this.sizes = gen && gen.sizes && gen.sizes.length > 0 ? gen.sizes.slice() : [64];
    this.stream = gen ? gen.stream ?? stream : stream;
    this.#generating = gen !== false && (gen.start ?? true);
    this.#seq = new Uint32Array(queues);
    this.#steerAt = new Uint32Array(queues);
    this.flows = gen ? gen.flows ?? 256 : 256;
  }

  get generating(): boolean {
    return this.#generating;
  }

  startGenerator(): void {
    this.#generating = true;
    this.#lastMs = 0;
    this.#credit = 0;
  }

  stopGenerator(): void {
    this.#generating = false;
  }

  /** Stream number of the frames generated for receive queue `queue`. */
  streamOf(queue: number): number {
    return (this.stream + queue * 65536) >>> 0;
  }

  /** Queue a frame (copied) for delivery to the driver; false (and counted missed) when full. */
  inject(frame: Uint8Array): boolean {
    if (this.#injCount >= INJECT_QUEUE || frame.length > WIRE_MAX_FRAME) {
      this.counters.missed++;
      return false;
    }
    this.#injected[(this.#injHead + this.#injCount) % INJECT_QUEUE] = frame.slice();
    this.#injCount++;
    return true;
  }

  /** Injected frames not yet delivered. */
  get injectedPending(): number {
    return this.#injCount;
  }

  // ---- device-facing side (mod/sim/device.ts) ----

  /** The link is down: no frames are due, and none build up until it comes back. */
  pause(): void {
    this.#lastMs = 0;
    this.#credit = 0;
  }

  /** Start of a device poll: work out how many generated frames are due. */
  beginPoll(): void {
    if (!this.#generating) {
      this.#dueNow = 0;
      return;
    }
    if (this.rate === 0) {
      this.#dueNow = Number.MAX_SAFE_INTEGER;
      return;
    }
    const now = performance.now();
    if (this.#lastMs === 0) this.#lastMs = now;
    // At most one second of frames builds up (a stalled loop does not cause a flood later).
    this.#credit = Math.min(this.#credit + (now - this.#lastMs) * this.rate / 1000, this.rate);
    this.#lastMs = now;
    this.#dueNow = Math.floor(this.#credit);
  }

  /**
   * Steer generated frames by flow: `flowsOf[q]` lists the flows the device puts on receive queue
   * q (its RSS hash of each), or null to send one flow per queue again.
   */
  steer(flowsOf: Uint16Array[] | null): void {
    this.#steer = flowsOf;
    this.#steerAt.fill(0);
  }

  /** Frames that may be offered now to receive queue `queue` with `buffers` RX buffers posted. */
  due(buffers: number, queue = 0): number {
    const steer = this.#steer;
    const gen = steer !== null && steer[queue].length === 0 ? 0 : this.#dueNow;
    return Math.min(buffers, this.#injCount + gen);
  }

  /** End of a device poll: paced frames that found no buffer are missed. */
  endPoll(): void {
    if (this.rate === 0 || !this.#generating) return;
    const left = this.#dueNow;
    if (left > 0) {
      this.counters.generated += left;
      this.counters.missed += left;
      this.#credit -= left;
      for (let q = 0; q < this.#seq.length; q++) this.#seq[q] = (this.#seq[q] + left) >>> 0;
    }
    this.#dueNow = 0;
  }

  /** The next injected frame, or null when the next frame is a generated one. */
  nextInjected(): Uint8Array | null {
    return this.#injCount > 0 ? this.#injected[this.#injHead] : null;
  }

  /** Length of the next frame (an injected one first). */
  nextLength(): number {
    if (this.#injCount > 0) return this.#injected[this.#injHead]!.length;
    return this.sizes[this.#sizeIndex];
  }

  /** Write the next frame for receive queue `queue` at `b[off..]` (room is the caller's job). */
  writeNext(queue: number, b: Uint8Array, off: number): number {
    const c = this.counters;
    c.delivered++;
    if (this.#injCount > 0) {
      const f = this.#popInjected();
      b.set(f, off);
      return f.length;
    }
    const len = this.#consumeGenerated();
    writeTestFrame(b, off, len, this.streamOf(queue), this.#seq[queue], this.dst, this.src);
    this.#seq[queue] = (this.#seq[queue] + 1) >>> 0;
    if (this.#steer !== null) setTestFrameFlow(b, off, this.#nextFlow(queue));
    return len;
  }

  /** The next flow of `queue` under RSS steering (the caller's `due` saw it has some). */
  #nextFlow(queue: number): number {
    const flows = this.#steer![queue];
    const at = this.#steerAt[queue];
    this.#steerAt[queue] = at + 1 === flows.length ? 0 : at + 1;
    return flows[at];
  }

  /** Drop the next frame (receive filter, or too big): counted under `why`. */
  dropNext(queue: number, why: "filtered" | "tooBig"): void {
    this.counters[why]++;
    this.counters.missed++;
    if (this.#injCount > 0) {
      this.#popInjected();
      return;
    }
    this.#consumeGenerated();
    this.#seq[queue] = (this.#seq[queue] + 1) >>> 0;
    if (this.#steer !== null) this.#nextFlow(queue);
  }

  #popInjected(): Uint8Array {
    const f = this.#injected[this.#injHead]!;
    this.#injected[this.#injHead] = null;
    this.#injHead = (this.#injHead + 1) % INJECT_QUEUE;
    this.#injCount--;
    return f;
  }

  #consumeGenerated(): number {
    const len = this.sizes[this.#sizeIndex];
    this.#sizeIndex = this.#sizeIndex + 1 === this.sizes.length ? 0 : this.#sizeIndex + 1;
    this.counters.generated++;
    this.#dueNow--;
    if (this.rate !== 0) this.#credit -= 1;
    return len;
  }

  /** A frame the driver transmitted, at `b[off..off+len)`: check it and hand it on. */
  transmitted(b: Uint8Array, off: number, len: number): void {
    const c = this.counters;
    c.txFrames++;
    c.txBytes += len;
    const r = checkTestFrame(b, off, len, this.#check);
    if (r === FrameCheck.OK) {
      c.checkedOk++;
      this.#sequence(this.#check[0], this.#check[1]);
    } else if (r === FrameCheck.FOREIGN) {
      c.foreign++;
    } else {
      c.badFrames++;
      if (r === FrameCheck.BAD_LENGTH) c.badLength++;
      else if (r === FrameCheck.BAD_IP_CHECKSUM) c.badIpChecksum++;
      else c.badPattern++;
    }
    if (this.onTransmit !== null) this.onTransmit(b.subarray(off, off + len));
  }

  /** A frame the driver transmitted while the link was down: dropped on the floor. */
  droppedLinkDown(): void {
    this.counters.txLinkDown++;
  }

  #sequence(stream: number, seq: number): void {
    const c = this.counters;
    let s = this.#streams.get(stream);
    if (s === undefined) {
      // First frame of a stream (cold): whatever number it starts at is in order.
      s = { next: seq, seen: new Uint32Array(SEEN_WINDOW / 32) };
      this.#streams.set(stream, s);
    }
    const ahead = (seq - s.next) | 0;
    if (ahead >= 0) {
      // In order or after a gap: forget the bits of the numbers skipped (they may come late).
      c.seqGaps += ahead;
      for (let k = 0, n = Math.min(ahead, SEEN_WINDOW); k < n; k++) {
        const x = (s.next + k) & (SEEN_WINDOW - 1);
        s.seen[x >>> 5] &= ~(1 << (x & 31));
      }
      s.next = (seq + 1) >>> 0;
      const x = seq & (SEEN_WINDOW - 1);
      s.seen[x >>> 5] |= 1 << (x & 31);
      return;
    }
    if (-ahead > SEEN_WINDOW) {
      c.reordered++;
      return;
    }
    const x = seq & (SEEN_WINDOW - 1);
    const bitMask = 1 << (x & 31);
    if ((s.seen[x >>> 5] & bitMask) !== 0) {
      c.duplicates++;
    } else {
      c.reordered++;
      s.seen[x >>> 5] |= bitMask;
    }
  }
}
