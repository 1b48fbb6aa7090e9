/**
 * PCI functions through sysfs (Documentation/PCI/sysfs-pci.rst, ABI sysfs-bus-pci): enumeration,
 * configuration space (`config`), BAR resources (`resource`, `resourceN`), the bound driver,
 * kernel network interfaces, uio devices, and binding with `driver_override` + `drivers_probe`.
 *
 * The root (`/sys`) is configurable so tests can run against a fake tree. Everything here is a
 * cold path: plain file APIs for text attributes, libc pread/pwrite for `config`.
 */
import { close, O_RDWR, open, pread, pwrite } from "../../ffi/libc.ts";
import { PciConfig } from "./config.ts";

/** sysfs `resource` flags (include/linux/ioport.h). */
export const IoResource = {
  IO: 0x100,
  MEM: 0x200,
} as const;

/** One line of sysfs `resource`: a BAR's bus address range and kind. */
export interface PciResource {
  index: number;
  start: number;
  size: number;
  kind: "io" | "mem" | "none";
}

const ADDRESS = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;

/** Normalises `00:04.0` / `0000:00:04.0` to the full lower-case form, or throws. */
export function normalizeAddress(address: string): string {
  let a = address.trim().toLowerCase();
  if (/^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/.test(a)) a = `0000:${a}`;
  if (!ADDRESS.test(a)) {
    throw new Error(`'${address}' is not a PCI address (expected DDDD:BB:DD.F, e.g. 0000:00:04.0)`);
  }
  return a;
}

export class Sysfs {
  constructor(readonly root = "/sys") {}

  get devicesDir(): string {
    return `${this.root}/bus/pci/devices`;
  }

  /** Addresses of every PCI function, sorted. */
  addresses(): string[] {
    const out: string[] = [];
    try {
      for (const e of Deno.readDirSync(this.devicesDir)) out.push(e.name);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return [];
      throw e;
    }
    return out.sort();
  }

  function(address: string): PciFunction {
    const a = normalizeAddress(address);
    const dir = `${this.devicesDir}/${a}`;
    try {
      Deno.statSync(dir);
    } catch {
      throw new Error(`no PCI device ${a} (${dir} does not exist; see 'vpmd devices')`);
    }
    return new PciFunction(this, a, dir);
  }

  /** True when a kernel driver of that name is registered (its module loaded). */
  hasDriver(name: string): boolean {
    try {
      return Deno.statSync(`${this.root}/bus/pci/drivers/${name}`).isDirectory;
    } catch {
      return false;
    }
  }

  /** Asks the PCI core to find a driver for `address` (honouring driver_override). */
  probe(address: string): void {
    Deno.writeTextFileSync(`${this.root}/bus/pci/drivers_probe`, address);
  }

  /** Operational state of a kernel network interface: flags & IFF_UP. */
  interfaceUp(name: string): boolean {
    const flags = this.#readText(`${this.root}/class/net/${name}/flags`);
    return flags !== null && (parseInt(flags, 16) & 1) !== 0; // IFF_UP (linux/if.h)
  }

  interfaceAddress(name: string): string | null {
    return this.#readText(`${this.root}/class/net/${name}/address`);
  }

  interfaceCarrier(name: string): boolean | null {
    const c = this.#readText(`${this.root}/class/net/${name}/carrier`);
    return c === null ? null : c === "1";
  }

  #readText(path: string): string | null {
    try {
      return Deno.readTextFileSync(path).trim();
    } catch {
      return null;
    }
  }
}

/** One PCI function in sysfs. */
export class PciFunction {
  constructor(readonly sysfs: Sysfs, readonly address: string, readonly dir: string) {}

  /** The whole configuration space the kernel lets us read (256 bytes or more as root). */
  readConfig(): Uint8Array {
    return Deno.readFileSync(`${this.dir}/config`);
  }

  /** Reads the 16-bit register at `offset` of the configuration space (fresh from the device). */
  readConfig16(offset: number): number {
    const fd = open(`${this.dir}/config`, O_RDWR);
    try {
      const b = new Uint8Array(2);
      if (pread(fd, b, offset) !== 2) throw new Error(`${this.address}: short config read`);
      return b[0] | (b[1] << 8);
    } finally {
      close(fd);
    }
  }

  writeConfig16(offset: number, value: number): void {
    const fd = open(`${this.dir}/config`, O_RDWR);
    try {
      pwrite(fd, Uint8Array.of(value & 0xff, (value >> 8) & 0xff), offset);
    } finally {
      close(fd);
    }
  }

  /** Sets and clears bits of the PCI command register (6.2.2) by read-modify-write. */
  updateCommand(set: number, clear: number): void {
    const cmd = this.readConfig16(PciConfig.COMMAND);
    const next = (cmd | set) & ~clear & 0xffff;
    if (next !== cmd) this.writeConfig16(PciConfig.COMMAND, next);
  }

  resources(): PciResource[] {
    const text = Deno.readTextFileSync(`${this.dir}/resource`);
    return parseResources(text);
  }

  /** Path of BAR `index`'s resource file (mmap for memory BARs, pread/pwrite for IO BARs). */
  resourcePath(index: number): string {
    return `${this.dir}/resource${index}`;
  }

  /** Name of the bound kernel driver, or null. */
  driver(): string | null {
    try {
      const target = Deno.readLinkSync(`${this.dir}/driver`);
      return target.split("/").pop() ?? null;
    } catch {
      return null;
    }
  }

  /** Kernel network interfaces of this function (virtio-pci puts them under virtioN/net/). */
  interfaces(): string[] {
    const out: string[] = [];
    const scan = (dir: string) => {
      try {
        for (const e of Deno.readDirSync(dir)) out.push(e.name);
      } catch {
        // no such directory: no interface there
      }
    };
    scan(`${this.dir}/net`);
    try {
      for (const e of Deno.readDirSync(this.dir)) {
        if (/^virtio\d+$/.test(e.name)) scan(`${this.dir}/${e.name}/net`);
      }
    } catch {
      // unreadable directory: no interfaces
    }
    return out.sort();
  }

  /** `/dev/uioN` when the function is bound to a uio driver, else null. */
  uioDevice(): string | null {
    try {
      for (const e of Deno.readDirSync(`${this.dir}/uio`)) {
        if (/^uio\d+$/.test(e.name)) return `/dev/${e.name}`;
      }
    } catch {
      // not bound to uio
    }
    return null;
  }

  unbindDriver(): void {
    const drv = this.driver();
    if (drv === null) return;
    Deno.writeTextFileSync(`${this.dir}/driver/unbind`, this.address);
  }

  /** Sets driver_override (an empty string clears it). */
  setDriverOverride(name: string): void {
    Deno.writeTextFileSync(`${this.dir}/driver_override`, name === "" ? "\n" : name);
  }
}

/** Parses sysfs `resource`: one line per BAR, `start end flags` in hex (0x...). */
export function parseResources(text: string): PciResource[] {
  const out: PciResource[] = [];
  text.trim().split("\n").forEach((line, index) => {
    if (index > 5) return; // BARs 0-5; later lines are the ROM and bridge windows
    const [s, e, f] = line.trim().split(/\s+/).map((x) => Number(BigInt(x)));
    const size = s === 0 && e === 0 ? 0 : e - s + 1;
    const kind = size === 0
      ? "none"
      : (f & IoResource.IO) !== 0
      ? "io"
      : (f & IoResource.MEM) !== 0
      ? "mem"
      : "none";
    out.push({ index, start: s, size, kind });
  });
  return out;
}
