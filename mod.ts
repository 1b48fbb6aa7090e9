/**
 * vpmd as a library: a userspace virtio-net poll-mode driver for Deno on Linux.
 *
 * Open a port from a spec string, as on vpmd's command line (`sim:NAME` for the simulated device,
 * `vhost-user:PATH` for a vhost-user backend such as DPDK's, or the PCI address of a function
 * handed to uio_pci_generic with `vpmd bind`), give it a buffer pool, start it, and move frames
 * with `rxBurst`/`txBurst`, or with the forwarding loop and the engines of `vpmd fwd --mode`.
 * A frame is an mbuf number into an `MbufPool`, whose typed arrays hold the bytes and metadata;
 * nothing on the burst path allocates. The driver calls libc through FFI: run programs that use
 * it with `deno run -A`. The data-plane API of `vpmd fwd --pipeline` (a `Burst` of frames with
 * verdicts, packet header helpers, checksums) and pcap capture and replay are exported too.
 *
 * @example Forward both ways between two simulated ports for half a second
 * ```ts
 * import { closePort, createEngine, ForwardLoop, openPort, poolForPorts } from "./mod.ts";
 *
 * const ports = [openPort("sim:a", { id: 0 }), openPort("sim:b", { id: 1 })];
 * const pool = poolForPorts(ports, { count: 4096 });
 * for (const p of ports) {
 *   p.configure({ pool });
 *   p.start();
 * }
 * const streams = [
 *   { rx: ports[0], tx: ports[1], queue: 0, pkts: new Uint32Array(32) },
 *   { rx: ports[1], tx: ports[0], queue: 0, pkts: new Uint32Array(32) },
 * ];
 * const engine = createEngine("io", { pool, burst: 32, peers: [] });
 * await new ForwardLoop(ports, streams, engine).run({ untilMs: performance.now() + 500 });
 * console.log(ports.map((p) => `port ${p.id}: ${p.stats.rxPackets} in, ${p.stats.txPackets} out`));
 * for (const p of ports) closePort(p);
 * pool.close();
 * ```
 *
 * @module
 */
export {
  closePort,
  openPort,
  type OpenPortOptions,
  poolForPorts,
  type PortPoolOptions,
} from "./mod/open.ts";
export { openTransport, parsePortSpec, type PortKind, type PortSpec } from "./mod/portspec.ts";
export { Port, type PortConfig, type QueueLayout } from "./mod/port.ts";
export type { PortStats } from "./mod/virtio/stats.ts";
export { type BufferHolder, MbufFlag, MbufPool, NONE, type PoolOptions } from "./mod/mbuf.ts";
export { ForwardLoop, idlePause, type RunOptions } from "./mod/fwd/loop.ts";
export {
  createEngine,
  type Engine,
  type EngineOptions,
  type Mode,
  MODES,
  type Stream,
  type StreamPort,
} from "./mod/fwd/engines.ts";
export { vlanInsert, vlanStrip } from "./mod/vlan.ts";
export { checkTestFrame, FrameCheck, TEST_FRAME_MIN, writeTestFrame } from "./mod/testframe.ts";
export { parseMac } from "./mod/mac.ts";
export {
  type NoticeSink,
  type QueueMemory,
  type RingLayout,
  type SimulatedWire,
  TransportEvent,
  type VirtioTransport,
  type WireCounts,
} from "./mod/virtio/transport.ts";
export {
  type DmaKind,
  DmaRegion,
  type DmaRegionOptions,
  HugepageShortage,
  type RegionShare,
} from "./ffi/dma.ts";
export * from "./mod/pipeline/mod.ts";
export {
  createPipelineEngine,
  emptyPipelineStats,
  type PipelineEngine,
  type PipelineEngineOptions,
  type PipelineStats,
} from "./mod/pipeline/engine.ts";
export { type LoadedPipeline, loadPipeline, PipelineLoadError } from "./mod/pipeline/load.ts";
export { type CaptureDir, type CaptureSpec, PortCapture } from "./mod/pcap/capture.ts";
export {
  type ByteSink,
  CaptureClock,
  PcapWriter,
  type PcapWriterOptions,
} from "./mod/pcap/writer.ts";
export { parsePcap, PcapFormatError, type PcapFrames, readPcap } from "./mod/pcap/reader.ts";
export { createReplayEngine, type ReplayOptions } from "./mod/pcap/replay.ts";
