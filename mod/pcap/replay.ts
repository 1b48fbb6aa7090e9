/**
 * Replay: a txonly engine that sends the frames of a capture file, in order, with their captured
 * lengths (a frame longer than a buffer becomes a chain of buffers), `loops` times (0: until
 * stopped). Each transmitting port sends the whole capture, from its own position; the queues of
 * one port share that position. Frames a full TX ring does not take are freed and sent again in
 * the next burst, so every port sends every frame of the capture, in order, once per loop.
 *
 * When every port has sent its loops and its device has taken them (its TX rings are empty, or
 * DRAIN_MS passed), `onDone` is called once (the CLI stops forwarding then): a port stopped with
 * frames in its TX ring would count them as dropped, not sent.
 */
import type { MbufPool } from "../mbuf.ts";
import type { Engine, StreamPort } from "../fwd/engines.ts";
import { type ByteArea, byteArea, copyBytes } from "./copy.ts";
import type { PcapFrames } from "./reader.ts";

/** Options of `createReplayEngine`. */
export interface ReplayOptions {
  /** The pool frames are built in. */
  pool: MbufPool;
  /** Most frames per burst. */
  burst: number;
  /** The capture (readPcap). */
  frames: PcapFrames;
  /** Times to send the capture; 0 = until stopped. */
  loops: number;
  /** Called once every port has sent its loops and its device has taken them. */
  onDone?: () => void;
}

/** Longest wait, once a port has sent its loops, for its device to take what is in its rings. */
const DRAIN_MS = 2000;

/** Where one port is in the capture. */
interface Cursor {
  next: number;
  loops: number;
  finished: boolean;
  /** Finished and its TX rings empty (or given up on at `deadline`). */
  drained: boolean;
  deadline: number;
}

/** Buffers frame `len` bytes long takes in a pool of `dataRoom`-byte buffers. */
export function segmentsFor(len: number, dataRoom: number): number {
  return Math.max(1, Math.ceil(len / dataRoom));
}

/** A replay engine; `loopsDone()` is the fewest complete loops any port has sent. */
export function createReplayEngine(o: ReplayOptions): { engine: Engine; loopsDone(): number } {
  const { pool, burst, frames, loops } = o;
  if (frames.count === 0) throw new Error("the capture holds no frames to send");
  const cursors = new Map<StreamPort, Cursor>();
  const dst: ByteArea = byteArea(pool.bytes);
  const src: ByteArea = byteArea(frames.data);
  const room = pool.dataRoom;
  const headroom = pool.headroom;
  const { bufOff, dataOff, dataLen, pktLen, nbSegs, flags, next } = pool;
  /** Capture index and loop count of each frame of the burst (to rewind what a ring refused). */
  const indexOf = new Int32Array(burst);
  const loopOf = new Float64Array(burst);
  let unfinished = 0;
  let doneCalled = false;

  /** Build frame `i` of the capture in buffers; NONE (-1) when the pool is short. */
  const build = (i: number): number => {
    const len = frames.caplen[i];
    const segs = segmentsFor(len, room);
    if (pool.available < segs && pool.reclaimHeld() < segs) return -1;
    let head = -1;
    let prev = -1;
    let at = frames.off[i];
    let left = len;
    for (let k = 0; k < segs; k++) {
      const m = pool.allocRaw(); // never NONE: segs are available
      const n = left < room ? left : room;
      dataOff[m] = headroom;
      dataLen[m] = n;
      flags[m] = 0;
      copyBytes(dst, bufOff[m] + headroom, src, at, n);
      at += n;
      left -= n;
      if (prev < 0) head = m;
      else next[prev] = m;
      prev = m;
    }
    pktLen[head] = len;
    nbSegs[head] = segs;
    return head;
  };

  const engine: Engine = (s) => {
    let c = cursors.get(s.tx);
    if (c === undefined) {
      c = { next: 0, loops: 0, finished: false, drained: false, deadline: 0 };
      cursors.set(s.tx, c);
      unfinished++;
    }
    if (c.finished) {
      if (!c.drained) drain(s.tx, s.queue, s.pkts, c);
      else s.tx.txIdle(s.queue);
      return 0;
    }
    const pkts = s.pkts;
    let n = 0;
    while (n < burst && !c.finished) {
      const m = build(c.next);
      if (m < 0) break;
      pkts[n] = m;
      indexOf[n] = c.next;
      loopOf[n] = c.loops;
      n++;
      if (++c.next === frames.count) {
        c.next = 0;
        c.loops++;
        if (loops > 0 && c.loops >= loops) c.finished = true;
      }
    }
    if (n === 0) {
      // Every buffer is in flight: a burst of 0 takes back what the device finished.
      s.tx.txBurst(s.queue, pkts, 0);
      return 0;
    }
    const k = s.tx.txBurst(s.queue, pkts, n);
    if (k < n) {
      // Not taken: back to the pool, and sent again from the first of them.
      for (let i = k; i < n; i++) pool.free(pkts[i]);
      c.next = indexOf[k];
      c.loops = loopOf[k];
      c.finished = false;
    }
    if (c.finished) c.deadline = performance.now() + DRAIN_MS;
    return k;
  };

  /** A finished port: take back what its device has sent; drained when nothing is left. */
  const drain = (tx: StreamPort, q: number, pkts: Uint32Array, c: Cursor): void => {
    tx.txBurst(q, pkts, 0);
    let left = 0;
    for (let i = 0; i < tx.limits.queues; i++) left += tx.txInFlight(i);
    if (left > 0 && performance.now() < c.deadline) return;
    c.drained = true;
    unfinished--;
    if (unfinished === 0 && !doneCalled) {
      doneCalled = true;
      o.onDone?.();
    }
  };

  const loopsDone = (): number => {
    let min = Infinity;
    for (const c of cursors.values()) min = Math.min(min, c.loops);
    return min === Infinity ? 0 : min;
  };
  return { engine, loopsDone };
}
