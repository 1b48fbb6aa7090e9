/**
 * Legacy virtio PCI transport (virtio 0.9.5 layout): registers in I/O BAR0, accessed with port IO
 * (ioperm + in/out stubs) or through sysfs `resource0` (mod/pci/io_bar.ts).
 *
 * Register layout: OASIS virtio 1.2, 4.1.4.10 "Legacy Interfaces: A Note on PCI Device Layout".
 * Queues: 2.7.2 "Legacy Interfaces: A Note on Virtqueue Layout" (one contiguous area, the used ring
 * on a 4096-byte boundary, located by its page frame number; the device decides the size).
 */
import type { DmaRegion } from "../../ffi/dma.ts";
import { IsrBit, PciCommand } from "../pci/config.ts";
import { requirePhysical } from "../pci/dma.ts";
import type { ConfigChangeSource } from "../pci/interrupts.ts";
import type { IoBar } from "../pci/io_bar.ts";
import type { PciFunction } from "../pci/sysfs.ts";
import {
  Avail,
  bit,
  Desc,
  Feature,
  featureNames,
  has,
  NET_CONFIG_FIELDS,
  RingAlign,
} from "../virtio/constants.ts";
import {
  type QueueMemory,
  type RingLayout,
  TransportEvent,
  type VirtioTransport,
} from "../virtio/transport.ts";

/** 4.1.4.10: the legacy header in BAR0 (byte offsets and widths in the comments). */
export const LegacyReg = {
  /** le32, read-only: feature bits 0-31 the device offers. */
  DEVICE_FEATURES: 0,
  /** le32: feature bits 0-31 the driver accepts. */
  DRIVER_FEATURES: 4,
  /** le32: page frame number of the selected queue (address >> QUEUE_ADDRESS_SHIFT); 0 = off. */
  QUEUE_ADDRESS: 8,
  /** le16, read-only: size of the selected queue (0 = no such queue). */
  QUEUE_SIZE: 12,
  /** le16 */
  QUEUE_SELECT: 14,
  /** le16: write a queue index to notify it. */
  QUEUE_NOTIFY: 16,
  /** u8 */
  DEVICE_STATUS: 18,
  /** u8, read-only, read clears: bit 0 queue interrupt, bit 1 configuration change. */
  ISR: 19,
  /** Device-specific configuration without / with MSI-X enabled (two le16 vectors first). */
  DEVICE_CONFIG: 20,
  DEVICE_CONFIG_MSIX: 24,
  /** The queue address register counts 4096-byte pages. */
  QUEUE_ADDRESS_SHIFT: 12,
} as const;

/** How long `reset` waits for the status to read back 0. */
const RESET_TIMEOUT_MS = 1000;

export class LegacyPciTransport implements VirtioTransport {
  readonly name: string;
  readonly ringLayout: RingLayout = { placement: "contiguous", usedAlign: RingAlign.LEGACY_USED };
  readonly dmaKinds = ["physical"] as const;
  readonly queueSizeFixed = true;
  readonly fn: PciFunction;
  readonly bar: IoBar;
  readonly configOffset: number;
  readonly interrupts: ConfigChangeSource;
  #closed = false;
  /** Let VIRTIO_F_INDIRECT_DESC through to the driver (the spec's `indirect=1`). */
  readonly #indirect: boolean;

  constructor(
    fn: PciFunction,
    bar: IoBar,
    msix: boolean,
    interrupts: ConfigChangeSource,
    indirect = false,
  ) {
    this.fn = fn;
    this.#indirect = indirect;
    this.bar = bar;
    this.configOffset = msix ? LegacyReg.DEVICE_CONFIG_MSIX : LegacyReg.DEVICE_CONFIG;
    this.interrupts = interrupts;
    this.name = `${fn.address} (legacy, ${bar.method}, ${interrupts.kind} link events)`;
    // Every register before the device configuration is accessed at a fixed offset (LegacyReg),
    // so this one check covers them all, notify included; configuration reads are checked in
    // setDriverFeatures and readConfig (io_bar.ts: the accessors check nothing).
    if (bar.size < this.configOffset) {
      throw new Error(
        `${fn.address}: BAR0 has ${bar.size} bytes, fewer than the ${this.configOffset} bytes of ` +
          `legacy registers${msix ? " (with MSI-X)" : ""}`,
      );
    }
  }

  /**
   * Throws unless device configuration bytes [offset, offset + length) lie inside BAR0: a device
   * may promise fields (by its features) that its BAR does not hold, and a port access past the
   * BAR is outside the ioperm grant.
   */
  #checkConfigRange(offset: number, length: number): void {
    if (
      Number.isInteger(offset) && Number.isInteger(length) && offset >= 0 && length >= 0 &&
      this.configOffset + offset + length <= this.bar.size
    ) return;
    const field = NET_CONFIG_FIELDS.find((f) => f.offset === offset && f.size === length);
    const what = field === undefined
      ? `bytes [${offset}, ${offset + length})`
      : `field ${field.name} (offset ${field.offset}, ${field.size} bytes, with VIRTIO_NET_F_${
        featureNames(bit(field.feature))[0]
      })`;
    throw new Error(
      `${this.fn.address}: device configuration ${what} lies past the end of BAR0 ` +
        `(${this.bar.size} bytes, device configuration from byte ${this.configOffset}): ` +
        `the device's I/O BAR is too small for what it offers`,
    );
  }

  reset(): void {
    this.bar.write8(LegacyReg.DEVICE_STATUS, 0);
    const until = performance.now() + RESET_TIMEOUT_MS;
    while (this.bar.read8(LegacyReg.DEVICE_STATUS) !== 0) {
      if (performance.now() > until) throw new Error(`${this.fn.address}: device does not reset`);
    }
    // Make sure DMA is allowed again (a reset of the function elsewhere may have cleared it).
    this.fn.updateCommand(PciCommand.BUS_MASTER | PciCommand.IO_SPACE, 0);
  }

  getStatus(): number {
    return this.bar.read8(LegacyReg.DEVICE_STATUS);
  }

  setStatus(status: number): void {
    this.bar.write8(LegacyReg.DEVICE_STATUS, status);
  }

  getDeviceFeatures(): bigint {
    const f = BigInt(this.bar.read32(LegacyReg.DEVICE_FEATURES) >>> 0);
    return this.#indirect ? f : f & ~bit(Feature.INDIRECT_DESC);
  }

  setDriverFeatures(features: bigint): void {
    if (features >> 32n !== 0n) {
      throw new Error(
        `${this.fn.address}: a legacy device takes only feature bits 0-31 (asked 0x${
          features.toString(16)
        })`,
      );
    }
    // Once per negotiation: every field the features make exist must be reachable before the
    // device is used (readConfig checks again, for reads made before negotiation).
    for (const f of NET_CONFIG_FIELDS) {
      if (has(features, f.feature)) this.#checkConfigRange(f.offset, f.size);
    }
    this.bar.write32(LegacyReg.DRIVER_FEATURES, Number(features));
  }

  /**
   * Legacy devices have no configuration generation (2.5.4 "Legacy Interface: Device
   * Configuration Space"): read until two passes agree.
   */
  readConfig(offset: number, length: number): Uint8Array {
    this.#checkConfigRange(offset, length);
    const read = () => {
      const b = new Uint8Array(length);
      for (let i = 0; i < length; i++) b[i] = this.bar.read8(this.configOffset + offset + i);
      return b;
    };
    let a = read();
    for (let tries = 0; tries < 10; tries++) {
      const b = read();
      if (a.every((v, i) => v === b[i])) return b;
      a = b;
    }
    throw new Error(`${this.fn.address}: device configuration keeps changing while read`);
  }

  queueMaxSize(index: number): number {
    this.bar.write16(LegacyReg.QUEUE_SELECT, index);
    return this.bar.read16(LegacyReg.QUEUE_SIZE);
  }

  setupQueue(q: QueueMemory): void {
    const size = this.queueMaxSize(q.index);
    if (q.size !== size) {
      throw new Error(`${this.fn.address}: queue ${q.index} has ${size} entries, not ${q.size}`);
    }
    // 2.7.2 legacy layout: desc | avail | pad to 4096 | used, one area located by its page number.
    const availIova = q.descIova + Desc.SIZE * size;
    const usedIova = Math.ceil((availIova + Avail.size(size)) / RingAlign.LEGACY_USED) *
      RingAlign.LEGACY_USED;
    if (
      q.descIova % (1 << LegacyReg.QUEUE_ADDRESS_SHIFT) !== 0 || q.availIova !== availIova ||
      q.usedIova !== usedIova
    ) {
      throw new Error(`${this.fn.address}: queue ${q.index} is not laid out as a legacy ring`);
    }
    const pfn = q.descIova / (1 << LegacyReg.QUEUE_ADDRESS_SHIFT);
    if (pfn >= 2 ** 32) {
      throw new Error(
        `${this.fn.address}: queue ${q.index} lies above what a legacy device reaches`,
      );
    }
    this.bar.write32(LegacyReg.QUEUE_ADDRESS, pfn);
  }

  addMemory(region: DmaRegion): void {
    requirePhysical(this.fn.address, region);
  }

  notify(index: number): void {
    this.bar.write16(LegacyReg.QUEUE_NOTIFY, index);
  }

  poll(): number {
    if (!this.interrupts.due()) return 0;
    const isr = this.bar.read8(LegacyReg.ISR); // reading acknowledges (4.1.4.5)
    this.interrupts.rearm();
    return (isr & IsrBit.CONFIG) !== 0 ? TransportEvent.CONFIG_CHANGED : 0;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.bar.write8(LegacyReg.DEVICE_STATUS, 0); // stop all DMA before memory goes away
    } finally {
      this.interrupts.close();
      this.bar.close();
    }
  }
}
