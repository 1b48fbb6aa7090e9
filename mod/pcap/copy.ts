/**
 * Copying frame bytes between two large byte arrays (a buffer pool, a capture buffer or file)
 * without a per-frame allocation: short copies as 32-bit words through DataViews made once per
 * array (any alignment), long ones by the builtin `set` on a short-lived view, which is several
 * times faster than any loop for a long frame.
 */

/** Copies up to this long use the word loop. */
const COPY_LOOP_MAX = 128;

/** A byte array and a DataView over the same bytes (make it once per array). */
export interface ByteArea {
  /** The bytes. */
  u8: Uint8Array;
  /** A DataView over them. */
  view: DataView;
}

/** A ByteArea over `u8`. */
export function byteArea(u8: Uint8Array): ByteArea {
  return { u8, view: new DataView(u8.buffer, u8.byteOffset, u8.byteLength) };
}

/** Copy `n` bytes from `src` at `s` to `dst` at `d`. */
export function copyBytes(dst: ByteArea, d: number, src: ByteArea, s: number, n: number): void {
  if (n > COPY_LOOP_MAX) {
    dst.u8.set(src.u8.subarray(s, s + n), d);
    return;
  }
  const sv = src.view;
  const dv = dst.view;
  let k = 0;
  for (; k + 8 <= n; k += 8) {
    dv.setUint32(d + k, sv.getUint32(s + k, true), true);
    dv.setUint32(d + k + 4, sv.getUint32(s + k + 4, true), true);
  }
  const du = dst.u8;
  const su = src.u8;
  for (; k < n; k++) du[d + k] = su[s + k];
}
