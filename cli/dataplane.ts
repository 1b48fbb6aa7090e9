/**
 * The forwarder's programmable data plane, capture and replay (flags in ./dataplane_flags.ts):
 * `prepare` loads what the flags name before any device starts (the pipeline module, the capture
 * to replay, the capture files to write), `start` makes the engine once the ports run (calling
 * the pipeline's `init`) and attaches the captures, `summary` and `account` add to the summary,
 * `close` calls the pipeline's `close` and closes the capture files. With `--cores` the workers
 * run the pipeline (`workerPipeline` says what they load) and its counters come from them
 * (`countedInWorkers`).
 */
import type { MbufPool } from "../mod/mbuf.ts";
import type { Port } from "../mod/port.ts";
import type { PipelineContext, PipelinePort } from "../mod/pipeline/api.ts";
import { createPipelineEngine, type PipelineStats } from "../mod/pipeline/engine.ts";
import { type LoadedPipeline, loadPipeline } from "../mod/pipeline/load.ts";
import type { WorkerPipeline } from "../mod/fwd/worker_protocol.ts";
import { PortCapture } from "../mod/pcap/capture.ts";
import { type PcapFrames, readPcap } from "../mod/pcap/reader.ts";
import { createReplayEngine, segmentsFor } from "../mod/pcap/replay.ts";
import { CaptureClock, PcapWriter } from "../mod/pcap/writer.ts";
import { Ether } from "../mod/packet/ether.ts";
import type { Engine, Mode } from "../mod/fwd/engines.ts";
import { accountCounted } from "./dataplane_accounting.ts";
import { accountFrames, type Accounting } from "./accounting.ts";
import type { DataPlaneOptions } from "./dataplane_flags.ts";
import type { PortRow } from "./stats.ts";

/** What `start` needs of the forwarder. */
export interface DataPlaneStart {
  ports: Port[];
  names: string[];
  pool: MbufPool;
  burst: number;
  log: (msg: string) => void;
  /** Stop forwarding (a replay that sent all its loops). */
  stop: () => void;
}

export class DataPlane {
  readonly #o: DataPlaneOptions;
  readonly #pipeline: LoadedPipeline | null;
  readonly #replay: PcapFrames | null;
  readonly #writers: PcapWriter[];
  #captures: PortCapture[] = [];
  #pipelineStats: PipelineStats | null = null;
  #initDone = false;
  /** The workers run the pipeline: `start` makes no engine. */
  #inWorkers = false;
  #loopsDone: (() => number) | null = null;
  #replayDone = false;

  private constructor(
    o: DataPlaneOptions,
    pipeline: LoadedPipeline | null,
    replay: PcapFrames | null,
    writers: PcapWriter[],
  ) {
    this.#o = o;
    this.#pipeline = pipeline;
    this.#replay = replay;
    this.#writers = writers;
  }

  /** Load the pipeline, read the capture to replay, create the capture files. */
  static async prepare(o: DataPlaneOptions): Promise<DataPlane> {
    const pipeline = o.pipeline === undefined ? null : await loadPipeline(o.pipeline);
    let replay: PcapFrames | null = null;
    if (o.txPcap !== undefined) {
      replay = readPcap(o.txPcap);
      if (replay.count === 0) throw new Error(`--tx-pcap ${o.txPcap}: the capture holds no frames`);
    }
    const writers: PcapWriter[] = [];
    try {
      for (const c of o.pcaps) {
        try {
          writers.push(
            PcapWriter.create(c.file, {
              snaplen: o.snaplen,
              maxFrames: o.pcapCount,
              maxBytes: o.pcapMaxBytes,
            }),
          );
        } catch (e) {
          throw new Error(`--pcap ${c.port}:${c.file}: ${(e as Error).message.split("\n")[0]}`);
        }
      }
    } catch (e) {
      for (const w of writers) w.close();
      throw e;
    }
    return new DataPlane(o, pipeline, replay, writers);
  }

  /**
   * The engine (null: the mode's own), after the pipeline's `init`; the captures start here.
   * Throws a one-line Error for a capture the ports cannot send or an `init` that throws.
   */
  async start(s: DataPlaneStart): Promise<Engine | null> {
    const clock = new CaptureClock();
    this.#captures = this.#o.pcaps.map((c, i) =>
      new PortCapture(s.ports[c.port], s.pool, this.#writers[i], c.dir, clock)
    );
    let engine: Engine | null = null;
    if (this.#pipeline !== null && !this.#inWorkers) {
      engine = await this.#startPipeline(this.#pipeline, s);
    }
    if (this.#replay !== null) engine = this.#startReplay(this.#replay, s);
    for (const c of this.#captures) c.attach();
    return engine;
  }

  /**
   * `--cores`: what every worker loads and gives its `init` (null without a pipeline). The main
   * thread then runs no pipeline: `start` makes no engine and `close` calls no `close`.
   */
  workerPipeline(ports: Port[], names: string[]): WorkerPipeline | null {
    const p = this.#pipeline;
    if (p === null) return null;
    this.#inWorkers = true;
    return {
      url: p.url,
      path: this.#o.pipeline!,
      ports: pipelinePorts(ports, names),
      args: { ...this.#o.pipelineArgs },
    };
  }

  /** `--cores`: the pipeline's counters, summed over the workers once they are released. */
  countedInWorkers(stats: PipelineStats): void {
    if (this.#inWorkers) this.#pipelineStats = stats;
  }

  async #startPipeline(p: LoadedPipeline, s: DataPlaneStart): Promise<Engine> {
    const ctx: PipelineContext = {
      ports: pipelinePorts(s.ports, s.names),
      args: { ...this.#o.pipelineArgs },
      url: p.url,
      burstSize: s.burst,
      worker: 0,
      workers: 1,
      log: (msg) => s.log(`pipeline: ${msg}`),
    };
    try {
      await p.init?.(ctx);
    } catch (e) {
      throw new Error(`pipeline init: ${(e as Error).message ?? e}`);
    }
    this.#initDone = true;
    const pe = createPipelineEngine({
      pool: s.pool,
      burst: s.burst,
      ports: s.ports,
      fn: p.fn,
      log: s.log,
    });
    this.#pipelineStats = pe.stats;
    return pe.engine;
  }

  #startReplay(frames: PcapFrames, s: DataPlaneStart): Engine {
    const file = this.#o.txPcap;
    for (let i = 0; i < frames.count; i++) {
      const len = frames.caplen[i];
      const segs = segmentsFor(len, s.pool.dataRoom);
      for (let p = 0; p < s.ports.length; p++) {
        const l = s.ports[p].limits;
        if (len < Ether.HDR_LEN || len > l.maxFrame || segs > l.txd) {
          throw new Error(
            `--tx-pcap ${file}: frame ${i + 1} (${len} bytes) cannot be sent on port ${p} ` +
              `(${s.names[p]}): ${
                len < Ether.HDR_LEN
                  ? "shorter than an Ethernet header"
                  : len > l.maxFrame
                  ? `longer than its largest frame, ${l.maxFrame} bytes (--mtu)`
                  : `it takes ${segs} buffers, more than the TX ring's ${l.txd} entries`
              }`,
          );
        }
      }
    }
    const truncated = frames.origLen.some((l, i) => l > frames.caplen[i]);
    if (truncated) {
      s.log(
        `--tx-pcap ${file}: some frames were cut by the capture's snap length; sent as captured`,
      );
    }
    const r = createReplayEngine({
      pool: s.pool,
      burst: s.burst,
      frames,
      loops: this.#o.txPcapLoop,
      onDone: () => {
        this.#replayDone = true;
        s.stop();
      },
    });
    this.#loopsDone = r.loopsDone;
    return r.engine;
  }

  /** Why forwarding stopped, when the data plane stopped it (a replay that is done). */
  get stoppedBy(): string | undefined {
    return this.#replayDone ? "replay done" : undefined;
  }

  /** Frames the data plane dropped on purpose or lost to pipeline errors. */
  get #drops(): number {
    const p = this.#pipelineStats;
    return p === null ? 0 : p.dropped + p.errorFrames;
  }

  /** Accounting for sims: frame counts when a pipeline or a replay runs, else the mode's own. */
  account(mode: Mode, rows: PortRow[]): Accounting | null {
    if (this.#pipeline !== null) return accountCounted("pipeline", rows, this.#drops);
    if (this.#replay !== null) return accountCounted("replay", rows, 0);
    return accountFrames(mode, rows);
  }

  /** What the summary gains: `pipeline`, `replay`, `pcap`. */
  summary(): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    if (this.#pipeline !== null) {
      out.pipeline = { file: this.#o.pipeline, ...this.#pipelineStats };
    }
    if (this.#replay !== null) {
      out.replay = {
        file: this.#o.txPcap,
        frames: this.#replay.count,
        loops: this.#o.txPcapLoop,
        loopsDone: this.#loopsDone?.() ?? 0,
      };
    }
    if (this.#o.pcaps.length > 0) {
      out.pcap = this.#o.pcaps.map((c, i) => ({
        port: c.port,
        file: c.file,
        dir: c.dir,
        frames: this.#writers[i].frames,
        skipped: this.#writers[i].skipped,
      }));
    }
    return out;
  }

  /** Stop the captures and close their files, then the pipeline's `close` (if `init` ran). */
  async close(log: (msg: string) => void): Promise<void> {
    for (const c of this.#captures) c.detach();
    for (const w of this.#writers) {
      try {
        w.close();
      } catch (e) {
        log(`pcap: ${(e as Error).message}`);
      }
    }
    if (this.#initDone) {
      this.#initDone = false;
      try {
        await this.#pipeline?.close?.();
      } catch (e) {
        log(`pipeline close: ${(e as Error).stack ?? e}`);
      }
    }
  }
}

/** The ports as a pipeline's `init` sees them. */
function pipelinePorts(ports: Port[], names: string[]): PipelinePort[] {
  const n = ports.length;
  return ports.map((port, i) => ({
    index: i,
    name: names[i],
    mac: new Uint8Array(port.mac),
    maxFrame: port.limits.maxFrame,
    pair: (i ^ 1) < n ? i ^ 1 : i,
  }));
}
