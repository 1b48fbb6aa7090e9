/**
 * Forwarding engines, in the manner of testpmd's forwarding modes. An engine handles one stream
 * (a receive port and queue, and the port it transmits on) for one burst, and works only on mbuf
 * numbers and the pool's cached views: nothing is allocated per packet.
 *
 * - io:      receive, transmit unchanged on the peer port.
 * - mac:     receive, set dst = the peer address of the transmitting port and src = its MAC, send.
 * - macswap: receive, swap dst and src, send.
 * - rxonly:  receive and free.
 * - txonly:  build self-describing test frames (mod/testframe.ts) and send; with several segment
 *            lengths (`--txpkts 64,1400`) each frame is one chain of that many segments.
 *
 * Frames too short to hold two MAC addresses cannot be rewritten by mac/macswap: they are dropped
 * and counted in the receive port's `rxDropped`.
 */
import type { MbufPool } from "../mbuf.ts";
import type { Port } from "../port.ts";
import { writeTestFrame } from "../testframe.ts";
import { Eth } from "../eth.ts";

/** The forwarding modes, as `vpmd fwd --mode` names them. */
export const MODES = ["io", "mac", "macswap", "rxonly", "txonly"] as const;
/** A forwarding mode (see the module comment). */
export type Mode = typeof MODES[number];

/**
 * What an engine uses of a port: its bursts, counters, number and MAC address (a `Port`, or the
 * queues of one that a worker thread serves, mod/fwd/worker_main.ts).
 */
export type StreamPort = Pick<
  Port,
  "id" | "mac" | "stats" | "limits" | "rxBurst" | "txBurst" | "txIdle" | "txInFlight"
>;

/** One forwarding stream: frames received on `rx` queue `queue` leave on `tx` queue `queue`. */
export interface Stream {
  /** Port frames are received on. */
  rx: StreamPort;
  /** Port frames leave on (txonly sends here; rxonly sends nothing). */
  tx: StreamPort;
  /** Queue pair used on both ports. */
  queue: number;
  /** The burst array (mbuf numbers), allocated once per stream. */
  pkts: Uint32Array;
}

/** Runs one burst on a stream; returns the packets it moved (received, or sent for txonly). */
export type Engine = (s: Stream) => number;

/** What `createEngine` needs. */
export interface EngineOptions {
  /** The pool the ports receive into (txonly builds its frames there). */
  pool: MbufPool;
  /** Most frames per burst (at most each stream's `pkts.length`). */
  burst: number;
  /** Destination MAC per port id (mac and txonly engines). */
  peers: Uint8Array[];
  /** Segment lengths of a txonly frame (default [64]). */
  txpkts?: number[];
  /** First sequence number of txonly frames (default 0). */
  txSeqStart?: number;
  /** Stream number written into txonly frames is `txStreamBase + tx port id`. */
  txStreamBase?: number;
}

/** The default peer address of port `id` (as testpmd: 02:00:00:00:00:NN). */
export function defaultPeer(id: number): Uint8Array {
  return Uint8Array.of(0x02, 0, 0, 0, 0, id & 0xff);
}

/** Send `s.pkts[0..n)`; what the port does not take is freed and counted in `txDropped`. */
function send(s: Stream, pool: MbufPool, n: number): number {
  const k = s.tx.txBurst(s.queue, s.pkts, n);
  if (k < n) {
    for (let i = k; i < n; i++) pool.free(s.pkts[i]);
    s.tx.stats.txDropped += n - k;
  }
  return k;
}

/**
 * Nothing received: let the TX queue finish its last notification check (Port.txIdle). With
 * fewer free buffers than the largest frame needs (`starvedBelow`), receive may be starving while
 * the pool's buffers sit, sent, in TX rings: a frame of several buffers is dropped as rxNoMbuf
 * without the allocation that would ask for them back (mbuf.ts, BufferHolder), so ask here.
 */
function idle(s: Stream, pool: MbufPool, starvedBelow: number): number {
  if (pool.available < starvedBelow) pool.reclaimHeld();
  s.tx.txIdle(s.queue);
  return 0;
}

/** Buffers the largest frame takes (its header needs room too). */
function buffersOfLargestFrame(pool: MbufPool): number {
  return Math.ceil(Eth.LARGEST_FRAME / pool.dataRoom) + 1;
}

/** Drop runts (no room for two MAC addresses) from `pkts[0..n)`; returns the new count. */
function dropRunts(s: Stream, pool: MbufPool, n: number): number {
  const pkts = s.pkts;
  let j = 0;
  for (let i = 0; i < n; i++) {
    const m = pkts[i];
    if (pool.dataLen[m] < 2 * Eth.ADDR) pool.free(m);
    else pkts[j++] = m;
  }
  if (j < n) s.rx.stats.rxDropped += n - j;
  return j;
}

/** The engine for `mode`: a function that runs one burst on a stream. */
export function createEngine(mode: Mode, opts: EngineOptions): Engine {
  const { pool, burst } = opts;
  const starved = buffersOfLargestFrame(pool);
  const bytes = pool.bytes;
  const bufOff = pool.bufOff;
  const dataOff = pool.dataOff;
  switch (mode) {
    case "io":
      return (s) => {
        const n = s.rx.rxBurst(s.queue, s.pkts, burst);
        if (n === 0) return idle(s, pool, starved);
        send(s, pool, n);
        return n;
      };
    case "rxonly":
      return (s) => {
        const n = s.rx.rxBurst(s.queue, s.pkts, burst);
        pool.freeBulk(s.pkts, n);
        return n;
      };
    case "macswap":
      return (s) => {
        const got = s.rx.rxBurst(s.queue, s.pkts, burst);
        if (got === 0) return idle(s, pool, starved);
        const n = dropRunts(s, pool, got);
        const pkts = s.pkts;
        const halves = pool.region.u16;
        const words = pool.region.u32;
        for (let i = 0; i < n; i++) {
          const m = pkts[i];
          const d = bufOff[m] + dataOff[m];
          if ((d & 3) === 0) {
            // The 12 address bytes as three words, rotated by half a word: dst = bytes 0-5,
            // src = bytes 6-11 (little-endian words: byte 0 is the low byte of word 0).
            const w = d >>> 2;
            const w0 = words[w];
            const w1 = words[w + 1];
            const w2 = words[w + 2];
            words[w] = (w1 >>> 16) | (w2 << 16);
            words[w + 1] = (w2 >>> 16) | (w0 << 16);
            words[w + 2] = (w0 >>> 16) | (w1 << 16);
          } else if ((d & 1) === 0) {
            // Three 16-bit halves each way (received frames start at an even offset).
            const h = d >>> 1;
            const t0 = halves[h];
            const t1 = halves[h + 1];
            const t2 = halves[h + 2];
            halves[h] = halves[h + 3];
            halves[h + 1] = halves[h + 4];
            halves[h + 2] = halves[h + 5];
            halves[h + 3] = t0;
            halves[h + 4] = t1;
            halves[h + 5] = t2;
          } else {
            for (let k = 0; k < Eth.ADDR; k++) {
              const t = bytes[d + k];
              bytes[d + k] = bytes[d + Eth.ADDR + k];
              bytes[d + Eth.ADDR + k] = t;
            }
          }
        }
        send(s, pool, n);
        return got;
      };
    case "mac":
      return macEngine(opts);
    case "txonly":
      return txonlyEngine(opts);
  }
}

function macEngine(opts: EngineOptions): Engine {
  const { pool, burst } = opts;
  const starved = buffersOfLargestFrame(pool);
  const bytes = pool.bytes;
  const bufOff = pool.bufOff;
  const dataOff = pool.dataOff;
  /**
   * Per port id: the 12 address bytes to write (dst = peer, src = port MAC), built on first use,
   * and the same as three words. Written as words where the frame starts word-aligned (received
   * frames do): a TypedArray `set` per packet is a builtin call costing more than the copy.
   */
  const addrs: (Uint8Array | undefined)[] = [];
  const addrWords: Uint32Array[] = [];
  const words = pool.region.u32;
  return (s) => {
    const got = s.rx.rxBurst(s.queue, s.pkts, burst);
    if (got === 0) return idle(s, pool, starved);
    const n = dropRunts(s, pool, got);
    let a = addrs[s.tx.id];
    if (a === undefined) {
      a = new Uint8Array(2 * Eth.ADDR);
      a.set(opts.peers[s.tx.id] ?? defaultPeer(s.tx.id), Eth.DST);
      a.set(s.tx.mac, Eth.SRC);
      addrs[s.tx.id] = a;
      addrWords[s.tx.id] = new Uint32Array(a.buffer);
    }
    const aw = addrWords[s.tx.id];
    const w0 = aw[0];
    const w1 = aw[1];
    const w2 = aw[2];
    const pkts = s.pkts;
    for (let i = 0; i < n; i++) {
      const m = pkts[i];
      const d = bufOff[m] + dataOff[m];
      if ((d & 3) === 0) {
        const w = d >>> 2;
        words[w] = w0;
        words[w + 1] = w1;
        words[w + 2] = w2;
      } else {
        bytes.set(a, d);
      }
    }
    send(s, pool, n);
    return got;
  };
}

/** Offsets in a test frame that change from frame to frame (see mod/testframe.ts). */
const IP_ID = 18;
const IP_CSUM = 24;
const SEQ = 50;
const PATCHED = [IP_ID, IP_ID + 1, IP_CSUM, IP_CSUM + 1, SEQ, SEQ + 1, SEQ + 2, SEQ + 3];
/**
 * The same fields as words of a frame at a 4-aligned offset (little-endian, as every typed-array
 * view of the rings): the id is the high half of word 4, the checksum the low half of word 6, the
 * sequence number the high half of word 12 and the low half of word 13, each big-endian.
 */
const W_ID = IP_ID >>> 2;
const W_CSUM = IP_CSUM >>> 2;
const W_SEQ = SEQ >>> 2;

/** Per transmitting port: the frame template split into segments and where the patches go. */
interface TxTemplate {
  segs: Uint8Array[];
  /** The whole words of each segment (native byte order), for copySegment. */
  segWords: Uint32Array[];
  /** PATCHED[i] lies in segment patchSeg[i] at byte patchOff[i]. */
  patchSeg: Int32Array;
  patchOff: Int32Array;
  /** One's-complement sum of the IPv4 header without the id and checksum words. */
  ipBaseSum: number;
  /** The template's words W_ID, W_CSUM, W_SEQ, W_SEQ + 1 with the patched halves zero. */
  keep: Uint32Array;
  /** A one-segment 64-byte frame as 8 doubles, when none is a NaN pattern; else null. */
  f64: Float64Array | null;
  seq: number;
}

function buildTemplate(
  lengths: number[],
  stream: number,
  dst: Uint8Array,
  src: Uint8Array,
  seq: number,
): TxTemplate {
  const total = lengths.reduce((a, b) => a + b, 0);
  const frame = new Uint8Array(total);
  writeTestFrame(frame, 0, total, stream, 0, dst, src);
  const segs: Uint8Array[] = [];
  const patchSeg = new Int32Array(PATCHED.length);
  const patchOff = new Int32Array(PATCHED.length);
  let off = 0;
  for (let j = 0; j < lengths.length; j++) {
    segs.push(frame.slice(off, off + lengths[j]));
    PATCHED.forEach((p, i) => {
      if (p >= off && p < off + lengths[j]) {
        patchSeg[i] = j;
        patchOff[i] = p - off;
      }
    });
    off += lengths[j];
  }
  let sum = 0;
  for (let i = 0; i < 20; i += 2) {
    if (i === 4 || i === 10) continue;
    sum += (frame[Eth.HDR + i] << 8) | frame[Eth.HDR + i + 1];
  }
  const segWords = segs.map((seg) => new Uint32Array(seg.buffer, seg.byteOffset, seg.length >>> 2));
  const w = new Uint32Array(frame.buffer, 0, total >>> 2);
  const keep = Uint32Array.of(
    w[W_ID] & 0xffff,
    w[W_CSUM] & 0xffff0000,
    w[W_SEQ] & 0xffff,
    w[W_SEQ + 1] & 0xffff0000,
  );
  const f = new Float64Array(frame.buffer, 0, total >>> 3);
  const f64 = lengths.length === 1 && total === 64 && !f.some(Number.isNaN) ? f : null;
  return { segs, segWords, patchSeg, patchOff, ipBaseSum: sum, keep, f64, seq };
}

/** Check txonly segment lengths: each at least 1 and at most `dataRoom`, total at least 60. */
export function checkTxpkts(lengths: number[], dataRoom: number): string | null {
  if (lengths.length === 0) return "--txpkts needs at least one length";
  for (const l of lengths) {
    if (!Number.isInteger(l) || l < 1 || l > dataRoom) {
      return `--txpkts: segment length ${l} must be an integer from 1 to ${dataRoom} (the buffer size)`;
    }
  }
  const total = lengths.reduce((a, b) => a + b, 0);
  if (total < Eth.MIN_FRAME) {
    return `--txpkts: total frame length ${total} is below the minimum of ${Eth.MIN_FRAME}`;
  }
  if (total > Eth.LARGEST_FRAME) {
    return `--txpkts: total frame length ${total} is above the largest frame, ${Eth.LARGEST_FRAME}`;
  }
  return null;
}

/** Segments up to this long are copied by copySegment's word stores, longer ones by `set`. */
const WORD_COPY_MAX = 256;

/**
 * Copy a template segment (`seg`, its whole words `w32`) to byte offset `at` of the pool's
 * region. Short segments at a word-aligned offset are copied as words, four per iteration: a
 * TypedArray `set` is a builtin call with checks, which for a 64-byte frame cost several times
 * the copy itself (the txonly engine spent 43 % of its time there).
 */
function copySegment(pool: MbufPool, seg: Uint8Array, w32: Uint32Array, at: number): void {
  const len = seg.length;
  if ((at & 3) !== 0 || len > WORD_COPY_MAX) {
    pool.bytes.set(seg, at);
    return;
  }
  const words = pool.region.u32;
  const w = at >>> 2;
  const nw = w32.length;
  let k = 0;
  for (; k + 4 <= nw; k += 4) {
    words[w + k] = w32[k];
    words[w + k + 1] = w32[k + 1];
    words[w + k + 2] = w32[k + 2];
    words[w + k + 3] = w32[k + 3];
  }
  for (; k < nw; k++) words[w + k] = w32[k];
  const bytes = pool.bytes;
  for (let b = nw << 2; b < len; b++) bytes[at + b] = seg[b];
}

/** The IPv4 header checksum of template `t`'s frame with id `seq & 0xffff`. */
function ipChecksum(t: TxTemplate, seq: number): number {
  let sum = t.ipBaseSum + (seq & 0xffff);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

function txonlyEngine(opts: EngineOptions): Engine {
  const { pool, burst } = opts;
  const lengths = opts.txpkts ?? [64];
  const err = checkTxpkts(lengths, pool.dataRoom);
  if (err !== null) throw new Error(err);
  const nseg = lengths.length;
  const total = lengths.reduce((a, b) => a + b, 0);
  const bytes = pool.bytes;
  const bufOff = pool.bufOff;
  const dataOff = pool.dataOff;
  const dataLen = pool.dataLen;
  const next = pool.next;
  const flags = pool.flags;
  const pktLen = pool.pktLen;
  const nbSegs = pool.nbSegs;
  const headroom = pool.headroom;
  const words = pool.region.u32;
  const f64 = pool.region.f64;
  const single = nseg === 1;
  const templates: (TxTemplate | undefined)[] = [];
  const chain = new Int32Array(nseg);
  /** Write byte `v` at the `i`th patched offset of the frame in `chain` (template `t`). */
  const patch = (t: TxTemplate, i: number, v: number) => {
    const m = chain[t.patchSeg[i]];
    bytes[bufOff[m] + dataOff[m] + t.patchOff[i]] = v;
  };
  /** Write sequence number `seq` and IP checksum `cs` into the frame in `chain`, byte by byte. */
  const patchAll = (t: TxTemplate, seq: number, cs: number) => {
    patch(t, 0, (seq >>> 8) & 0xff);
    patch(t, 1, seq & 0xff);
    patch(t, 2, cs >>> 8);
    patch(t, 3, cs & 0xff);
    patch(t, 4, seq >>> 24);
    patch(t, 5, (seq >>> 16) & 0xff);
    patch(t, 6, (seq >>> 8) & 0xff);
    patch(t, 7, seq & 0xff);
  };
  return (s) => {
    let t = templates[s.tx.id];
    if (t === undefined) {
      const dst = opts.peers[s.tx.id] ?? defaultPeer(s.tx.id);
      const stream = (opts.txStreamBase ?? 0) + s.tx.id;
      t = buildTemplate(lengths, stream, dst, s.tx.mac, opts.txSeqStart ?? 0);
      templates[s.tx.id] = t;
    }
    const pkts = s.pkts;
    let n = 0;
    if (single) {
      // The burst's buffers and their fields first, then the frames in a loop of their own: each
      // frame's line comes back from the device's core, and with nothing else between them more
      // frame stores fit in the store buffer, so more of those lines are fetched at once.
      const k = Math.min(burst, pool.available);
      for (; n < k; n++) {
        const m = pool.allocRaw(); // never NONE: k are available
        dataOff[m] = headroom;
        dataLen[m] = total;
        pktLen[m] = total;
        nbSegs[m] = 1;
        flags[m] = 0;
        pkts[n] = m;
      }
      for (let i = 0; i < n; i++) {
        const m = pkts[i];
        const q = bufOff[m] + headroom;
        const tf = t.f64;
        if (tf !== null && (q & 7) === 0) {
          // Eight 8-byte stores written out: no loop, and half the stores of copySegment's word
          // copy, each of which may wait in the store buffer while the frame's line comes back
          // from the device's core. A double that is a NaN pattern might be quieted on its way
          // (V8 tiers differ), so such frames take the word copy (buildTemplate).
          const d = q >>> 3;
          f64[d] = tf[0];
          f64[d + 1] = tf[1];
          f64[d + 2] = tf[2];
          f64[d + 3] = tf[3];
          f64[d + 4] = tf[4];
          f64[d + 5] = tf[5];
          f64[d + 6] = tf[6];
          f64[d + 7] = tf[7];
        } else {
          copySegment(pool, t.segs[0], t.segWords[0], q);
        }
        const seq = t.seq;
        t.seq = (seq + 1) >>> 0;
        const cs = ipChecksum(t, seq);
        if ((q & 3) === 0) {
          // The four words that hold the fields, not eight bytes.
          const keep = t.keep;
          const w = q >>> 2;
          words[w + W_ID] = keep[0] | ((seq >>> 8) & 0xff) << 16 | (seq & 0xff) << 24;
          words[w + W_CSUM] = keep[1] | cs >>> 8 | (cs & 0xff) << 8;
          words[w + W_SEQ] = keep[2] | (seq >>> 24) << 16 | ((seq >>> 16) & 0xff) << 24;
          words[w + W_SEQ + 1] = keep[3] | ((seq >>> 8) & 0xff) | (seq & 0xff) << 8;
        } else {
          chain[0] = m;
          patchAll(t, seq, cs);
        }
      }
    } else {
      for (; n < burst; n++) {
        if (pool.available < nseg) break;
        for (let j = 0; j < nseg; j++) {
          const m = pool.allocRaw(); // never NONE: nseg are available
          chain[j] = m;
          dataOff[m] = headroom;
          dataLen[m] = lengths[j];
          flags[m] = 0;
          copySegment(pool, t.segs[j], t.segWords[j], bufOff[m] + headroom);
          if (j > 0) next[chain[j - 1]] = m;
        }
        const head = chain[0];
        pktLen[head] = total;
        nbSegs[head] = nseg;
        const seq = t.seq;
        t.seq = (seq + 1) >>> 0;
        patchAll(t, seq, ipChecksum(t, seq));
        pkts[n] = head;
      }
    }
    if (n === 0) {
      // No free buffer: they are all in flight. A burst of 0 takes back what the device finished
      // and its last notification check (Port.txIdle).
      s.tx.txBurst(s.queue, pkts, 0);
      return 0;
    }
    return send(s, pool, n);
  };
}
