/**
 * x86 port IO from Deno: `ioperm` for a port range, then `in`/`out` instructions in machine-code
 * stubs packed into a generated shared object (ffi/elf.ts), so each access is one fast FFI call.
 *
 * `ioperm` grants access to the calling *thread* only (Linux keeps the IO bitmap per task), so
 * every thread that touches the ports must call `requestPorts` itself. Without the permission an
 * `in`/`out` instruction kills the process (SIGSEGV): `requestPorts` must succeed first.
 */
import { type ElfFunction, loadSharedObject } from "./elf.ts";
import { errno, raw, SysError } from "./libc.ts";

/**
 * The stubs, System V AMD64 ABI: first argument (port) in edi, second (value) in esi, result in
 * eax. `in`/`out` take the port in dx and the data in al/ax/eax (Intel SDM vol. 2, IN and OUT).
 */
const MOV_EDX_EDI = [0x89, 0xfa];
const MOV_EAX_ESI = [0x89, 0xf0];
const RET = 0xc3;
export const PORT_IO_STUBS: ElfFunction[] = [
  // in al, dx; movzx eax, al
  { name: "vpmd_inb", code: Uint8Array.of(...MOV_EDX_EDI, 0xec, 0x0f, 0xb6, 0xc0, RET) },
  // in ax, dx; movzx eax, ax
  { name: "vpmd_inw", code: Uint8Array.of(...MOV_EDX_EDI, 0x66, 0xed, 0x0f, 0xb7, 0xc0, RET) },
  // in eax, dx
  { name: "vpmd_inl", code: Uint8Array.of(...MOV_EDX_EDI, 0xed, RET) },
  // out dx, al
  { name: "vpmd_outb", code: Uint8Array.of(...MOV_EDX_EDI, ...MOV_EAX_ESI, 0xee, RET) },
  // out dx, ax
  { name: "vpmd_outw", code: Uint8Array.of(...MOV_EDX_EDI, ...MOV_EAX_ESI, 0x66, 0xef, RET) },
  // out dx, eax
  { name: "vpmd_outl", code: Uint8Array.of(...MOV_EDX_EDI, ...MOV_EAX_ESI, 0xef, RET) },
];

const symbols = {
  vpmd_inb: { parameters: ["u32"], result: "u32" },
  vpmd_inw: { parameters: ["u32"], result: "u32" },
  vpmd_inl: { parameters: ["u32"], result: "u32" },
  vpmd_outb: { parameters: ["u32", "u32"], result: "void" },
  vpmd_outw: { parameters: ["u32", "u32"], result: "void" },
  vpmd_outl: { parameters: ["u32", "u32"], result: "void" },
} as const;

export type PortIoStubs = Deno.DynamicLibrary<typeof symbols>["symbols"];

let stubs: PortIoStubs | null = null;

/** The loaded stubs (generated and dlopen'ed on first use, then shared). */
export function portIoStubs(): PortIoStubs {
  stubs ??= loadSharedObject("vpmd-portio.so", PORT_IO_STUBS, symbols).symbols;
  return stubs;
}

/**
 * Asks the kernel for access to ports [base, base + length) for this thread (ioperm(2): needs
 * CAP_SYS_RAWIO; absent on some virtual machines, ENOSYS). Throws a SysError when refused.
 */
export function requestPorts(base: number, length: number): void {
  if (raw.ioperm(BigInt(base), BigInt(length), 1) !== 0) {
    throw new SysError(
      "ioperm",
      errno(),
      `(ports 0x${base.toString(16)}-0x${(base + length - 1).toString(16)})`,
    );
  }
}

/** Gives the ports back (best effort: used on close). */
export function releasePorts(base: number, length: number): void {
  raw.ioperm(BigInt(base), BigInt(length), 0);
}
