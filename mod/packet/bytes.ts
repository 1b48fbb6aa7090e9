/**
 * Big-endian (network order) field readers and writers over `(bytes, offset)`: what every header
 * helper is built on. They allocate nothing and never read outside `bytes` by themselves (a typed
 * array read past its end gives `undefined`, which these turn into 0): callers check lengths.
 */

/** The byte at `off`. */
export function get8(b: Uint8Array, off: number): number {
  return b[off] | 0;
}

/** The big-endian 16-bit field at `off`. */
export function get16(b: Uint8Array, off: number): number {
  return (b[off] << 8) | b[off + 1];
}

/** The big-endian 32-bit field at `off`, as an unsigned number. */
export function get32(b: Uint8Array, off: number): number {
  return ((b[off] << 24) | (b[off + 1] << 16) | (b[off + 2] << 8) | b[off + 3]) >>> 0;
}

/** Write byte `v` at `off`. */
export function set8(b: Uint8Array, off: number, v: number): void {
  b[off] = v;
}

/** Write `v` as a big-endian 16-bit field at `off`. */
export function set16(b: Uint8Array, off: number, v: number): void {
  b[off] = v >>> 8;
  b[off + 1] = v;
}

/** Write `v` as a big-endian 32-bit field at `off`. */
export function set32(b: Uint8Array, off: number, v: number): void {
  b[off] = v >>> 24;
  b[off + 1] = v >>> 16;
  b[off + 2] = v >>> 8;
  b[off + 3] = v;
}

/** True when the `n` bytes at `a` and at `c` (both in `b`) are equal. */
export function bytesEqual(b: Uint8Array, a: number, c: number, n: number): boolean {
  for (let i = 0; i < n; i++) if (b[a + i] !== b[c + i]) return false;
  return true;
}
