/**
 * libc through Deno FFI, with checked errors.
 *
 * Every wrapper throws a {@link SysError} carrying errno and its text when the call fails.
 * Sizes and offsets are numbers here; they become bigint only at the FFI boundary (u64/i64
 * parameters are fastest as bigint, see LAB-NOTES). Nothing in this file is on a hot path
 * except `writeEventfd`, `notify`-style helpers built on `raw`.
 */

const symbols = {
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  mprotect: { parameters: ["pointer", "usize", "i32"], result: "i32" },
  mlock: { parameters: ["pointer", "usize"], result: "i32" },
  memfd_create: { parameters: ["buffer", "u32"], result: "i32" },
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  pread: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  pwrite: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  listen: { parameters: ["i32", "i32"], result: "i32" },
  accept4: { parameters: ["i32", "pointer", "pointer", "i32"], result: "i32" },
  sendmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  recvmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  unlink: { parameters: ["buffer"], result: "i32" },
  ioperm: { parameters: ["u64", "u64", "i32"], result: "i32" },
  getpid: { parameters: [], result: "i32" },
  clock_gettime: { parameters: ["i32", "buffer"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
} as const;

/** The raw dlopen'ed libc. Prefer the checked wrappers below. */
export const raw = Deno.dlopen("libc.so.6", symbols).symbols;

/** A failed system call: `call` names it, `errno` is the number, the message has its text. */
export class SysError extends Error {
  constructor(readonly call: string, readonly errno: number, context = "") {
    super(`${call}${context ? ` ${context}` : ""}: ${errnoText(errno)} (errno ${errno})`);
    this.name = "SysError";
  }
}

/** errno of the calling thread, read right after a failed call. */
export function errno(): number {
  const p = raw.__errno_location();
  return p === null ? 0 : new Deno.UnsafePointerView(p).getInt32(0);
}

export function errnoText(n: number): string {
  const p = raw.strerror(n);
  return p === null ? `errno ${n}` : Deno.UnsafePointerView.getCString(p);
}

/** Throws a SysError for a negative result; returns the result as a number otherwise. */
export function check(call: string, result: number | bigint, context = ""): number {
  const r = Number(result);
  if (r < 0) throw new SysError(call, errno(), context);
  return r;
}

/** NUL-terminated UTF-8 copy of `s` for `buffer` parameters. */
export function cstr(s: string): Uint8Array<ArrayBuffer> {
  const b = new TextEncoder().encode(s);
  const out = new Uint8Array(b.length + 1);
  out.set(b);
  return out;
}

// Linux x86_64 constants (mman.h, fcntl.h, sys/eventfd.h, sys/socket.h, poll.h).
export const PROT_READ = 0x1;
export const PROT_WRITE = 0x2;
export const PROT_EXEC = 0x4;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MAP_POPULATE = 0x8000;
export const MAP_HUGETLB = 0x40000;
export const MAP_FAILED = -1;
export const MFD_CLOEXEC = 0x1;
export const MFD_ALLOW_SEALING = 0x2;
export const MFD_HUGETLB = 0x4;
export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const O_NONBLOCK = 0x800;
export const O_CLOEXEC = 0x80000;
export const EFD_CLOEXEC = 0x80000;
export const EFD_NONBLOCK = 0x800;
export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_NONBLOCK = 0x800;
export const SOCK_CLOEXEC = 0x80000;
export const SOL_SOCKET = 1;
export const SCM_RIGHTS = 1;
export const MSG_NOSIGNAL = 0x4000;
export const MSG_DONTWAIT = 0x40;
export const POLLIN = 0x1;
export const POLLOUT = 0x4;
export const POLLERR = 0x8;
export const POLLHUP = 0x10;
export const EAGAIN = 11;
export const EINTR = 4;

/** mmap; returns the mapping's pointer. */
export function mmap(
  len: number,
  prot: number,
  flags: number,
  fd = -1,
  offset = 0,
): Deno.PointerObject {
  const p = raw.mmap(null, BigInt(len), prot, flags, fd, BigInt(offset));
  if (p === null || Deno.UnsafePointer.value(p) === 0xffffffffffffffffn) {
    throw new SysError("mmap", errno(), `(${len} bytes, flags 0x${flags.toString(16)})`);
  }
  return p;
}

export function munmap(p: Deno.PointerObject, len: number): void {
  check("munmap", raw.munmap(p, BigInt(len)));
}

export function mprotect(p: Deno.PointerObject, len: number, prot: number): void {
  check("mprotect", raw.mprotect(p, BigInt(len), prot));
}

export function mlock(p: Deno.PointerObject, len: number): void {
  check("mlock", raw.mlock(p, BigInt(len)));
}

export function memfdCreate(name: string, flags: number): number {
  return check("memfd_create", raw.memfd_create(cstr(name), flags), name);
}

export function ftruncate(fd: number, len: number): void {
  check("ftruncate", raw.ftruncate(fd, BigInt(len)));
}

export function open(path: string, flags: number, mode = 0): number {
  return check("open", raw.open(cstr(path), flags, mode), path);
}

export function close(fd: number): void {
  check("close", raw.close(fd));
}

export function pread(fd: number, buf: Uint8Array<ArrayBuffer>, offset: number): number {
  return check("pread", raw.pread(fd, buf, BigInt(buf.length), BigInt(offset)));
}

export function pwrite(fd: number, buf: Uint8Array<ArrayBuffer>, offset: number): number {
  return check("pwrite", raw.pwrite(fd, buf, BigInt(buf.length), BigInt(offset)));
}

export function read(fd: number, buf: Uint8Array<ArrayBuffer>): number {
  return check("read", raw.read(fd, buf, BigInt(buf.length)));
}

export function write(fd: number, buf: Uint8Array<ArrayBuffer>): number {
  return check("write", raw.write(fd, buf, BigInt(buf.length)));
}

export function eventfd(initval: number, flags: number): number {
  return check("eventfd", raw.eventfd(initval, flags));
}

/** Pointer to a typed array's memory as a number (cold path: for building msghdr and iovecs). */
export function addressOf(buf: ArrayBufferView<ArrayBuffer>): bigint {
  return Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf));
}
