/**
 * `vpmd fwd --cores C`: C forwarding workers (threads, mod/fwd/worker_main.ts) serve the streams,
 * while the main thread keeps the control work: the ports' poll() (sockets, link events, control
 * queues), signals, statistics and the summary.
 *
 * Streams are spread over the workers as testpmd spreads them over its forwarding cores
 * (`--nb-cores`): listed queue by queue, each port in turn within a queue ((port 0, queue 0),
 * (port 1, queue 0), (port 0, queue 1), ...), then cut into C runs of consecutive streams, the
 * last `streams mod C` runs one stream longer. A worker serves the RX queue and the TX queue of
 * each of its streams; since stream (p, q) sends on (peer of p, q), every queue has one worker.
 *
 * Memory is mapped once, by the main thread, and viewed by every worker at the same address: the
 * rings (the ports lay them out with `detachedQueues` and post no buffer) and the pool's region.
 * The pool's buffers are lent out, each worker's share in proportion to the ring entries and
 * bursts it needs, and each worker runs a pool of its own over them: no buffer crosses threads.
 * Counters are in shared memory (mod/fwd/shared_stats.ts), summed here into the ports' stats.
 *
 * With a pipeline (`--pipeline`) every worker loads the module and runs it on its streams. A
 * pipeline may send a frame out of any port (sendTo, back), on the queue pair it came in on: each
 * worker must then serve whole queue pairs (every port's queue q), which the plan checks.
 */
import type { RegionShare } from "../../ffi/dma.ts";
import type { MbufPool } from "../mbuf.ts";
import type { Port, QueueLayout } from "../port.ts";
import { deviceBroken, type DeviceShare, shareDevice } from "../queue_share.ts";
import type { Mode } from "./engines.ts";
import { emptyPipelineStats, type PipelineStats } from "../pipeline/engine.ts";
import {
  addStats,
  BUSY_KEYS,
  clearStats,
  CounterLayout,
  PIPELINE_KEYS,
  statSlot,
} from "./shared_stats.ts";
import {
  Command,
  Control,
  type FromWorker,
  type PortPlan,
  type ToWorker,
  type WorkerInit,
  type WorkerPipeline,
} from "./worker_protocol.ts";

/** A worker cannot start for a reason the user must fix (its pipeline): exit 2, not 1. */
export class WorkerUsageError extends Error {}

/** A stream as port indexes and its queue pair. */
export interface StreamRef {
  rx: number;
  tx: number;
  queue: number;
}

/**
 * The streams of each of `cores` workers, spread as testpmd spreads streams over forwarding
 * cores (see the module comment). Throws when there are fewer streams than cores.
 */
export function streamsOfCores(
  ports: number,
  mode: Mode,
  queues: number,
  cores: number,
): StreamRef[][] {
  const all: StreamRef[] = [];
  for (let q = 0; q < queues; q++) {
    for (let p = 0; p < ports; p++) {
      const peer = mode === "txonly" || mode === "rxonly" ? p : (p ^ 1) < ports ? p ^ 1 : p;
      all.push({ rx: p, tx: peer, queue: q });
    }
  }
  if (cores > all.length) {
    throw new Error(
      `--cores ${cores}: there are ${all.length} streams (${ports} port${
        ports === 1 ? "" : "s"
      } x ${queues} queue pair${queues === 1 ? "" : "s"}) and a worker needs one at least; ` +
        `use --queues ${Math.ceil(cores / ports)} or fewer cores`,
    );
  }
  const per = Math.floor(all.length / cores);
  const longer = all.length % cores;
  const out: StreamRef[][] = [];
  let at = 0;
  for (let c = 0; c < cores; c++) {
    const n = c < cores - longer ? per : per + 1;
    out.push(all.slice(at, at + n));
    at += n;
  }
  return out;
}

/** What the workers are started with (`planWorkers`). */
export interface WorkerPlan {
  inits: WorkerInit[];
  layout: CounterLayout;
  counters: SharedArrayBuffer;
  control: SharedArrayBuffer;
  /** Per worker: its streams, for the report. */
  streams: StreamRef[][];
  /** The simulated wires' counters, in the order of the shared slots. */
  wireKeys: string[];
}

/** What `planWorkers` needs. */
export interface PlanOptions {
  ports: Port[];
  pool: MbufPool;
  cores: number;
  mode: Mode;
  queues: number;
  burst: number;
  peers: Uint8Array[];
  txpkts: number[];
  txStreamBase: number;
  drain: { quietMs: number; maxMs: number };
  /** The pipeline every worker runs instead of the mode's engine, or null. */
  pipeline: WorkerPipeline | null;
}

/**
 * Plan the workers for started ports (configured with `detachedQueues`): streams, queues, buffers
 * lent from the pool. Throws a one-line Error for what the user must change (fewer cores, more
 * buffers, a port kind no worker can notify).
 */
export function planWorkers(o: PlanOptions): WorkerPlan {
  const streams = streamsOfCores(o.ports.length, o.mode, o.queues, o.cores);
  if (o.pipeline !== null) checkWholeQueues(streams, o.ports.length, o.queues, o.cores);
  const regions: RegionShare[] = [o.pool.region.share()];
  const regionIndex = new Map([[o.pool.region, 0]]);
  const layouts = o.ports.map((p) => {
    const l = p.queueLayout();
    if (l === null) throw new Error(`port ${p.id}: not started with detached queues`);
    if (!regionIndex.has(l.region)) {
      regionIndex.set(l.region, regions.length);
      regions.push(l.region.share());
    }
    return l;
  });
  // The simulated wires' counters, in one order for every thread.
  const wire = o.ports.find((p) => p.wire !== null)?.wire ?? null;
  const wireKeys = wire === null ? [] : Object.keys(wire.counters);
  const layout = new CounterLayout(o.cores, o.ports.length, o.queues, wireKeys.length);
  const counters = new SharedArrayBuffer(layout.slots * 8);
  const control = new SharedArrayBuffer(Control.slots(o.cores, o.ports.length) * 4);
  const ctl = new Int32Array(control);
  o.ports.forEach((p, i) => Atomics.store(ctl, Control.link(i), p.linkUp ? 1 : 0));
  // Buffers each worker needs: its RX rings full, its TX rings full, a burst per stream.
  const perFrame = o.mode === "txonly" ? o.txpkts.length : 1;
  const need = streams.map((ss) =>
    ss.reduce(
      (a, s) =>
        a + layouts[s.rx].rx[s.queue].size + layouts[s.tx].tx[s.queue].size * perFrame +
        o.burst * perFrame,
      0,
    )
  );
  const total = need.reduce((a, b) => a + b, 0);
  const available = o.pool.available;
  if (available < total) {
    throw new Error(
      `--mbufs ${o.pool.count} is too small for ${o.cores} cores: each worker needs its rings ` +
        `full and a burst per stream, ${total} buffers in all; use --mbufs ` +
        `${o.pool.count - available + total} or more`,
    );
  }
  // Every buffer is lent, each worker's share in proportion to what it needs (at least that).
  const shares = need.map((n) => Math.floor((available * n) / total));
  const shared = o.ports.map((p) => shareDevice(p.transport, o.queues));
  const inits = streams.map((ss, w): WorkerInit => {
    const queues = new Map<number, { rx: number[]; tx: number[] }>();
    const of = (p: number) => {
      if (!queues.has(p)) queues.set(p, { rx: [], tx: [] });
      return queues.get(p)!;
    };
    for (const s of ss) {
      of(s.rx).rx.push(s.queue);
      of(s.tx).tx.push(s.queue);
    }
    const plans = [...queues].map(([p, q]) =>
      portPlan(p, o.ports[p], layouts[p], regionIndex.get(layouts[p].region)!, q, shared[p])
    );
    return {
      worker: w,
      workers: o.cores,
      portCount: o.ports.length,
      queues: o.queues,
      wireKeys,
      regions,
      pool: {
        region: 0,
        bufOff: o.pool.lend(shares[w]),
        dataRoom: o.pool.dataRoom,
        headroom: o.pool.headroom,
      },
      ports: plans,
      streams: ss,
      engine: {
        mode: o.mode,
        burst: o.burst,
        peers: o.peers,
        txpkts: o.txpkts,
        txStreamBase: o.txStreamBase,
      },
      drain: o.drain,
      pipeline: o.pipeline,
      counters,
      control,
    };
  });
  return { inits, layout, counters, control, streams, wireKeys };
}

/**
 * A pipeline sends a frame out of any port on the queue pair it came in on: every queue pair must
 * be one worker's on every port, i.e. all streams of a queue pair in one worker (stream (p, q)
 * sends on (peer of p, q), and the peers of all ports are all ports).
 */
function checkWholeQueues(streams: StreamRef[][], ports: number, queues: number, cores: number) {
  const owner = new Map<number, number>();
  streams.forEach((ss, w) => {
    for (const s of ss) {
      if ((owner.get(s.queue) ?? w) !== w) {
        throw new Error(
          `--pipeline with --cores ${cores}: a pipeline may send a frame out of any port on the ` +
            `queue pair it came in on, so each worker must serve whole queue pairs, but ${ports} ` +
            `ports x ${queues} queue pairs over ${cores} workers cut queue pair ${s.queue} in ` +
            `two; use --queues ${Math.ceil(queues / cores) * cores}`,
        );
      }
      owner.set(s.queue, w);
    }
  });
}

/**
 * What a worker needs to serve RX queues `q.rx` and TX queues `q.tx` of port `p`, laid out as `l`
 * (ring region `region` of the worker's list), reaching the device as `device` says.
 */
function portPlan(
  p: number,
  port: Port,
  l: QueueLayout,
  region: number,
  q: { rx: number[]; tx: number[] },
  device: DeviceShare,
): PortPlan {
  return {
    port: p,
    id: port.id,
    mac: Uint8Array.from(port.mac),
    limits: port.limits,
    region,
    layout: l.layout,
    packed: l.packed,
    hdrSize: l.hdrSize,
    mrgRxbuf: l.mrgRxbuf,
    eventIdx: l.eventIdx,
    inOrder: l.inOrder,
    vlanStrip: l.vlanStrip,
    vlanInsert: l.vlanInsert,
    zeroHeader: l.zeroHeader,
    rx: q.rx.map((queue) => ({ queue, ring: l.rx[queue] })),
    tx: q.tx.map((queue) => ({ queue, ring: l.tx[queue] })),
    device,
  };
}

/** What the summary says about each worker. */
export interface WorkerReport {
  worker: number;
  /** Its streams, "rx port:queue->tx port:queue". */
  streams: string[];
  /** Frames its streams received. */
  rxPackets: number;
  /** Milliseconds it forwarded (wall clock), and the CPU time its thread got meanwhile. */
  wallMs: number;
  cpuMs: number;
  /** cpuMs / wallMs: below 1, the thread waited for a CPU (preempted) part of the time. */
  onCpu: number;
  /** Share of its loop's iterations that moved frames. */
  busy: number;
}

const RX_PACKETS = statSlot("rxPackets");

/** Clock ticks of the main thread while workers forward (ms), and ports' polls per tick. */
const TICK_MS = 1;
const POLLS_PER_TICK = 64;
/** Longest wait for every worker to answer a phase (beyond the drain itself). */
const ANSWER_MS = 30_000;
/** Longest wait for a worker to leave its loop when the forwarder ends early. */
const CLOSE_MS = 5_000;

/** The running workers, seen from the main thread. */
export class WorkerGroup {
  readonly #plan: WorkerPlan;
  readonly #ports: Port[];
  readonly #workers: Worker[];
  readonly #counters: Float64Array;
  readonly #control: Int32Array;
  /** Messages per worker not yet awaited, and the waiters. */
  readonly #inbox: FromWorker[][];
  readonly #waiting: (() => void)[] = [];
  #failure: string | null = null;
  /** The failure is the user's to fix (WorkerUsageError). */
  #failureUsage = false;
  #stopRequested = false;
  /** `run` ended because the frames reached `maxPackets`. */
  #reachedMax = false;
  /** Per worker: out of its forwarding loop for good (drained, released or failed). */
  readonly #quiet: boolean[];
  /** Per worker: released (it called the pipeline's `close` and ended). */
  readonly #released: boolean[];
  readonly #log: (msg: string) => void;

  private constructor(plan: WorkerPlan, ports: Port[], log: (msg: string) => void) {
    this.#plan = plan;
    this.#ports = ports;
    this.#log = log;
    this.#counters = new Float64Array(plan.counters);
    this.#control = new Int32Array(plan.control);
    this.#inbox = plan.inits.map(() => []);
    this.#quiet = plan.inits.map(() => false);
    this.#released = plan.inits.map(() => false);
    this.#workers = plan.inits.map((init, w) => {
      const worker = new Worker(new URL("./worker_main.ts", import.meta.url).href, {
        type: "module",
      });
      worker.onmessage = (ev: MessageEvent<FromWorker>) => this.#got(w, ev.data);
      worker.onerror = (ev) => {
        ev.preventDefault();
        this.#got(w, { type: "error", message: ev.message });
      };
      worker.postMessage({ type: "init", init } satisfies ToWorker);
      return worker;
    });
  }

  /** Start a worker per plan and wait until each forwards; throws (workers ended) if one fails. */
  static async start(plan: WorkerPlan, ports: Port[], log: (msg: string) => void) {
    const g = new WorkerGroup(plan, ports, log);
    try {
      // All together: a worker that started early would count the others' start-up as its own.
      await g.#all("ready");
      g.#tell({ type: "resume" });
    } catch (e) {
      await g.close();
      throw e;
    }
    return g;
  }

  #got(w: number, msg: FromWorker): void {
    if (msg.type === "error") {
      this.#quiet[w] = true; // out of its loop: it touches no ring any more
      if (this.#failure === null) {
        // A usage problem is the same message in every worker: said as on one core.
        this.#failure = msg.usage === true ? msg.message : `worker ${w}: ${msg.message}`;
        this.#failureUsage = msg.usage === true;
      }
    }
    // A worker out of its loop touches no ring until told to resume.
    if (
      msg.type === "ready" || msg.type === "drained" || msg.type === "released" ||
      msg.type === "paused"
    ) {
      this.#quiet[w] = true;
    }
    if (msg.type === "released") this.#released[w] = true;
    this.#inbox[w].push(msg);
    for (const wake of this.#waiting.splice(0)) wake();
  }

  /** Wait until `done()` holds (or `fail()` gives a reason: thrown), at most `timeoutMs`. */
  async #until(done: () => boolean, what: string, timeoutMs: number, failFast = true) {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      if (failFast && this.#failure !== null) this.#throwFailure();
      if (done()) return;
      const left = deadline - performance.now();
      if (left <= 0) throw new Error(`the forwarding workers did not answer (${what}) in time`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 100));
        this.#waiting.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  #throwFailure(): never {
    throw this.#failureUsage ? new WorkerUsageError(this.#failure!) : new Error(this.#failure!);
  }

  /** Wait until every worker said `type` (or one failed: thrown). */
  async #all(type: FromWorker["type"], timeoutMs = ANSWER_MS): Promise<void> {
    await this.#until(
      () => this.#inbox.every((box) => box.some((m) => m.type === type)),
      type,
      timeoutMs,
    );
    for (const box of this.#inbox) box.splice(box.findIndex((m) => m.type === type), 1);
  }

  /** `run` returned because the frames reached its `maxPackets`. */
  get reachedMax(): boolean {
    return this.#reachedMax;
  }

  /** Ask `run()` to return at its next tick (a stop signal). */
  stop(): void {
    this.#stopRequested = true;
  }

  /**
   * The main thread's loop while the workers forward: poll every port (its control work), pass
   * link states on, sum the counters for `onClock` (statistics), until `stop()`, `untilMs`, or
   * the frames received by all workers (txonly: sent) reach `maxPackets`. The workers are told
   * to stop at the next tick after that: they forward a little beyond it meanwhile.
   */
  async run(
    opts: { untilMs?: number; maxPackets?: number; onClock?: (nowMs: number) => void } = {},
  ): Promise<void> {
    const untilMs = opts.untilMs ?? Infinity;
    const maxPackets = opts.maxPackets ?? Infinity;
    const sent = this.#plan.inits[0].engine.mode === "txonly";
    const L = this.#plan.layout;
    while (!this.#stopRequested) {
      for (let k = 0; k < POLLS_PER_TICK; k++) for (const p of this.#ports) p.poll();
      for (let i = 0; i < this.#ports.length; i++) {
        const port = this.#ports[i];
        Atomics.store(this.#control, Control.link(i), port.linkUp ? 1 : 0);
        for (let w = 0; w < L.workers; w++) {
          if (Atomics.load(this.#control, Control.broken(L.ports, w, i)) !== 0) {
            deviceBroken(port.transport);
          }
        }
        if (this.#ports[i].awaitingBringBack) await this.#bringBack(i);
      }
      if (this.#failure !== null) this.#throwFailure();
      const now = performance.now();
      this.collect();
      opts.onClock?.(now);
      if (now >= untilMs) break;
      if (maxPackets !== Infinity) {
        let n = 0;
        for (const p of this.#ports) n += sent ? p.stats.txPackets : p.stats.rxPackets;
        if (n >= maxPackets) {
          this.#reachedMax = true;
          break;
        }
      }
      await new Promise((resolve) => setTimeout(resolve, TICK_MS));
    }
  }

  /**
   * Port `i`'s device came back after it was lost: the workers let go of its old rings, the port
   * sets the device up again, and the workers serve the new rings (see worker_protocol.ts).
   */
  async #bringBack(i: number): Promise<void> {
    Atomics.store(this.#control, Control.COMMAND, Command.PAUSE);
    await this.#all("paused");
    this.#tell({ type: "detach", port: i });
    await this.#all("detached");
    const port = this.#ports[i];
    port.bringBack();
    const l = port.queueLayout();
    const region = l === null
      ? -1
      : this.#plan.inits[0].regions.findIndex((r) => r.addr === l.region.addr);
    const plans = this.#plan.inits.map((init) => {
      const old = init.ports.find((pp) => pp.port === i);
      if (old === undefined || l === null || region < 0) return [];
      const q = { rx: old.rx.map((r) => r.queue), tx: old.tx.map((r) => r.queue) };
      const pairs = this.#plan.layout.queues;
      const pp = portPlan(i, port, l, region, q, shareDevice(port.transport, pairs));
      init.ports[init.ports.indexOf(old)] = pp;
      return [pp];
    });
    if (l !== null && region < 0) {
      this.#log(`port ${i}: its new rings are outside the memory the workers view; not served`);
    }
    this.#workers.forEach((w, k) => w.postMessage({ type: "attach", plans: plans[k] }));
    await this.#all("attached");
    Atomics.store(this.#control, Control.COMMAND, Command.RUN);
    this.#tell({ type: "resume" });
  }

  #tell(msg: ToWorker): void {
    if (msg.type === "resume") this.#quiet.fill(false);
    for (const w of this.#workers) w.postMessage(msg);
  }

  /** Stop the workers' forwarding and wait while they drain (the main thread polls meanwhile). */
  async drain(): Promise<void> {
    Atomics.store(this.#control, Control.COMMAND, Command.STOP);
    const wait = this.#all("drained");
    let done = false;
    wait.then(() => done = true, () => done = true);
    while (!done) {
      for (const p of this.#ports) p.poll();
      await new Promise((resolve) => setTimeout(resolve, TICK_MS));
    }
    await wait;
    this.collect();
  }

  /**
   * After the devices were reset: every worker frees what its rings held and counts what was in
   * flight; then the counters are final.
   */
  async release(): Promise<void> {
    this.#tell({ type: "release" });
    await this.#all("released");
    this.collect();
  }

  /** Sum the workers' counters into every port's `stats` and `queueStats`. */
  collect(): void {
    const L = this.#plan.layout;
    const c = this.#counters;
    for (let p = 0; p < this.#ports.length; p++) {
      const port = this.#ports[p];
      const { rx, tx } = port.queueStats;
      clearStats(port.stats);
      for (let q = 0; q < rx.length; q++) clearStats(rx[q]);
      for (let q = 0; q < tx.length; q++) clearStats(tx[q]);
      for (let w = 0; w < L.workers; w++) {
        addStats(port.stats, c, L.totals(w, p));
        for (let q = 0; q < rx.length; q++) addStats(rx[q], c, L.rxQueue(w, p, q));
        for (let q = 0; q < tx.length; q++) addStats(tx[q], c, L.txQueue(w, p, q));
      }
    }
  }

  /** The wire counters of simulated port `i`: its own device's and every copy's, summed. */
  wire(i: number): Record<string, number> | null {
    const wire = this.#ports[i].wire;
    if (wire === null) return null;
    const L = this.#plan.layout;
    const out = { ...wire.counters } as Record<string, number>;
    for (let w = 0; w < L.workers; w++) {
      const at = L.wire(w, i);
      this.#plan.wireKeys.forEach((k, j) => out[k] += this.#counters[at + j]);
    }
    return out;
  }

  /** The pipeline's counters summed over the workers (each worker's as of its last clock check). */
  pipelineStats(): PipelineStats {
    const L = this.#plan.layout;
    const out = emptyPipelineStats();
    for (let w = 0; w < L.workers; w++) {
      const at = L.pipeline(w);
      PIPELINE_KEYS.forEach((k, i) => out[k] += this.#counters[at + i]);
    }
    return out;
  }

  /** Buffers back in the workers' pools (all of them once released). */
  get poolAvailable(): number {
    const L = this.#plan.layout;
    let n = 0;
    for (let w = 0; w < L.workers; w++) {
      n += this.#counters[L.busy(w) + BUSY_KEYS.indexOf("poolAvailable")];
    }
    return n;
  }

  /** Per worker: streams, frames, wall and CPU time, how busy its loop was. */
  report(): WorkerReport[] {
    const L = this.#plan.layout;
    const c = this.#counters;
    return this.#plan.streams.map((ss, w) => {
      const b = L.busy(w);
      const at = (k: typeof BUSY_KEYS[number]) => c[b + BUSY_KEYS.indexOf(k)];
      let rxPackets = 0;
      for (const s of ss) rxPackets += c[L.rxQueue(w, s.rx, s.queue) + RX_PACKETS];
      const wallMs = Math.round(at("wallMs"));
      const cpuMs = Math.round(at("cpuMs"));
      const its = at("iterations");
      return {
        worker: w,
        streams: ss.map((s) => `${s.rx}:${s.queue}->${s.tx}:${s.queue}`),
        rxPackets,
        wallMs,
        cpuMs,
        onCpu: wallMs > 0 ? Math.round((cpuMs / wallMs) * 1000) / 1000 : 0,
        busy: its > 0 ? Math.round((1 - at("idleIterations") / its) * 1000) / 1000 : 0,
      };
    });
  }

  /**
   * End every worker. One still forwarding is stopped first and given a moment to leave its loop:
   * the memory it views is unmapped once the forwarder closes its ports and pool. With a
   * pipeline, a worker not released (the forwarder ends early) calls the pipeline's `close` first.
   */
  async close(): Promise<void> {
    Atomics.store(this.#control, Control.COMMAND, Command.STOP);
    try {
      await this.#until(() => this.#quiet.every((q) => q), "stop", CLOSE_MS, false);
      if (this.#plan.inits[0].pipeline !== null) {
        const open = this.#released.map((r) => !r);
        this.#workers.forEach((w, k) => open[k] && w.postMessage({ type: "close" }));
        await this.#until(
          () => this.#inbox.every((box, k) => !open[k] || box.some((m) => m.type === "closed")),
          "close",
          CLOSE_MS,
          false,
        );
      }
    } catch (e) {
      this.#log(`vpmd fwd: ${(e as Error).message}`);
    }
    for (const w of this.#workers) w.terminate();
  }
}
