/**
 * What the main thread and the forwarding workers tell each other (mod/fwd/workers.ts,
 * mod/fwd/worker_main.ts): the plan a worker starts from, the messages of each phase, and the
 * control words in shared memory that the workers' loops read at their clock checks.
 *
 * Phases: `init` (the worker builds its queues over the shared rings, fills its RX rings, says
 * `ready`; with a pipeline, once it loaded the module and its `init` returned), `resume` once every
 * worker is ready (it forwards); STOP in the control word (it drains what is in flight, takes back
 * what its TX queues sent, says `drained`); `release` once the main thread has reset the devices
 * (it frees what its rings held, counts what was still in flight, calls the pipeline's `close`,
 * says `released` and ends). A forwarder that ends early sends `close` to a worker not released
 * (the pipeline's `close` if its `init` ran, then `closed`).
 *
 * A device that comes back after it was lost (a vhost-user backend reconnecting) gets new rings:
 * PAUSE in the control word (every worker leaves its loop, says `paused`), `detach` (each lets go
 * of that port's queues, `detached`), the main thread sets the device up again, `attach` with the
 * new plans (`attached`), RUN and `resume`.
 */
import type { RegionShare } from "../../ffi/dma.ts";
import type { DeviceShare } from "../queue_share.ts";
import type { Port } from "../port.ts";
import type { PipelinePort } from "../pipeline/api.ts";
import type { RingLayout } from "../virtio/transport.ts";
import type { Mode } from "./engines.ts";

/** One ring: virtqueue index, entries, byte offset in the ring region. */
export interface RingPlace {
  index: number;
  size: number;
  offset: number;
}

/** What a worker serves of one port. */
export interface PortPlan {
  /** Index of the port in the forwarder's list (counters, streams). */
  port: number;
  /** Port id (mbuf `port`, engines' tables) and MAC address. */
  id: number;
  mac: Uint8Array;
  /** The port's `limits` (queue pairs, ring sizes, MTU, largest frame, header size). */
  limits: Port["limits"];
  /** Index of the ring region in `WorkerInit.regions`. */
  region: number;
  layout: RingLayout;
  /** Packed rings (2.8) rather than split ones; a new set-up starts them afresh (wrap counters 1). */
  packed: boolean;
  hdrSize: number;
  mrgRxbuf: boolean;
  eventIdx: boolean;
  inOrder: boolean;
  vlanStrip: boolean;
  vlanInsert: number;
  zeroHeader: number;
  /** The queues the worker serves: queue pair number and its ring (TX: and indirect tables). */
  rx: { queue: number; ring: RingPlace }[];
  tx: { queue: number; ring: RingPlace & { indirect: number } }[];
  /** How the worker reaches the device (mod/queue_share.ts). */
  device: DeviceShare;
}

export interface WorkerInit {
  /** This worker's number (0 ..). */
  worker: number;
  /** Shape of the shared counters (CounterLayout): workers, ports, queue pairs, wire counters. */
  workers: number;
  portCount: number;
  queues: number;
  wireKeys: string[];
  regions: RegionShare[];
  /** The worker's buffers: offsets lent from the forwarder's pool, in region `region`. */
  pool: { region: number; bufOff: Uint32Array; dataRoom: number; headroom: number };
  ports: PortPlan[];
  /** Streams as port indexes and a queue pair, in the order the worker runs them. */
  streams: { rx: number; tx: number; queue: number }[];
  engine: {
    mode: Mode;
    burst: number;
    peers: Uint8Array[];
    txpkts: number[];
    txStreamBase: number;
  };
  /** Draining: stop once nothing moved for quietMs, at the latest after maxMs. */
  drain: { quietMs: number; maxMs: number };
  /** A pipeline to run instead of the mode's engine (`--pipeline`), or null. */
  pipeline: WorkerPipeline | null;
  counters: SharedArrayBuffer;
  control: SharedArrayBuffer;
}

/** The pipeline module a worker loads and the context its `init` gets (PipelineContext). */
export interface WorkerPipeline {
  /** Where the main thread loaded it (mod/pipeline/load.ts), and the path as given. */
  url: string;
  path: string;
  ports: PipelinePort[];
  args: Record<string, string>;
}

/** Messages to a worker. */
export type ToWorker =
  | { type: "init"; init: WorkerInit }
  | { type: "detach"; port: number }
  | { type: "attach"; plans: PortPlan[] }
  | { type: "resume" }
  | { type: "release" }
  | { type: "close" };

/** Messages from a worker. */
export type FromWorker =
  | { type: "ready" }
  | { type: "paused" }
  | { type: "detached" }
  | { type: "attached" }
  | { type: "drained" }
  | { type: "released" }
  | { type: "closed" }
  /** `usage`: the user must change something (a pipeline that cannot load, an `init` that threw). */
  | { type: "error"; message: string; usage?: boolean };

/** Values of the control word. */
export const Command = { RUN: 0, STOP: 1, PAUSE: 2 } as const;

/**
 * Int32 slots of the control buffer: the command; per port its link (1 up, main thread writes);
 * per worker and port, 1 once the worker's copy of a simulated device needs a reset.
 */
export const Control = {
  COMMAND: 0,
  link: (port: number) => 1 + port,
  broken: (ports: number, worker: number, port: number) => 1 + ports + worker * ports + port,
  slots: (workers: number, ports: number) => 1 + ports + workers * ports,
} as const;
