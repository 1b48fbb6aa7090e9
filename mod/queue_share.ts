/**
 * Data queues served by another thread of this process (`vpmd fwd --cores`, mod/fwd/workers.ts):
 * what that thread needs to notify the device about the queues it serves, and for a simulated
 * device the device's work on them. This module knows the transports by kind so that the
 * forwarder does not (tests/layers_test.ts); what crosses threads is plain data (`DeviceShare`).
 *
 * - vhost-user: the queues' kick eventfds (descriptors are the process's).
 * - modern PCI: the notify BAR the main thread mapped, and each queue's 16-bit element in it.
 * - legacy PCI: the I/O BAR; the serving thread gets its ports itself (ioperm is per thread) or
 *   opens sysfs `resource0`.
 * - sim: a copy of the device for the serving thread (mod/sim/share.ts); the original keeps the
 *   control queue.
 */
import type { DmaRegion } from "../ffi/dma.ts";
import { raw } from "../ffi/libc.ts";
import { type IoBar, IopermBar, type PortIoMethod, SysfsIoBar } from "./pci/io_bar.ts";
import type { SimDevice } from "./sim/device.ts";
import { rxShare, shareSim, simCopy, type SimShare } from "./sim/share.ts";
import { SimTransport } from "./sim/transport.ts";
import { LegacyPciTransport, LegacyReg } from "./transport/pci_legacy.ts";
import { ModernPciTransport } from "./transport/pci_modern.ts";
import { VhostUserTransport } from "./transport/vhost_user.ts";
import type { QueueMemory, VirtioTransport } from "./virtio/transport.ts";

/** What a thread needs to serve data queues of one device (structured-cloneable). */
export type DeviceShare =
  | { kind: "sim"; sim: SimShare }
  | { kind: "eventfd"; fds: number[] }
  | { kind: "mmio"; addr: number; size: number; slots: number[] }
  | { kind: "portio"; method: PortIoMethod; base: number; size: number; path: string };

/**
 * What serving data queues `0 .. 2 * pairs - 1` of `t` from another thread takes (after the port
 * started; again after a device came back). A simulated device's data queues are its copies'
 * from now on. Throws for a device no other thread can serve.
 */
export function shareDevice(t: VirtioTransport, pairs: number): DeviceShare {
  if (t instanceof SimTransport) return { kind: "sim", sim: shareSim(t) };
  const indexes = Array.from({ length: 2 * pairs }, (_, i) => i);
  if (t instanceof VhostUserTransport) {
    return { kind: "eventfd", fds: indexes.map((i) => t.kickFd(i)) };
  }
  if (t instanceof ModernPciTransport) {
    const windows = indexes.map((i) => t.notifyWindow(i));
    const { addr, size } = windows[0];
    return { kind: "mmio", addr, size, slots: windows.map((w) => w.slot) };
  }
  if (t instanceof LegacyPciTransport) {
    const bar = t.fn.resources()[0];
    return {
      kind: "portio",
      method: t.bar.method,
      base: bar.start,
      size: bar.size,
      path: t.fn.resourcePath(0),
    };
  }
  throw new Error(`${t.name}: no other thread can serve its queues; run it on one core`);
}

/**
 * A copy of `t`'s simulated device (in a serving thread) met a descriptor it had to refuse: the
 * device needs a reset, as if it had met it itself (2.1.2).
 */
export function deviceBroken(t: VirtioTransport): void {
  if (!(t instanceof SimTransport) || t.device.needsReset) return;
  t.device.needsReset = true;
  t.device.configChanged = true;
}

/** A simulated device's work in the serving thread: its copy, run between bursts. */
export interface DeviceWork {
  /** Serve the queues set up (transmit, then receive). */
  run(): void;
  /** The link as the original device has it (the serving thread copies it in). */
  linkUp: boolean;
  /** The copy refused a descriptor (see `deviceBroken`). */
  readonly needsReset: boolean;
  /** The copy's wire: counters of the frames of its queues. */
  readonly wire: { readonly counters: object; stopGenerator(): void };
}

/** How the serving thread reaches the device for the queues it serves. */
export interface QueueServer {
  /** Notify the device about queue `index` (hot path: one write). */
  notify(index: number): void;
  /** A queue this thread serves is set up at `q` (a simulated device's copy learns of it). */
  setup(q: QueueMemory): void;
  /** The device's work to run between bursts (simulated devices), else null. */
  readonly work: DeviceWork | null;
  /** Let go of what the server opened (ports, descriptors). */
  close(): void;
}

/**
 * In the serving thread: the server for `share`, over `regions` (the memory the device reaches,
 * viewed here), serving receive queues `rxQueues` (queue pair numbers: a simulated device's copy
 * generates their share of a paced rate).
 */
export function serveDevice(
  share: DeviceShare,
  regions: DmaRegion[],
  rxQueues: number[],
): QueueServer {
  switch (share.kind) {
    case "sim": {
      const copy: SimDevice = simCopy(share.sim, rxShare(share.sim, rxQueues));
      for (const r of regions) copy.addMemory(r);
      return {
        notify: (index) => copy.kick(index),
        setup: (q) => copy.setupQueue(q),
        work: copy,
        close: () => {},
      };
    }
    case "eventfd": {
      const one = new Uint8Array(new BigUint64Array([1n]).buffer);
      const fds = share.fds;
      return {
        notify: (index) => {
          const fd = fds[index];
          if (fd !== undefined && fd >= 0) raw.write(fd, one, 8n);
        },
        setup: () => {},
        work: null,
        close: () => {},
      };
    }
    case "mmio": {
      const ptr = Deno.UnsafePointer.create(BigInt(share.addr))!;
      const u16 = new Uint16Array(Deno.UnsafePointerView.getArrayBuffer(ptr, share.size));
      const slots = share.slots;
      return {
        notify: (index) => {
          u16[slots[index]] = index;
        },
        setup: () => {},
        work: null,
        close: () => {},
      };
    }
    case "portio": {
      const bar: IoBar = share.method === "ioperm"
        ? new IopermBar(share.base, share.size)
        : new SysfsIoBar(share.path, share.size);
      return {
        notify: (index) => bar.write16(LegacyReg.QUEUE_NOTIFY, index),
        setup: () => {},
        work: null,
        close: () => bar.close(),
      };
    }
  }
}
