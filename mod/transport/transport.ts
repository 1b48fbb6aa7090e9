/**
 * The one interface every virtio transport implements: simulated device (`sim:`), vhost-user,
 * legacy PCI (port IO) and modern PCI (MMIO). The driver (`mod/port.ts`) talks only to this
 * interface and never asks which transport it has; differences are expressed as data
 * (`ringLayout`, `dmaKinds`, `queueSizeFixed`).
 *
 * Cold-path methods may take and return bigint (features). `notify` is the only hot-path
 * method: the port calls it at most once per burst, and only when the device asked for it.
 */
import type { DmaKind, DmaRegion } from "../../ffi/dma.ts";

/** Where the three parts of one split virtqueue live (offsets in `region`, iovas for the device). */
export interface QueueMemory {
  index: number;
  size: number;
  region: DmaRegion;
  descOffset: number;
  availOffset: number;
  usedOffset: number;
  /** iova of the descriptor table, avail ring, used ring (what the device is told). */
  descIova: number;
  availIova: number;
  usedIova: number;
}

/** How the port must lay out a split ring for this transport. */
export interface RingLayout {
  /**
   * `contiguous`: desc table, then avail ring, then the used ring aligned to `usedAlign`, all in one
   * area (legacy PCI writes one page frame number). `separate`: three parts anywhere.
   */
  placement: "contiguous" | "separate";
  usedAlign: number;
}

/** Events a transport reports from `poll()` (bit mask). */
export const TransportEvent = {
  /** Device configuration changed (link status, announce): re-read the config. */
  CONFIG_CHANGED: 1,
  /** The device went away (vhost-user backend disconnected, device needs reset). */
  DEVICE_LOST: 2,
  /** The device came back and the port must be set up again (vhost-user reconnect). */
  DEVICE_RETURNED: 4,
} as const;

/**
 * The device failed, as opposed to being asked for something impossible: it refused a request,
 * answered wrongly or not at all, or went away mid-exchange (the CLI exits 1, not 2).
 */
export class DeviceError extends Error {}

/**
 * Where a transport tells the user what happened outside any call's result (a backend lost, back
 * or failing to reconnect; a device that broke a rule): `kind` is a short fixed word for programs
 * (e.g. "backend-lost"), `message` one line for people, without the transport's name (the
 * receiver knows which port it is). Rare, cold path; the receiver rate-limits what it shows.
 */
export type NoticeSink = (kind: string, message: string) => void;

export interface VirtioTransport {
  /** Human-readable name, e.g. `sim:p0`, `vhost-user:/tmp/sock`, `0000:00:04.0 (legacy)`. */
  readonly name: string;
  readonly ringLayout: RingLayout;
  /** Memory the device can reach, best first. The port allocates rings and checks pools with it. */
  readonly dmaKinds: readonly DmaKind[];
  /** True when the device decides queue sizes (legacy PCI): a different request gets a warning. */
  readonly queueSizeFixed: boolean;

  /** Reset the device (2.1: writing 0 to status) and wait until it reads back 0. */
  reset(): void;
  getStatus(): number;
  /** Write the status byte (the port ORs bits in, following 3.1.1). */
  setStatus(status: number): void;
  getDeviceFeatures(): bigint;
  setDriverFeatures(features: bigint): void;
  /** Read `length` bytes of device-specific configuration (5.1.4) consistently. */
  readConfig(offset: number, length: number): Uint8Array;
  /** Largest size for queue `index`; 0 when the queue does not exist. */
  queueMaxSize(index: number): number;
  /** Tell the device about a queue's size and memory and enable it. */
  setupQueue(q: QueueMemory): void;
  /**
   * Make `region` reachable by the device (vhost-user memory table, in-process mapping). Called
   * for every ring region and every buffer pool before `setStatus(DRIVER_OK)`.
   */
  addMemory(region: DmaRegion): void;
  /** Hot path: notify the device that queue `index` has new available buffers. */
  notify(index: number): void;
  /**
   * Background work, called by the forwarding loop between bursts: an in-process device runs,
   * a socket is checked. Returns a `TransportEvent` mask (0 when nothing happened). Must be
   * cheap when there is nothing to do.
   */
  poll(): number;
  /** Stop the device and release everything the transport holds. */
  close(): void;
}
