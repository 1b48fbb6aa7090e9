/**
 * DMA memory: regions a device reads and writes, with one cached view set per region.
 *
 * A region knows three addresses for each byte offset in it:
 * - the process's own (virtual) address, `addr + offset`;
 * - the *IO address* (iova) a device is given in descriptors, `iova(offset)`. For in-process and
 *   vhost-user devices it is a "guest physical" address we choose (`2^32 + region number * 2^36 +
 *   offset`: every region is disjoint and every address fits two u32 stores). For PCI devices
 *   without an IOMMU it is the physical address, read from /proc/self/pagemap.
 * - the file offset, for regions backed by a memfd that is shared with a backend process.
 *
 * Regions are allocated once (cold path); hot paths use the cached `u8`/`u16`/`u32` views and
 * precomputed iovas, never this module's functions.
 */
import {
  close,
  ftruncate,
  MAP_ANONYMOUS,
  MAP_HUGETLB,
  MAP_POPULATE,
  MAP_PRIVATE,
  MAP_SHARED,
  memfdCreate,
  MFD_CLOEXEC,
  MFD_HUGETLB,
  mlock,
  mmap,
  munmap,
  O_RDONLY,
  open,
  pread,
  PROT_READ,
  PROT_WRITE,
} from "./libc.ts";

/**
 * - `anon`: private anonymous memory (in-process devices only).
 * - `memfd`: shared memory with a file descriptor (can be passed to a vhost-user backend).
 * - `hugepage-memfd`: like memfd but on 2 MiB hugepages.
 * - `physical`: 2 MiB hugepages, locked, with physical addresses as iovas (PCI without IOMMU).
 */
export type DmaKind = "anon" | "memfd" | "hugepage-memfd" | "physical";

/** What `DmaRegion.create` makes. */
export interface DmaRegionOptions {
  /** Bytes wanted (rounded up to whole pages). */
  size: number;
  /** Which memory, and so which devices can reach it. */
  kind: DmaKind;
  /** A name for errors and for /proc/PID/maps (memfd name). */
  name?: string;
}

/**
 * What another thread of this process needs to view a region (structured-cloneable, for a
 * Worker's message): the mapping is the process's, so its address is enough.
 */
export interface RegionShare {
  /** Virtual address of byte 0 (the mapping is the process's). */
  addr: number;
  /** Bytes mapped. */
  size: number;
  /** The kind of memory. */
  kind: DmaKind;
  /** The region's name. */
  name: string;
  /** Its memfd, -1 for none. */
  fd: number;
  /** iova of byte 0 (non-physical regions). */
  iovaBase: number;
  /** Physical address of each page (physical regions), else null. */
  pagePhys: number[] | null;
}

/** Hugepage memory could not be had (too few hugepages reserved and free). */
export class HugepageShortage extends Error {}

const HUGEPAGE = 2 * 1024 * 1024;
const SMALL_PAGE = 4096;

/** The page size backing a region of `kind`. */
export function pageSizeOf(kind: DmaKind): number {
  return kind === "hugepage-memfd" || kind === "physical" ? HUGEPAGE : SMALL_PAGE;
}

/**
 * Whether iovas run on without a break over a whole region of `kind`: all but `physical`, whose
 * pages lie wherever the kernel put them.
 */
export function iovaContiguous(kind: DmaKind): boolean {
  return kind !== "physical";
}

/**
 * Bytes a region of `kind` needs for `count` reservations of `size` bytes (a multiple of 64) made
 * one after the other by `alloc`: back to back where iovas are contiguous, whole reservations per
 * page where they are not.
 */
export function bytesForReservations(kind: DmaKind, count: number, size: number): number {
  if (iovaContiguous(kind)) return count * size;
  const page = pageSizeOf(kind);
  if (size > page) return count * Math.ceil(size / page) * page;
  return Math.ceil(count / Math.floor(page / size)) * page;
}

/** Base of the iova space handed out to non-physical regions; every region gets 2^36 bytes. */
const VIRTUAL_IOVA_BASE = 2 ** 32;
const VIRTUAL_IOVA_STRIDE = 2 ** 36;
let regionCounter = 0;

/** A mapped region of DMA memory: its views, and the iova of each byte for a device. */
export class DmaRegion {
  /** Pointer to byte 0 (for FFI calls). */
  readonly ptr: Deno.PointerObject;
  /** Virtual address of byte 0, as a number (user addresses fit in 2^47). */
  readonly addr: number;
  /** Bytes mapped (whole pages). */
  readonly size: number;
  /** The kind of memory the region is. */
  readonly kind: DmaKind;
  /** The name given at creation (in errors, and the memfd's name). */
  readonly name: string;
  /** memfd backing the region, -1 for anonymous or physical regions. */
  readonly fd: number;
  /** The page size backing the region. */
  readonly pageSize: number;
  /** iovas run on over the whole region (not `physical`): reservations may cross pages. */
  readonly contiguous: boolean;
  /** The region's memory as an ArrayBuffer (valid until `close`). */
  readonly buffer: ArrayBuffer;
  /** Byte view of the whole region. */
  readonly u8: Uint8Array<ArrayBuffer>;
  /** 16-bit view (little-endian, like every virtio field). */
  readonly u16: Uint16Array<ArrayBuffer>;
  /** 32-bit view (little-endian). */
  readonly u32: Uint32Array<ArrayBuffer>;
  /**
   * 8-byte view, for copying data in half as many stores as `u32`: only data checked to hold no
   * NaN bit pattern (a NaN's bits need not survive as a JavaScript number; every other value is
   * stored back exactly).
   */
  readonly f64: Float64Array<ArrayBuffer>;
  /** iova of byte 0 for non-physical regions. */
  readonly iovaBase: number;
  /** Physical address of each page for `physical` regions, else null. */
  readonly pagePhys: number[] | null;
  #next = 0;
  #closed = false;
  /** A view of a region another thread mapped (`attach`): closing it unmaps nothing. */
  readonly #viewOnly: boolean;

  private constructor(opts: Required<DmaRegionOptions> | RegionShare) {
    if ("addr" in opts) {
      // A view of the same mapping: the memory stays the mapping thread's to unmap.
      this.kind = opts.kind;
      this.name = opts.name;
      this.pageSize = pageSizeOf(opts.kind);
      this.contiguous = iovaContiguous(opts.kind);
      this.size = opts.size;
      this.fd = opts.fd;
      this.ptr = Deno.UnsafePointer.create(BigInt(opts.addr))!;
      this.addr = opts.addr;
      this.buffer = Deno.UnsafePointerView.getArrayBuffer(this.ptr, this.size);
      this.u8 = new Uint8Array(this.buffer);
      this.u16 = new Uint16Array(this.buffer);
      this.u32 = new Uint32Array(this.buffer);
      this.f64 = new Float64Array(this.buffer);
      this.iovaBase = opts.iovaBase;
      this.pagePhys = opts.pagePhys;
      this.#next = this.size; // nothing to reserve: the mapping thread lays the region out
      this.#viewOnly = true;
      return;
    }
    this.#viewOnly = false;
    this.kind = opts.kind;
    this.name = opts.name;
    this.pageSize = pageSizeOf(opts.kind);
    const huge = this.pageSize === HUGEPAGE;
    this.contiguous = iovaContiguous(opts.kind);
    this.size = Math.ceil(opts.size / this.pageSize) * this.pageSize;
    const rw = PROT_READ | PROT_WRITE;
    let fd = -1;
    let ptr: Deno.PointerObject;
    try {
      if (opts.kind === "anon") {
        ptr = mmap(this.size, rw, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE);
      } else if (opts.kind === "physical") {
        ptr = mmap(this.size, rw, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE);
      } else {
        fd = memfdCreate(opts.name, MFD_CLOEXEC | (huge ? MFD_HUGETLB : 0));
        ftruncate(fd, this.size);
        ptr = mmap(this.size, rw, MAP_SHARED | MAP_POPULATE, fd, 0);
      }
    } catch (e) {
      if (fd >= 0) close(fd);
      if (huge) {
        throw new HugepageShortage(
          `cannot allocate ${this.size} bytes of hugepage memory for ${opts.name}: ${
            (e as Error).message
          }. Reserve hugepages first (as root: echo 512 > /proc/sys/vm/nr_hugepages), ` +
            `or run scripts/setup-dpdk.sh`,
        );
      }
      throw e;
    }
    this.fd = fd;
    this.ptr = ptr;
    this.addr = Number(Deno.UnsafePointer.value(ptr));
    this.buffer = Deno.UnsafePointerView.getArrayBuffer(ptr, this.size);
    this.u8 = new Uint8Array(this.buffer);
    this.u16 = new Uint16Array(this.buffer);
    this.u32 = new Uint32Array(this.buffer);
    this.f64 = new Float64Array(this.buffer);
    this.iovaBase = VIRTUAL_IOVA_BASE + (regionCounter++ % 65536) * VIRTUAL_IOVA_STRIDE;
    this.pagePhys = opts.kind === "physical" ? this.#readPagemap() : null;
  }

  /** Map a region; throws `HugepageShortage` when hugepages cannot be had. */
  static create(opts: DmaRegionOptions): DmaRegion {
    return new DmaRegion({ name: `vpmd-${opts.kind}`, ...opts });
  }

  /** What `attach` needs to view this region from another thread of the process. */
  share(): RegionShare {
    const { addr, size, kind, name, fd, iovaBase, pagePhys } = this;
    return { addr, size, kind, name, fd, iovaBase, pagePhys };
  }

  /**
   * View a region that this process mapped in another thread (a Worker): the same memory and
   * iovas, nothing to reserve, and `close` unmaps nothing. Valid while the region is mapped.
   */
  static attach(share: RegionShare): DmaRegion {
    return new DmaRegion(share);
  }

  /** The address a device must be given for byte `offset` of this region. */
  iova(offset: number): number {
    if (offset < 0 || offset >= this.size) {
      throw new RangeError(`offset ${offset} outside DMA region ${this.name} (${this.size} bytes)`);
    }
    if (this.pagePhys === null) return this.iovaBase + offset;
    const page = Math.floor(offset / this.pageSize);
    return this.pagePhys[page] + (offset - page * this.pageSize);
  }

  /**
   * Reserves `size` bytes aligned to `align` and returns their offset. In a physical region a
   * reservation no larger than a page never crosses a page boundary, so that it is contiguous in
   * iova space; elsewhere reservations lie back to back.
   */
  alloc(size: number, align = 64): number {
    let off = Math.ceil(this.#next / align) * align;
    if (!this.contiguous && size <= this.pageSize) {
      const endPage = Math.floor((off + size - 1) / this.pageSize);
      if (endPage !== Math.floor(off / this.pageSize)) off = endPage * this.pageSize;
    }
    if (off + size > this.size) {
      throw new RangeError(
        `DMA region ${this.name} is full: ${size} bytes wanted, ${this.size - this.#next} left`,
      );
    }
    this.#next = off + size;
    return off;
  }

  /** Bytes still free for `alloc`. */
  get remaining(): number {
    return this.size - this.#next;
  }

  /** True once `close` unmapped the region: its views must not be touched. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Unmap the region (a second call does nothing); no device may use it any more. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#viewOnly) return;
    munmap(this.ptr, this.size);
    if (this.fd >= 0) close(this.fd);
  }

  #readPagemap(): number[] {
    mlock(this.ptr, this.size);
    const fd = open("/proc/self/pagemap", O_RDONLY);
    try {
      const entry = new Uint8Array(8);
      const view = new DataView(entry.buffer);
      const out: number[] = [];
      for (let off = 0; off < this.size; off += this.pageSize) {
        // Touch the page so it is present, then read its pagemap entry (64 bits per 4 KiB page).
        this.u8[off] |= 0;
        pread(fd, entry, ((this.addr + off) / SMALL_PAGE) * 8);
        const hi = view.getUint32(4, true);
        const lo = view.getUint32(0, true);
        const present = (hi & 0x80000000) !== 0;
        const pfn = (hi & 0x7fffff) * 2 ** 32 + lo; // bits 0..54
        if (!present || pfn === 0) {
          throw new Error(
            `/proc/self/pagemap gave no frame number for DMA region ${this.name}: run as root ` +
              `(CAP_SYS_ADMIN) on a machine without an IOMMU; physical addresses are needed ` +
              `for PCI devices bound to uio_pci_generic`,
          );
        }
        out.push(pfn * SMALL_PAGE);
      }
      return out;
    } finally {
      close(fd);
    }
  }
}
