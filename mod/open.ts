/**
 * Opening ports for a program that uses vpmd as a library: a port from a spec string in the
 * CLI's grammar (mod/portspec.ts), one buffer pool that every given port can use, and closing a
 * port together with its transport.
 */
import type { DmaKind } from "../ffi/dma.ts";
import { type MbufPool, poolOfFirstKind, type PoolOptions } from "./mbuf.ts";
import { Port, ringRoomFor } from "./port.ts";
import { openTransport, type PortSpec } from "./portspec.ts";
import type { VirtioTransport } from "./virtio/transport.ts";

/** Options of `openPort`. */
export interface OpenPortOptions {
  /**
   * The port's number (default 0): written into every received mbuf's `port`, used in log
   * messages, and the index of the engines' per-port tables (`EngineOptions.peers`). Ports used
   * together need different numbers.
   */
  id?: number;
  /** Where the port's warnings and link events go (default `console.error`). */
  log?: (msg: string) => void;
}

/**
 * Open the device `spec` names (`sim:NAME`, `vhost-user:PATH` or a PCI address, with the same
 * `,key=value` options as the command line) and return its port, not yet configured. Errors (a
 * malformed spec, an unknown option, a missing device) are thrown as one-line messages. Close it
 * with `closePort`, which also closes the transport.
 */
export function openPort(spec: string | PortSpec, opts: OpenPortOptions = {}): Port {
  return new Port(opts.id ?? 0, openTransport(spec), { log: opts.log });
}

/** Stop `port`, free its rings, then close its transport (the device or the connection). */
export function closePort(port: Port): void {
  try {
    port.close();
  } finally {
    port.transport.close();
  }
}

/** The memory kinds every transport can reach, best first (the first transport's order). */
export function commonDmaKinds(transports: readonly VirtioTransport[]): DmaKind[] {
  const [first, ...rest] = transports;
  return first.dmaKinds.filter((k) => rest.every((t) => t.dmaKinds.includes(k)));
}

/** Options of `poolForPorts`: the pool's, and the rings the ports will be configured with. */
export interface PortPoolOptions extends Omit<PoolOptions, "kind" | "ringRoom"> {
  /** Queue pairs per port, as given to `Port.configure` (default 1). */
  queues?: number;
  /** RX ring size per queue, as given to `Port.configure`. */
  rxd?: number;
  /** TX ring size per queue, as given to `Port.configure`. */
  txd?: number;
  /** Told when a hugepage kind cannot be had and the next kind is used (default `console.error`). */
  log?: (msg: string) => void;
}

/**
 * One buffer pool for `ports`: in the best kind of memory that all of their devices can reach
 * (hugepages when they can be had), with room for every port's rings, so that each device sees
 * buffers and rings as one memory region. Throws when the ports share no kind of memory.
 */
export function poolForPorts(ports: readonly Port[], opts: PortPoolOptions): MbufPool {
  const { queues, rxd, txd, log, ...pool } = opts;
  const transports = ports.map((p) => p.transport);
  const kinds = commonDmaKinds(transports);
  if (kinds.length === 0) {
    throw new Error(
      `these ports share no kind of DMA memory (${
        transports.map((t) => `${t.name}: ${t.dmaKinds.join("/")}`).join("; ")
      })`,
    );
  }
  const rings = { queues, rxd, txd };
  const ringRoom = Math.max(
    ...kinds.map((k) => transports.reduce((a, t) => a + ringRoomFor(t, k, rings), 0)),
  );
  return poolOfFirstKind(kinds, { ...pool, ringRoom }, log ?? ((msg) => console.error(msg)));
}
