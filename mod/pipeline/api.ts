/**
 * The programmable data plane's API: what a pipeline module sees. A pipeline is a function called
 * once per received burst with a `Burst`, a view of that burst's frames over the buffer pool: for
 * frame `i`, its bytes are `b.bytes[b.offset(i) .. b.offset(i) + b.length(i))`. It reads and
 * rewrites them in place with the helpers of mod/packet/ (plain functions over (bytes, offset)),
 * and gives each frame a verdict: forward to the paired port (the default), send out another port
 * (`sendTo`), send back out the input port (`back`), or `drop`. Frames can grow into the buffer's
 * headroom (`prepend`, `vlanPush`) and shrink (`trimFront`, `truncate`, `vlanPop`).
 *
 * Nothing here allocates: a Burst is made once and re-aimed at every burst, its methods work on
 * the pool's typed arrays, verdicts live in one Int32Array. A pipeline that keeps to numbers and
 * reused objects allocates nothing per frame either.
 */
import { MbufFlag, type MbufPool, NONE } from "../mbuf.ts";
import { NetHdr } from "../virtio/constants.ts";
import { Ether, EtherType, isVlanTpid } from "../packet/ether.ts";

/** Verdict codes: a port index (>= 0) or one of these. */
export const Verdict = {
  /** Out of the paired port (the default). */
  FORWARD: -1,
  /** Back out of the port it came in on. */
  BACK: -2,
  DROP: -3,
} as const;

/**
 * Bytes kept free in front of a frame that grows into the headroom: the transmit queue writes the
 * virtio-net header there (5.1.6, at most 12 bytes).
 */
export const HEADER_ROOM: number = NetHdr.SIZE;

/** A port as `init` sees it. */
export interface PipelinePort {
  /** Index for `Burst.sendTo` and `Burst.port`. */
  readonly index: number;
  /** Name as given on the command line (e.g. `sim:p0`, `vhost-user:/tmp/s.sock`). */
  readonly name: string;
  /** The port's MAC address (a copy). */
  readonly mac: Uint8Array;
  /** Largest frame the port takes (MTU + Ethernet header + one VLAN tag). */
  readonly maxFrame: number;
  /** Where FORWARD sends the frames this port receives. */
  readonly pair: number;
}

/** What `init` is given. */
export interface PipelineContext {
  /** The forwarder's ports, in index order. */
  readonly ports: readonly PipelinePort[];
  /** `--pipeline-arg K=V` pairs. */
  readonly args: Readonly<Record<string, string>>;
  /** The module's URL (a worker thread can load the same module from it). */
  readonly url: string;
  /** Most frames in one burst. */
  readonly burstSize: number;
  /**
   * Which forwarding worker this copy runs in (0 .. workers - 1; 0 on one core). With `--cores C`
   * every worker loads the module on its own and calls `init` and `close`: what a pipeline keeps
   * (module variables, tables, counters) is per worker, each worker sees only the frames of its
   * queue pairs, and its timers run only while it does not forward (docs/pipeline.md).
   */
  readonly worker: number;
  /** How many workers run the pipeline (`--cores`; 1 on one core). */
  readonly workers: number;
  /** Print a line on stderr (stdout carries the statistics and the JSON summary). */
  log(msg: string): void;
}

/** The per-burst function. It must be synchronous: the burst is sent as soon as it returns. */
export type BurstFunction = (b: Burst) => void;

/**
 * A pipeline module: a default export (or a `burst` export) that is a BurstFunction, and
 * optionally `init(ctx)` (before the first burst; may be async) and `close()` (after the last).
 */
export interface PipelineModule {
  /** The burst function. */
  default?: BurstFunction;
  /** The burst function, when there is no default export. */
  burst?: BurstFunction;
  /** Called once before the first burst, with the ports and the arguments. */
  init?: (ctx: PipelineContext) => void | Promise<void>;
  /** Called once after the last burst (also after an error stopped the forwarder). */
  close?: () => void | Promise<void>;
}

/** The engine's side of a Burst (assigned in the class's static block: not for pipelines). */
let aim: (b: Burst, pkts: Uint32Array, n: number, port: number, pair: number, q: number) => void;
let marked: (b: Burst) => boolean;
let verdicts: (b: Burst) => Int32Array;
let unmark: (b: Burst) => void;

/** Point `b` at a received burst: `pkts[0..n)` from port index `port` queue `q`. */
export function aimBurst(
  b: Burst,
  pkts: Uint32Array,
  n: number,
  port: number,
  pair: number,
  q: number,
): void {
  aim(b, pkts, n, port, pair, q);
}

/** True when some frame of the burst got a verdict other than FORWARD. */
export function burstMarked(b: Burst): boolean {
  return marked(b);
}

/** The verdict array (the engine reads it and resets what it read to FORWARD). */
export function burstVerdicts(b: Burst): Int32Array {
  return verdicts(b);
}

/** Every verdict read and reset: the burst is plain FORWARD again. */
export function unmarkBurst(b: Burst): void {
  unmark(b);
}

const MACS = 2 * Ether.ADDR_LEN;

/** The frames of one received burst, their bytes, and their verdicts. */
export class Burst {
  readonly #pool: MbufPool;
  readonly #bytes: Uint8Array;
  readonly #bufOff: Uint32Array;
  readonly #dataOff: Uint32Array;
  readonly #dataLen: Uint32Array;
  readonly #pktLen: Uint32Array;
  readonly #flags: Uint32Array;
  readonly #vlanTci: Uint16Array;
  readonly #next: Int32Array;
  readonly #verdict: Int32Array;
  readonly #nPorts: number;
  #pkts: Uint32Array;
  #count = 0;
  #port = 0;
  #pair = 0;
  #queue = 0;
  #marked = false;

  static {
    aim = (b, pkts, n, port, pair, q) => {
      b.#pkts = pkts;
      b.#count = n;
      b.#port = port;
      b.#pair = pair;
      b.#queue = q;
    };
    marked = (b) => b.#marked;
    verdicts = (b) => b.#verdict;
    unmark = (b) => {
      b.#marked = false;
    };
  }

  /** A Burst over `pool` for bursts of up to `maxBurst` frames among `nPorts` ports. */
  constructor(pool: MbufPool, maxBurst: number, nPorts: number) {
    this.#pool = pool;
    this.#bytes = pool.bytes;
    this.#bufOff = pool.bufOff;
    this.#dataOff = pool.dataOff;
    this.#dataLen = pool.dataLen;
    this.#pktLen = pool.pktLen;
    this.#flags = pool.flags;
    this.#vlanTci = pool.vlanTci;
    this.#next = pool.next;
    this.#verdict = new Int32Array(maxBurst).fill(Verdict.FORWARD);
    this.#nPorts = nPorts;
    this.#pkts = new Uint32Array(0);
  }

  /** Frames in this burst. */
  get count(): number {
    return this.#count;
  }

  /** Index of the port the burst came in on. */
  get port(): number {
    return this.#port;
  }

  /** Index of the port FORWARD sends to (the input port's pair). */
  get pair(): number {
    return this.#pair;
  }

  /** Receive queue the burst came from. */
  get queue(): number {
    return this.#queue;
  }

  /** Number of ports (`sendTo` takes 0 .. ports - 1). */
  get ports(): number {
    return this.#nPorts;
  }

  /** Every frame's bytes live here (the whole buffer pool): use with `offset(i)`. */
  get bytes(): Uint8Array {
    return this.#bytes;
  }

  /** Offset in `bytes` of frame `i`'s first byte. */
  offset(i: number): number {
    const m = this.#pkts[i];
    return this.#bufOff[m] + this.#dataOff[m];
  }

  /** Length of frame `i` in bytes. */
  length(i: number): number {
    return this.#pktLen[this.#pkts[i]];
  }

  /**
   * Bytes of frame `i` that are contiguous from `offset(i)`: all of them, except for a frame
   * received in several buffers (mergeable buffers with a large MTU), whose first buffer holds
   * the headers.
   */
  segmentLength(i: number): number {
    return this.#dataLen[this.#pkts[i]];
  }

  /** The VLAN TCI stripped on receive (`--vlan-strip`), or -1. */
  vlan(i: number): number {
    const m = this.#pkts[i];
    return (this.#flags[m] & MbufFlag.VLAN_STRIPPED) !== 0 ? this.#vlanTci[m] : -1;
  }

  /** The buffer (mbuf) number of frame `i`. */
  mbuf(i: number): number {
    return this.#pkts[i];
  }

  /** Frame `i`'s verdict so far: a port index or a Verdict code. */
  verdict(i: number): number {
    return this.#verdict[i];
  }

  /** Send frame `i` out of the paired port (the default). */
  forward(i: number): void {
    this.#set(i, Verdict.FORWARD);
  }

  /** Drop frame `i`. */
  drop(i: number): void {
    this.#set(i, Verdict.DROP);
  }

  /** Send frame `i` back out of the port it came in on. */
  back(i: number): void {
    this.#set(i, Verdict.BACK);
  }

  /** Send frame `i` out of port `port` (an index from 0 to `ports - 1`). */
  sendTo(i: number, port: number): void {
    if (!(port >= 0 && port < this.#nPorts && port === (port | 0))) {
      throw new RangeError(`sendTo: port ${port} is not a port index (0 to ${this.#nPorts - 1})`);
    }
    this.#set(i, port);
  }

  #set(i: number, v: number): void {
    if (!(i >= 0 && i < this.#count && i === (i | 0))) {
      throw new RangeError(`frame ${i} is not in this burst (0 to ${this.#count - 1})`);
    }
    this.#verdict[i] = v;
    if (v !== Verdict.FORWARD) this.#marked = true;
  }

  /**
   * Grow frame `i` by `n` bytes at its front, into the buffer's headroom (keeping HEADER_ROOM
   * bytes). Returns the frame's new offset, or -1 (frame unchanged) when the headroom is too small.
   */
  prepend(i: number, n: number): number {
    const m = this.#pkts[i];
    const off = this.#dataOff[m];
    if (!(n >= 0 && n === (n | 0)) || off < HEADER_ROOM + n) return -1;
    this.#dataOff[m] = off - n;
    this.#dataLen[m] += n;
    this.#pktLen[m] += n;
    return this.#bufOff[m] + off - n;
  }

  /**
   * Remove `n` bytes from the front of frame `i` (at most its first segment). Returns the frame's
   * new offset, or -1 (frame unchanged) when it has fewer bytes.
   */
  trimFront(i: number, n: number): number {
    const m = this.#pkts[i];
    if (!(n >= 0 && n === (n | 0)) || n > this.#dataLen[m]) return -1;
    this.#dataOff[m] += n;
    this.#dataLen[m] -= n;
    this.#pktLen[m] -= n;
    return this.#bufOff[m] + this.#dataOff[m];
  }

  /**
   * Shorten frame `i` to `len` bytes (later buffers of a multi-buffer frame that are no longer
   * needed go back to the pool). Returns false (frame unchanged) when `len` is not below its length.
   */
  truncate(i: number, len: number): boolean {
    const m = this.#pkts[i];
    const total = this.#pktLen[m];
    if (!(len >= 0 && len <= total && len === (len | 0))) return false;
    const next = this.#next;
    const dataLen = this.#dataLen;
    let left = len;
    let s = m;
    // Walk at most as many segments as the pool has: a chain is never longer.
    for (let k = this.#pool.count; k > 0 && s !== NONE; k--) {
      if (left <= dataLen[s]) {
        dataLen[s] = left;
        const rest = next[s];
        if (rest !== NONE) {
          next[s] = NONE;
          this.#pool.free(rest);
        }
        break;
      }
      left -= dataLen[s];
      s = next[s];
    }
    this.#pktLen[m] = len;
    return true;
  }

  /**
   * Push a VLAN tag (TPID `tpid`, 0x8100 by default or 0x88a8 for a service tag, and `tci`) as
   * frame `i`'s outermost tag, growing it by 4 bytes into the headroom. Returns false (frame
   * unchanged) when the headroom is too small or the frame has no full pair of MAC addresses.
   */
  vlanPush(i: number, tci: number, tpid: number = EtherType.VLAN): boolean {
    const m = this.#pkts[i];
    const off = this.#dataOff[m];
    if (off < HEADER_ROOM + Ether.TAG_LEN || this.#dataLen[m] < MACS) return false;
    const b = this.#bytes;
    const from = this.#bufOff[m] + off;
    const to = from - Ether.TAG_LEN;
    for (let k = 0; k < MACS; k++) b[to + k] = b[from + k];
    b[to + Ether.TYPE] = tpid >>> 8;
    b[to + Ether.TYPE + 1] = tpid;
    b[to + Ether.TYPE + 2] = tci >>> 8;
    b[to + Ether.TYPE + 3] = tci;
    this.#dataOff[m] = off - Ether.TAG_LEN;
    this.#dataLen[m] += Ether.TAG_LEN;
    this.#pktLen[m] += Ether.TAG_LEN;
    return true;
  }

  /**
   * Remove frame `i`'s outermost VLAN tag (802.1Q or 802.1ad). Returns its TCI, or -1 (frame
   * unchanged) when the frame has none.
   */
  vlanPop(i: number): number {
    const m = this.#pkts[i];
    if (this.#dataLen[m] < Ether.HDR_LEN + Ether.TAG_LEN) return -1;
    const b = this.#bytes;
    const start = this.#bufOff[m] + this.#dataOff[m];
    if (!isVlanTpid((b[start + Ether.TYPE] << 8) | b[start + Ether.TYPE + 1])) return -1;
    const tci = (b[start + Ether.TYPE + 2] << 8) | b[start + Ether.TYPE + 3];
    for (let k = MACS - 1; k >= 0; k--) b[start + Ether.TAG_LEN + k] = b[start + k];
    this.#dataOff[m] += Ether.TAG_LEN;
    this.#dataLen[m] -= Ether.TAG_LEN;
    this.#pktLen[m] -= Ether.TAG_LEN;
    return tci;
  }
}
