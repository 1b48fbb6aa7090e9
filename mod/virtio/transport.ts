/**
 * The one interface every virtio transport implements: simulated device (`sim:`), vhost-user,
 * legacy PCI (port IO) and modern PCI (MMIO). The driver (`mod/port.ts`) talks only to this
 * interface and never asks which transport it has; differences are expressed as data
 * (`ringLayout`, `dmaKinds`, `queueSizeFixed`). The interface lives with the rings, which use it:
 * the core defines it, the transports (mod/transport/, mod/sim/) implement it.
 *
 * Cold-path methods may take and return bigint (features). `notify` is the only hot-path
 * method: the port calls it at most once per burst, and only when the device asked for it.
 */
import type { DmaKind, DmaRegion } from "../../ffi/dma.ts";

/** Where the three parts of one split virtqueue live (offsets in `region`, iovas for the device). */
export interface QueueMemory {
  /** Virtqueue index (5.1.2: receiveq N = 2N, transmitq N = 2N + 1, then the controlq). */
  index: number;
  /** Entries in the ring (a power of two, 2.7). */
  size: number;
  /** The region holding the three parts. */
  region: DmaRegion;
  /** Offset of the descriptor table (2.7.5) in `region`. */
  descOffset: number;
  /** Offset of the available ring (2.7.6) in `region`. */
  availOffset: number;
  /** Offset of the used ring (2.7.8) in `region`. */
  usedOffset: number;
  /** iova of the descriptor table, avail ring, used ring (what the device is told). */
  descIova: number;
  /** iova of the available ring. */
  availIova: number;
  /** iova of the used ring. */
  usedIova: number;
}

/** How the port must lay out a split ring for this transport. */
export interface RingLayout {
  /**
   * `contiguous`: desc table, then avail ring, then the used ring aligned to `usedAlign`, all in one
   * area (legacy PCI writes one page frame number). `separate`: three parts anywhere.
   */
  placement: "contiguous" | "separate";
  /** Alignment of the used ring in bytes (2.7: 4; legacy interfaces, 2.7.2: 4096). */
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

/**
 * What the link of a simulated device counts (`sim:`, mod/sim/wire.ts): it generates numbered test
 * frames toward the driver and checks every frame the driver sends, so that a forwarder can account
 * for each frame (generated = checked + bad + counted drops). A wire may count more than these.
 */
export interface WireCounts {
  /** Frames generated toward the driver. */
  readonly generated: number;
  /** Generated frames the device could not deliver (no RX buffer, filtered, too big). */
  readonly missed: number;
  /** Frames the driver sent that passed the check. */
  readonly checkedOk: number;
  /** Frames the driver sent that failed it. */
  readonly badFrames: number;
}

/** The link behind a simulated device: its frame generator and checker. */
export interface SimulatedWire {
  /** The wire's counters, live. */
  readonly counters: WireCounts;
  /** Stop generating frames (those generated already are still delivered or counted). */
  stopGenerator(): void;
}

/**
 * How the port reaches one virtio device: status, features, configuration, queues, notifications
 * (virtio 1.2 chapter 4). Implement it to drive a device some other way; mod/sim/transport.ts is
 * the shortest example.
 */
export interface VirtioTransport {
  /** Human-readable name, e.g. `sim:p0`, `vhost-user:/tmp/sock`, `0000:00:04.0 (legacy)`. */
  readonly name: string;
  /** Where the port may place each ring's parts. */
  readonly ringLayout: RingLayout;
  /** Memory the device can reach, best first. The port allocates rings and checks pools with it. */
  readonly dmaKinds: readonly DmaKind[];
  /** True when the device decides queue sizes (legacy PCI): a different request gets a warning. */
  readonly queueSizeFixed: boolean;
  /** The link of a simulated device (`sim:`); real devices have none. */
  readonly wire?: SimulatedWire;

  /** Reset the device (2.1: writing 0 to status) and wait until it reads back 0. */
  reset(): void;
  /** Read the device status byte (2.1). */
  getStatus(): number;
  /** Write the status byte (the port ORs bits in, following 3.1.1). */
  setStatus(status: number): void;
  /** The feature bits the device offers (2.2). */
  getDeviceFeatures(): bigint;
  /** Write the feature bits the driver accepts (2.2), before FEATURES_OK (3.1.1). */
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
