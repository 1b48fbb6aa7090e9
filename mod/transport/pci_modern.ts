/**
 * Modern virtio PCI transport (virtio 1.x): the common configuration, notification, ISR and device
 * configuration structures are found through vendor capabilities (mod/pci/config.ts) and reached
 * by mmap'ing the BARs from sysfs `resourceN`.
 *
 * MMIO is done with typed-array elements of the field's width (one access each). Never a DataView:
 * it splits accesses into bytes (LAB-NOTES). 64-bit fields are written as two 32-bit halves, low
 * first, which 4.1.3.1 allows.
 */
import type { DmaRegion } from "../../ffi/dma.ts";
import {
  close,
  MAP_SHARED,
  mmap,
  munmap,
  O_CLOEXEC,
  O_RDWR,
  open,
  PROT_READ,
  PROT_WRITE,
} from "../../ffi/libc.ts";
import { IsrBit, PciCommand, type VirtioCaps, type VirtioRegion } from "../pci/config.ts";
import { requirePhysical } from "../pci/dma.ts";
import type { ConfigChangeSource } from "../pci/interrupts.ts";
import type { PciFunction, PciResource } from "../pci/sysfs.ts";
import { bit, Feature, RingAlign } from "../virtio/constants.ts";
import {
  type QueueMemory,
  type RingLayout,
  TransportEvent,
  type VirtioTransport,
} from "../virtio/transport.ts";

/** 4.1.4.3 struct virtio_pci_common_cfg: byte offsets (width in the comment). */
export const CommonCfg = {
  DEVICE_FEATURE_SELECT: 0, // le32
  DEVICE_FEATURE: 4, // le32, read-only
  DRIVER_FEATURE_SELECT: 8, // le32
  DRIVER_FEATURE: 12, // le32
  CONFIG_MSIX_VECTOR: 16, // le16
  NUM_QUEUES: 18, // le16, read-only
  DEVICE_STATUS: 20, // u8
  CONFIG_GENERATION: 21, // u8, read-only
  QUEUE_SELECT: 22, // le16
  QUEUE_SIZE: 24, // le16 (max on read after reset; the driver may write a smaller power of 2)
  QUEUE_MSIX_VECTOR: 26, // le16
  QUEUE_ENABLE: 28, // le16
  QUEUE_NOTIFY_OFF: 30, // le16, read-only
  QUEUE_DESC: 32, // le64
  QUEUE_DRIVER: 40, // le64 (avail ring)
  QUEUE_DEVICE: 48, // le64 (used ring)
  /** Bytes the structure must have for the fields above (virtio 1.0 part). */
  SIZE: 56,
} as const;

/** How long `reset` waits for device_status to read back 0 (4.1.4.3.2). */
const RESET_TIMEOUT_MS = 1000;

/** One BAR mmap'd from sysfs, with one view per access width (created once). */
class BarMapping {
  readonly ptr: Deno.PointerObject;
  // Views over the mapping; after close they are ordinary memory (touching unmapped memory would
  // kill the process), so a late access from a port that outlived its transport is harmless.
  u8: Uint8Array<ArrayBuffer>;
  u16: Uint16Array<ArrayBuffer>;
  u32: Uint32Array<ArrayBuffer>;

  constructor(path: string, readonly size: number) {
    const fd = open(path, O_RDWR | O_CLOEXEC);
    try {
      this.ptr = mmap(size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    } finally {
      close(fd);
    }
    const buf = Deno.UnsafePointerView.getArrayBuffer(this.ptr, size);
    this.u8 = new Uint8Array(buf);
    this.u16 = new Uint16Array(buf);
    this.u32 = new Uint32Array(buf);
  }

  close(): void {
    const spare = new ArrayBuffer(this.size);
    this.u8 = new Uint8Array(spare);
    this.u16 = new Uint16Array(spare);
    this.u32 = new Uint32Array(spare);
    munmap(this.ptr, this.size);
  }
}

/** A virtio structure inside a mapped BAR. */
interface Struct {
  bar: BarMapping;
  offset: number;
  length: number;
}

export class ModernPciTransport implements VirtioTransport {
  readonly name: string;
  readonly ringLayout: RingLayout = { placement: "separate", usedAlign: RingAlign.USED };
  readonly dmaKinds = ["physical"] as const;
  readonly queueSizeFixed = false;
  readonly fn: PciFunction;
  readonly interrupts: ConfigChangeSource;
  readonly #bars = new Map<number, BarMapping>();
  readonly #common: Struct;
  readonly #isr: Struct;
  readonly #device: Struct | null;
  readonly #notify: Struct;
  readonly #notifyMultiplier: number;
  /** Per queue index: the u16 element of the notify BAR to write (set up by setupQueue). */
  readonly #notifySlot: number[] = [];
  /** The notify BAR's 16-bit view (hot path; replaced by ordinary memory on close). */
  #notify16: Uint16Array<ArrayBuffer>;
  #closed = false;
  /** Let VIRTIO_F_RING_PACKED through to the driver (the spec's `packed=1`). */
  readonly #packed: boolean;
  /** Let VIRTIO_F_INDIRECT_DESC through to the driver (the spec's `indirect=1`). */
  readonly #indirect: boolean;

  constructor(
    fn: PciFunction,
    caps: VirtioCaps,
    resources: PciResource[],
    interrupts: ConfigChangeSource,
    label = "modern",
    packed = false,
    indirect = false,
  ) {
    this.fn = fn;
    this.#packed = packed;
    this.#indirect = indirect;
    this.interrupts = interrupts;
    this.name = `${fn.address} (${label}, ${interrupts.kind} link events)`;
    if (caps.common === null || caps.notify === null || caps.isr === null) {
      throw new Error(`${fn.address}: missing virtio PCI capabilities (common, notify or ISR)`);
    }
    try {
      this.#common = this.#struct(caps.common, resources, CommonCfg.SIZE, "common");
      this.#isr = this.#struct(caps.isr, resources, 1, "ISR");
      this.#notify = this.#struct(caps.notify, resources, 2, "notify");
      this.#device = caps.device === null
        ? null
        : this.#struct(caps.device, resources, 0, "device");
    } catch (e) {
      for (const m of this.#bars.values()) m.close();
      throw e;
    }
    this.#notifyMultiplier = caps.notifyOffMultiplier;
    this.#notify16 = this.#notify.bar.u16;
  }

  #struct(r: VirtioRegion, resources: PciResource[], min: number, what: string): Struct {
    const res = resources[r.bar];
    if (res === undefined || res.kind !== "mem") {
      throw new Error(`${this.fn.address}: the ${what} structure is in BAR ${r.bar}, not MMIO`);
    }
    if (r.length < min || r.offset + r.length > res.size || r.offset % 4 !== 0) {
      throw new Error(
        `${this.fn.address}: the ${what} structure (BAR ${r.bar} offset 0x${
          r.offset.toString(16)
        } length ${r.length}) does not fit BAR ${r.bar} (${res.size} bytes)`,
      );
    }
    let bar = this.#bars.get(r.bar);
    if (bar === undefined) {
      bar = new BarMapping(this.fn.resourcePath(r.bar), res.size);
      this.#bars.set(r.bar, bar);
    }
    return { bar, offset: r.offset, length: r.length };
  }

  // Common configuration accessors (offsets are aligned to the width: 4.1.4.3).
  #r8(field: number): number {
    return this.#common.bar.u8[this.#common.offset + field];
  }
  #w8(field: number, v: number): void {
    this.#common.bar.u8[this.#common.offset + field] = v;
  }
  #r16(field: number): number {
    return this.#common.bar.u16[(this.#common.offset + field) >> 1];
  }
  #w16(field: number, v: number): void {
    this.#common.bar.u16[(this.#common.offset + field) >> 1] = v;
  }
  #r32(field: number): number {
    return this.#common.bar.u32[(this.#common.offset + field) >> 2];
  }
  #w32(field: number, v: number): void {
    this.#common.bar.u32[(this.#common.offset + field) >> 2] = v;
  }
  #w64(field: number, v: number): void {
    this.#w32(field, v >>> 0);
    this.#w32(field + 4, Math.floor(v / 2 ** 32));
  }

  reset(): void {
    this.#w8(CommonCfg.DEVICE_STATUS, 0);
    const until = performance.now() + RESET_TIMEOUT_MS;
    while (this.#r8(CommonCfg.DEVICE_STATUS) !== 0) {
      if (performance.now() > until) throw new Error(`${this.fn.address}: device does not reset`);
    }
    // Bus mastering must be on before the device may DMA (uio_pci_generic leaves it off).
    this.fn.updateCommand(PciCommand.BUS_MASTER | PciCommand.MEMORY_SPACE, 0);
  }

  getStatus(): number {
    return this.#r8(CommonCfg.DEVICE_STATUS);
  }

  setStatus(status: number): void {
    this.#w8(CommonCfg.DEVICE_STATUS, status);
  }

  getDeviceFeatures(): bigint {
    this.#w32(CommonCfg.DEVICE_FEATURE_SELECT, 0);
    const lo = this.#r32(CommonCfg.DEVICE_FEATURE);
    this.#w32(CommonCfg.DEVICE_FEATURE_SELECT, 1);
    const hi = this.#r32(CommonCfg.DEVICE_FEATURE);
    const f = (BigInt(hi) << 32n) | BigInt(lo);
    const hidden = (this.#packed ? 0n : bit(Feature.RING_PACKED)) |
      (this.#indirect ? 0n : bit(Feature.INDIRECT_DESC));
    return f & ~hidden;
  }

  setDriverFeatures(features: bigint): void {
    this.#w32(CommonCfg.DRIVER_FEATURE_SELECT, 0);
    this.#w32(CommonCfg.DRIVER_FEATURE, Number(features & 0xffffffffn));
    this.#w32(CommonCfg.DRIVER_FEATURE_SELECT, 1);
    this.#w32(CommonCfg.DRIVER_FEATURE, Number((features >> 32n) & 0xffffffffn));
  }

  /**
   * 4.1.4.3.1 / 2.5.1: read until config_generation is the same before and after. A 2- or 4-byte
   * aligned field is read with one access of its width (4.1.3.1), anything else byte by byte.
   */
  readConfig(offset: number, length: number): Uint8Array {
    const d = this.#device;
    if (d === null) throw new Error(`${this.fn.address}: the device has no device configuration`);
    if (offset < 0 || offset + length > d.length) {
      throw new RangeError(
        `${this.fn.address}: device configuration [${offset}, ${offset + length}) is outside ` +
          `its ${d.length} bytes`,
      );
    }
    const out = new Uint8Array(length);
    const at = d.offset + offset;
    for (let tries = 0; tries < 100; tries++) {
      const gen = this.#r8(CommonCfg.CONFIG_GENERATION);
      if (length === 4 && at % 4 === 0) {
        new Uint32Array(out.buffer)[0] = d.bar.u32[at >> 2];
      } else if (length === 2 && at % 2 === 0) {
        new Uint16Array(out.buffer)[0] = d.bar.u16[at >> 1];
      } else {
        for (let i = 0; i < length; i++) out[i] = d.bar.u8[at + i];
      }
      if (this.#r8(CommonCfg.CONFIG_GENERATION) === gen) return out;
    }
    throw new Error(`${this.fn.address}: device configuration keeps changing while read`);
  }

  queueMaxSize(index: number): number {
    if (index >= this.#r16(CommonCfg.NUM_QUEUES)) return 0;
    this.#w16(CommonCfg.QUEUE_SELECT, index);
    return this.#r16(CommonCfg.QUEUE_SIZE);
  }

  /** 4.1.5.1.3 Virtqueue Configuration. */
  setupQueue(q: QueueMemory): void {
    const max = this.queueMaxSize(q.index);
    if (max === 0) throw new Error(`${this.fn.address}: queue ${q.index} does not exist`);
    if (q.size > max || (q.size & (q.size - 1)) !== 0) {
      throw new Error(
        `${this.fn.address}: queue ${q.index} size ${q.size} must be a power of two <= ${max}`,
      );
    }
    this.#w16(CommonCfg.QUEUE_SELECT, q.index);
    this.#w16(CommonCfg.QUEUE_SIZE, q.size);
    this.#w64(CommonCfg.QUEUE_DESC, q.descIova);
    this.#w64(CommonCfg.QUEUE_DRIVER, q.availIova);
    this.#w64(CommonCfg.QUEUE_DEVICE, q.usedIova);
    // 4.1.4.4: the queue's notify address is cap.offset + queue_notify_off * multiplier.
    const off = this.#notify.offset +
      this.#r16(CommonCfg.QUEUE_NOTIFY_OFF) * this.#notifyMultiplier;
    if (off + 2 > this.#notify.offset + this.#notify.length || off % 2 !== 0) {
      throw new Error(`${this.fn.address}: queue ${q.index} notify address 0x${off.toString(16)}`);
    }
    this.#notifySlot[q.index] = off >> 1;
    this.#w16(CommonCfg.QUEUE_ENABLE, 1);
  }

  addMemory(region: DmaRegion): void {
    requirePhysical(this.fn.address, region);
  }

  notify(index: number): void {
    this.#notify16[this.#notifySlot[index]] = index;
  }

  /**
   * Where queue `index` (set up) is notified, for another thread of this process that serves it
   * (mod/fwd/workers.ts): the notify BAR's mapping, address and bytes, and the 16-bit element to
   * write the index to. Valid until `close`.
   */
  notifyWindow(index: number): { addr: number; size: number; slot: number } {
    const bar = this.#notify.bar;
    return {
      addr: Number(Deno.UnsafePointer.value(bar.ptr)),
      size: bar.size,
      slot: this.#notifySlot[index],
    };
  }

  poll(): number {
    if (!this.interrupts.due()) return 0;
    const isr = this.#isr.bar.u8[this.#isr.offset]; // reading acknowledges (4.1.4.5)
    this.interrupts.rearm();
    return (isr & IsrBit.CONFIG) !== 0 ? TransportEvent.CONFIG_CHANGED : 0;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#w8(CommonCfg.DEVICE_STATUS, 0); // stop all DMA before memory goes away
    } finally {
      this.interrupts.close();
      for (const m of this.#bars.values()) m.close();
      this.#notify16 = this.#notify.bar.u16;
    }
  }
}

/**
 * Reads `length` bytes of a function's device configuration without touching any register that
 * has side effects (for `vpmd devices` on functions no kernel driver describes). Maps the BAR,
 * copies the bytes, unmaps it.
 */
export function peekDeviceConfig(
  fn: PciFunction,
  caps: VirtioCaps,
  resources: PciResource[],
  length: number,
): Uint8Array | null {
  const d = caps.device;
  if (d === null || d.length < length) return null;
  const res = resources[d.bar];
  if (res === undefined || res.kind !== "mem" || d.offset + length > res.size) return null;
  const bar = new BarMapping(fn.resourcePath(d.bar), res.size);
  try {
    const out = new Uint8Array(length);
    for (let i = 0; i < length; i++) out[i] = bar.u8[d.offset + i];
    return out;
  } finally {
    bar.close();
  }
}
