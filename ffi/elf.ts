/**
 * A minimal x86-64 ELF shared object, generated in memory and loaded with `Deno.dlopen`.
 *
 * Machine code called through `Deno.UnsafeFnPointer` is about ten times slower than a symbol of a
 * dlopen'ed library (LAB-NOTES: Deno's fast call path is only taken for library symbols), so tiny
 * stubs (port IO) are packed into a real shared object: written to a memfd and opened as
 * `/proc/self/fd/N`.
 *
 * Layout (System V gABI, "Object Files" and "Program Loading and Dynamic Linking"; x86-64 psABI):
 *
 *   page 0 (R+X): ELF header, program headers, DT_HASH table, dynamic symbol table, string
 *                 table, code
 *   page 1 (R+W): the dynamic section (glibc adjusts its pointers in place when loading)
 *
 * No relocations, no section headers: the code must be position independent and self-contained.
 */
import { close, memfdCreate, MFD_CLOEXEC, write } from "./libc.ts";

/** ELF64 header, program header, symbol and dynamic entry layouts (gABI "ELF Header" etc.). */
const Elf = {
  EHDR_SIZE: 64,
  PHDR_SIZE: 56,
  SYM_SIZE: 24,
  DYN_SIZE: 16,
  /** e_ident */
  CLASS64: 2,
  DATA2LSB: 1,
  VERSION: 1,
  OSABI_SYSV: 0,
  /** e_type, e_machine */
  ET_DYN: 3,
  EM_X86_64: 62,
  /** p_type */
  PT_LOAD: 1,
  PT_DYNAMIC: 2,
  PT_GNU_STACK: 0x6474e551,
  /** p_flags */
  PF_X: 1,
  PF_W: 2,
  PF_R: 4,
  /** d_tag */
  DT_NULL: 0,
  DT_HASH: 4,
  DT_STRTAB: 5,
  DT_SYMTAB: 6,
  DT_STRSZ: 10,
  DT_SYMENT: 11,
  DT_SONAME: 14,
  /** st_info = (STB_GLOBAL << 4) | STT_FUNC */
  GLOBAL_FUNC: 0x12,
  PAGE: 4096,
} as const;

/** One exported function: its name and its machine code (System V AMD64 calling convention). */
export interface ElfFunction {
  name: string;
  code: Uint8Array;
}

/** The gABI's SysV hash of a symbol name ("Hash Table"). */
export function elfHash(name: string): number {
  let h = 0;
  for (const c of new TextEncoder().encode(name)) {
    h = ((h << 4) + c) >>> 0;
    const g = h & 0xf0000000;
    if (g !== 0) h ^= g >>> 24;
    h &= ~g >>> 0;
  }
  return h >>> 0;
}

const align = (n: number, a: number) => Math.ceil(n / a) * a;

/** Bytes of a shared object named `soname` exporting `functions`. */
export function buildSharedObject(
  soname: string,
  functions: ElfFunction[],
): Uint8Array<ArrayBuffer> {
  const enc = new TextEncoder();
  // String table: "\0", soname, then every function name.
  const strParts: number[] = [0];
  const strOffset = (s: string) => {
    const off = strParts.length;
    strParts.push(...enc.encode(s), 0);
    return off;
  };
  const sonameOff = strOffset(soname);
  const nameOffs = functions.map((f) => strOffset(f.name));
  const strtab = Uint8Array.from(strParts);

  const nsyms = functions.length + 1; // symbol 0 is the undefined symbol
  const nbucket = Math.max(1, functions.length);
  const phnum = 4;
  const hashOff = Elf.EHDR_SIZE + phnum * Elf.PHDR_SIZE;
  const hashSize = 4 * (2 + nbucket + nsyms);
  const symOff = align(hashOff + hashSize, 8);
  const strOff = symOff + nsyms * Elf.SYM_SIZE;
  let codeOff = align(strOff + strtab.length, 16);
  const funcOffs = functions.map((f) => {
    const off = codeOff;
    codeOff = align(codeOff + f.code.length, 16);
    return off;
  });
  const textEnd = codeOff;
  if (textEnd > Elf.PAGE) throw new Error(`ELF stub ${soname}: code larger than one page`);
  const dynOff = Elf.PAGE; // file offset == virtual address (base 0)
  const dyn: [number, number][] = [
    [Elf.DT_HASH, hashOff],
    [Elf.DT_STRTAB, strOff],
    [Elf.DT_SYMTAB, symOff],
    [Elf.DT_STRSZ, strtab.length],
    [Elf.DT_SYMENT, Elf.SYM_SIZE],
    [Elf.DT_SONAME, sonameOff],
    [Elf.DT_NULL, 0],
  ];
  const dynSize = dyn.length * Elf.DYN_SIZE;
  const total = dynOff + dynSize;

  const out = new Uint8Array(total);
  const v = new DataView(out.buffer); // cold path: a file image, not device memory
  const u64 = (off: number, n: number) => v.setBigUint64(off, BigInt(n), true);

  // ELF header.
  out.set([0x7f, 0x45, 0x4c, 0x46, Elf.CLASS64, Elf.DATA2LSB, Elf.VERSION, Elf.OSABI_SYSV]);
  v.setUint16(16, Elf.ET_DYN, true);
  v.setUint16(18, Elf.EM_X86_64, true);
  v.setUint32(20, Elf.VERSION, true);
  u64(24, 0); // e_entry
  u64(32, Elf.EHDR_SIZE); // e_phoff
  u64(40, 0); // e_shoff: no section headers
  v.setUint32(48, 0, true); // e_flags
  v.setUint16(52, Elf.EHDR_SIZE, true);
  v.setUint16(54, Elf.PHDR_SIZE, true);
  v.setUint16(56, phnum, true);
  v.setUint16(58, 64, true); // e_shentsize
  v.setUint16(60, 0, true); // e_shnum
  v.setUint16(62, 0, true); // e_shstrndx

  // Program headers.
  const phdr = (i: number, type: number, flags: number, off: number, size: number, al: number) => {
    const p = Elf.EHDR_SIZE + i * Elf.PHDR_SIZE;
    v.setUint32(p, type, true);
    v.setUint32(p + 4, flags, true);
    u64(p + 8, off); // p_offset
    u64(p + 16, off); // p_vaddr
    u64(p + 24, off); // p_paddr
    u64(p + 32, size); // p_filesz
    u64(p + 40, size); // p_memsz
    u64(p + 48, al);
  };
  phdr(0, Elf.PT_LOAD, Elf.PF_R | Elf.PF_X, 0, textEnd, Elf.PAGE);
  phdr(1, Elf.PT_LOAD, Elf.PF_R | Elf.PF_W, dynOff, dynSize, Elf.PAGE);
  phdr(2, Elf.PT_DYNAMIC, Elf.PF_R | Elf.PF_W, dynOff, dynSize, 8);
  phdr(3, Elf.PT_GNU_STACK, Elf.PF_R | Elf.PF_W, 0, 0, 16); // no executable stack

  // Hash table: one chain per bucket, symbol i+1 goes to bucket hash % nbucket.
  v.setUint32(hashOff, nbucket, true);
  v.setUint32(hashOff + 4, nsyms, true);
  const buckets = hashOff + 8;
  const chains = buckets + 4 * nbucket;
  functions.forEach((f, i) => {
    const sym = i + 1;
    const b = elfHash(f.name) % nbucket;
    // Prepend to the bucket's chain.
    v.setUint32(chains + 4 * sym, v.getUint32(buckets + 4 * b, true), true);
    v.setUint32(buckets + 4 * b, sym, true);
  });

  // Symbols (entry 0 stays all zero).
  functions.forEach((f, i) => {
    const s = symOff + (i + 1) * Elf.SYM_SIZE;
    v.setUint32(s, nameOffs[i], true);
    out[s + 4] = Elf.GLOBAL_FUNC;
    out[s + 5] = 0; // st_other: default visibility
    v.setUint16(s + 6, 1, true); // st_shndx: defined (any index but UNDEF/ABS)
    u64(s + 8, funcOffs[i]);
    u64(s + 16, f.code.length);
  });
  out.set(strtab, strOff);
  functions.forEach((f, i) => out.set(f.code, funcOffs[i]));
  dyn.forEach(([tag, val], i) => {
    u64(dynOff + i * Elf.DYN_SIZE, tag);
    u64(dynOff + i * Elf.DYN_SIZE + 8, val);
  });
  return out;
}

/** A dlopen'ed generated library; `close` unloads it and closes its memfd. */
export interface LoadedObject<S extends Deno.ForeignLibraryInterface> {
  readonly symbols: Deno.DynamicLibrary<S>["symbols"];
  close(): void;
}

/**
 * Writes the shared object to a memfd and dlopens it as `/proc/self/fd/N`. The memfd stays open
 * while the library is loaded: glibc recognises an already loaded object by its path, and a
 * reused descriptor number would hand back a different, earlier library.
 */
export function loadSharedObject<S extends Deno.ForeignLibraryInterface>(
  soname: string,
  functions: ElfFunction[],
  symbols: S,
): LoadedObject<S> {
  const image = buildSharedObject(soname, functions);
  const fd = memfdCreate(soname, MFD_CLOEXEC);
  try {
    let done = 0;
    while (done < image.length) done += write(fd, image.subarray(done));
    const lib = Deno.dlopen(`/proc/self/fd/${fd}`, symbols);
    return {
      symbols: lib.symbols,
      close() {
        lib.close();
        close(fd);
      },
    };
  } catch (e) {
    close(fd);
    throw e;
  }
}
