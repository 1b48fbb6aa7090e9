/**
 * PCI configuration space and the virtio PCI capabilities, as data, and a parser for a captured
 * configuration space (the bytes of sysfs `config`).
 *
 * Sources: PCI Local Bus Specification 3.0, 6.1 "Configuration Space Organization", 6.2.2
 * "Command Register", 6.7 "Capabilities List", 6.8.2 "MSI-X Capability and Table Structure";
 * OASIS virtio 1.2, 4.1.2 "PCI Device Discovery" and 4.1.4 "Virtio Structure PCI Capabilities".
 */

/** PCI 3.0 6.1: type 0 configuration header offsets. */
export const PciConfig = {
  VENDOR_ID: 0x00,
  DEVICE_ID: 0x02,
  COMMAND: 0x04,
  STATUS: 0x06,
  REVISION_ID: 0x08,
  SUBSYSTEM_VENDOR_ID: 0x2c,
  SUBSYSTEM_ID: 0x2e,
  CAPABILITIES_POINTER: 0x34,
  INTERRUPT_LINE: 0x3c,
  INTERRUPT_PIN: 0x3d,
  /** Standard header size; capabilities live in [0x40, 0x100). */
  HEADER_SIZE: 0x40,
  SIZE: 0x100,
} as const;

/** PCI 3.0 6.2.2 Command register bits. */
export const PciCommand = {
  IO_SPACE: 1 << 0,
  MEMORY_SPACE: 1 << 1,
  BUS_MASTER: 1 << 2,
  INTX_DISABLE: 1 << 10,
} as const;

/** PCI 3.0 6.2.3 Status register bits. */
export const PciStatus = {
  INTERRUPT_STATUS: 1 << 3,
  CAPABILITIES_LIST: 1 << 4,
} as const;

/** PCI 3.0 6.7 / appendix H: capability IDs; 6.8.2.3: MSI-X Message Control. */
export const PciCap = {
  ID: 0,
  NEXT: 1,
  ID_MSIX: 0x11,
  ID_VENDOR: 0x09,
  MSIX_CONTROL: 2,
  MSIX_ENABLE: 1 << 15,
} as const;

/** virtio 1.2 4.1.2: PCI IDs of virtio-net functions. */
export const VirtioPciId = {
  VENDOR: 0x1af4,
  /** Transitional (and legacy-only) network device; subsystem ID 1 = network (5 Device Types). */
  NET_TRANSITIONAL: 0x1000,
  /** 0x1040 + virtio device ID 1 (network). */
  NET_MODERN: 0x1041,
  VIRTIO_ID_NET: 1,
} as const;

/**
 * virtio 1.2 4.1.4: struct virtio_pci_cap { u8 cap_vndr; u8 cap_next; u8 cap_len; u8 cfg_type;
 * u8 bar; u8 id; u8 padding[2]; le32 offset; le32 length; }; 4.1.4.4: the notification
 * capability appends le32 notify_off_multiplier.
 */
export const VirtioCap = {
  CAP_LEN: 2,
  CFG_TYPE: 3,
  BAR: 4,
  ID: 5,
  OFFSET: 8,
  LENGTH: 12,
  NOTIFY_OFF_MULTIPLIER: 16,
  /** cfg_type values */
  COMMON_CFG: 1,
  NOTIFY_CFG: 2,
  ISR_CFG: 3,
  DEVICE_CFG: 4,
  PCI_CFG: 5,
  SHARED_MEMORY_CFG: 8,
  VENDOR_CFG: 9,
  /** Smallest valid cap_len (sizeof struct virtio_pci_cap) and the notify cap's. */
  MIN_LEN: 16,
  NOTIFY_MIN_LEN: 20,
} as const;

/** Where one virtio structure lives: BAR number, offset in the BAR, length. */
export interface VirtioRegion {
  bar: number;
  offset: number;
  length: number;
}

/** The virtio structures a modern driver needs (4.1.4), or null when a capability is missing. */
export interface VirtioCaps {
  common: VirtioRegion | null;
  notify: VirtioRegion | null;
  notifyOffMultiplier: number;
  isr: VirtioRegion | null;
  device: VirtioRegion | null;
}

/** 4.1.4.5 ISR status bits (the legacy ISR register has the same meaning). */
export const IsrBit = {
  QUEUE: 1,
  CONFIG: 2,
} as const;

const u16 = (b: Uint8Array, o: number) => b[o] | (b[o + 1] << 8);
const u32 = (b: Uint8Array, o: number) => (u16(b, o) + u16(b, o + 2) * 0x10000) >>> 0;

/**
 * True when `config` is the unprivileged view of sysfs `config`: Linux gives a reader without
 * CAP_SYS_ADMIN only the 64-byte standard header (drivers/pci/pci-sysfs.c), so the capabilities,
 * and with them the virtio structures (4.1.4), cannot be seen.
 */
export function configHidden(config: Uint8Array): boolean {
  return config.length === PciConfig.HEADER_SIZE;
}

/** The capability list lies in the part of the configuration space hidden from non-root readers. */
export class PciConfigHiddenError extends Error {
  constructor() {
    super(
      "needs root: only the 64-byte header of the PCI configuration space is readable " +
        "without CAP_SYS_ADMIN, not the virtio capabilities",
    );
  }
}

/**
 * Walks the capability list of a configuration space image. Loops and pointers into the header are
 * errors (a corrupt list must not hang or mislead the driver); an image cut at the header by the
 * kernel (`configHidden`) is a PciConfigHiddenError.
 */
export function listCapabilities(config: Uint8Array): { id: number; offset: number }[] {
  const caps: { id: number; offset: number }[] = [];
  if (config.length < PciConfig.HEADER_SIZE) return caps;
  if ((u16(config, PciConfig.STATUS) & PciStatus.CAPABILITIES_LIST) === 0) return caps;
  if (configHidden(config)) throw new PciConfigHiddenError();
  const seen = new Set<number>();
  let p = config[PciConfig.CAPABILITIES_POINTER] & 0xfc; // 6.7: the bottom two bits are reserved
  while (p !== 0) {
    if (p < PciConfig.HEADER_SIZE || p + 2 > config.length || seen.has(p)) {
      throw new Error(`corrupt PCI capability list (pointer 0x${p.toString(16)})`);
    }
    seen.add(p);
    caps.push({ id: config[p + PciCap.ID], offset: p });
    p = config[p + PciCap.NEXT] & 0xfc;
  }
  return caps;
}

/**
 * The virtio capabilities (4.1.4). For each type the first capability is used ("the driver
 * SHOULD use the first instance", 4.1.4.1), skipping ones that point to a BAR number > 5.
 */
export function parseVirtioCaps(config: Uint8Array): VirtioCaps {
  const out: VirtioCaps = {
    common: null,
    notify: null,
    notifyOffMultiplier: 0,
    isr: null,
    device: null,
  };
  for (const cap of listCapabilities(config)) {
    if (cap.id !== PciCap.ID_VENDOR) continue;
    const o = cap.offset;
    const len = config[o + VirtioCap.CAP_LEN];
    if (len < VirtioCap.MIN_LEN || o + len > config.length) continue;
    const bar = config[o + VirtioCap.BAR];
    if (bar > 5) continue; // 4.1.4.1: reserved BAR values are ignored
    const region = {
      bar,
      offset: u32(config, o + VirtioCap.OFFSET),
      length: u32(config, o + VirtioCap.LENGTH),
    };
    switch (config[o + VirtioCap.CFG_TYPE]) {
      case VirtioCap.COMMON_CFG:
        out.common ??= region;
        break;
      case VirtioCap.NOTIFY_CFG:
        if (out.notify === null && len >= VirtioCap.NOTIFY_MIN_LEN) {
          out.notify = region;
          out.notifyOffMultiplier = u32(config, o + VirtioCap.NOTIFY_OFF_MULTIPLIER);
        }
        break;
      case VirtioCap.ISR_CFG:
        out.isr ??= region;
        break;
      case VirtioCap.DEVICE_CFG:
        out.device ??= region;
        break;
    }
  }
  return out;
}

/** True when the device has every structure a modern (virtio 1.x) driver needs. */
export function hasModernCaps(caps: VirtioCaps): boolean {
  return caps.common !== null && caps.notify !== null && caps.isr !== null;
}

/** True when the function's MSI-X capability is present and enabled (PCI 3.0 6.8.2.3). */
export function msixEnabled(config: Uint8Array): boolean {
  for (const cap of listCapabilities(config)) {
    if (cap.id === PciCap.ID_MSIX && cap.offset + 4 <= config.length) {
      return (u16(config, cap.offset + PciCap.MSIX_CONTROL) & PciCap.MSIX_ENABLE) !== 0;
    }
  }
  return false;
}

/** True when the IDs in the header name a virtio-net function (4.1.2, 4.1.2.1). */
export function isVirtioNet(config: Uint8Array): boolean {
  if (config.length < PciConfig.HEADER_SIZE) return false;
  if (u16(config, PciConfig.VENDOR_ID) !== VirtioPciId.VENDOR) return false;
  const device = u16(config, PciConfig.DEVICE_ID);
  if (device === VirtioPciId.NET_MODERN) return true;
  // 4.1.2.1: transitional devices carry the virtio device ID in the subsystem device ID.
  return device === VirtioPciId.NET_TRANSITIONAL &&
    u16(config, PciConfig.SUBSYSTEM_ID) === VirtioPciId.VIRTIO_ID_NET;
}

/**
 * What kind of virtio-net function this is, or null when it is not one. Telling legacy from
 * transitional needs the capabilities: a PciConfigHiddenError on an unprivileged view.
 */
export function virtioNetKind(
  config: Uint8Array,
): "legacy" | "transitional" | "modern" | null {
  if (!isVirtioNet(config)) return null;
  if (u16(config, PciConfig.DEVICE_ID) === VirtioPciId.NET_MODERN) return "modern";
  return hasModernCaps(parseVirtioCaps(config)) ? "transitional" : "legacy";
}
