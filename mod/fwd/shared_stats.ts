/**
 * Counters that worker threads write and the main thread sums (mod/fwd/workers.ts): float64
 * slots in one SharedArrayBuffer, laid out the same in every thread by `CounterLayout`. A queue's
 * counters are written by the one thread that serves it, once per burst (the queues update their
 * `PortStats` that way, and `SharedStats` is a PortStats over these slots); a simulated wire's
 * counters and a thread's busy time are copied in at every clock check. The main thread only
 * reads; an aligned 8-byte load sees a whole value.
 */
import { emptyStats } from "../port.ts";
import type { PortStats } from "../virtio/stats.ts";
import { emptyPipelineStats, type PipelineStats } from "../pipeline/engine.ts";

/** The counters of a PortStats, in one order for every thread. */
const STAT_KEYS = Object.keys(emptyStats()) as (keyof PortStats)[];

const NSTAT = STAT_KEYS.length;
/** Offsets of each counter in a block of STAT_KEYS.length slots. */
const RX_PACKETS = STAT_KEYS.indexOf("rxPackets");
const TX_PACKETS = STAT_KEYS.indexOf("txPackets");
const RX_BYTES = STAT_KEYS.indexOf("rxBytes");
const TX_BYTES = STAT_KEYS.indexOf("txBytes");
const RX_DROPPED = STAT_KEYS.indexOf("rxDropped");
const TX_DROPPED = STAT_KEYS.indexOf("txDropped");
const RX_NO_MBUF = STAT_KEYS.indexOf("rxNoMbuf");
const RX_ERRORS = STAT_KEYS.indexOf("rxErrors");
const TX_ERRORS = STAT_KEYS.indexOf("txErrors");
const RX_IDX_ERRORS = STAT_KEYS.indexOf("rxIdxErrors");

/** What a worker reports about itself (see WorkerReport in workers.ts). */
export const BUSY_KEYS = [
  "cpuMs",
  "wallMs",
  "iterations",
  "idleIterations",
  "poolAvailable",
] as const;

/** A pipeline's counters (PipelineStats), in one order for every thread. */
export const PIPELINE_KEYS = Object.keys(emptyPipelineStats()) as (keyof PipelineStats)[];

/** A PortStats kept in 10 slots of shared memory (STAT_KEYS order) from `base`. */
export class SharedStats implements PortStats {
  readonly #a: Float64Array;
  readonly #i: number;

  constructor(slots: Float64Array, base: number) {
    this.#a = slots;
    this.#i = base;
  }

  get rxPackets(): number {
    return this.#a[this.#i + RX_PACKETS];
  }
  set rxPackets(v: number) {
    this.#a[this.#i + RX_PACKETS] = v;
  }
  get txPackets(): number {
    return this.#a[this.#i + TX_PACKETS];
  }
  set txPackets(v: number) {
    this.#a[this.#i + TX_PACKETS] = v;
  }
  get rxBytes(): number {
    return this.#a[this.#i + RX_BYTES];
  }
  set rxBytes(v: number) {
    this.#a[this.#i + RX_BYTES] = v;
  }
  get txBytes(): number {
    return this.#a[this.#i + TX_BYTES];
  }
  set txBytes(v: number) {
    this.#a[this.#i + TX_BYTES] = v;
  }
  get rxDropped(): number {
    return this.#a[this.#i + RX_DROPPED];
  }
  set rxDropped(v: number) {
    this.#a[this.#i + RX_DROPPED] = v;
  }
  get txDropped(): number {
    return this.#a[this.#i + TX_DROPPED];
  }
  set txDropped(v: number) {
    this.#a[this.#i + TX_DROPPED] = v;
  }
  get rxNoMbuf(): number {
    return this.#a[this.#i + RX_NO_MBUF];
  }
  set rxNoMbuf(v: number) {
    this.#a[this.#i + RX_NO_MBUF] = v;
  }
  get rxErrors(): number {
    return this.#a[this.#i + RX_ERRORS];
  }
  set rxErrors(v: number) {
    this.#a[this.#i + RX_ERRORS] = v;
  }
  get txErrors(): number {
    return this.#a[this.#i + TX_ERRORS];
  }
  set txErrors(v: number) {
    this.#a[this.#i + TX_ERRORS] = v;
  }
  get rxIdxErrors(): number {
    return this.#a[this.#i + RX_IDX_ERRORS];
  }
  set rxIdxErrors(v: number) {
    this.#a[this.#i + RX_IDX_ERRORS] = v;
  }
}

/** Where counter `key` is in a block of PortStats slots. */
export function statSlot(key: keyof PortStats): number {
  return STAT_KEYS.indexOf(key);
}

/** Set every counter of `s` to 0. */
export function clearStats(s: PortStats): void {
  for (let i = 0; i < NSTAT; i++) s[STAT_KEYS[i]] = 0;
}

/** Add the 10 counters at `slots[base..]` into `into`. */
export function addStats(into: PortStats, slots: Float64Array, base: number): void {
  for (let i = 0; i < NSTAT; i++) into[STAT_KEYS[i]] += slots[base + i];
}

/** Slots in a 64-byte cache line. */
const LINE_SLOTS = 8;

/**
 * Where each counter lives, for `workers` threads over `ports` ports of `queues` queue pairs and
 * simulated wires of `wireSlots` counters: per worker its BUSY_KEYS, its pipeline's PIPELINE_KEYS
 * (copied in at each clock check), then per port a block of the
 * port's totals, each RX queue's and each TX queue's counters and the wire's (zeros where the
 * worker does not serve that part). A cache line of space separates workers' areas, so that no
 * two threads write one line.
 */
export class CounterLayout {
  readonly workers: number;
  readonly ports: number;
  readonly queues: number;
  readonly #block: number;
  readonly #worker: number;

  constructor(workers: number, ports: number, queues: number, wireSlots: number) {
    this.workers = workers;
    this.ports = ports;
    this.queues = queues;
    this.#block = (1 + 2 * queues) * NSTAT + wireSlots;
    // A line of space after each worker's area, whatever the buffer's alignment.
    const slots = BUSY_KEYS.length + PIPELINE_KEYS.length + ports * this.#block;
    this.#worker = Math.ceil(slots / LINE_SLOTS) * LINE_SLOTS + LINE_SLOTS;
  }

  /** Float64 slots in all. */
  get slots(): number {
    return this.workers * this.#worker;
  }

  /** The port totals worker `w` keeps for port `p`. */
  totals(w: number, p: number): number {
    return this.pipeline(w) + PIPELINE_KEYS.length + p * this.#block;
  }

  rxQueue(w: number, p: number, q: number): number {
    return this.totals(w, p) + NSTAT * (1 + q);
  }

  txQueue(w: number, p: number, q: number): number {
    return this.totals(w, p) + NSTAT * (1 + this.queues + q);
  }

  /** The counters of worker `w`'s copy of port `p`'s simulated wire (`wireKeys` order). */
  wire(w: number, p: number): number {
    return this.totals(w, p) + NSTAT * (1 + 2 * this.queues);
  }

  /** Worker `w`'s BUSY_KEYS. */
  busy(w: number): number {
    return w * this.#worker;
  }

  /** Worker `w`'s pipeline counters (PIPELINE_KEYS). */
  pipeline(w: number): number {
    return w * this.#worker + BUSY_KEYS.length;
  }
}
