/**
 * DPDK's own virtio-user front-end, testpmd with `net_virtio_user`, for the benchmarks that run
 * vpmd next to it (bench-vhost.ts, bench-ab.ts): forwarding on CPU 0 (its main lcore on 1), memory
 * in one hugepage file (`--single-file-segments`, which virtio_user needs to share it with vhost).
 */
import { Testpmd } from "../tests/lib/testpmd.ts";

/**
 * DPDK's devargs for the features vpmd negotiates: the ring kind (packed_vq 0 split, 1 packed),
 * mrg_rxbuf and in_order as given.
 */
export function sameFeatures(mrg: string, ring: number, inOrder: string, packed = "0"): string {
  return `packed_vq=${packed},mrg_rxbuf=${mrg},in_order=${inOrder},queue_size=${ring}`;
}

/**
 * DPDK's fastest front-end path ("dpdk-fast"): packed ring, in order, vectorized (AVX512) RX and
 * TX, no mergeable buffers. DPDK 22.11 takes its AVX512 paths only when told it may use 512-bit
 * SIMD (`FAST_EAL`).
 */
export function fastDevargs(ring: number): string {
  return `packed_vq=1,in_order=1,vectorized=1,mrg_rxbuf=0,queue_size=${ring}`;
}
export const FAST_EAL = ["--force-max-simd-bitwidth=512"];

export interface DpdkFrontOptions {
  /** The vhost-user socket (the vhost side is the server). */
  sock: string;
  /** testpmd's forwarding mode. */
  fwd: string;
  /** Extra `net_virtio_user` devargs ("" for DPDK's defaults). */
  devargs: string;
  burst: number;
  ring: number;
  /** More application arguments (e.g. `--record-core-cycles`). */
  app?: string[];
  /** More EAL arguments (e.g. FAST_EAL). */
  eal?: string[];
}

/** Start the front-end testpmd (not yet forwarding: `cmd("start")`); `stop()` it when done. */
export function startDpdkFront(o: DpdkFrontOptions): Promise<Testpmd> {
  return Testpmd.start({
    vdev: `net_virtio_user0,path=${o.sock},queues=1${o.devargs ? "," + o.devargs : ""}`,
    fwd: o.fwd,
    lcores: "0,1",
    mainLcore: 1,
    eal: ["--single-file-segments", ...(o.eal ?? [])],
    app: [`--burst=${o.burst}`, `--rxd=${o.ring}`, `--txd=${o.ring}`, ...(o.app ?? [])],
  });
}
