/**
 * PCI port specs: `0000:00:04.0[,portio=ioperm|sysfs][,mode=legacy|modern][,irq=uio|poll]
 * [,packed=0|1][,indirect=0|1]`. `packed=1` lets a modern device's VIRTIO_F_RING_PACKED through
 * (2.8; a legacy interface has no VERSION_1, so no packed rings: an error there); `indirect=1`
 * lets VIRTIO_F_INDIRECT_DESC through (2.7.5.3, 2.8.7; legacy and modern).
 *
 * Chooses the transport: modern (mod/transport/pci_modern.ts) when the function has the virtio
 * 1.x capabilities, legacy (mod/transport/pci_legacy.ts) for legacy-only functions; `mode=`
 * forces one on a transitional function, `portio=` forces the legacy register path (and the
 * method: `ioperm` fails if ioperm(2) is refused, the default falls back to `sysfs`). `irq=poll`
 * reads the ISR periodically instead of waiting for interrupts on /dev/uioN.
 */
import { type IoBar, IopermBar, type PortIoMethod, SysfsIoBar } from "../pci/io_bar.ts";
import {
  configHidden,
  isVirtioNet,
  msixEnabled,
  parseVirtioCaps,
  PciCommand,
  virtioNetKind,
} from "../pci/config.ts";
import { type ConfigChangeSource, PolledConfigChange, UioInterrupts } from "../pci/interrupts.ts";
import { type PciFunction, Sysfs } from "../pci/sysfs.ts";
import { LegacyPciTransport } from "./pci_legacy.ts";
import { ModernPciTransport } from "./pci_modern.ts";
import type { VirtioTransport } from "../virtio/transport.ts";

/** The kernel driver a function must be bound to (or no driver at all). */
export const USERSPACE_DRIVER = "uio_pci_generic";
export const KERNEL_DRIVER = "virtio-pci";

const OPTIONS: Record<string, readonly string[]> = {
  portio: ["ioperm", "sysfs"],
  mode: ["legacy", "modern"],
  irq: ["uio", "poll"],
  packed: ["0", "1"],
  indirect: ["0", "1"],
};

/** Checks a PCI spec's options; throws the one-line CLI error for anything unknown. */
export function checkPciOptions(address: string, options: Record<string, string>): void {
  for (const [k, v] of Object.entries(options)) {
    const allowed = OPTIONS[k];
    if (allowed === undefined) {
      throw new Error(
        `PCI port ${address}: unknown option '${k}' (known: ${Object.keys(OPTIONS).join(", ")})`,
      );
    }
    if (!allowed.includes(v)) {
      throw new Error(`PCI port ${address}: ${k}=${v} is not one of ${allowed.join("|")}`);
    }
  }
}

/** Refuses functions the kernel still drives (or another driver holds). */
function checkDriver(fn: PciFunction): void {
  const drv = fn.driver();
  if (drv === null || drv === USERSPACE_DRIVER) return;
  const ifs = fn.interfaces();
  throw new Error(
    `PCI port ${fn.address} is bound to the kernel driver ${drv}${
      ifs.length ? ` (interface ${ifs.join(", ")})` : ""
    }: run 'vpmd bind ${fn.address}' first`,
  );
}

function interruptsFor(fn: PciFunction, irq: string | undefined): ConfigChangeSource {
  const uio = fn.uioDevice();
  if (irq === "uio" && uio === null) {
    throw new Error(`PCI port ${fn.address}: irq=uio but no /dev/uio device (not bound to uio)`);
  }
  if (uio !== null && irq !== "poll") {
    try {
      return new UioInterrupts(fn, uio);
    } catch (e) {
      if (irq === "uio") {
        throw new Error(`PCI port ${fn.address}: irq=uio: ${(e as Error).message}`);
      }
      // Interrupts are a convenience: without them the ISR is polled (module comment).
    }
  }
  return new PolledConfigChange(fn);
}

function openIoBar(fn: PciFunction, method: PortIoMethod | undefined): IoBar {
  const bar = fn.resources()[0];
  if (bar === undefined || bar.kind !== "io") {
    throw new Error(`PCI port ${fn.address}: BAR0 is not an I/O BAR; it cannot be used as legacy`);
  }
  if (method === "sysfs") return new SysfsIoBar(fn.resourcePath(0), bar.size);
  try {
    return new IopermBar(bar.start, bar.size);
  } catch (e) {
    if (method === "ioperm") {
      throw new Error(`PCI port ${fn.address}: portio=ioperm: ${(e as Error).message}`);
    }
    return new SysfsIoBar(fn.resourcePath(0), bar.size);
  }
}

export const PciTransport = {
  /** Opens the function at `address` (see the module comment for the options). */
  fromSpec(
    address: string,
    options: Record<string, string> = {},
    sysfs: Sysfs = new Sysfs(),
  ): VirtioTransport {
    checkPciOptions(address, options);
    const fn = sysfs.function(address);
    const config = fn.readConfig();
    if (!isVirtioNet(config)) {
      const id = (o: number) => (config[o] | (config[o + 1] << 8)).toString(16).padStart(4, "0");
      throw new Error(
        `PCI port ${fn.address} is not a virtio-net device (${id(0)}:${id(2)}; see 'vpmd devices')`,
      );
    }
    if (configHidden(config)) {
      throw new Error(
        `PCI port ${fn.address} needs root: to other users the kernel shows only the first ` +
          `64 bytes of its PCI configuration space (no virtio capabilities) and none of its ` +
          `BARs; run vpmd as root`,
      );
    }
    const kind = virtioNetKind(config)!;
    checkDriver(fn);
    const portio = options.portio as PortIoMethod | undefined;
    let mode = options.mode ?? (portio !== undefined || kind === "legacy" ? "legacy" : "modern");
    if (mode === "modern" && portio !== undefined) {
      throw new Error(`PCI port ${fn.address}: portio= applies to mode=legacy only`);
    }
    if (mode === "modern" && kind === "legacy") {
      throw new Error(`PCI port ${fn.address} is a legacy-only device: mode=modern is impossible`);
    }
    if (mode === "legacy" && kind === "modern") {
      throw new Error(`PCI port ${fn.address} is a modern-only device: it has no legacy interface`);
    }
    mode = mode === "legacy" ? "legacy" : "modern";
    if (mode === "legacy" && options.packed === "1") {
      throw new Error(
        `PCI port ${fn.address}: packed=1 needs a modern (virtio 1.x) device; the legacy ` +
          `interface has no VIRTIO_F_VERSION_1 and so no packed rings`,
      );
    }
    fn.updateCommand(
      PciCommand.BUS_MASTER | (mode === "legacy" ? PciCommand.IO_SPACE : PciCommand.MEMORY_SPACE),
      0,
    );
    const interrupts = interruptsFor(fn, options.irq);
    try {
      if (mode === "legacy") {
        const bar = openIoBar(fn, portio);
        try {
          return new LegacyPciTransport(
            fn,
            bar,
            msixEnabled(config),
            interrupts,
            options.indirect === "1",
          );
        } catch (e) {
          bar.close();
          throw e;
        }
      }
      return new ModernPciTransport(
        fn,
        parseVirtioCaps(config),
        fn.resources(),
        interrupts,
        kind === "transitional" ? "transitional as modern" : "modern",
        options.packed === "1",
        options.indirect === "1",
      );
    } catch (e) {
      interrupts.close();
      throw e;
    }
  },
};
