/**
 * Access to the registers of a PCI I/O BAR (legacy virtio's BAR0), two ways:
 *
 * - `ioperm`: the thread gets the BAR's port range with ioperm(2) and each access is one `in`/`out`
 *   instruction in a generated stub (ffi/portio.ts): one fast FFI call.
 * - `sysfs`: pread/pwrite of exactly the register's width on sysfs `resourceN`; the kernel turns
 *   a 1, 2 or 4 byte access into one `in`/`out` (drivers/pci/pci-sysfs.c). One system call per
 *   access: slower, but needs no IO privilege.
 */
import { type PortIoStubs, portIoStubs, releasePorts, requestPorts } from "../../ffi/portio.ts";
import { close, errno, O_RDWR, open, raw, SysError } from "../../ffi/libc.ts";

export type PortIoMethod = "ioperm" | "sysfs";

/**
 * The accessors do not check `offset` (notify is one of them, on the hot path): whoever accesses a
 * BAR checks its register ranges against `size` once, before the first access. Past the end, an
 * `in`/`out` on the ioperm path hits a port not granted and kills the process (SIGSEGV).
 */
export interface IoBar {
  readonly method: PortIoMethod;
  /** Bytes of the BAR (sysfs `resource`). */
  readonly size: number;
  read8(offset: number): number;
  read16(offset: number): number;
  read32(offset: number): number;
  write8(offset: number, value: number): void;
  write16(offset: number, value: number): void;
  write32(offset: number, value: number): void;
  close(): void;
}

const closed = (): never => {
  throw new Error("port IO on a closed PCI transport");
};
const CLOSED_PORTS: PortIoStubs = {
  vpmd_inb: closed,
  vpmd_inw: closed,
  vpmd_inl: closed,
  vpmd_outb: closed,
  vpmd_outw: closed,
  vpmd_outl: closed,
};

/** Port IO with ioperm and in/out stubs. Throws a SysError when ioperm is refused. */
export class IopermBar implements IoBar {
  readonly method = "ioperm";
  readonly #base: number;
  readonly size: number;
  #io: PortIoStubs = portIoStubs();

  constructor(base: number, size: number) {
    requestPorts(base, size);
    this.#base = base;
    this.size = size;
  }

  read8(offset: number): number {
    return this.#io.vpmd_inb(this.#base + offset);
  }
  read16(offset: number): number {
    return this.#io.vpmd_inw(this.#base + offset);
  }
  read32(offset: number): number {
    return this.#io.vpmd_inl(this.#base + offset);
  }
  write8(offset: number, value: number): void {
    this.#io.vpmd_outb(this.#base + offset, value);
  }
  write16(offset: number, value: number): void {
    this.#io.vpmd_outw(this.#base + offset, value);
  }
  write32(offset: number, value: number): void {
    this.#io.vpmd_outl(this.#base + offset, value);
  }
  close(): void {
    // Without the permission an in/out instruction kills the process: later calls throw instead.
    this.#io = CLOSED_PORTS;
    releasePorts(this.#base, this.size);
  }
}

/** Register access through pread/pwrite on sysfs `resourceN` of an I/O BAR. */
export class SysfsIoBar implements IoBar {
  readonly method = "sysfs";
  #fd: number;
  readonly #path: string;
  // One scratch buffer per width: the kernel uses the count to choose inb/inw/inl.
  readonly #b1 = new Uint8Array(1);
  readonly #b2 = new Uint16Array(1);
  readonly #b4 = new Uint32Array(1);
  readonly #b2u8 = new Uint8Array(this.#b2.buffer);
  readonly #b4u8 = new Uint8Array(this.#b4.buffer);

  constructor(path: string, readonly size: number) {
    this.#path = path;
    this.#fd = open(path, O_RDWR);
  }

  #pread(buf: Uint8Array<ArrayBuffer>, offset: number): void {
    const n = Number(raw.pread(this.#fd, buf, BigInt(buf.length), BigInt(offset)));
    if (n !== buf.length) this.#fail("pread", n, buf.length, offset);
  }
  #pwrite(buf: Uint8Array<ArrayBuffer>, offset: number): void {
    const n = Number(raw.pwrite(this.#fd, buf, BigInt(buf.length), BigInt(offset)));
    if (n !== buf.length) this.#fail("pwrite", n, buf.length, offset);
  }
  #fail(call: string, n: number, len: number, offset: number): never {
    const at = `(${this.#path}, ${len} bytes at 0x${offset.toString(16)})`;
    if (n < 0) throw new SysError(call, errno(), at);
    throw new Error(`${call} ${at}: short transfer (${n})`);
  }

  read8(offset: number): number {
    this.#pread(this.#b1, offset);
    return this.#b1[0];
  }
  read16(offset: number): number {
    this.#pread(this.#b2u8, offset);
    return this.#b2[0];
  }
  read32(offset: number): number {
    this.#pread(this.#b4u8, offset);
    return this.#b4[0];
  }
  write8(offset: number, value: number): void {
    this.#b1[0] = value;
    this.#pwrite(this.#b1, offset);
  }
  write16(offset: number, value: number): void {
    this.#b2[0] = value;
    this.#pwrite(this.#b2u8, offset);
  }
  write32(offset: number, value: number): void {
    this.#b4[0] = value;
    this.#pwrite(this.#b4u8, offset);
  }
  close(): void {
    const fd = this.#fd;
    this.#fd = -1; // later accesses fail with EBADF instead of reaching a reused descriptor
    close(fd);
  }
}
