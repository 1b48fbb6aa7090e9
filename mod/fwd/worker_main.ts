/**
 * A forwarding worker (`vpmd fwd --cores C`, mod/fwd/workers.ts): it serves the queues of the
 * streams it was given, as one of testpmd's forwarding cores does, over memory the main thread
 * mapped (the rings and the pool's region, re-viewed here at the same address).
 *
 * Its buffers are its own: a pool over the buffers the main thread lent it, which fills its RX
 * rings, takes frames received on them, and gets back what its TX rings sent; a frame never
 * leaves the worker (a stream receives and sends on queues of the same worker). Its queues count
 * into shared memory once per burst (mod/fwd/shared_stats.ts). A simulated port's device work
 * for these queues runs here too, in a copy of the device (mod/sim/share.ts), between bursts.
 *
 * With `--pipeline` the worker loads the module itself (its own copy: its state is this worker's),
 * calls its `init` before it says `ready`, runs the pipeline engine on its streams instead of the
 * mode's, and calls its `close` at release.
 *
 * The loop runs without yielding and reads the control word at every clock check (about every
 * half millisecond, on a clock that allocates nothing: ffi/clock.ts); see worker_protocol.ts for
 * the phases.
 */
/// <reference lib="deno.worker" />
import { DmaRegion } from "../../ffi/dma.ts";
import { monotonicMs } from "../../ffi/clock.ts";
import { threadCpuMs } from "../../ffi/thread.ts";
import { MbufPool } from "../mbuf.ts";
import type { Port } from "../port.ts";
import { type DeviceWork, type QueueServer, serveDevice } from "../queue_share.ts";
import { IndirectTables } from "../virtio/indirect.ts";
import { PackedRing } from "../virtio/packed_ring.ts";
import { PackedRxQueue } from "../virtio/packed_rx_queue.ts";
import { PackedTxQueue } from "../virtio/packed_tx_queue.ts";
import { RxQueue } from "../virtio/rx_queue.ts";
import { SplitRing } from "../virtio/split_ring.ts";
import type { PortStats } from "../virtio/stats.ts";
import { TxQueue } from "../virtio/tx_queue.ts";
import { createEngine, type Engine, type Stream, type StreamPort } from "./engines.ts";
import { idlePause } from "./loop.ts";
import { BUSY_KEYS, CounterLayout, PIPELINE_KEYS, SharedStats } from "./shared_stats.ts";
import type { PipelineContext } from "../pipeline/api.ts";
import { createPipelineEngine, type PipelineStats } from "../pipeline/engine.ts";
import { importPipeline, PipelineLoadError } from "../pipeline/load.ts";
import {
  Command,
  Control,
  type FromWorker,
  type PortPlan,
  type RingPlace,
  type ToWorker,
  type WorkerInit,
} from "./worker_protocol.ts";

/** Clock checks about this often (ms): the control word, counters of the wires, busy time. */
const CHECK_MS = 0.5;
const MIN_CHECK = 16;
const MAX_CHECK = 1 << 14;
const CPU_MS = BUSY_KEYS.indexOf("cpuMs");
const WALL_MS = BUSY_KEYS.indexOf("wallMs");
const ITERATIONS = BUSY_KEYS.indexOf("iterations");
const IDLE_ITERATIONS = BUSY_KEYS.indexOf("idleIterations");
const POOL_AVAILABLE = BUSY_KEYS.indexOf("poolAvailable");

/** A pipeline's `init` threw: the user's to fix (the forwarder exits 2, as on one core). */
class PipelineInitError extends Error {}

/** The queues of one port this worker serves, shaped as the engines want a port. */
class WorkerPort implements StreamPort {
  readonly id: number;
  readonly mac: Uint8Array;
  readonly stats: PortStats;
  readonly limits: Port["limits"];
  readonly rx: (RxQueue | PackedRxQueue | undefined)[] = [];
  readonly tx: (TxQueue | PackedTxQueue | undefined)[] = [];

  constructor(plan: PortPlan, stats: PortStats) {
    this.id = plan.id;
    this.mac = plan.mac;
    this.limits = plan.limits;
    this.stats = stats;
  }

  rxBurst(queue: number, pkts: Uint32Array, max: number): number {
    const rx = this.rx[queue];
    return rx === undefined ? 0 : rx.burst(pkts, max);
  }

  txBurst(queue: number, pkts: Uint32Array, n: number): number {
    const tx = this.tx[queue];
    return tx === undefined ? 0 : tx.burst(pkts, n);
  }

  txIdle(queue: number): void {
    this.tx[queue]?.idle();
  }

  txInFlight(queue: number): number {
    const tx = this.tx[queue];
    return tx === undefined ? 0 : tx.ring.size - tx.freeDescriptors;
  }
}

/** Everything the worker built from its plan. */
class ForwardingWorker {
  readonly init: WorkerInit;
  readonly pool: MbufPool;
  readonly ports: WorkerPort[] = [];
  /** Simulated devices' work to run between bursts, with the port index each belongs to. */
  readonly devices: { port: number; device: DeviceWork }[] = [];
  readonly streams: Stream[];
  /** The mode's engine, or the pipeline's once `startPipeline` made it. */
  engine: Engine;
  /** The pipeline's counters (copied to shared memory at each clock check), or null. */
  #pipelineStats: PipelineStats | null = null;
  /** The pipeline's `close`, to call once: set when its `init` returned. */
  #pipelineClose: (() => void | Promise<void>) | null = null;
  readonly #counters: Float64Array;
  readonly #control: Int32Array;
  readonly #layout: CounterLayout;
  readonly #regions: DmaRegion[];
  /** How this thread reaches each device (closed at release). */
  readonly #servers: QueueServer[] = [];
  /** The port a plan's port index names (streams refer to ports by index). */
  readonly #byIndex: WorkerPort[] = [];
  #iterations = 0;
  #idle = 0;
  #checkEvery = 256;
  /** CPU and wall-clock time at the first forward; -1 before it. */
  #cpuStart = -1;
  #wallStart = 0;

  constructor(init: WorkerInit) {
    this.init = init;
    this.#counters = new Float64Array(init.counters);
    this.#control = new Int32Array(init.control);
    this.#layout = new CounterLayout(
      init.workers,
      init.portCount,
      init.queues,
      init.wireKeys.length,
    );
    const regions = init.regions.map((r) => DmaRegion.attach(r));
    this.#regions = regions;
    const p = init.pool;
    this.pool = new MbufPool({
      count: p.bufOff.length,
      dataRoom: p.dataRoom,
      headroom: p.headroom,
      kind: regions[p.region].kind,
      slice: { region: regions[p.region], bufOff: p.bufOff },
    });
    const byIndex = this.#byIndex;
    for (const plan of init.ports) {
      const totals = new SharedStats(this.#counters, this.#layout.totals(init.worker, plan.port));
      const port = new WorkerPort(plan, totals);
      this.ports.push(port);
      byIndex[plan.port] = port;
      this.#attach(port, plan);
    }
    this.engine = createEngine(init.engine.mode, { pool: this.pool, ...init.engine });
    this.streams = init.streams.map((s) => ({
      rx: byIndex[s.rx],
      tx: byIndex[s.tx],
      queue: s.queue,
      pkts: new Uint32Array(init.engine.burst),
    }));
  }

  /**
   * Load the pipeline module (this worker's copy), call its `init` with this worker's number, and
   * forward with the pipeline engine. Every port is this worker's at the queue pairs it serves
   * (planWorkers checks it), so a frame may leave by any port.
   */
  async startPipeline(): Promise<void> {
    const p = this.init.pipeline;
    if (p === null) return;
    const loaded = await importPipeline(p.url, p.path);
    const { worker, workers } = this.init;
    const log = (msg: string) => console.error(msg);
    const ctx: PipelineContext = {
      ports: p.ports,
      args: { ...p.args },
      url: p.url,
      burstSize: this.init.engine.burst,
      worker,
      workers,
      log: (msg) => log(`pipeline: ${msg}`),
    };
    try {
      await loaded.init?.(ctx);
    } catch (e) {
      throw new PipelineInitError(
        `pipeline init: ${(e as Error).message ?? e} (worker ${worker} of ${workers})`,
      );
    }
    this.#pipelineClose = loaded.close ?? (() => {});
    const ports = p.ports.map((pp) => {
      const port = this.#byIndex[pp.index];
      if (port === undefined) throw new Error(`port ${pp.index} has no queue in this worker`);
      return port;
    });
    const pe = createPipelineEngine({
      pool: this.pool,
      burst: this.init.engine.burst,
      ports,
      fn: loaded.fn,
      log,
    });
    this.engine = pe.engine;
    this.#pipelineStats = pe.stats;
  }

  /** The pipeline's `close`, once, if its `init` ran (an error in it is printed). */
  async closePipeline(): Promise<void> {
    const close = this.#pipelineClose;
    this.#pipelineClose = null;
    try {
      await close?.();
    } catch (e) {
      console.error(`pipeline close: ${(e as Error).stack ?? e}`);
    }
  }

  /**
   * Build `port`'s queues of `plan` over the shared rings (and the device copy of a simulated
   * port) and fill its RX rings.
   */
  #attach(port: WorkerPort, plan: PortPlan): void {
    const w = this.init.worker;
    const L = this.#layout;
    const c = this.#counters;
    const regions = this.#regions;
    const totals = port.stats;
    const region = regions[plan.region];
    // The rings were set up (zeroed) by the main thread: taken over as they are.
    const split = (r: RingPlace) =>
      new SplitRing(r.index, r.size, region, r.offset, plan.layout, false);
    const packed = (r: RingPlace) => new PackedRing(r.index, r.size, region, r.offset, false);
    const server = serveDevice(plan.device, regions, plan.rx.map((r) => r.queue));
    this.#servers.push(server);
    if (server.work !== null) {
      server.work.linkUp = Atomics.load(this.#control, Control.link(plan.port)) !== 0;
      this.devices.push({ port: plan.port, device: server.work });
    }
    const transport = { notify: (index: number) => server.notify(index) };
    for (const { queue, ring: place } of plan.rx) {
      const o = {
        pool: this.pool,
        transport,
        hdrSize: plan.hdrSize,
        mrgRxbuf: plan.mrgRxbuf,
        eventIdx: plan.eventIdx,
        inOrder: plan.inOrder,
        portId: plan.id,
        vlanStrip: plan.vlanStrip,
        stats: new SharedStats(c, L.rxQueue(w, plan.port, queue)),
        totals,
      };
      const rx = plan.packed
        ? new PackedRxQueue({ ...o, ring: packed(place) })
        : new RxQueue({ ...o, ring: split(place) });
      server.setup(rx.ring.memory);
      port.rx[queue] = rx;
    }
    for (const { queue, ring: place } of plan.tx) {
      const size = place.size;
      const o = {
        pool: this.pool,
        transport,
        hdrSize: plan.hdrSize,
        eventIdx: plan.eventIdx,
        vlanInsert: plan.vlanInsert,
        zeroHeader: plan.zeroHeader,
        indirect: place.indirect < 0
          ? undefined
          : new IndirectTables(region, place.indirect, size, size),
        inOrder: plan.inOrder,
        stats: new SharedStats(c, L.txQueue(w, plan.port, queue)),
        totals,
      };
      const tx = plan.packed
        ? new PackedTxQueue({ ...o, ring: packed(place) })
        : new TxQueue({ ...o, ring: split(place) });
      server.setup(tx.ring.memory);
      port.tx[queue] = tx;
      this.pool.addHolder(tx);
    }
    // The device is running already (unlike at a port's start): tell it about the buffers, or
    // one that waits for notifications (QEMU) never looks at the ring.
    for (const { queue } of plan.rx) {
      const rx = port.rx[queue]!;
      rx.fill();
      if (rx.ring.needsKick(0, rx.ring.size, plan.eventIdx)) transport.notify(rx.ring.index);
    }
  }

  /**
   * Let go of port `index`'s queues (its device was lost and comes back with new rings): every
   * buffer they held comes back, frames in flight are counted as dropped.
   */
  detach(index: number): void {
    const port = this.#byIndex[index];
    if (port === undefined) return;
    this.#release(port);
    port.rx.length = 0;
    port.tx.length = 0;
  }

  /** Serve port `plan.port`'s queues again, over the rings of its new set-up. */
  reattach(plan: PortPlan): void {
    const port = this.#byIndex[plan.port];
    if (port !== undefined) this.#attach(port, plan);
  }

  /** Forward until the control word says otherwise (stop, or pause). */
  forward(): void {
    if (this.#cpuStart < 0) {
      this.#cpuStart = threadCpuMs();
      this.#wallStart = monotonicMs();
    }
    this.#loop(false, Infinity, Infinity);
  }

  /** The control word (Command). */
  get command(): number {
    return Atomics.load(this.#control, Control.COMMAND);
  }

  /**
   * After a stop: generators off, forward on until nothing moved for the quiet time (txonly:
   * only the devices run), then take back what the TX queues sent.
   */
  drain(): void {
    for (const d of this.devices) d.device.wire.stopGenerator();
    const { quietMs, maxMs } = this.init.drain;
    this.#loop(true, quietMs, maxMs);
    const none = new Uint32Array(0);
    for (const port of this.ports) for (const tx of port.tx) tx?.burst(none, 0);
    this.#publish();
  }

  /** The devices were reset: every buffer the rings held comes back (frames in flight dropped). */
  release(): void {
    for (const port of this.ports) this.#release(port);
    for (const server of this.#servers) server.close();
    this.#publish();
  }

  #release(port: WorkerPort): void {
    for (const rx of port.rx) rx?.release();
    for (const tx of port.tx) {
      if (tx === undefined) continue;
      this.pool.removeHolder(tx);
      tx.release();
    }
  }

  /**
   * The loop: every stream's engine, then the devices, an idle pause after an iteration that
   * moved nothing; counters and the control word at each clock check. Draining, it ends once
   * nothing moved for `quietMs` or after `maxMs`.
   */
  #loop(draining: boolean, quietMs: number, maxMs: number): void {
    const streams = this.streams;
    const engine = this.#engineFor(draining);
    const devices = this.devices;
    const nStreams = streams.length;
    const nDevices = devices.length;
    const control = this.#control;
    let last = monotonicMs();
    const end = last + maxMs;
    let lastMove = last;
    for (;;) {
      const k = this.#checkEvery;
      let moved = 0;
      let idle = 0;
      for (let it = 0; it < k; it++) {
        let m = 0;
        if (engine !== null) { for (let i = 0; i < nStreams; i++) m += engine(streams[i]); }
        for (let i = 0; i < nDevices; i++) devices[i].device.run();
        if (m === 0) {
          idle++;
          idlePause();
        }
        moved += m;
      }
      this.#iterations += k;
      this.#idle += idle;
      const now = monotonicMs();
      const took = now - last;
      last = now;
      if (took < CHECK_MS / 2 && k < MAX_CHECK) this.#checkEvery = k * 2;
      else if (took > CHECK_MS * 2 && k > MIN_CHECK) this.#checkEvery = k >> 1;
      if (moved > 0) lastMove = now;
      this.#publish(draining ? -1 : now);
      if (draining) {
        if (now - lastMove >= quietMs || now >= end) return;
      } else if (Atomics.load(control, Control.COMMAND) !== Command.RUN) {
        return;
      }
    }
  }

  /** The engine to run: none while a txonly forwarder drains (only its devices finish). */
  #engineFor(draining: boolean): Engine | null {
    return draining && this.init.engine.mode === "txonly" ? null : this.engine;
  }

  /**
   * Copy the wires' counters and the busy time to shared memory (`now` < 0: not forwarding, the
   * busy time stays), take the link state, report a device copy that needs a reset.
   */
  #publish(now = -1): void {
    const w = this.init.worker;
    const L = this.#layout;
    const c = this.#counters;
    const keys = this.init.wireKeys;
    for (const { port, device } of this.devices) {
      const at = L.wire(w, port);
      const counters = device.wire.counters as Record<string, number>;
      for (let i = 0; i < keys.length; i++) c[at + i] = counters[keys[i]];
      const up = Atomics.load(this.#control, Control.link(port)) !== 0;
      if (up !== device.linkUp) device.linkUp = up;
      if (device.needsReset) {
        Atomics.store(this.#control, Control.broken(L.ports, w, port), 1);
      }
    }
    const ps = this.#pipelineStats;
    if (ps !== null) {
      const at = L.pipeline(w);
      for (let i = 0; i < PIPELINE_KEYS.length; i++) c[at + i] = ps[PIPELINE_KEYS[i]];
    }
    const b = L.busy(w);
    if (now >= 0) {
      c[b + CPU_MS] = threadCpuMs() - this.#cpuStart;
      c[b + WALL_MS] = now - this.#wallStart;
      c[b + ITERATIONS] = this.#iterations;
      c[b + IDLE_ITERATIONS] = this.#idle;
    }
    c[b + POOL_AVAILABLE] = this.pool.available;
  }
}

let worker: ForwardingWorker | null = null;

function tell(msg: FromWorker): void {
  self.postMessage(msg);
}

/** Forward until told otherwise: a pause returns to the event loop, a stop drains first. */
function go(w: ForwardingWorker): void {
  w.forward();
  if (w.command === Command.PAUSE) return tell({ type: "paused" });
  w.drain();
  tell({ type: "drained" });
}

self.onmessage = async (ev: MessageEvent<ToWorker>) => {
  const msg = ev.data;
  try {
    if (msg.type === "init") {
      worker = new ForwardingWorker(msg.init);
      await worker.startPipeline();
      tell({ type: "ready" }); // forwarding starts with `resume`, once every worker is ready
    } else if (msg.type === "close") {
      await worker?.closePipeline();
      tell({ type: "closed" });
    } else if (worker === null) {
      return;
    } else if (msg.type === "detach") {
      worker.detach(msg.port);
      tell({ type: "detached" });
    } else if (msg.type === "attach") {
      for (const plan of msg.plans) worker.reattach(plan);
      tell({ type: "attached" });
    } else if (msg.type === "resume") {
      go(worker);
    } else if (msg.type === "release") {
      worker.release();
      await worker.closePipeline();
      tell({ type: "released" });
      self.close();
    }
  } catch (e) {
    const usage = e instanceof PipelineLoadError || e instanceof PipelineInitError;
    tell({ type: "error", message: (e as Error).message ?? String(e), usage });
  }
};
