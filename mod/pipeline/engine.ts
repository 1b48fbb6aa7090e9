/**
 * The pipeline engine: a forwarding engine (mod/fwd/engines.ts) that receives a burst, hands it
 * to a user's BurstFunction, and sends each frame where its verdict says.
 *
 * When every frame kept the default verdict (FORWARD) the burst goes to the paired port in one
 * `txBurst`, as the io engine sends it. Otherwise the frames are grouped per output port into
 * arrays made once (one per port, a burst long), in their received order, and each group goes out
 * in one `txBurst`; dropped frames go back to the pool in one `freeBulk`. What a TX ring does not
 * take is freed and counted in that port's `txDropped`.
 *
 * A BurstFunction that throws (or returns a promise: it must be synchronous) loses its burst: the
 * frames are freed, never sent half-processed, `errors` and `errorFrames` count it, the first
 * error is logged with its stack, and forwarding goes on.
 */
import type { MbufPool } from "../mbuf.ts";
import type { Engine, Stream, StreamPort } from "../fwd/engines.ts";
import { Eth } from "../eth.ts";
import {
  aimBurst,
  Burst,
  type BurstFunction,
  burstMarked,
  burstVerdicts,
  unmarkBurst,
  Verdict,
} from "./api.ts";

/** What the pipeline engine counts. */
export interface PipelineStats {
  /** Bursts given to the pipeline. */
  bursts: number;
  /** Frames in those bursts. */
  frames: number;
  /** Frames the pipeline dropped (verdict DROP). */
  dropped: number;
  /** Frames sent back out of their input port (verdict BACK). */
  back: number;
  /** Frames sent out of a port chosen by index (`sendTo`). */
  redirected: number;
  /** Bursts in which the pipeline threw (or returned a promise). */
  errors: number;
  /** Frames of those bursts (dropped). */
  errorFrames: number;
}

/** Options of `createPipelineEngine`. */
export interface PipelineEngineOptions {
  /** The pool the ports' frames are in. */
  pool: MbufPool;
  /** Most frames per burst. */
  burst: number;
  /** The ports, in index order: `sendTo(i, k)` sends out of `ports[k]` (a worker's: its queues). */
  ports: StreamPort[];
  /** The pipeline. */
  fn: BurstFunction;
  /** Where the first error goes (default: stderr). */
  log?: (msg: string) => void;
}

/** A pipeline engine, its counters and the Burst it hands to the pipeline. */
export interface PipelineEngine {
  /** The engine, for a ForwardLoop or to call per stream. */
  engine: Engine;
  /** Its counters. */
  stats: PipelineStats;
  /** The Burst it hands to the pipeline (one, re-aimed at every burst). */
  burst: Burst;
}

/** A fresh, zeroed PipelineStats. */
export function emptyPipelineStats(): PipelineStats {
  return { bursts: 0, frames: 0, dropped: 0, back: 0, redirected: 0, errors: 0, errorFrames: 0 };
}

/** An engine that runs `o.fn` on every burst of every stream it is given. */
export function createPipelineEngine(o: PipelineEngineOptions): PipelineEngine {
  const { pool, burst: max, ports, fn } = o;
  const log = o.log ?? ((msg: string) => console.error(msg));
  const nPorts = ports.length;
  const b = new Burst(pool, max, nPorts);
  const stats = emptyPipelineStats();
  /** Port index by port id (ids are small integers; a library user's need not be 0..n-1). */
  const indexOf: number[] = [];
  ports.forEach((p, i) => indexOf[p.id] = i);
  const out = ports.map(() => new Uint32Array(max));
  const outCount = new Int32Array(nPorts);
  const drops = new Uint32Array(max);
  const starvedBelow = Math.ceil(Eth.LARGEST_FRAME / pool.dataRoom) + 1;

  /** Send `pkts[0..n)` out of port `p` queue `q`; the rest is freed and counted as dropped. */
  const send = (p: StreamPort, q: number, pkts: Uint32Array, n: number): void => {
    const k = p.txBurst(q, pkts, n);
    if (k < n) {
      for (let i = k; i < n; i++) pool.free(pkts[i]);
      p.stats.txDropped += n - k;
    }
  };

  /** The cold path: the pipeline threw (or returned a promise); the burst is dropped whole. */
  const fail = (s: Stream, n: number, e: unknown): void => {
    pool.freeBulk(s.pkts, n);
    const v = burstVerdicts(b);
    for (let i = 0; i < n; i++) v[i] = Verdict.FORWARD;
    unmarkBurst(b);
    stats.errors++;
    stats.errorFrames += n;
    if (stats.errors === 1) {
      const what = e instanceof Error ? e.stack ?? `${e.name}: ${e.message}` : String(e);
      log(
        `pipeline: error in a burst of ${n} frames from port ${indexOf[s.rx.id]} (dropped; ` +
          `later errors are only counted): ${what}`,
      );
    }
  };

  /** Some frame has a verdict other than FORWARD: group the burst per output port. */
  const dispatch = (s: Stream, n: number, rx: number, pair: number): void => {
    const pkts = s.pkts;
    const v = burstVerdicts(b);
    let nd = 0;
    let nBack = 0;
    let nOther = 0;
    for (let i = 0; i < n; i++) {
      const verdict = v[i];
      v[i] = Verdict.FORWARD;
      const m = pkts[i];
      let to: number;
      if (verdict === Verdict.FORWARD) {
        to = pair;
      } else if (verdict === Verdict.DROP) {
        drops[nd++] = m;
        continue;
      } else if (verdict === Verdict.BACK) {
        to = rx;
        nBack++;
      } else {
        to = verdict; // checked by sendTo
        nOther++;
      }
      out[to][outCount[to]++] = m;
    }
    unmarkBurst(b);
    if (nd > 0) pool.freeBulk(drops, nd);
    stats.dropped += nd;
    stats.back += nBack;
    stats.redirected += nOther;
    for (let p = 0; p < nPorts; p++) {
      const c = outCount[p];
      if (c === 0) continue;
      outCount[p] = 0;
      send(ports[p], s.queue, out[p], c);
    }
  };

  const engine: Engine = (s) => {
    const n = s.rx.rxBurst(s.queue, s.pkts, max);
    if (n === 0) {
      // As the io engine: reclaim sent buffers when receive may be starving, finish TX's last
      // notification check.
      if (pool.available < starvedBelow) pool.reclaimHeld();
      s.tx.txIdle(s.queue);
      return 0;
    }
    const rx = indexOf[s.rx.id];
    const pair = indexOf[s.tx.id];
    aimBurst(b, s.pkts, n, rx, pair, s.queue);
    stats.bursts++;
    stats.frames += n;
    let r: unknown;
    try {
      r = fn(b);
    } catch (e) {
      fail(s, n, e);
      return n;
    }
    if (r !== undefined && typeof (r as { then?: unknown }).then === "function") {
      fail(
        s,
        n,
        new TypeError("the pipeline returned a promise: a burst function must be synchronous"),
      );
      return n;
    }
    if (!burstMarked(b)) send(s.tx, s.queue, s.pkts, n);
    else dispatch(s, n, rx, pair);
    return n;
  };
  return { engine, stats, burst: b };
}
